"""Recording stand-ins for the fused and eta kernels' compiled launchers (no GPU needed): every
launch through the pack's cached launcher, or a plan (hopfield/fused_plan.py), is recorded with
its arguments instead of run. Outputs are left unwritten."""

from __future__ import annotations

from types import SimpleNamespace

from hopfield_circulation.hopfield import eta_triton, fused_triton
from hopfield_circulation.hopfield.triton_launch import CachedLauncher


class Recorder:
    """A jit'ed kernel's surface (names, signature) whose compiled launcher records every
    launch's arguments instead of running anything."""

    def __init__(self, module=fused_triton, tensors: int = fused_triton.FUSED_TENSOR_ARGS):
        kernel = module._kernel()
        self.arg_names, self.signature = kernel.arg_names, kernel.signature
        self.launches: list[tuple] = []  # through the compiled launcher (cached or planned)
        self.own_launches: list[tuple] = []  # through "Triton's own" kernel[grid](...)
        self.compiled = SimpleNamespace(run=self.run, function="function",
                                        packed_metadata="metadata")
        self.hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
        driver = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda i: 7)
        self.launcher = CachedLauncher(self, tensors, enabled=True,
                                       runtime=(driver, self.hooks))

    def run(self, *args):
        self.launches.append(args)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.own_launches.append(args)
            return self.compiled

        return launch


def record_fused_launches(monkeypatch) -> Recorder:
    """The fused kernel's launches recorded for the rest of a test, and the eta kernel's (in
    ``.eta``): CPU tensors pass as CUDA ones would (compiled Triton, tiles from the table,
    ``kernel="auto"`` and the eta kernel taken for fp16, bf16 and fp32 alike)."""
    recording = Recorder()
    recording.eta = Recorder(eta_triton, eta_triton.ETA_TENSOR_ARGS)
    monkeypatch.setattr(fused_triton, "_launcher", lambda: recording.launcher)
    monkeypatch.setattr(eta_triton, "_launcher", lambda: recording.eta.launcher)
    monkeypatch.setattr(eta_triton, "_FAILED", [])
    monkeypatch.setattr(eta_triton, "eligible", lambda q, k: q.shape == k.shape)
    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False)])
    monkeypatch.setattr(fused_triton, "_check", lambda *args: None)
    monkeypatch.setattr(fused_triton, "_DISABLED", [])
    monkeypatch.setattr(fused_triton, "auto_eligible",
                        lambda q, k, v: fused_triton.supports(q, k, v))
    return recording

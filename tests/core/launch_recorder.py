"""Stand-ins for Triton's compiled kernels (no GPU needed), behind the pack's real
CachedLauncher: tests record every launch through it, or through a plan
(hopfield/fused_plan.py), with its arguments instead of running it; benchmarks time the pack's
own host work with launches that do nothing. Outputs are left unwritten."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from hopfield_circulation.hopfield import eta_triton, fused_triton, stability_triton
from hopfield_circulation.hopfield.triton_launch import CachedLauncher


@dataclass(frozen=True)
class PackKernel:
    """One of the pack's Triton kernels, with where its launcher lives: a module's
    ``_launcher`` (fused, eta) or one entry of ``stability_triton._launchers`` (the probe's
    stages)."""

    name: str
    load: object  # () -> the jit'ed kernel
    tensors: int  # its leading tensor arguments
    owner: object  # a module, or the dict of the probe's stage launchers
    slot: str  # the attribute or key holding the launcher's getter

    def launcher_getter(self):
        return self.owner[self.slot] if isinstance(self.owner, dict) else \
            getattr(self.owner, self.slot)

    def set_launcher_getter(self, getter) -> None:
        if isinstance(self.owner, dict):
            self.owner[self.slot] = getter
        else:
            setattr(self.owner, self.slot, getter)


def pack_kernels() -> list[PackKernel]:
    """Every Triton kernel the pack launches."""
    found = [PackKernel("fused", fused_triton._kernel, fused_triton.FUSED_TENSOR_ARGS,
                        fused_triton, "_launcher"),
             PackKernel("eta", eta_triton._kernel, eta_triton.ETA_TENSOR_ARGS, eta_triton,
                        "_launcher"),
             PackKernel("eta reduce", eta_triton._reduce_kernel, eta_triton.REDUCE_TENSOR_ARGS,
                        eta_triton, "_reduce_launcher")]
    for stage, tensors in stability_triton.STAGE_TENSOR_ARGS.items():
        found.append(PackKernel(f"probe {stage}",
                                lambda stage=stage: stability_triton._kernel(stage), tensors,
                                stability_triton._launchers, stage))
    return found


def no_op_compiled():
    """A compiled kernel whose launcher runs nothing."""
    return SimpleNamespace(run=lambda *launch: None, function="function",
                           packed_metadata="metadata")


class KernelSurface:
    """A jit'ed kernel's surface (names, signature) whose ``kernel[grid](...)`` hands back
    ``compiled`` instead of compiling and launching."""

    def __init__(self, kernel, compiled):
        self.arg_names, self.signature, self.compiled = kernel.arg_names, kernel.signature, \
            compiled

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.compiled


def stand_in_launcher(surface: KernelSurface, tensors: int) -> CachedLauncher:
    """The pack's CachedLauncher around ``surface``, with a stand-in for Triton's driver (device
    0, stream 7) and no launch hooks, set up as after a first launch."""
    driver = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda i: 7)
    hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    return CachedLauncher(surface, tensors, enabled=True, runtime=(driver, hooks))


class RecordedLaunch(tuple):
    """A launch's arguments as the compiled launcher got them (grid, stream, function,
    metadata, three hooks, then the kernel's), knowing how many of the kernel's lead
    arguments are pointers: tensors, or (from a plan) their addresses."""

    pointers: int

    def __new__(cls, args: tuple, pointers: int):
        launch = super().__new__(cls, args)
        launch.pointers = pointers
        return launch


class Recorder(KernelSurface):
    """A kernel whose compiled launcher records every launch's arguments."""

    def __init__(self, module=fused_triton, tensors: int = fused_triton.FUSED_TENSOR_ARGS,
                 kernel=None):
        super().__init__(kernel or module._kernel(), no_op_compiled())
        self.compiled.run = self.run
        self.launches: list[tuple] = []  # through the compiled launcher (cached or planned)
        self.own_launches: list[tuple] = []  # through "Triton's own" kernel[grid](...)
        self.launcher = stand_in_launcher(self, tensors)
        self.hooks = self.launcher.hooks
        self.tensors = tensors

    def run(self, *args):
        self.launches.append(RecordedLaunch(args, self.tensors))

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.own_launches.append(args)
            return self.compiled

        return launch


def address(pointer) -> int:
    """A recorded pointer argument's address: a tensor's, or the int a plan passed."""
    if isinstance(pointer, torch.Tensor):
        return pointer.data_ptr()
    assert type(pointer) is int
    return pointer


def fused_at(name: str) -> int:
    """Where the fused kernel's tensor ``name`` sits among its arguments (a recorded launch
    holds them after compiled.run's nine leading ones: grid, stream, function, metadata and
    three hooks)."""
    return fused_triton.FUSED_TENSORS.index(name)


def record_fused_launches(monkeypatch) -> Recorder:
    """The fused kernel's launches recorded for the rest of a test, and the eta kernels' (in
    ``.eta``, its reduction's too): CPU tensors pass as CUDA ones would (compiled Triton, tiles
    from the table, ``kernel="auto"`` and the eta kernel taken for fp16, bf16 and fp32
    alike)."""
    recording = Recorder()
    recording.eta = Recorder(eta_triton, eta_triton.ETA_TENSOR_ARGS)
    recording.eta_reduce = Recorder(eta_triton, eta_triton.REDUCE_TENSOR_ARGS,
                                    eta_triton._reduce_kernel())
    recording.eta_reduce.launches = recording.eta.launches  # one sequence
    monkeypatch.setattr(fused_triton, "_launcher", lambda: recording.launcher)
    monkeypatch.setattr(eta_triton, "_launcher", lambda: recording.eta.launcher)
    monkeypatch.setattr(eta_triton, "_reduce_launcher", lambda: recording.eta_reduce.launcher)
    monkeypatch.setattr(eta_triton, "_FAILED", [])
    monkeypatch.setattr(eta_triton, "eligible", lambda q, k: q.shape == k.shape)
    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False)])
    monkeypatch.setattr(fused_triton, "_check", lambda *args: None)
    monkeypatch.setattr(fused_triton, "_DISABLED", [])
    monkeypatch.setattr(fused_triton, "auto_eligible",
                        lambda q, k, v: fused_triton.supports(q, k, v))
    return recording


def record_probe_stages(monkeypatch, launches: list) -> None:
    """The Stability Probe's four stages recorded into ``launches`` (one sequence) for the rest
    of a test, every layout planned afresh."""
    for stage, tensors in stability_triton.STAGE_TENSOR_ARGS.items():
        stand_in = Recorder(kernel=stability_triton._kernel(stage), tensors=tensors)
        stand_in.launches = launches
        monkeypatch.setitem(stability_triton._launchers, stage,
                            lambda stand_in=stand_in: stand_in.launcher)
    monkeypatch.setattr(stability_triton, "_plans", {})

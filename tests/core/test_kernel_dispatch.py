"""Which path circulate_value_space takes (kernel = auto | fused | two_call), without Triton
being needed: the fused kernel's own math is in fused_kernel_cases.py."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hopfield_circulation.hopfield import (
    CirculationSettings,
    circulate_value_space,
    circulation,
    fused_triton,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def qkv(dtype=torch.float32, length=24):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 2, length, 64, generator=gen).to(dtype) for _ in range(3))


def test_importing_the_core_does_not_import_triton():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hopfield_circulation', "
        f"{str(REPO_ROOT / '__init__.py')!r}, submodule_search_locations=[{str(REPO_ROOT)!r}])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['hopfield_circulation'] = module\n"
        "spec.loader.exec_module(module)\n"
        "import hopfield_circulation.hopfield as h\n"
        "import torch\n"
        "q = torch.randn(1, 1, 8, 64)\n"
        "h.circulate_value_space(q, q, q, q, h.CirculationSettings(1.1, 3.0))\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_settings_validate_the_kernel_name():
    assert CirculationSettings().kernel == "auto"
    with pytest.raises(ValueError, match="kernel must be one of"):
        CirculationSettings(kernel="flash")


def test_auto_on_cpu_is_the_two_call_path():
    q, k, v = qkv()
    base = F.scaled_dot_product_attention(q, k, v)
    auto = circulate_value_space(q, k, v, base, CirculationSettings(1.1, 3.0)).out
    two_call = circulate_value_space(q, k, v, base,
                                     CirculationSettings(1.1, 3.0, kernel="two_call")).out
    assert torch.equal(auto, two_call)


def test_forcing_fused_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(False, False)])
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        circulate_value_space(q, k, v, None, CirculationSettings(1.1, 3.0, kernel="fused"))


def test_auto_falls_back_once_when_the_kernel_cannot_run_here(monkeypatch):
    """A Triton that imports but cannot compile (e.g. no C compiler): warn, use the two-call
    path (computing the baseline the host skipped), and stop choosing the kernel."""
    monkeypatch.setattr(fused_triton, "_DISABLED", [])
    monkeypatch.setattr(fused_triton, "auto_eligible", lambda q, k, v: not fused_triton._DISABLED)

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler")

    # The launch fails inside the registered op (where a compile failure happens), which is
    # where the fallback lives: under torch.compile the op is opaque, so a try/except around
    # its call in traced code could never catch it.
    monkeypatch.setattr(fused_triton, "_launch", broken)
    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, True)])
    q, k, v = qkv(torch.float16)
    settings = CirculationSettings(1.1, 3.0)
    assert not circulation.needs_baseline(q, k, v, settings)  # fused: the host skips its call
    with pytest.warns(RuntimeWarning, match="two-call path from now on"):
        got = circulate_value_space(q, k, v, None, settings).out
    host = F.scaled_dot_product_attention(q, k, v)
    want = circulate_value_space(q, k, v, host, CirculationSettings(1.1, 3.0,
                                                                    kernel="two_call")).out
    assert torch.equal(got, want)
    assert fused_triton._DISABLED and "C compiler" in fused_triton._DISABLED[0]
    assert circulation.needs_baseline(q, k, v, CirculationSettings(1.1, 3.0, kernel="auto"),
                                      active=torch.tensor([True, False]))
    assert circulation.needs_baseline(q, k, v, settings)  # auto has given up: host call again


@pytest.mark.parametrize("which", ["eta", "stability"])
def test_the_eta_and_probe_kernels_hand_over_to_torch_once_they_fail(monkeypatch, which):
    """Eligible but failing (no C compiler, out of resources): one warning, the torch path's
    result, and the kernel is not tried again in this process."""
    from hopfield_circulation.hopfield import eta_triton, stability_triton
    from hopfield_circulation.hopfield.stability import layer_stability, layer_stability_torch
    from hopfield_circulation.hopfield.symmetry import symmetry_index, symmetry_index_torch

    module = eta_triton if which == "eta" else stability_triton
    monkeypatch.setattr(module, "_FAILED", [])
    monkeypatch.setattr(module, "eligible", lambda *tensors: not module._FAILED)

    def broken(*args, **kwargs):
        raise RuntimeError("out of resource: shared memory")

    monkeypatch.setattr(module, "symmetry_index_triton" if which == "eta" else
                        "stability_packed", broken)
    q, k, v = qkv(torch.float16)
    measure, torch_path = ((symmetry_index, symmetry_index_torch) if which == "eta"
                           else (layer_stability, layer_stability_torch))
    with pytest.warns(RuntimeWarning, match="using the torch path from now on"):
        got = measure(q, k, v) if which == "stability" else measure(q, k)
    want = torch_path(q, k, v) if which == "stability" else torch_path(q, k)
    if which == "stability":
        got, want = got.token_map, want.token_map
    assert torch.equal(got, want)
    assert module._FAILED and "shared memory" in module._FAILED[0]
    assert not module.eligible(q, k, v)


def test_tiles_come_from_the_table_off_cuda_and_timing_keeps_the_fastest():
    from hopfield_circulation.hopfield.fused_triton import (
        DEFAULT_CONFIGS,
        TILE_CANDIDATES,
        LaunchConfig,
        fastest,
        tuned_config,
    )

    q = torch.zeros(1, 1, 8, 64, dtype=torch.float16)
    launched = []
    assert tuned_config(q, launched.append) == DEFAULT_CONFIGS[(64, "fp16")]
    assert not launched  # nothing timed on the CPU
    times = {c: t for c, t in zip(TILE_CANDIDATES[64], (3.0, None, 1.5, 2.0), strict=True)}
    assert fastest(TILE_CANDIDATES[64], times.get) == TILE_CANDIDATES[64][2]  # None: can't run
    with pytest.raises(RuntimeError, match="no tile configuration"):
        fastest((LaunchConfig(64, 64, 4, 3),), lambda c: None)
    for d, candidates in TILE_CANDIDATES.items():
        assert DEFAULT_CONFIGS[(d, "fp16")] in candidates and DEFAULT_CONFIGS[(d, "bf16")] in \
            candidates


def test_no_timing_inside_a_cuda_graph_capture(monkeypatch):
    """A shape class first met while a CUDA graph is being captured gets the table's tiles
    without timing (events and waits are illegal there) and is timed at its next call."""
    from types import SimpleNamespace

    from hopfield_circulation.hopfield import fused_triton

    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False)])
    monkeypatch.setattr(fused_triton, "_TUNED", {})
    q = SimpleNamespace(is_cuda=True, shape=(1, 1, 8, 64), dtype=torch.float16,
                        device=torch.device("cuda", 0))
    timed = []
    monkeypatch.setattr(fused_triton, "_time_ms", lambda launch, config: timed.append(config))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    table = fused_triton.DEFAULT_CONFIGS[(64, "fp16")]
    assert fused_triton.tuned_config(q, None) == table and not timed
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    made_current = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: made_current.append(device) or
                        contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="no tile configuration"):  # every time is None
        fused_triton.tuned_config(q, None)
    assert len(timed) == len(fused_triton.TILE_CANDIDATES[64])
    assert made_current == [q.device]  # timed on q's device, whichever is current


def test_the_tokens_split_for_about_two_programs_per_processor(monkeypatch):
    """hopfield/token_chunks.py (the probe's kernels, eta's when asked): chunks of whole
    tiles, none empty, about two programs per processor (an H100's or H200's 132 here), none
    much under 600 tokens: the counts the H200 sweep found fastest at these three shapes."""
    from hopfield_circulation.hopfield import token_chunks

    monkeypatch.setattr(token_chunks, "processors", lambda device: 132)
    cpu = torch.device("cpu")
    assert token_chunks.token_chunks(20, 4096, 64, cpu) == (7, 640)  # SDXL 64 x 64, CFG
    assert token_chunks.token_chunks(40, 1024, 64, cpu) == (2, 512)  # SDXL 32 x 32
    assert token_chunks.token_chunks(48, 4250, 64, cpu) == (6, 768)  # SD3 1024^2
    assert token_chunks.token_chunks(200, 4096, 64, cpu) == (2, 2048)  # many programs
    assert token_chunks.token_chunks(400, 4096, 64, cpu) == (1, 4096)  # enough programs
    assert token_chunks.token_chunks(20, 50, 64, cpu) == (1, 64)  # one tile
    assert token_chunks.token_chunks(20, 4096, 64, cpu, splits=100) == (64, 64)
    gen = torch.Generator().manual_seed(0)
    for programs, length, splits in torch.randint(1, 3000, (200, 3), generator=gen).tolist():
        chunks, chunk = token_chunks.token_chunks(programs, length, 64, cpu,
                                                  splits=splits % 9 or None)
        assert chunk % 64 == 0 and (chunks - 1) * chunk < length <= chunks * chunk

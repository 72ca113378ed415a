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
    fused_tiles,
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


def cuda_like(dtype, length=4096, d=128, index=0):
    from types import SimpleNamespace

    return SimpleNamespace(is_cuda=True, ndim=4, shape=(1, 24, length, d), dtype=dtype,
                           device=torch.device("cuda", index))


def test_rocm_keeps_to_the_two_call_and_torch_paths(monkeypatch):
    """torch built for ROCm calls AMD GPUs "cuda", and Triton's AMD backend would compile the
    kernels for them; they have run on NVIDIA GPUs only, so auto takes none of the three."""
    from hopfield_circulation.hopfield import eta_triton, stability_triton

    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    monkeypatch.setattr(fused_triton, "_FACTS", [])
    monkeypatch.setattr(fused_triton, "available", lambda: True)
    monkeypatch.setattr(fused_triton, "interpreting", lambda: False)
    monkeypatch.setattr(fused_triton, "_DISABLED", [])
    assert fused_triton.facts().rocm and not fused_triton.kernel_usable()
    q = cuda_like(torch.float16, length=64, d=64)
    monkeypatch.setattr(fused_triton, "supports", lambda q, k, v: True)
    assert not fused_triton.auto_eligible(q, q, q)
    assert not eta_triton.eligible(q, q) and not stability_triton.eligible(q, q, q)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(fused_triton, "_FACTS", [])
    monkeypatch.setattr(fused_triton, "_TENSOR_CORE_DOTS", {0: True})
    assert fused_triton.auto_eligible(q, q, q)  # the same call on an NVIDIA build


def test_gpus_older_than_ampere_keep_to_the_two_call_and_torch_paths(monkeypatch):
    """On a T4 or an RTX 20xx (sm_75) Triton makes the kernels' products scalar FMAs (a
    minute's compile per tile, on units an eighth as fast as the tensor cores the host's
    attention uses): auto takes none of the kernels there. Asked once per device, and never
    inside a compile trace."""
    from hopfield_circulation.hopfield import eta_triton, stability_triton

    asked = []
    capabilities = {0: (7, 5), 1: (8, 9)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(
        device.index) or capabilities[device.index])
    monkeypatch.setattr(fused_triton, "_TENSOR_CORE_DOTS", {})
    monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False)])
    monkeypatch.setattr(fused_triton, "_DISABLED", [])
    monkeypatch.setattr(fused_triton, "supports", lambda q, k, v: True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not fused_triton.tensor_core_dots(torch.device("cuda", 1)) and not asked  # a trace
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    for index, fits in ((0, False), (1, True)):
        q = cuda_like(torch.float16, length=64, d=64, index=index)
        assert fused_triton.auto_eligible(q, q, q) == fits
        assert eta_triton.eligible(q, q) == fits and stability_triton.eligible(q, q, q) == fits
    assert asked == [0, 1]  # once per device
    assert not fused_triton.tensor_core_dots(torch.device("cpu"))


def test_values_keep_their_width_on_hopper_at_d_64_only(monkeypatch):
    """The concat trick's retrieval takes v at its own width where that was measured faster
    (an H200 at d = 64): Hopper only, d = 64 only, asked once per device, never in a trace."""
    from hopfield_circulation.hopfield import skew

    asked = []
    capabilities = {0: (9, 0), 1: (8, 9), 2: (10, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(
        device.index) or capabilities[device.index])
    monkeypatch.setattr(skew, "_NARROW_VALUES", {})
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not skew.narrow_values(torch.device("cuda", 0), 64) and not asked  # a trace
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    for index, narrow in ((0, True), (1, False), (2, False), (0, True)):
        assert skew.narrow_values(torch.device("cuda", index), 64) == narrow
        assert not skew.narrow_values(torch.device("cuda", index), 128)
    assert asked == [0, 1, 2]  # once per device
    assert not skew.narrow_values(torch.device("cpu"), 64)


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
    from hopfield_circulation.hopfield.fused_tiles import (
        DEFAULT_CONFIGS,
        TILE_CANDIDATES,
        LaunchConfig,
        fastest,
        tuned_config,
    )

    q = torch.zeros(1, 1, 8, 64, dtype=torch.float16)
    launched = []
    assert tuned_config(q, launched.append, fused_triton.facts()) == DEFAULT_CONFIGS[
        (64, "fp16")]
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

    facts = fused_triton.ProcessFacts(True, False)
    monkeypatch.setattr(fused_tiles, "_TUNED", {})
    q = SimpleNamespace(is_cuda=True, shape=(1, 1, 8, 64), dtype=torch.float16,
                        device=torch.device("cuda", 0))
    timed = []
    monkeypatch.setattr(fused_tiles, "_time_ms", lambda launch, config: timed.append(config))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    table = fused_tiles.DEFAULT_CONFIGS[(64, "fp16")]
    assert fused_tiles.tuned_config(q, None, facts) == table and not timed
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    made_current = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: made_current.append(device) or
                        contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="no tile configuration"):  # every time is None
        fused_tiles.tuned_config(q, None, facts)
    assert len(timed) == len(fused_tiles.TILE_CANDIDATES[64])
    assert made_current == [q.device]  # timed on q's device, whichever is current


# Shared memory per program of the fused kernel's tiles, from an sm_89 compile (Triton 3.6),
# against the 99 KB an RTX 30xx/40xx gives one program
SM89_SHARED_KB = {
    (128, torch.float16): {(64, 64, 4, 3): 136, (64, 32, 4, 2): 60, (128, 64, 8, 2): 112,
                           (128, 32, 8, 2): 96, (64, 64, 4, 2): 88},
    (128, torch.bfloat16): {(64, 64, 4, 3): 152, (64, 32, 4, 2): 68, (128, 64, 8, 2): 128,
                            (128, 32, 8, 2): 96, (64, 64, 4, 2): 104},
    (64, torch.float16): {(64, 128, 4, 2): 64, (128, 64, 8, 3): 80, (128, 128, 8, 3): 128,
                          (64, 64, 4, 3): 64, (64, 64, 4, 2): 40},
    (64, torch.bfloat16): {(64, 128, 4, 2): 80, (128, 64, 8, 3): 88, (128, 128, 8, 3): 144,
                           (64, 64, 4, 3): 72, (64, 64, 4, 2): 48},
}
SM89_LIMIT = 99 * 1024


def out_of_resources_error(required: int, limit: int):
    """Triton's own OutOfResources where Triton is installed (what it raises when it loads a
    kernel needing more shared memory than the device has), else one of that name."""
    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:
        class OutOfResources(Exception):
            def __init__(self, required, limit, name):
                super().__init__(f"out of resource: {name}, Required: {required}, Hardware "
                                 f"limit: {limit}")
    return OutOfResources(required, limit, "shared memory")


class Sm89Launches:
    """``launch(config)`` as on a 99 KB device: tiles that need more raise OutOfResources
    (before anything runs, as Triton's loader does); the others run and return their tiles."""

    def __init__(self, dtype, d=128):
        self.shared_kb = SM89_SHARED_KB[(d, dtype)]
        self.tried, self.ran = [], []

    def __call__(self, config):
        self.tried.append(config)
        required = self.shared_kb[tuple(vars(config).values())] * 1024
        if required > SM89_LIMIT:
            raise out_of_resources_error(required, SM89_LIMIT)
        self.ran.append(config)
        return config


@pytest.fixture
def fresh_tiles(monkeypatch):
    """A fresh process's tile state and kernel status; ``tune``: HOPFIELD_CIRCULATION_TUNE."""
    monkeypatch.setattr(fused_tiles, "_TUNED", {})
    monkeypatch.setattr(fused_tiles, "_UNFIT", set())
    monkeypatch.setattr(fused_triton, "_DISABLED", [])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())

    def tune(on: bool):
        monkeypatch.setattr(fused_triton, "_FACTS", [fused_triton.ProcessFacts(True, False, on)])

    return tune


def never_called():
    raise AssertionError("the two-call path ran")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_untimed_tiles_that_need_more_shared_memory_than_the_device_has_give_way(
        fresh_tiles, dtype, caplog):
    """HOPFIELD_CIRCULATION_TUNE=0 on an RTX 40xx at d = 128 (Flux): the table's Hopper tiles
    do not fit, and the next candidate that does runs instead, kept for the class and for the
    plan (settled_config). The kernel stays on: no warning, no two-call path."""
    from hopfield_circulation.hopfield.fused_tiles import DEFAULT_CONFIGS, DTYPE_CLASS, LaunchConfig
    from hopfield_circulation.hopfield.fused_triton import settled_config

    fresh_tiles(False)
    q, launch = cuda_like(dtype), Sm89Launches(dtype)
    table, fitting = DEFAULT_CONFIGS[(128, DTYPE_CLASS[dtype])], LaunchConfig(64, 32, 4, 2)
    assert settled_config(q) == table
    with caplog.at_level("INFO", logger=fused_tiles.log.name):
        assert fused_triton._run(q, launch, None, True, never_called) == fitting
    assert launch.tried == [table, fitting] and not fused_triton.disabled()
    said = caplog.messages[-1]  # the console says what gave way, and why
    assert "64x64 tiles, 4 warps, 3 stages need more shared memory" in said and \
        "d = 128" in said and "2049-4096 tokens on cuda:0" in said and "Hardware limit" in said
    assert settled_config(q) == fitting
    assert settled_config(cuda_like(dtype, length=77)) == fitting  # any length
    assert settled_config(cuda_like(dtype, d=64)) == DEFAULT_CONFIGS[(64, DTYPE_CLASS[dtype])]
    launch.tried.clear()
    assert fused_triton._run(q, launch, None, True, never_called) == fitting
    assert launch.tried == [fitting]  # the table is not tried again


def test_a_first_call_in_a_cuda_graph_capture_gives_way_too_and_is_timed_later(
        fresh_tiles, monkeypatch, caplog):
    """Inside a capture: the untimed table fails to load (nothing recorded) and the next
    candidate launches once. Outside it, the class is timed over the candidates that fit
    and, this device having less room than Hopper, the compact ones."""
    from hopfield_circulation.hopfield.fused_tiles import COMPACT_CANDIDATES, LaunchConfig

    fresh_tiles(True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    q, launch = cuda_like(torch.bfloat16), Sm89Launches(torch.bfloat16)
    assert fused_triton._run(q, launch, None, True, never_called) == LaunchConfig(64, 32, 4, 2)
    assert launch.ran == [LaunchConfig(64, 32, 4, 2)] and not fused_tiles._TUNED
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    times = {(64, 32, 4, 2): 2.0, (128, 32, 8, 2): 1.5}  # ms, where the tiles run
    monkeypatch.setattr(fused_tiles, "_time_ms", lambda launch, config: times[tuple(vars(
        launch(config)).values())])
    launch.tried.clear()
    with caplog.at_level("INFO", logger=fused_tiles.log.name):
        assert fused_triton._run(q, launch, None, True, never_called) == LaunchConfig(
            128, 32, 8, 2)
    assert "128x32 tiles, 8 warps, 2 stages (1.500 ms), of 4 candidates timed" in \
        caplog.messages[-1] and "2 needed more shared memory" in caplog.messages[-1]
    # timed: the fitting primary candidates, the one not tried yet failing, then the compact
    assert launch.tried == [LaunchConfig(64, 32, 4, 2), LaunchConfig(128, 64, 8, 2),
                            *COMPACT_CANDIDATES[128], LaunchConfig(128, 32, 8, 2)]
    assert fused_triton.settled_config(q) == LaunchConfig(128, 32, 8, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_at_d64_a_99_kb_device_also_times_tiles_two_programs_per_processor_fit(
        fresh_tiles, monkeypatch, dtype):
    """SDXL and SD3 on an RTX 40xx: every table tile fits but takes a processor's shared
    memory alone (64-88 KB of 100); the 128 x 128 tiles do not fit, which marks the device,
    and 64 x 64 tiles in two stages (40-48 KB) join the timing."""
    from hopfield_circulation.hopfield.fused_tiles import COMPACT_CANDIDATES, TILE_CANDIDATES

    fresh_tiles(True)
    launch = Sm89Launches(dtype, d=64)
    monkeypatch.setattr(fused_tiles, "_time_ms", lambda launch, config: float(
        launch(config).block_n))  # any time for tiles that run
    fused_tiles.tuned_config(cuda_like(dtype, d=64), launch, fused_triton.facts())
    table = fused_tiles.DEFAULT_CONFIGS[(64, fused_tiles.DTYPE_CLASS[dtype])]
    assert launch.tried == [table, *(c for c in TILE_CANDIDATES[64] if c != table),
                            *COMPACT_CANDIDATES[64]]
    assert COMPACT_CANDIDATES[64][0] in launch.ran


def test_hopper_room_times_no_compact_tiles(fresh_tiles, monkeypatch):
    fresh_tiles(True)
    timed = []
    monkeypatch.setattr(fused_tiles, "_time_ms", lambda launch, config: timed.append(
        config) or 1.0)
    fused_tiles.tuned_config(cuda_like(torch.float16), None, fused_triton.facts())
    assert timed == list(fused_tiles.TILE_CANDIDATES[128])


def test_when_no_tiles_fit_the_kernel_hands_over_once(fresh_tiles):
    fresh_tiles(False)
    q = cuda_like(torch.float16)

    def nothing_fits(config):
        raise out_of_resources_error(300 * 1024, 64 * 1024)

    with pytest.warns(RuntimeWarning, match="two-call path from now on"):
        assert fused_triton._run(q, nothing_fits, None, True, lambda: "two-call") == "two-call"
    assert "fits this device" in fused_triton._DISABLED[0]
    with pytest.raises(RuntimeError, match="fits this device"):  # asked for the kernel itself
        fused_triton._run(q, nothing_fits, None, False, never_called)


def test_other_launch_failures_are_not_taken_for_a_lack_of_room(fresh_tiles):
    fresh_tiles(False)

    def broken(config):
        raise RuntimeError("Failed to find C compiler")

    with pytest.raises(RuntimeError, match="C compiler"):
        fused_triton._run(cuda_like(torch.float16), broken, None, False, never_called)
    assert not fused_tiles._UNFIT


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

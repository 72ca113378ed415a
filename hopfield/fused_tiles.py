"""Which tiles the fused kernel launches with.

A table per (head dim, dtype) gives the tiles before any timing (Hopper's sweep winners); the
first call of a shape class on a CUDA device times a small candidate set on its own inputs and
keeps the fastest for the process. Tiles that need more shared memory than the device gives a
program (the table's d = 128 tiles on an RTX 30xx/40xx) are refused by Triton as it loads the
kernel, before anything runs: they are left out from then on, the next candidate that fits
takes their place, and compact tiles made for such a device join its timing.

``facts`` (fused_triton.ProcessFacts): whether Triton is interpreting and whether timing is on
(HOPFIELD_CIRCULATION_TUNE), asked once per process by the kernel's module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

# The console's record of each choice (ComfyUI shows INFO): a first call that times tiles
# compiles each candidate, seconds a user would otherwise take for a hang
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # query rows per program
    block_n: int  # key rows per streamed tile
    num_warps: int
    num_stages: int  # software-pipelining depth of the K_j, Q_j, V_j loads


# Tiles per (head dim, dtype class) before timing, from `benchmarks/bench_gpu.py --sweep` on an
# H100 where it ran (README, Performance), else from an sm_90a compile of each candidate (wgmma
# on all four dot products, no register spills, shared memory under the per-block limit:
# benchmarks/compile_hopper.py). Two fp32 accumulators of BLOCK_M x d plus two BLOCK_M x
# BLOCK_N score tiles live in registers, double a flash kernel's, which is why d = 128 takes
# the smaller query tile.
DEFAULT_CONFIGS = {
    (64, "fp16"): LaunchConfig(64, 128, 4, 2),
    (64, "bf16"): LaunchConfig(128, 64, 8, 3),
    (128, "fp16"): LaunchConfig(64, 64, 4, 3),
    (128, "bf16"): LaunchConfig(64, 64, 4, 3),
    (64, "fp32"): LaunchConfig(64, 32, 4, 2),
    (128, "fp32"): LaunchConfig(64, 32, 4, 2),  # spills a little; fp32 is not the auto path
}
# What is timed once per shape class on the device (``tuned_config``): the table's entry and
# the sweep's other winners. The fastest is kept for the rest of the process.
TILE_CANDIDATES = {
    64: (LaunchConfig(64, 128, 4, 2), LaunchConfig(128, 64, 8, 3), LaunchConfig(128, 128, 8, 3),
         LaunchConfig(64, 64, 4, 3)),
    128: (LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 2), LaunchConfig(128, 64, 8, 2)),
}
# Timed too on a device found to lack the shared memory for one of those (sm_86/sm_89: 99 KB
# per program, 100 KB per processor), sizes from an sm_89 compile. d = 128 keeps only the
# 64 x 32 tiles of those there; 128 x 32 need 96 KB, 64 x 64 in two stages 88 KB in fp16 (104
# in bf16, too many). At d = 64 the 128 x 128 tiles do not fit, and those that do need 64-88
# KB, one program per processor; 64 x 64 in two stages need 40 KB (48 in bf16): two.
COMPACT_CANDIDATES = {
    64: (LaunchConfig(64, 64, 4, 2),),
    128: (LaunchConfig(128, 32, 8, 2), LaunchConfig(64, 64, 4, 2)),
}
TUNE_ENV = "HOPFIELD_CIRCULATION_TUNE"  # "0": keep the table's tiles, time nothing
DTYPE_CLASS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def default_config(d: int, dtype: torch.dtype) -> LaunchConfig:
    return DEFAULT_CONFIGS[(d, DTYPE_CLASS[dtype])]


_TUNED: dict[tuple, LaunchConfig] = {}
# (device, head dim, dtype, tiles) that need more shared memory than the device has: the
# table's tiles are Hopper's (228 KB per SM), and at d = 128 they need 136-152 KB, more than
# an RTX 30xx/40xx gives one program (99 KB). Whether tiles fit does not depend on the length.
_UNFIT: set[tuple] = set()


def shape_class(q: torch.Tensor) -> tuple:
    """Calls that share tiles: device, head dim, dtype and the token count's power of two."""
    return q.device.index, q.shape[-1], q.dtype, max(q.shape[-2] - 1, 1).bit_length()


def describe(q: torch.Tensor) -> str:
    """q's shape class in words, for the console."""
    bits = shape_class(q)[-1]
    fewest = 2 ** (bits - 1) + 1 if bits > 1 else 1
    return (f"d = {q.shape[-1]} {DTYPE_CLASS[q.dtype]} calls of {fewest}-{2**bits} tokens on "
            f"{q.device}")


def describe_tiles(config: LaunchConfig) -> str:
    return (f"{config.block_m}x{config.block_n} tiles, {config.num_warps} warps, "
            f"{config.num_stages} stages")


def _unfit_key(q: torch.Tensor, config: LaunchConfig) -> tuple:
    return q.device.index, q.shape[-1], q.dtype, config


def candidates(q: torch.Tensor) -> tuple[LaunchConfig, ...]:
    """The tiles q's calls may take, in the order an untimed choice tries them: the table's,
    then the sweep's other winners; none this device was found to lack the resources for."""
    d = q.shape[-1]
    table = default_config(d, q.dtype)
    ordered = (table, *(c for c in TILE_CANDIDATES[d] if c != table))
    if any(_unfit_key(q, c) in _UNFIT for c in ordered):  # less room than Hopper's
        ordered += tuple(c for c in COMPACT_CANDIDATES[d] if c not in ordered)
    return tuple(c for c in ordered if _unfit_key(q, c) not in _UNFIT)


def out_of_resources(error: Exception) -> bool:
    """Triton's OutOfResources: the compiled kernel needs more shared memory than the device
    gives one program. Triton raises it when it loads the kernel, before anything launches
    (so inside a CUDA graph capture, too, nothing was recorded)."""
    return type(error).__name__ == "OutOfResources"


def fastest(candidates, time_ms) -> LaunchConfig:
    """The candidate with the least time (``time_ms(config)``, None for one that cannot run)."""
    timed = [(t, i) for i, c in enumerate(candidates) if (t := time_ms(c)) is not None]
    if not timed:
        raise RuntimeError("fused kernel: no tile configuration compiles, and fits in shared "
                           "memory, on this device")
    return candidates[min(timed)[1]]


def tuned_config(q: torch.Tensor, launch, facts) -> LaunchConfig:
    """The tiles for this call: timed once per shape class on a CUDA device (``launch(config)``
    runs the kernel on the call's own inputs), the table's otherwise. The timing waits for the
    device once per shape class, never again; a first call inside a CUDA graph capture takes
    the first candidate untimed (the class is timed at its first call outside one)."""
    settled = settled_config(q, facts)
    if settled is not None:
        return settled
    if torch.cuda.is_current_stream_capturing():  # a CUDA graph capture cannot time or wait
        return _first_fitting(q)

    def time_ms(config: LaunchConfig) -> float | None:
        try:
            return _time_ms(launch, config)
        except Exception as error:  # out of shared memory or registers: not a candidate
            if out_of_resources(error):
                _UNFIT.add(_unfit_key(q, config))
            return None

    times: dict[LaunchConfig, float | None] = {}
    started = time.perf_counter()
    with torch.cuda.device(q.device):  # the events time q's device, current or not
        for _ in range(2):  # the second round times the compact tiles, where the first added them
            times.update({c: time_ms(c) for c in candidates(q) if c not in times})
        tuned = _TUNED[shape_class(q)] = fastest(tuple(times), times.get)
    unfit = sum(_unfit_key(q, c) in _UNFIT for c in times)
    log.info("Hopfield Circulation: fused kernel, %s: %s (%.3f ms), of %d candidates timed in "
             "%.1f s (each compiled once)%s", describe(q), describe_tiles(tuned), times[tuned],
             len(times), time.perf_counter() - started,
             f"; {unfit} needed more shared memory than this GPU gives a program" if unfit
             else "")
    return tuned


def settled_config(q: torch.Tensor, facts) -> LaunchConfig | None:
    """The tiles ``tuned_config`` gives q's calls without timing anything (the table's off
    CUDA; with tuning off, the first candidate not found to need more than the device has,
    kept for the class until it proves not to fit): None while its shape class still waits
    for its timing."""
    if not q.is_cuda or facts.interpreting:
        return default_config(q.shape[-1], q.dtype)
    settled = _TUNED.get(shape_class(q))
    if settled is None and not facts.tune:
        settled = _TUNED[shape_class(q)] = _first_fitting(q)
    return settled


def _first_fitting(q: torch.Tensor) -> LaunchConfig:
    fitting = candidates(q)
    if not fitting:
        raise RuntimeError("fused kernel: no tile configuration fits this device's shared "
                           "memory")
    return fitting[0]


def _time_ms(launch, config: LaunchConfig, reps: int = 3) -> float:
    launch(config)  # compiles
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        launch(config)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def launch_fitting(q: torch.Tensor, launch, facts):
    """``launch(tiles)`` with q's tiles, or, where they need more shared memory than this
    device gives a program, with the next candidate that fits, which q's class keeps. Only
    untimed tiles can fail so (tuning off, or a first call inside a CUDA graph capture):
    timing leaves those out."""
    while True:
        tiles = tuned_config(q, launch, facts)
        try:
            return launch(tiles)
        except Exception as error:
            key = _unfit_key(q, tiles)
            if not out_of_resources(error) or key in _UNFIT:
                raise
            _UNFIT.add(key)
            _TUNED.pop(shape_class(q), None)  # an untimed choice: made again without them
            log.info("Hopfield Circulation: fused kernel, %s: %s need more shared memory than "
                     "this GPU gives a program (%s); trying the next candidate", describe(q),
                     describe_tiles(tiles), error)

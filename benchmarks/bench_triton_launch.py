"""Host time of one Triton launch of each of the pack's kernels: Triton's own path against the
pack's cached launcher (hopfield/triton_launch.py).

    python benchmarks/bench_triton_launch.py            # CPU: the work before the driver call
    python benchmarks/bench_triton_launch.py --device cuda    # real launches too

On the CPU (no driver) it times, for each kernel's real argument list at SDXL's shapes:
Triton's binder and cache key (what ``kernel[grid](...)`` does on every call before it looks
the compiled kernel up and launches it: a lower bound on that path) against everything the
cached launcher does per call (its key, the lookup, the argument list), with the compiled
launcher a no-op. On CUDA it also times whole steered calls, tiny and launch-bound, with the
cache on and off in one process, and checks that both give bit-identical outputs; and one
planned launch with its pointers given as tensors against as addresses (what plans pass).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_attention import hopfield  # noqa: E402,F401  (registers the pack's package)
from core.launch_recorder import (  # noqa: E402
    KernelSurface,
    no_op_compiled,
    pack_kernels,
    stand_in_launcher,
)
from hopfield_circulation.hopfield import (  # noqa: E402
    eta_triton,
    fused_triton,
    stability_triton,
    token_chunks,
)

KERNELS = {kernel.name: kernel for kernel in pack_kernels()}


class Capture:
    """Stands in for a launcher: records the grid, arguments and keywords of one launch."""

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.launch = (grid, args, kwargs)

        return record


def launches(device: str) -> dict:
    """Each kernel's real launch (grid, args, kwargs) at SDXL's 64 x 64 level, fp16, CFG."""
    if device == "cpu":  # let the CUDA-only paths build their launch on CPU tensors, with
        # the tokens split as on an H100's or H200's 132 processors
        fused_triton._FACTS[:] = [fused_triton.ProcessFacts(True, True, False)]
        token_chunks.processors = lambda device: 132
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4096, 10, 64, generator=gen).to(device, torch.float16)
               .transpose(1, 2) for _ in range(3))
    calls = [lambda: fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0),
             # its reduction launches only where the tokens are split, which is asked for
             lambda: eta_triton.symmetry_index_triton(q, k, splits=7),
             lambda: eta_triton.symmetry_index_triton(q, k),  # the default: one launch
             lambda: stability_triton.stability_triton(q, k, v)]  # its four stages
    captures = {name: Capture() for name in KERNELS}
    kept = {name: kernel.launcher_getter() for name, kernel in KERNELS.items()}
    try:
        for name, kernel in KERNELS.items():
            kernel.set_launcher_getter(lambda capture=captures[name]: capture)
        for call in calls:
            call()
    finally:
        for name, kernel in KERNELS.items():
            kernel.set_launcher_getter(kept[name])
    found = {name: capture.launch for name, capture in captures.items()}
    fused_triton._FACTS.clear()
    return found


def per_call_us(fn, calls=2000, rounds=7, sync=lambda: None) -> float:
    for _ in range(100):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def cpu_rows(found: dict) -> list:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    rows = []
    for name, (grid, args, kwargs) in found.items():
        tensors = KERNELS[name].tensors
        kernel = KERNELS[name].load()
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        options = {**kwargs, "debug": False, "instrumentation_mode": ""}
        key_cache: dict = {}

        def triton_path(binder=binder, args=args, options=options, key_cache=key_cache):
            _, specialisation, opts = binder(*args, **options)
            compute_cache_key(key_cache, specialisation, opts)

        launcher = stand_in_launcher(KernelSurface(kernel, no_op_compiled()), tensors)

        def cached_path(launcher=launcher, grid=grid, args=args, kwargs=kwargs):
            launcher[grid](*args, **kwargs)

        rows.append((name, len(args) + len(kwargs), per_call_us(triton_path),
                     per_call_us(cached_path)))
    print(f"Host time per launch, CPU (no driver), Triton {triton.__version__}, "
          f"torch {torch.__version__}")
    print("| kernel | arguments | Triton's binder + cache key, µs | cached launcher, whole "
          "call, µs |")
    print("|---|---:|---:|---:|")
    for name, count, triton_us, cached_us in rows:
        print(f"| {name} | {count} | {triton_us:.1f} | {cached_us:.1f} |")
    return rows


def cuda_rows() -> None:
    """Whole steered calls at a tiny shape (launch-bound): cache off, cache on, and the call
    layout's launch plan (hopfield/fused_plan.py, what a steered model's later calls take)."""
    from hopfield_circulation.hopfield import fused_plan

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 10, 64, generator=gen).cuda().half().transpose(1, 2)
               for _ in range(3))
    eta = eta_triton.symmetry_index_triton(q, k)  # warm each kernel up (compiles, tunes)
    calls = {
        "fused (Skew)": lambda: fused_triton.fused_skew_circulation(q, k, v, 1.05, 3.0),
        "fused adaptive": lambda: fused_triton.fused_adaptive_circulation(
            q, k, v, eta, 1.2, 5.0, per_sample=True, norm_match=True)[0],
        "eta": lambda: eta_triton.symmetry_index_triton(q, k),
        "Adaptive (eta, then fused)": lambda: fused_triton.fused_adaptive_circulation(
            q, k, v, eta_triton.symmetry_index_triton(q, k), 1.2, 5.0, per_sample=True,
            norm_match=True)[0],
        "probe": lambda: stability_triton.stability_triton(q, k, v)[0],
    }
    for call in calls.values():
        call()
    skew_plan = fused_plan.make_skew_plan(q, k, v, 1.05, 3.0, True, None)
    adaptive_plan = fused_plan.make_adaptive_plan(q, k, v, 1.2, 5.0, True, True, None)
    planned = {
        "fused (Skew)": skew_plan and (lambda: skew_plan.run(q, k, v, None)),
        "Adaptive (eta, then fused)": adaptive_plan and (
            lambda: adaptive_plan.run(q, k, v, None)[0]),
    }
    launchers = [kernel.launcher_getter()() for kernel in KERNELS.values()]
    print(f"\nWhole calls at [2, 10, 16, 64] fp16 on {torch.cuda.get_device_name()}: µs per "
          "call, the device synchronised once per round")
    print("| call | Triton's launch | cached launch | saved | planned launch | outputs "
          "identical | cache misses while timed |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, call in calls.items():
        timed, outputs, misses = {}, {}, 0
        for enabled in (False, True, False, True):
            for launcher in launchers:
                launcher.enabled = enabled
            before = sum(launcher.misses for launcher in launchers)
            timed.setdefault(enabled, []).append(
                per_call_us(call, calls=500, sync=torch.cuda.synchronize))
            if enabled:
                misses += sum(launcher.misses for launcher in launchers) - before
            outputs[enabled] = call().clone()
        same = torch.equal(outputs[False], outputs[True])
        plan_us = "–"
        if planned.get(name):
            best = min(per_call_us(planned[name], calls=500, sync=torch.cuda.synchronize)
                       for _ in range(2))
            plan_us = f"{best:.1f}"
            same = same and torch.equal(planned[name]().clone(), outputs[True])
        off, on = min(timed[False]), min(timed[True])
        print(f"| {name} | {off:.1f} | {on:.1f} | {off - on:.1f} | {plan_us} | {same} | "
              f"{misses} |")
    if skew_plan:
        pointer_rows(q, skew_plan)
    import triton

    hooks = triton.knobs.runtime
    print(f"Triton launch hooks: enter {hooks.launch_enter_hook!r}, exit "
          f"{hooks.launch_exit_hook!r}; launchers enabled: "
          f"{[launcher.enabled for launcher in launchers]}")


def pointer_rows(q, skew_plan) -> None:
    """One prepared fused launch (fused_plan.PreparedLaunch) with its ten pointer arguments
    given as tensors, for each of which Triton's compiled launcher calls ``data_ptr`` and asks
    the driver about the pointer (cuPointerGetAttribute), or as the addresses a plan hands
    it, taking turns in one process."""
    out = skew_plan.output.new(q)
    tensors = (q, q, q, out, out, out, out, out, out, out)  # q, k, v as one: same work
    addresses = tuple(t.data_ptr() for t in tensors)
    launch, device = skew_plan.fused, q.get_device()
    ways = {"tensors": lambda: launch(device, *tensors),
            "addresses": lambda: launch(device, *addresses)}
    timed: dict = {}
    for _ in range(3):
        for name, fn in ways.items():
            timed.setdefault(name, []).append(
                per_call_us(fn, calls=1000, sync=torch.cuda.synchronize))
    by_tensors, by_addresses = min(timed["tensors"]), min(timed["addresses"])
    print(f"\nOne planned fused launch, [2, 10, 16, 64] fp16, µs per launch: pointers as "
          f"tensors {by_tensors:.2f}, as addresses {by_addresses:.2f}; saved "
          f"{by_tensors - by_addresses:.2f} ({(by_tensors - by_addresses) / 10:.2f} per "
          f"pointer argument)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    cli = parser.parse_args()
    if not fused_triton.available():
        sys.exit("bench_triton_launch: Triton is not installed (pip install triton)")
    if cli.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_triton_launch: --device cuda needs a CUDA device (none here)")
    cpu_rows(launches("cpu"))
    if cli.device == "cuda":
        cuda_rows()


if __name__ == "__main__":
    main()

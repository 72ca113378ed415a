"""GPU record: per-call time, peak memory and low-precision accuracy of the steered attention.

    python benchmarks/bench_gpu.py             # needs CUDA and Triton

Rows per shape and dtype: baseline SDPA, the two-call path (host baseline + concat-trick SDPA +
fp32 blend) and the fused single-pass Triton kernel; times are medians of CUDA-event timings
after warm-up, ratios against the baseline of the same run; Δ error is |Δ − Δ_fp64| / |Δ_fp64|
with Δ = steered output − baseline output, at α = 0.97 (SD3-like, the hard case) and 1.05.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import hopfield  # noqa: E402  (imports the pack's core)
from hopfield_circulation.hopfield import reference  # noqa: E402
from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation  # noqa: E402

SHAPES = {"SDXL 64x64 (B2 H10 L4096 d64)": (2, 10, 4096, 64),
          "SD3 1024² (B2 H24 L4250 d64)": (2, 24, 4250, 64)}


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def delta_error(q, k, v, alpha, dtype, path):
    """Δ error on a slice small enough for the float64 L x L reference."""
    q, k, v = (t[:1, :2, :1024] for t in (q, k, v))
    q64, k64, v64 = (t.double() for t in (q, k, v))
    base64 = torch.softmax(reference.logits(q64, k64), -1) @ v64
    delta = reference.blend(base64, reference.skew_scaled_attention(q64, k64, v64, alpha),
                            3.0) - base64
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    settings = hopfield.CirculationSettings(alpha, 3.0, kernel=path)
    base = F.scaled_dot_product_attention(qd, kd, vd)
    out = hopfield.circulate_value_space(qd, kd, vd, base, settings).out
    return ((out.double() - base64 - delta).norm() / delta.norm()).item()


def bench(name, q, k, v, dtype):
    settings = hopfield.CirculationSettings(1.05, 3.0, kernel="two_call")
    paths = {
        "baseline": lambda: F.scaled_dot_product_attention(q, k, v),
        "two_call": lambda: hopfield.circulate_value_space(
            q, k, v, F.scaled_dot_product_attention(q, k, v), settings),
        "fused": lambda: fused_skew_circulation(q, k, v, 1.05, 3.0),
    }
    base_ms = None
    for path, fn in paths.items():
        ms = timed(fn)
        base_ms = base_ms or ms
        errs = ("", "") if path == "baseline" else tuple(
            f"{delta_error(q, k, v, a, dtype, path):.4f}" for a in (0.97, 1.05))
        print(f"| {name} | {str(dtype)[6:]} | {path} | {ms:.3f} | {ms / base_ms:.2f} | "
              f"{peak_extra(fn):.0f} | {errs[0]} | {errs[1]} |")


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here; run it on a GPU machine")
    print(f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| shape | dtype | path | ms | × baseline | peak extra MiB | Δ err α 0.97 "
          "| Δ err α 1.05 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for name, (b, h, length, d) in SHAPES.items():
            for dtype in (torch.float16, torch.bfloat16):
                gen = torch.Generator(device="cuda").manual_seed(0)
                q, k, v = (torch.randn(b, h, length, d, device="cuda", dtype=dtype,
                                       generator=gen) for _ in range(3))
                bench(name, q, k, v, dtype)


if __name__ == "__main__":
    main()

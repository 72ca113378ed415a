"""Accuracy of the steering change Δ in fp16 and bf16 against float64, on CPU.

    python benchmarks/precision.py

Δ = steered output − baseline output is a small difference of two nearly equal retrievals,
amplified by β, so low precision hits it hardest when α is near 1. Rows: α; columns: relative
error |Δ − Δ_fp64| / |Δ_fp64| of the two-call path, and of the fused kernel run through Triton's
CPU interpreter (fp16 only: the interpreter computes bf16 dot products wrongly).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_attention import hopfield  # noqa: E402
from hopfield_circulation.hopfield import reference  # noqa: E402


def delta_error(out, base64, delta):
    return ((out.double() - base64 - delta).norm() / delta.norm()).item()


def main(tokens: int = 64, heads: int = 2, d: int = 64):
    try:
        import triton  # noqa: F401
        from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation
    except ImportError:
        fused_skew_circulation = None
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, d, generator=gen, dtype=torch.float64)
               for _ in range(3))
    base64 = torch.softmax(reference.logits(q, k), -1) @ v
    print(f"L = {tokens}, {heads} heads, d = {d}, β = 3")
    print("| α | two-call fp16 | fused fp16 | two-call bf16 |")
    print("|---|---:|---:|---:|")
    for alpha in (0.97, 1.05, 1.2):
        delta = reference.blend(base64, reference.skew_scaled_attention(q, k, v, alpha),
                                3.0) - base64
        row = []
        for dtype in (torch.float16, torch.bfloat16):
            qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
            base = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd)
            settings = hopfield.CirculationSettings(alpha, 3.0, kernel="two_call")
            row.append(delta_error(hopfield.circulate_value_space(qd, kd, vd, base, settings).out,
                                   base64, delta))
            if dtype == torch.float16:
                fused = (fused_skew_circulation(qd, kd, vd, alpha, 3.0, block_m=16, block_n=16)
                         if fused_skew_circulation else None)
                row.append(delta_error(fused, base64, delta) if fused is not None else None)
        cells = " | ".join("n/a" if x is None else f"{x:.4f}" for x in row)
        print(f"| {alpha} | {cells} |")


if __name__ == "__main__":
    main()

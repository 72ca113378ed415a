"""Accuracy of the steering change Δ in fp16 and bf16 against float64, on the CPU.

    python benchmarks/precision.py                 # L 256, 2 heads, d 64, β 3
    python benchmarks/precision.py --tokens 512 --logit-std 5

Δ = steered output − baseline output is a small difference of two nearly equal retrievals,
amplified by β, so low precision hits it hardest when α is near 1. Each cell is
|Δ_path − Δ_fp64| / |Δ_fp64| with Δ_path = out_path − baseline_fp64: the error of the output
measured on the scale of the change. The float64 reference is computed from the same rounded
q, k, v the paths see (the model's inputs are in that dtype anyway).

Columns:
- floor: the float64 result rounded to the dtype; no path that writes its output in that dtype
  can do better.
- two-call: host baseline and concat-trick attention both in the dtype, blend in fp32 (the
  two-call path before bf16 was upcast).
- pert fp32: the same with only the perturbed call in fp32 (the host's rounded baseline stays).
- two-call as shipped: hopfield.circulate_value_space(kernel="two_call"): fp16 as in
  "two-call"; bf16 recomputes both retrievals in fp32 (circulation.TWO_CALL_UPCAST).
- fused: the Triton kernel under Triton's CPU interpreter (run in a subprocess with
  TRITON_INTERPRET=1). Products run as the tensor cores do (exact products, fp32 sums); P is
  rounded to fp16 for P V; the output is rounded to nearest.

CPU caveat: PyTorch's CPU flash attention is not CUDA's (e.g. where P is rounded), so the
two-call columns are this machine's; benchmarks/bench_gpu.py measures them on a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import hopfield  # noqa: E402  (registers the pack as a package)
from hopfield_circulation.hopfield import reference  # noqa: E402
from hopfield_circulation.hopfield.blend import blend_retrievals  # noqa: E402
from hopfield_circulation.hopfield.skew import skew_scaled_attention  # noqa: E402

ALPHAS = (0.97, 1.05, 1.2)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
BETA = 3.0


def make_inputs(tokens, heads, d, logit_std, dtype, seed=0):
    """q, k, v rounded to ``dtype``; logits q k^T / sqrt(d) have about ``logit_std`` std."""
    gen = torch.Generator().manual_seed(seed)
    scale = logit_std**0.5
    q, k = (torch.randn(1, heads, tokens, d, generator=gen, dtype=torch.float64) * scale
            for _ in range(2))
    v = torch.randn(1, heads, tokens, d, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (q, k, v))


def reference_outputs(q, k, v, alpha):
    q, k, v = (t.double() for t in (q, k, v))
    base = torch.softmax(reference.logits(q, k), -1) @ v
    return reference.blend(base, reference.skew_scaled_attention(q, k, v, alpha), BETA), base


def delta_error(out, want, base):
    return ((out.double() - want).norm() / (want - base).norm()).item()


def fused_outputs(args) -> dict:
    """{(dtype, alpha): output} from the fused kernel, computed in a TRITON_INTERPRET=1 child."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = [sys.executable, __file__, "--fused-child", "--tokens", str(args.tokens), "--heads",
             str(args.heads), "--d", str(args.d), "--logit-std", str(args.logit_std)]
    run = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(f"(fused kernel unavailable: {run.stderr.strip().splitlines()[-1:]})")
        return {}
    path = Path(run.stdout.strip().splitlines()[-1])
    outputs = torch.load(path)
    path.unlink()
    return outputs


def fused_child(args):
    import tempfile

    from hopfield_circulation.hopfield.fused_triton import LaunchConfig, fused_skew_circulation

    config = LaunchConfig(64, 64, 4, 1)  # big tiles: fewer interpreter steps
    outputs = {}
    for name, dtype in DTYPES.items():
        q, k, v = make_inputs(args.tokens, args.heads, args.d, args.logit_std, dtype)
        for alpha in ALPHAS:
            outputs[(name, alpha)] = fused_skew_circulation(q, k, v, alpha, BETA, config=config)
    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as handle:
        torch.save(outputs, handle.name)
    print(handle.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--logit-std", type=float, default=2.5)
    parser.add_argument("--fused-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fused_child:
        return fused_child(args)

    fused = fused_outputs(args)
    print(f"Δ error relative to |Δ| against float64 (CPU: {torch.__version__}); L = "
          f"{args.tokens}, {args.heads} heads, d = {args.d}, logit std {args.logit_std}, "
          f"β = {BETA}")
    print("| dtype | α | ‖Δ‖/‖out‖ | floor | two-call | pert fp32 | two-call as shipped | "
          "fused |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, dtype in DTYPES.items():
        q, k, v = make_inputs(args.tokens, args.heads, args.d, args.logit_std, dtype)
        host_base = F.scaled_dot_product_attention(q, k, v)
        for alpha in ALPHAS:
            want, base = reference_outputs(q, k, v, alpha)
            cells = {
                "floor": want.to(dtype),
                "two-call": blend_retrievals(host_base, skew_scaled_attention(q, k, v, alpha),
                                             BETA).to(dtype),
                "pert fp32": blend_retrievals(host_base, skew_scaled_attention(
                    q.float(), k.float(), v.float(), alpha), BETA).to(dtype),
                "shipped": hopfield.circulate_value_space(
                    q, k, v, host_base, hopfield.CirculationSettings(
                        alpha, BETA, kernel="two_call")).out,
                "fused": fused.get((name, alpha)),
            }
            errors = " | ".join("n/a" if out is None else f"{delta_error(out, want, base):.4f}"
                                for out in cells.values())
            size = ((want - base).norm() / want.norm()).item()
            print(f"| {name} | {alpha} | {size:.3f} | {errors} |")


if __name__ == "__main__":
    main()

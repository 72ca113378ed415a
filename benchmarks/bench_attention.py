"""Per-call cost of the pack's attention paths, as ratios to one baseline attention call.

    python benchmarks/bench_attention.py            # SDXL shapes, L = 1024 and 4096
    python benchmarks/bench_attention.py --quick    # L = 1024 only
    python benchmarks/bench_attention.py --threads 1

Variants run in interleaved rounds (the machine may be shared); the table reports the minimum
and the median per variant and ratios of the minima against `baseline` from the same run. Other
benchmarks (probe, fused kernel) add rows through ``VARIANTS``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _import_core():
    import importlib.util

    if "hopfield_circulation" in sys.modules:  # registered already (the test suite's conftest)
        from hopfield_circulation import hopfield

        return hopfield
    spec = importlib.util.spec_from_file_location(
        "hopfield_circulation", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["hopfield_circulation"] = module
    spec.loader.exec_module(module)
    from hopfield_circulation import hopfield

    return hopfield


hopfield = _import_core()
from hopfield_circulation.hopfield import input_space, reference, stability  # noqa: E402


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    x: torch.Tensor  # block input [B, L, C]
    w_v: torch.Tensor
    base: torch.Tensor


def make_inputs(batch, heads, tokens, d, channels, dtype) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, channels, generator=gen).to(dtype)
    w = [torch.randn(heads * d, channels, generator=gen).to(dtype) / channels**0.5
         for _ in range(3)]
    q, k, v = (torch.einsum("blc,hdc->bhld", x, wi.reshape(heads, d, channels)).contiguous()
               for wi in w)
    base = F.scaled_dot_product_attention(q, k, v)
    return Inputs(q, k, v, x, w[2], base)


STATIC = hopfield.CirculationSettings(alpha=1.05, beta=3.0)
ADAPTIVE = hopfield.CirculationSettings(alpha=1.2, beta=5.0, adaptive=True)


def explicit_lxl(i: Inputs):
    """Both retrievals from materialised L x L logits (what the fast paths avoid)."""
    m = reference.logits(i.q, i.k)
    m_t = m.transpose(-1, -2)
    base = torch.softmax(m, -1) @ i.v
    pert = torch.softmax((m + m_t) / 2 + 1.05 * (m - m_t) / 2, -1) @ i.v
    return reference.blend(base, pert, 3.0)


def probe_value(i: Inputs):
    return stability.layer_stability(i.q, i.k, i.base), hopfield.symmetry_index(i.q, i.k)


SUBSET = input_space.channel_subset(640, 64)


def probe_input(i: Inputs):
    x = i.x.index_select(-1, SUBSET).unsqueeze(1).expand(-1, i.q.shape[1], -1, -1)
    retrieved = F.scaled_dot_product_attention(i.q, i.k, x)
    return stability.layer_stability(i.q, i.k, retrieved), hopfield.symmetry_index(i.q, i.k)


# name -> (what it measures, function of the inputs). Baseline first: ratios divide by it.
VARIANTS: dict[str, tuple[str, Callable[[Inputs], object]]] = {
    "baseline": ("one attention call, F.scaled_dot_product_attention",
                 lambda i: F.scaled_dot_product_attention(i.q, i.k, i.v)),
    "value_space": ("baseline + Skew Circulation, value space (the default path)",
                    lambda i: (F.scaled_dot_product_attention(i.q, i.k, i.v),
                               hopfield.circulate_value_space(i.q, i.k, i.v, i.base, STATIC))),
    "value_space_adaptive": ("baseline + Adaptive Circulation, value space",
                             lambda i: (F.scaled_dot_product_attention(i.q, i.k, i.v),
                                        hopfield.circulate_value_space(i.q, i.k, i.v, i.base,
                                                                       ADAPTIVE))),
    "input_space": ("baseline + the authors' formulation (retrieval over X, width C per head)",
                    lambda i: (F.scaled_dot_product_attention(i.q, i.k, i.v),
                               hopfield.circulate_input_space(i.q, i.k, i.x, i.w_v, None,
                                                              i.base, STATIC))),
    "explicit_LxL": ("both retrievals through explicit L x L logits", explicit_lxl),
    "eta_gram": ("eta_M from d x d Gram matrices (adaptive mode's extra work)",
                 lambda i: hopfield.symmetry_index(i.q, i.k)),
    "probe_value": ("Stability Probe's extra work per layer, value basis", probe_value),
    "probe_input_m64": ("Stability Probe's extra work per layer, input basis, m = 64",
                        probe_input),
}


def time_variants(inputs: Inputs, names: list[str], rounds: int) -> dict[str, list[float]]:
    times = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:  # warm-up
            VARIANTS[n][1](inputs)
        for _ in range(rounds):
            for n in names:
                start = time.perf_counter()
                VARIANTS[n][1](inputs)
                times[n].append(time.perf_counter() - start)
    return times


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {torch.get_num_threads()} threads; torch {torch.__version__}"


def table(times: dict[str, list[float]], title: str) -> str:
    base = min(times["baseline"])
    rows = [f"\n### {title}\n", "| variant | min ms | median ms | × baseline | what |",
            "|---|---:|---:|---:|---|"]
    for name, samples in times.items():
        rows.append(f"| {name} | {1e3 * min(samples):,.0f} | "
                    f"{1e3 * statistics.median(samples):,.0f} | {min(samples) / base:.2f} | "
                    f"{VARIANTS[name][0]} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L = 1024 only")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], help="variant names to leave out")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    names = [n for n in VARIANTS if n not in args.skip]
    print(f"Machine: {machine()}; dtype {args.dtype}")
    print("Shapes: SDXL self-attention, B=2 (CFG), 10 heads, d=64, C=640")
    for tokens in ([1024] if args.quick else [1024, 4096]):
        rounds = args.rounds or (5 if tokens <= 1024 else 3)
        inputs = make_inputs(2, 10, tokens, 64, 640, dtype)
        print(table(time_variants(inputs, names, rounds),
                    f"L = {tokens} ({rounds} interleaved rounds)"))


if __name__ == "__main__":
    main()

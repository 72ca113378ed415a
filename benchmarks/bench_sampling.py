"""End-to-end sampling time with and without the nodes, in real ComfyUI (tiny models, CPU).

    python benchmarks/bench_sampling.py        # needs ComfyUI (COMFYUI_PATH or ~/comfy/ComfyUI)

Times whole KSampler-equivalent runs (comfy.sample.sample) of the in-process tiny SDXL and SD3
models used by the host tests, and of SD3.5-medium's 24 joint blocks at tiny width: the ratio
shows the nodes' overhead on a real sampling loop (the tiny models' attention is a larger share
of their cost than in full-size ones).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402  (registers the pack; loads ComfyUI on the CPU)


def main(steps: int = 8, rounds: int = 5):
    reason = conftest.host_unavailable_reason()
    if reason:
        sys.exit(f"bench_sampling: {reason}")
    from hopfield_circulation.nodes.circulation_nodes import AdaptiveCirculation, SkewCirculation
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe
    from host import tiny_models

    print("| model | variant | median s per run | × baseline |")
    print("|---|---|---:|---:|")
    for family, build, sample, alpha in (
        ("tiny SDXL", tiny_models.tiny_sdxl, tiny_models.sample_sdxl, 1.05),
        ("tiny SD3", tiny_models.tiny_sd3, tiny_models.sample_sd3, 0.95),
        ("tiny SD3.5-medium (24 blocks)", lambda: tiny_models.tiny_sd35("medium"),
         _sample_sd35, 0.95),
    ):
        model = build()
        variants = {
            "baseline": model,
            "Skew Circulation": SkewCirculation.execute(
                model, alpha, 3.0, 0.0, 1.0, "all", "both", "value").result[0],
            "Adaptive Circulation": AdaptiveCirculation.execute(
                model, 1.2, 5.0, 0.0, 1.0, "all", "both", "value", "per sample").result[0],
            "Stability Probe (value)": StabilityProbe.execute(
                model, "value", 64, 0.0, 1.0, "cond", "all").result[0],
        }
        times = {name: [] for name in variants}
        for _ in range(rounds):
            for name, patched in variants.items():
                start = time.perf_counter()
                sample(patched, steps=steps)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["baseline"])
        for name, samples in times.items():
            med = statistics.median(samples)
            print(f"| {family} | {name} | {med:.3f} | {med / base:.2f} |")


def _sample_sd35(model, steps):
    """SD3.5-medium's real depth at tiny width, on 16 text tokens: what a model call costs
    the host per block shows (the replace path's per-block cost, say)."""
    from host import tiny_models

    def conditioning(seed):
        return [[c[:, :16], extra] for c, extra in tiny_models.sd3_conditioning(seed)]

    return tiny_models.sample(model, conditioning(1), conditioning(2), latent_channels=16,
                              steps=steps, size=8)


if __name__ == "__main__":
    main()

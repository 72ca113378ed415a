"""Whole sampling runs on a GPU: full-size models, every variant a user would compare, one
process, one table.

    python benchmarks/bench_e2e_gpu.py                     # SDXL + SD3-medium, fp16 and bf16
    python benchmarks/bench_e2e_gpu.py --models sdxl sd3.5-medium --dtypes fp16 --steps 6
    python benchmarks/bench_e2e_gpu.py --tiny              # the same script on CPU, tiny models

Models are ComfyUI's own full-size SDXL / SD3-medium / SD3.5 classes with seeded random weights
(tests/gpu/full_size_models.py), sampled by comfy.sample at 1024², CFG 5, euler, batch 1.
Variants: baseline; Skew Circulation (auto = fused kernel on CUDA), the same with every kernel
launched through Triton's own path instead of the pack's cached launcher, the same forced onto
the two-call path, branch = cond only; Adaptive Circulation; Stability Probe (value); space =
input (SDXL, the authors' formulation); the peers in core ComfyUI (PerturbedAttentionGuidance 3,
SelfAttentionGuidance 0.5 on SDXL; SkipLayerGuidanceDiT 7,8,9 at 1-15 % on SD3); and
TorchCompileModel (inductor) alone and with Skew, Adaptive and the Probe. Every variant is
warmed up first; then the eager variants take turns, one run each per round. Columns: median
seconds per run over rounds, the median over rounds of the ratio to that round's baseline of the
same model and dtype (compiled rows: to the baseline's median), peak GPU memory, and from
torch.profiler over a shorter run (device activity only, --profile-steps; compiled rows over a
run as long as the timed ones, see print_row): GPU-busy ms and kernel launches per step. Two
diagnostic rows and columns say where a steered step's wall time goes when it is not the GPU's:
"our hook only" (the pack's attention hook on every call, nothing steered) and "baseline + a
sigma read per step" (the one device synchronisation per model call a step window costs); "host
ms/step" (the host's time inside the model calls, timed without waiting for the device: close to
the wall time per step means the step is host-bound) and "syncs/run" (host synchronisations in
one run, from torch.cuda.set_sync_debug_mode, the run's final wait and ComfyUI's own included;
their places are printed under the table). Exits with a clear message without CUDA (use --tiny
to check the script on a CPU).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402  (registers the pack; finds ComfyUI)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def variants(model, name: str):
    """(label, patched model) of every variant for this model."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from hopfield_circulation.circulation import patch_circulation
    from hopfield_circulation.hopfield import CirculationSettings
    from hopfield_circulation.nodes.circulation_nodes import AdaptiveCirculation, SkewCirculation
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe

    unet = name == "sdxl"
    alpha = 1.05 if unet else 0.95

    def skew(m, branch="both", space="value"):
        return SkewCirculation.execute(m, alpha, 3.0, 0.0, 1.0, "all", branch, space).result[0]

    def adaptive(m):
        return AdaptiveCirculation.execute(m, 1.2 if unet else 0.9, 5.0 if unet else 3.0, 0.0,
                                           1.0, "all", "both", "value", "per sample").result[0]

    def probe(m):
        return StabilityProbe.execute(m, "value", 64, 0.0, 1.0, "cond", "all").result[0]

    def compiled(m):
        return TorchCompileModel.execute(m, "inductor").result[0]

    yield "baseline", lambda: model
    yield HOOK_ONLY, lambda: hook_only(model)
    yield SIGMA_READ, lambda: reads_sigma(model)
    yield "Skew Circulation (auto)", lambda: skew(model)
    yield UNCACHED, lambda: skew(model)  # run with launch_cache(False)
    yield "Skew, two-call path", lambda: patch_circulation(
        model, CirculationSettings(alpha, 3.0, kernel="two_call"))
    yield "Skew, branch = cond", lambda: skew(model, branch="cond")
    yield "Adaptive Circulation", lambda: adaptive(model)
    yield "Stability Probe (value)", lambda: probe(model)
    if unet:
        yield "Skew, space = input", lambda: skew(model, space="input")
        yield "core PAG (scale 3)", lambda: PerturbedAttentionGuidance.execute(
            model, 3.0).result[0]
        yield "core SAG (scale 0.5)", lambda: SelfAttentionGuidance.execute(
            model, 0.5, 2.0).result[0]
    else:
        yield "core SLG-DiT (7,8,9; 1-15 %)", lambda: SkipLayerGuidanceDiT.execute(
            model, 3.0, 0.01, 0.15, "7, 8, 9", "", 0.0).result[0]
    yield "TorchCompileModel", lambda: compiled(model)
    yield "TorchCompileModel + Skew", lambda: compiled(skew(model))
    yield "TorchCompileModel + Adaptive", lambda: compiled(adaptive(model))
    yield "TorchCompileModel + Probe", lambda: compiled(probe(model))


UNCACHED = "Skew, Triton's own launches"  # the pack's cached launcher switched off
HOOK_ONLY = "our hook only (nothing steered)"
SIGMA_READ = "baseline + a sigma read per step"


def hook_only(model):
    """The pack's attention hook on every call (parsing, placement), handing every one back."""
    from hopfield_circulation.hook.override import install_attention_hook

    m = model.clone()
    install_attention_hook(m, lambda call, baseline: None)
    return m


def reads_sigma(model):
    """The baseline with one read of each model call's sigma on the host, as the pack's step
    wrapper makes for a step window narrower than the run (hook/schedule.py)."""
    from comfy.patcher_extension import WrappersMP

    def read_sigma(executor, x, t, *args, **kwargs):
        float(t.reshape(-1)[0])
        return executor(x, t, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "bench_sigma_read", read_sigma)
    return m


def timed_model_calls(model):
    """(clone, seconds list): a clone whose model calls add their host time to the list (the
    outermost APPLY_MODEL wrapper; the device is never waited for)."""
    from comfy.patcher_extension import WrappersMP

    seconds = []

    def time_model_call(executor, *args, **kwargs):
        start = time.perf_counter()
        try:
            return executor(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    m = model.clone()
    m.wrappers.setdefault(WrappersMP.APPLY_MODEL, {}).setdefault(
        "bench_host_time", []).insert(0, time_model_call)
    return m, seconds


def count_syncs(run, cuda: bool) -> tuple[int, collections.Counter]:
    """(host synchronisations in one run, how many at each place), from torch's sync debug
    mode (it flags the synchronising CUDA calls: item/tolist, blocking copies, waits)."""
    if not cuda:
        return 0, collections.Counter()
    from gpu.sync_debug import host_syncs

    places = host_syncs(run)
    return len(places), collections.Counter(Path(place).name for place in places)


@contextlib.contextmanager
def launch_cache(enabled: bool):
    """Every kernel launch through the pack's cached launcher (the default) or, for the
    UNCACHED row, through Triton's own ``kernel[grid](...)`` (hopfield/triton_launch.py)."""
    from hopfield_circulation.hopfield import eta_triton, fused_triton, stability_triton
    from hopfield_circulation.hopfield.triton_launch import CachedLauncher

    launchers = [fused_triton._launcher(), eta_triton._launcher(), eta_triton._reduce_launcher(),
                 *stability_triton.launchers()] if fused_triton.available() else []
    launchers = [launcher for launcher in launchers if isinstance(launcher, CachedLauncher)]
    before = [launcher.enabled for launcher in launchers]
    for launcher in launchers:
        launcher.enabled = enabled and launcher.enabled
    try:
        yield
    finally:
        for launcher, was in zip(launchers, before, strict=True):
            launcher.enabled = was


def profile_run(run, steps: int, cuda: bool) -> tuple[float, float]:
    """(GPU-busy ms, kernel launches) per step, from torch.profiler over one run of ``steps``
    steps. Only the device's activity is recorded: the host's op events would make reading the
    profile take longer than the runs themselves."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        run(steps)
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"] if cuda else []
    busy_us = sum(e.device_time for e in kernels)
    return busy_us / 1000 / steps, len(kernels) / steps


COMPILED = "TorchCompileModel"


def chosen_label(label: str, args) -> bool:
    """Whether --only / --skip keep this variant (the baseline always runs: the ratios'
    reference)."""
    if label == "baseline":
        return True
    if args.only and not any(o in label for o in args.only):
        return False
    return not (args.skip and any(o in label for o in args.skip))


class Variant:
    """One variant of a model: its patched clone warmed up (the first run compiles kernels and
    loads the model), its runs timed one at a time."""

    def __init__(self, label, make, run_model, steps, cuda):
        self.label, self.steps, self.cuda = label, steps, cuda
        self.patched, self.host_seconds = timed_model_calls(make())
        self.run_model, self.cached = run_model, label != UNCACHED
        self.run()  # warm-up
        self.peak, self.timed_runs, self.timed_host = float("nan"), 0, 0.0

    def run(self, steps=None):
        with launch_cache(self.cached):
            out = self.run_model(self.patched, steps or self.steps)
        if self.cuda:
            torch.cuda.synchronize()
        return out

    def timed(self, peak: bool) -> float:
        """Seconds of one run; with ``peak``, its peak GPU memory is kept too."""
        if peak and self.cuda:
            torch.cuda.reset_peak_memory_stats()
        calls = len(self.host_seconds)
        start = time.perf_counter()
        self.run()
        seconds = time.perf_counter() - start
        self.timed_runs += 1
        self.timed_host += sum(self.host_seconds[calls:])
        if peak and self.cuda:
            self.peak = torch.cuda.max_memory_allocated() / 2**30
        return seconds

    def host_ms_per_step(self) -> float:
        """The host's ms inside the model calls per step over the timed runs (all model
        calls of a step: guidance nodes make two)."""
        return 1000 * self.timed_host / (self.steps * max(1, self.timed_runs))


def print_row(name, dtype_name, variant, seconds, ratio, args, sync_places) -> None:
    host_ms = variant.host_ms_per_step()
    # A compiled model is profiled over as many steps as it was timed: another count changes
    # the length of the sigmas the host hands the model, which compiles it again (minutes for
    # a full-size model, inside the profiler)
    steps = variant.steps if variant.label.startswith(COMPILED) else args.profile_steps
    busy, launches = profile_run(variant.run, steps, variant.cuda)
    syncs, places = count_syncs(variant.run, variant.cuda)
    if places:
        sync_places[f"{name} {dtype_name} {variant.label}"] = places
    print(f"| {name} | {dtype_name} | {variant.label} | {seconds:.3f} | {ratio:.2f} | "
          f"{variant.peak:.1f} | {busy:.1f} | {launches:.0f} | {host_ms:.1f} | {syncs} |",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sdxl", "sd3-medium"])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=list(DTYPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps of the profiled run (GPU ms and launches per step); "
                        "compiled rows take --steps")
    parser.add_argument("--only", nargs="*", help="variant labels to run (substring match)")
    parser.add_argument("--skip", nargs="*", help="variant labels to leave out (substring match)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny in-process models on the CPU: checks the script, no timing "
                        "worth reporting")
    args = parser.parse_args()
    reason = conftest.host_unavailable_reason()
    if reason:
        sys.exit(f"bench_e2e_gpu: {reason}")
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("bench_e2e_gpu: needs a CUDA device (no GPU here); --tiny runs the script on "
                 "tiny models on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    name_of_device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{name_of_device}, torch {torch.__version__}, {args.steps} steps, CFG 5, "
          f"{'tiny models' if args.tiny else '1024²'}, batch 1")
    print("| model | dtype | variant | s per run | × baseline | peak GiB | GPU ms/step | "
          "launches/step | host ms/step | syncs/run |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    sync_places = {}
    compiles = []  # what dynamo made of each compiled row
    for name in args.models:
        for dtype_name in args.dtypes:
            model, run_model = load(name, DTYPES[dtype_name], device, args)
            chosen = [(label, make) for label, make in variants(model, name)
                      if chosen_label(label, args)]
            # Eager variants take turns round by round, so that a drift of the host's speed (a
            # host-bound step follows it) falls on all of them alike; each ratio is the median
            # of the rounds' ratios to that round's baseline. Compiled ones run one after the
            # other (each compile resets dynamo).
            eager = [Variant(label, make, run_model, args.steps, cuda) for label, make in chosen
                     if not label.startswith(COMPILED)]
            times = {variant.label: [] for variant in eager}
            for round_index in range(args.rounds):
                for variant in eager:
                    times[variant.label].append(variant.timed(peak=round_index == 0))
            base = times["baseline"]
            for variant in eager:
                ratios = [t / b for t, b in zip(times[variant.label], base, strict=True)]
                print_row(name, dtype_name, variant, statistics.median(times[variant.label]),
                          statistics.median(ratios), args, sync_places)
            for label, make in chosen:
                if label.startswith(COMPILED):
                    torch._dynamo.reset()
                    torch._dynamo.utils.counters.clear()
                    variant = Variant(label, make, run_model, args.steps, cuda)
                    seconds = statistics.median(variant.timed(peak=r == 0)
                                                for r in range(args.rounds))
                    print_row(name, dtype_name, variant, seconds,
                              seconds / statistics.median(base), args, sync_places)
                    counters = torch._dynamo.utils.counters
                    compiles.append((f"{name} {dtype_name}, {label}",
                                     counters["stats"]["unique_graphs"],
                                     sum(counters["graph_break"].values())))
            del model, eager
            if cuda:
                torch.cuda.empty_cache()
    for variant, places in sync_places.items():
        print(f"syncs, {variant}: " + ", ".join(f"{p} ×{n}" for p, n in places.most_common(6)))
    for row, graphs, breaks in compiles:  # one graph, no break: compiled once for the runs
        print(f"dynamo, {row}: {graphs} graphs compiled, {breaks} graph breaks")


def load(name: str, dtype, device, args):
    """(model, run(patched, steps) -> latent) for a full-size model, or, with --tiny, a tiny
    model of its family (SDXL's UNet, SD3's MMDiT, SD3.5-Medium's blocks) on the CPU."""
    if args.tiny:
        from host import tiny_models

        if name == "sdxl":
            model, sample_tiny = tiny_models.tiny_sdxl(), tiny_models.sample_sdxl
        else:
            model = tiny_models.tiny_sd35("medium") if name.startswith("sd3.5") \
                else tiny_models.tiny_sd3()
            sample_tiny = tiny_models.sample_sd3
        return model, lambda m, steps: sample_tiny(m, steps=steps)
    from gpu.full_size_models import build, sample

    model = build(name, dtype, device)
    return model, lambda m, steps: sample(m, name, steps=steps)


if __name__ == "__main__":
    main()

"""Whole sampling runs on a GPU: full-size models, every variant a user would compare, one
process, one table.

    python benchmarks/bench_e2e_gpu.py                     # SDXL + SD3-medium, fp16 and bf16
    python benchmarks/bench_e2e_gpu.py --models sdxl sd3.5-medium --dtypes fp16 --steps 6
    python benchmarks/bench_e2e_gpu.py --tiny              # the same script on CPU, tiny models

Models are ComfyUI's own full-size SDXL / SD3-medium / SD3.5 classes with seeded random weights
(tests/gpu/full_size_models.py), sampled by comfy.sample at 1024², CFG 5, euler, batch 1.
Variants: baseline; Skew Circulation (auto = fused kernel on CUDA), the same with every kernel
launched through Triton's own path instead of the pack's cached launcher, the same forced onto
the two-call path, branch = cond only; Adaptive Circulation; Stability Probe (value); space = input
(SDXL, the authors' formulation); the peers in core ComfyUI (PerturbedAttentionGuidance 3,
SelfAttentionGuidance 0.5 on SDXL; SkipLayerGuidanceDiT 7,8,9 at 1-15 % on SD3); and
TorchCompileModel (inductor) alone and with Skew, Adaptive and the Probe. Columns: median
seconds per run over rounds (after a warm-up run), ratio to the baseline of the same model and
dtype, peak GPU memory, and from torch.profiler over a shorter run (device activity only,
--profile-steps): GPU-busy ms and kernel launches per step. Two diagnostic rows and columns say
where a steered step's wall time goes when it is not the GPU's: "our hook only" (the pack's
attention hook on every call, nothing steered) and "baseline + a sigma read per step" (the one
device synchronisation per model call a step window costs); "host ms/step" (the
host's time inside the model calls, timed without waiting for the device: close to the wall
time per step means the step is host-bound) and "syncs/run" (host synchronisations in one run,
from torch.cuda.set_sync_debug_mode, the run's final wait and ComfyUI's own included; their
places are printed under the table). Exits with a
clear message without CUDA (use --tiny to check the script on a CPU).
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sdxl", "sd3-medium"])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=list(DTYPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps of the profiled run (GPU ms and launches per step)")
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
    for name in args.models:
        for dtype_name in args.dtypes:
            model, run_model = load(name, DTYPES[dtype_name], device, args)
            base_time = None
            for label, make in variants(model, "sdxl" if args.tiny else name):
                if args.only and label != "baseline" and not any(o in label for o in args.only):
                    continue
                if args.skip and any(o in label for o in args.skip):
                    continue
                torch._dynamo.reset()
                patched, host_seconds = timed_model_calls(make())

                def run(steps=args.steps, patched=patched, run_model=run_model,
                        cached=label != UNCACHED):
                    with launch_cache(cached):
                        out = run_model(patched, steps)
                    if cuda:
                        torch.cuda.synchronize()
                    return out

                run()  # warm-up: compiles kernels, loads the model
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                times, first_timed = [], len(host_seconds)
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                # all model calls of a step (guidance nodes make two)
                host_ms = 1000 * sum(host_seconds[first_timed:]) / (args.steps * args.rounds)
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                busy, launches = profile_run(run, args.profile_steps, cuda)
                syncs, places = count_syncs(run, cuda)
                if places:
                    sync_places[f"{name} {dtype_name} {label}"] = places
                base_time = base_time or seconds
                print(f"| {name} | {dtype_name} | {label} | {seconds:.3f} | "
                      f"{seconds / base_time:.2f} | {peak:.1f} | {busy:.1f} | {launches:.0f} | "
                      f"{host_ms:.1f} | {syncs} |", flush=True)
            del model
            if cuda:
                torch.cuda.empty_cache()
    for variant, places in sync_places.items():
        print(f"syncs, {variant}: " + ", ".join(f"{p} ×{n}" for p, n in places.most_common(6)))


def load(name: str, dtype, device, args):
    """(model, run(patched, steps) -> latent) for a full-size model, or the tiny SDXL with
    --tiny."""
    if args.tiny:
        from host import tiny_models

        model = tiny_models.tiny_sdxl()
        return model, lambda m, steps: tiny_models.sample_sdxl(m, steps=steps)
    from gpu.full_size_models import build, sample

    model = build(name, dtype, device)
    return model, lambda m, steps: sample(m, name, steps=steps)


if __name__ == "__main__":
    main()

"""Host cost of one steered attention call, next to the host's own call (tiny shapes).

    python benchmarks/bench_host_overhead.py     # needs ComfyUI (COMFYUI_PATH or ~/comfy/ComfyUI)
    python benchmarks/bench_host_overhead.py --device cuda     # fp16: the fused kernel's path
    python benchmarks/bench_host_overhead.py --stub-kernels    # CPU: the CUDA paths, no launch

On CUDA the kernels of a tiny call finish long before the host has issued the next one, so the
wall time per call (the device synchronised once per round) is the host's time per call: what
each steered call adds to a launch-bound sampling step.

At tiny shapes an attention call's time is almost all host work (Python, dispatch, launches),
which is what a launch-bound GPU step pays per call too. The override installed by each node is
called exactly as ComfyUI calls it (an SDXL attn1 call: q, k, v as [B, L, H*d], the options the
UNet passes, the step info our wrapper leaves), and timed against ComfyUI's own
attention_pytorch on the same inputs. One thread; median of rounds; aten ops counted with a
dispatch mode (the host's own call included in the override's count).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402  (registers the pack; loads ComfyUI on the CPU)

BATCH, HEADS, TOKENS, HEAD_DIM = 2, 10, 16, 64
CROSS_KEYS = 8  # a cross-attention call's keys: fewer than its queries, as in SDXL
HOST_FP32 = "ComfyUI attention_pytorch in fp32 (the host's call, dispatch-bound)"
PROBE_ROWS = {"both": "Stability Probe (value, both branches)",
              "cond": "Stability Probe (value, cond: the default)"}
PROBED_STEPS = 20  # a probed layer's calls per run: its records are folded at the run's end
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def attn1_call(model, device="cpu", dtype=torch.float32):
    """(override, args, kwargs) of one SDXL attn1 call of ``model``, as the UNet makes it."""
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.families.unet_attn1 import unet_attn1_marker
    layer_key = next(iter(adapter_for(model).layer_map.by_key))  # (block name, number, index)
    options = {**model.model_options["transformer_options"]}
    side = int(TOKENS**0.5)
    options |= {"block": layer_key[:2], "block_index": layer_key[2], "cond_or_uncond": [1, 0],
                "activations_shape": [BATCH, HEADS * HEAD_DIM, side, side]}
    unet_attn1_marker(model).key = ((layer_key[0], layer_key[1]), layer_key[2])
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, TOKENS, HEADS * HEAD_DIM, generator=gen).to(device, dtype)
               for _ in range(3))
    # As ComfyUI's wrap_attn calls an override: the unwrapped attention function, and the
    # kwargs marked as inside the wrapper.
    return options["optimized_attention_override"], (q, k, v, HEADS), {
        "transformer_options": options, "_inside_attn_wrapper": True}


def model_call():
    """The model call the attention calls run in, as the step wrapper keeps it (sigma read)."""
    from hopfield_circulation.hook.schedule import ModelCall, StepInfo

    side = int(TOKENS**0.5)
    # the latent (the probe's maps need it): a UNet level below the latent's own resolution
    return ModelCall(StepInfo(10.0, 0, 0.0, 1), (1, 0), (BATCH, 4, 2 * side, 2 * side))


def probe_with_fold(call, state):
    """The probed call, with the run's records folded every PROBED_STEPS calls."""
    calls = itertools.count()

    def probed_call():
        out = call()
        if next(calls) % PROBED_STEPS == PROBED_STEPS - 1:
            state.current.fold()
        return out

    return probed_call


def probe_parts(override, host, args: tuple, kwargs: dict, state) -> dict:
    """The Stability Probe's call in parts, as functions to time: the hook with the recorder
    swapped for an observer that does nothing, the recorder alone on one call the hook placed
    (its records folded every PROBED_STEPS calls), and the recorder's planned launches alone
    (where the call took a plan). What the probe's own cost is made of, per probed call."""
    from hopfield_circulation.hook.call import OBSERVERS_KEY
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.probe.registry import ALL_ROWS

    options = kwargs["transformer_options"]
    recorder = options[OBSERVERS_KEY][0]
    seen = []
    capture = {**kwargs, "transformer_options": {
        **options, OBSERVERS_KEY: [lambda call, out, steering: seen.append((call, out))]}}
    idle = {**kwargs, "transformer_options": {
        **options, OBSERVERS_KEY: [lambda call, out, steering: None]}}
    override(host, *args, **capture)
    call, out = seen[0]
    parts = {"hook and placement, the recorder swapped for a no-op (the host's call included)":
             lambda: override(host, *args, **idle),
             "the recorder alone, on one placed call": probe_with_fold(
                 lambda: recorder(call, out, None), state)}
    views = (call.heads, call.host_heads_first, call.output_heads_first)
    for rows in (ALL_ROWS, slice(0, call.batch // 2)):
        if rows == ALL_ROWS:
            key = stability_triton.host_layout(call.host_q, call.host_k, out, *views)
            addresses = (call.host_q.data_ptr(), call.host_k.data_ptr(), out.data_ptr())
        else:
            key = stability_triton.rows_layout(rows, call.host_q, call.host_k, out, *views)
            addresses = stability_triton.row_addresses(rows, call.host_q, call.host_k, out)
        plan = stability_triton.ready_plan(key)
        if plan is None:  # the probe's kernels do not run on this device
            continue
        # as the recorder launches them: into an output of the run's (one slot, reused here)
        slot = torch.empty(plan.out_shape, dtype=torch.float32, device=plan.torch_device)
        at = (*addresses, slot.data_ptr())

        def launch(key=key, at=at, slot=slot):  # slot: kept alive with the function
            return stability_triton.ready_plan(key).launch_into(*at)

        branches = "both branches" if rows == ALL_ROWS else "one branch"
        parts[f"its planned launches alone ({branches})"] = launch
    return parts


def per_call_us(fns: dict, rounds: int = 9, calls: int = 300, sync=lambda: None) -> dict:
    """Median µs per call of each function, the functions taking turns round by round (so a
    busy machine slows them alike and the ratios hold). ``sync`` waits for the device."""
    for fn in fns.values():
        for _ in range(50):
            fn()
    sync()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(times) for name, times in samples.items()}


def ops_of(fn) -> int:
    with CountOps() as mode:
        fn()
    return mode.count


def stub_kernel_launches() -> None:
    """Route CPU fp16 calls down the CUDA paths (fused kernel, eta kernel, probe kernel) with
    every Triton launch replaced by a no-op: what is left is the pack's own host work per
    call on those paths (hook, parsing, checks, argument marshalling, small allocations,
    the cached launcher's key and lookup)."""
    from core.launch_recorder import (
        KernelSurface,
        no_op_compiled,
        pack_kernels,
        stand_in_launcher,
    )
    from hopfield_circulation.hopfield import eta_triton, fused_triton, stability_triton

    fused_triton._FACTS[:] = [fused_triton.ProcessFacts(triton=True, interpreting=True,
                                                        tune=False)]
    fused_triton.auto_eligible = lambda q, k, v: (
        q.dtype in fused_triton.AUTO_DTYPES and fused_triton.supports(q, k, v))
    eta_triton.eligible = lambda q, k: True
    stability_triton.eligible = lambda q, k, retrieval: True
    for kernel in pack_kernels():
        # a compiled kernel whose launches run nothing, behind the pack's real launcher
        launcher = stand_in_launcher(KernelSurface(kernel.load(), no_op_compiled()),
                                     kernel.tensors)
        kernel.set_launcher_getter(lambda launcher=launcher: launcher)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help="default: fp32 on the CPU, fp16 on CUDA and with --stub-kernels")
    parser.add_argument("--stub-kernels", action="store_true",
                        help="CPU: take the CUDA paths with every Triton launch a no-op, to "
                        "time the pack's own host work there (Triton's launcher excluded)")
    cli = parser.parse_args()
    reason = conftest.host_unavailable_reason()
    if reason:
        sys.exit(f"bench_host_overhead: {reason}")
    if cli.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_host_overhead: --device cuda needs a CUDA device (none here)")
    if cli.stub_kernels:
        if cli.device != "cpu":
            sys.exit("bench_host_overhead: --stub-kernels is for the CPU (on CUDA the kernels "
                     "run for real)")
        stub_kernel_launches()
    device = torch.device(cli.device)
    dtype = DTYPES[cli.dtype or ("fp16" if device.type == "cuda" or cli.stub_kernels
                                 else "fp32")]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    import comfy.ldm.modules.attention as host_attention
    from hopfield_circulation.families.unet_attn1 import unet_attn1_marker
    from hopfield_circulation.hook.schedule import running
    from hopfield_circulation.hopfield.circulation import use_fused
    from hopfield_circulation.nodes.circulation_nodes import AdaptiveCirculation, SkewCirculation
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe
    from hopfield_circulation.probe.registry import new_run, probe_state
    from host import tiny_models

    torch.set_num_threads(1)
    wrapped = host_attention.attention_pytorch  # what a model calls
    host = wrapped.__wrapped__  # what wrap_attn hands an override
    model = tiny_models.tiny_sdxl()
    variants = {
        "Skew Circulation": SkewCirculation.execute(
            model, 1.05, 3.0, 0.0, 1.0, "all", "both", "value").result[0],
        "Skew Circulation, cond only": SkewCirculation.execute(
            model, 1.05, 3.0, 0.0, 1.0, "all", "cond", "value").result[0],
        "Adaptive Circulation": AdaptiveCirculation.execute(
            model, 1.2, 5.0, 0.0, 1.0, "all", "both", "value", "per sample").result[0],
    }
    # The probe records only inside a sampling run (its OUTER_SAMPLE wrapper opens one): open
    # one by hand. Every call here is the first of its step, so each one is measured; what the
    # run's end does with a layer's records (ProbeRun.fold) is timed too, once every
    # PROBED_STEPS calls, as for one layer of a sampling run of that many steps.
    states = {}
    for branch, row in PROBE_ROWS.items():
        probed, handle = StabilityProbe.execute(model, "value", 64, 0.0, 1.0, branch,
                                                "all").result
        state = states[row] = probe_state(handle)
        state.current = new_run(state)
        variants[row] = probed
    _, args, kwargs = attn1_call(variants["Skew Circulation"], device, dtype)
    path = "fused" if use_fused(*(a.view(BATCH, TOKENS, HEADS, HEAD_DIM).transpose(1, 2)
                                  for a in args[:3]), "auto") else "two-call"
    plain = {"transformer_options": {k: v for k, v in kwargs["transformer_options"].items()
                                     if k != "optimized_attention_override"}}
    # The floor of any two-call steering on this device: the host's call plus one attention
    # at width 2d (the concat trick's), on ready-made contiguous inputs.
    gen = torch.Generator().manual_seed(1)
    wide = [torch.randn(BATCH, HEADS, TOKENS, 2 * HEAD_DIM, generator=gen).to(device, dtype)
            for _ in range(3)]
    calls = {
        "ComfyUI attention_pytorch (the host's call)": lambda: wrapped(*args, **plain),
        "one SDPA at width 2d alone": lambda: F.scaled_dot_product_attention(
            *wide, scale=HEAD_DIM**-0.5),
    }
    if cli.stub_kernels:  # the host's call where its cost is dispatch, not the CPU's fp16 math
        args32 = tuple(a.float() for a in args[:3]) + args[3:]
        calls[HOST_FP32] = lambda: wrapped(*args32, **plain)
    counted = {}
    for name, patched in variants.items():
        # The probe runs the host's call and observes its output: stubbed, on fp32 inputs, so
        # that the host's part is its dispatch-bound fp32 call, not the CPU's slow fp16 math.
        probe_stubbed = name in states and cli.stub_kernels
        override, call_args, call_kwargs = attn1_call(
            patched, device, torch.float32 if probe_stubbed else dtype)

        def call(override=override, call_args=call_args, call_kwargs=call_kwargs):
            return override(host, *call_args, **call_kwargs)

        if name in states:
            calls[f"{name}{' (fp32 inputs)' if probe_stubbed else ''}"] = \
                probe_with_fold(call, states[name])
        else:
            calls[f"{name} ({path})"] = call
    # A cross-attention call (every other call of a UNet), which the hook hands to the host:
    # more queries than keys, as at every SDXL level (1,024 or 4,096 queries against 77 keys)
    context = torch.randn(BATCH, CROSS_KEYS, HEADS * HEAD_DIM, generator=gen).to(device, dtype)
    cross = (args[0], context, context, HEADS)
    skew_override, _, skew_kwargs = attn1_call(variants["Skew Circulation"], device, dtype)
    marker = unet_attn1_marker(variants["Skew Circulation"])

    def skew_cross_attention():
        # as in the UNet, where attn1's output patch has cleared the attn1 mark before attn2
        attn1, marker.key = marker.key, None
        try:
            return skew_override(host, *cross, **skew_kwargs)
        finally:
            marker.key = attn1

    calls[f"ComfyUI attention_pytorch, cross-attention ({TOKENS} queries, {CROSS_KEYS} keys)"] = \
        lambda: wrapped(*cross, **plain)
    calls["Skew Circulation on that cross-attention call (handed on)"] = skew_cross_attention
    with running(model_call()):
        times = per_call_us(calls, sync=sync)
        for name, fn in calls.items():
            counted[name] = ops_of(fn)
    probe_row = f"{PROBE_ROWS['cond']}{' (fp32 inputs)' if cli.stub_kernels else ''}"
    override, call_args, call_kwargs = attn1_call(
        variants[PROBE_ROWS["cond"]], device, torch.float32 if cli.stub_kernels else dtype)
    with running(model_call()):
        parts = probe_parts(override, host, call_args, call_kwargs, states[PROBE_ROWS["cond"]])
        host_row = HOST_FP32 if cli.stub_kernels else "ComfyUI attention_pytorch (the host's call)"
        part_times = per_call_us({"the probed call (cond)": calls[probe_row],
                                  "the host's call": calls[host_row], **parts}, sync=sync)
    base_us = times["ComfyUI attention_pytorch (the host's call)"]
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU, 1 thread"
    print(f"Host cost per attention call, {where}, q/k/v [{BATCH}, {TOKENS}, "
          f"{HEADS}x{HEAD_DIM}] {str(dtype).removeprefix('torch.')}, "
          f"torch {torch.__version__}")
    if cli.stub_kernels:
        print("Triton launches stubbed: the steered rows are the pack's own host work on the "
              "CUDA paths; the host's call and the SDPA rows compute for real on the CPU.")
        host_us = times[HOST_FP32]
        print("| call | µs per call | × the host's fp32 call | aten ops |")
        print("|---|---:|---:|---:|")
        for name, us in times.items():
            print(f"| {name} | {us:.1f} | {us / host_us:.2f} | {counted[name]} |")
        for branch, row in PROBE_ROWS.items():
            probe = f"{row} (fp32 inputs)"
            own = times[probe] - host_us
            print(f"| the probe's own work, {branch} (its row less the host's fp32 call) | "
                  f"{own:.1f} | {own / host_us:.2f} | {counted[probe] - counted[HOST_FP32]} |")
        print_parts(part_times)
        return
    print("| call | µs per call | × host's call | aten ops |")
    print("|---|---:|---:|---:|")
    for name, us in times.items():
        print(f"| {name} | {us:.1f} | {us / base_us:.2f} | {counted[name]} |")
    floor = base_us + times["one SDPA at width 2d alone"]
    print(f"| floor of a two-call steering: the host's call + one SDPA at 2d | {floor:.1f} | "
          f"{floor / base_us:.2f} | |")
    print_parts(part_times)


def print_parts(times: dict) -> None:
    """The probe's call in parts, timed in turns in one run (probe_parts)."""
    host_us = times["the host's call"]
    print("\nThe Stability Probe's call in parts (branch cond), timed in turns:")
    print("| part | µs per call | × the host's call |")
    print("|---|---:|---:|")
    for name, us in times.items():
        print(f"| {name} | {us:.1f} | {us / host_us:.2f} |")


if __name__ == "__main__":
    main()

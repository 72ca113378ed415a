"""GPU record of one steered self-attention call: time, peak memory, Δ accuracy, per path.

    python benchmarks/bench_gpu.py              # needs CUDA and Triton; about a minute
    python benchmarks/bench_gpu.py --sweep      # also the fused kernel's tiles, the token chunks
    python benchmarks/bench_gpu.py --sweep-only # those alone
    python benchmarks/bench_gpu.py --quick      # fewer repetitions
    python benchmarks/bench_gpu.py --shapes d128 --sweep   # Flux's head width instead

Shapes: SDXL 64x64 latent level (B 2, H 10, L 4096, d 64) and SD3 at 1024² (B 2, H 24,
L 4250 = 4096 image + 154 text tokens, d 64; q, k, v are strided views of one qkv projection,
as in SD3's joint attention); with ``--shapes d128`` Flux at 1024² instead (B 1, no CFG, H 24,
L 4608 = 4096 image + 512 text tokens, d 128, the head width of Flux, Chroma and Qwen-Image).
dtypes fp16 and bf16.

Paths, each timed as what the attention override costs per steered call:
- baseline: torch SDPA (the host's own call; flash attention on CUDA).
- two_call: the host's baseline plus hopfield.circulate_value_space(kernel="two_call") (one
  concat-trick SDPA of width 2d, fp32 blend); for bf16 the path recomputes both retrievals in
  fp16 and the override skips the host's call, so that is what is timed.
- fused: the single-pass Triton kernel (the override skips the host's call).
- fused_half: every other sample steered (branch "cond" under CFG): one launch of the kernel,
  which writes the plain attention output of the unselected samples itself (no host call).
- fused_adaptive: Adaptive Circulation on the fused path (eta_M, its coefficients, the kernel).
- kernel_number_alpha, kernel_tensor_alpha: the fused kernel alone, alpha a number (c1 moved
  into the perturbed logits' exp2 scale: one FMA per logit) and a per-sample tensor (the
  general form: a multiply and an FMA), the same accumulation form: what that move saves.
- kernel_v_in_loop (bf16): the kernel alone with each program converting V's tiles to fp16 in
  its key loop, as before V's fp16 copy made before the launch (the fused rows' way): what
  the copy saves, in the same process.
- eta_kernel, eta_split, eta_torch: eta_M alone, by the Triton kernel as the adaptive path
  calls it on CUDA (one launch, one program per (sample, head): splitting the tokens measured
  slower), by the same kernels with the tokens split into 7 chunks and a second launch that
  sums them, and by torch ops (one concatenation and two fp32-accumulated Gram products).
- concat_wide_v, concat_narrow_v: the two-call path's perturbed retrieval alone (alpha 1.05,
  the concat trick's one buffer either way), V widened to 2d so that q~, k~ and v~ share one
  width (a flash kernel's condition: hopfield/skew.py), and V at its own width, which SDPA
  hands to a kernel that takes another value width (the memory-efficient one, a quarter fewer
  products and half the output). The path takes the narrow form on Hopper at d = 64
  (skew.narrow_values, from an H200's rows); elsewhere these rows say whether it should.
- probe_kernel, probe_unsplit, probe_torch: the Stability Probe's measures of one call in the
  value basis (E, r, Align, eta, lambda map), by its Triton kernels (tokens split into chunks,
  hopfield/token_chunks.py), by the same kernels with one chunk per (sample, head) (what
  the kernel did before the split), and by torch ops.

Columns: ms, the median over CUDA-event timings of single calls after warm-up (first calls
compile the kernel), on an idle device: the host's time to issue the call is timed with its
kernels wherever the device waits for it (for small kernels, most of it); device ms, the
median of the call's device work alone, issued while the device spins (gpu_timing.py: what
the kernels cost a step that keeps the device busy; "–" for a call that waits for the device
itself); each with its ratio to baseline's from the same run; fused TFLOP/s from device ms,
counting 8 L² d per (batch, head) (two attention calls' worth of matmuls); peak extra memory
over the inputs (output included);
check: max |out − two-call fp32| / max |two-call fp32| on the full shape (catches a bad
compile); Δ error: |Δ − Δ_fp64| / |Δ_fp64| at α 0.97 and 1.05 (β 3) on a 1024-token slice, with
the float64 reference computed from the same rounded inputs, and "floor", the float64 result
rounded to the dtype (no path that writes that dtype can do better).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import hopfield  # noqa: E402  (registers the pack as a package)
from gpu_timing import device_ms  # noqa: E402
from hopfield_circulation.hopfield import fused_tiles, fused_triton, reference  # noqa: E402

SHAPES = {  # name: (batch, heads, tokens, d, joint qkv view)
    "SDXL 64x64 (B2 H10 L4096 d64)": (2, 10, 4096, 64, False),
    "SD3 1024² (B2 H24 L4250 d64)": (2, 24, 4250, 64, True),
}
# --shapes d128: Flux's q, k, v come from concatenated projections, contiguous after RoPE
D128_SHAPES = {"Flux 1024² (B1 H24 L4608 d128)": (1, 24, 4608, 128, False)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
BETA = 3.0


def require_gpu():
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here (torch.cuda.is_available() is False); run it "
                 "on a machine with an NVIDIA GPU. CPU numbers: benchmarks/bench_attention.py, "
                 "benchmarks/precision.py")
    if not fused_triton.available():
        sys.exit("bench_gpu: Triton is not importable (pip install triton); the fused kernel "
                 "needs it")


def make_qkv(batch, heads, tokens, d, joint, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (batch, tokens, 3, heads, d) if joint else (3, batch, heads, tokens, d)
    # logits with about 2.5 standard deviation, like calibrated real attention
    qkv = torch.randn(shape, device="cuda", generator=gen, dtype=torch.float32)
    if joint:  # SD3: one projection, split into strided [B, H, L, d] views (no copies)
        qkv[:, :, :2] *= 2.5**0.5
        qkv = qkv.to(dtype)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    qkv[:2] *= 2.5**0.5
    return tuple(qkv.to(dtype).unbind(0))


def paths(q, k, v, alpha=1.05):
    """name -> callable returning the steered output, as the override would compute it."""
    two_call = hopfield.CirculationSettings(alpha, BETA, kernel="two_call")
    fused = hopfield.CirculationSettings(alpha, BETA, kernel="fused")

    def run_two_call():
        needs = hopfield.circulation.needs_baseline(q, k, v, two_call)
        base = F.scaled_dot_product_attention(q, k, v) if needs else None
        return hopfield.circulate_value_space(q, k, v, base, two_call).out

    active = torch.arange(q.shape[0], device=q.device) % 2 == 0  # CFG: steer one half only

    def run_fused_half():
        return hopfield.circulate_value_space(q, k, v, None, fused, active).out

    adaptive = hopfield.CirculationSettings(alpha, BETA, adaptive=True, kernel="fused")
    # The kernel alone with alpha a number (c1 moved into the perturbed logits' scale) and as
    # a per-sample tensor (the general form, same accumulation): what that move saves
    from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation

    alphas = torch.full((q.shape[0], 1, 1, 1), alpha, device=q.device)

    def kernel_v_in_loop():  # bf16 as before V's fp16 copy: each program converts V's tiles
        copies = fused_triton.v16_copy
        fused_triton.v16_copy = lambda q: False  # this benchmark's own process only
        try:
            return fused_skew_circulation(q, k, v, alpha, BETA)
        finally:
            fused_triton.v16_copy = copies

    in_loop = {"kernel_v_in_loop": kernel_v_in_loop} if q.dtype == torch.bfloat16 else {}
    return {
        "baseline": lambda: F.scaled_dot_product_attention(q, k, v),
        "two_call": run_two_call,
        "fused": lambda: hopfield.circulate_value_space(q, k, v, None, fused).out,
        "fused_half": run_fused_half,
        "fused_adaptive": lambda: hopfield.circulate_value_space(q, k, v, None, adaptive).out,
        "kernel_number_alpha": lambda: fused_skew_circulation(q, k, v, alpha, BETA),
        "kernel_tensor_alpha": lambda: fused_skew_circulation(q, k, v, alphas, BETA,
                                                              alpha_hint=alpha),
        **in_loop,
    }


def extra_paths(q, k, v):
    """The per-call parts alone: the two-call path's perturbed retrieval two ways, Adaptive
    Circulation's eta_M and the Stability Probe's measures (value basis), each by its Triton
    kernel and by torch ops."""
    from hopfield_circulation.hopfield import eta_triton
    from hopfield_circulation.hopfield.skew import skew_scaled_attention
    from hopfield_circulation.hopfield.stability import layer_stability_torch
    from hopfield_circulation.hopfield.stability_triton import stability_triton
    from hopfield_circulation.hopfield.symmetry import symmetry_index_torch

    x = F.scaled_dot_product_attention(q, k, v)  # the value basis: the call's own output
    return {"concat_wide_v": lambda: skew_scaled_attention(q, k, v, 1.05, narrow=False),
            "concat_narrow_v": lambda: skew_scaled_attention(q, k, v, 1.05, narrow=True),
            "eta_kernel": lambda: eta_triton.symmetry_index_triton(q, k),
            "eta_split": lambda: eta_triton.symmetry_index_triton(q, k, splits=7),
            "eta_torch": lambda: symmetry_index_torch(q, k),
            "probe_kernel": lambda: stability_triton(q, k, x),
            "probe_unsplit": lambda: stability_triton(q, k, x, splits=1),
            "probe_torch": lambda: layer_stability_torch(q, k, x)}


def ratio(ms, base_ms):
    return "–" if ms is None or not base_ms else f"{ms / base_ms:.2f}"


def shown(ms):
    return "–" if ms is None else f"{ms:.3f}"


def both_ms(fn, args):
    """(ms as issued on an idle device, device ms alone or None): the Columns of the doc.
    median_ms warms the call up; device_ms needs no second warm-up (device time is scarce)."""
    return median_ms(fn, args.warmup, args.reps), device_ms(fn, 0, args.reps)


def median_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak / 2**20


def delta_errors(q, k, v, alpha, dtype):
    """{path: Δ error} on a slice small enough for the float64 L x L reference."""
    q, k, v = (t[:1, :2, :1024] for t in (q, k, v))
    q64, k64, v64 = (t.double() for t in (q, k, v))
    base64 = torch.softmax(reference.logits(q64, k64), -1) @ v64
    want = reference.blend(base64, reference.skew_scaled_attention(q64, k64, v64, alpha), BETA)
    scale = (want - base64).norm()
    errors = {"floor": ((want.to(dtype).double() - want).norm() / scale).item()}
    for name, fn in paths(q, k, v, alpha).items():
        if name in ("two_call", "fused"):
            errors[name] = ((fn().double() - want).norm() / scale).item()
    return errors


def full_shape_check(q, k, v, out):
    """Fused output against the two-call path in fp32 on the full shape."""
    q32, k32, v32 = (t.float() for t in (q, k, v))
    settings = hopfield.CirculationSettings(1.05, BETA, kernel="two_call")
    want = hopfield.circulate_value_space(q32, k32, v32, F.scaled_dot_product_attention(
        q32, k32, v32), settings).out
    return ((out.float() - want).abs().max() / want.abs().max()).item()


def bench_shape(name, spec, dtype_name, args):
    batch, heads, tokens, d, joint = spec
    dtype = DTYPES[dtype_name]
    q, k, v = make_qkv(batch, heads, tokens, d, joint, dtype)
    errors = {a: delta_errors(q, k, v, a, dtype) for a in (0.97, 1.05)}
    flops = 8 * tokens**2 * d * batch * heads
    base = None
    for path, fn in paths(q, k, v).items():
        ms, gpu = both_ms(fn, args)
        base = base or (ms, gpu)
        tflops = f"{flops / gpu / 1e9:.0f}" if path == "fused" and gpu else ""
        check = f"{full_shape_check(q, k, v, fn()):.1e}" if path == "fused" else ""
        err = tuple(f"{errors[a][path]:.4f}" if path in errors[a] else "" for a in (0.97, 1.05))
        print(f"| {name} | {dtype_name} | {path} | {ms:.3f} | {ratio(ms, base[0])} | "
              f"{shown(gpu)} | {ratio(gpu, base[1])} | {tflops} | {peak_extra_mib(fn):.0f} | "
              f"{check} | {err[0]} | {err[1]} |", flush=True)
    for path, fn in extra_paths(q, k, v).items():
        ms, gpu = both_ms(fn, args)
        print(f"| {name} | {dtype_name} | {path} | {ms:.3f} | {ratio(ms, base[0])} | "
              f"{shown(gpu)} | {ratio(gpu, base[1])} | | {peak_extra_mib(fn):.0f} | | | |",
              flush=True)
    print(f"| {name} | {dtype_name} | floor | | | | | | | | {errors[0.97]['floor']:.4f} | "
          f"{errors[1.05]['floor']:.4f} |", flush=True)


def sweep_shape(name, spec, dtype_name, args):
    from compile_hopper import SWEEP

    batch, heads, tokens, d, joint = spec
    q, k, v = make_qkv(batch, heads, tokens, d, joint, DTYPES[dtype_name])
    base = both_ms(lambda: F.scaled_dot_product_attention(q, k, v), args)
    default = fused_tiles.default_config(d, q.dtype)
    for cfg in [default] + [c for c in SWEEP if c != default]:
        try:
            ms, gpu = both_ms(lambda cfg=cfg: fused_triton.fused_skew_circulation(
                q, k, v, 1.05, BETA, config=cfg), args)
        except Exception as error:  # e.g. out of shared memory: a finding, not a crash
            print(f"| {name} | {dtype_name} | {cfg} | failed: {type(error).__name__} | | | |")
            continue
        mark = " (default)" if cfg == default else ""
        print(f"| {name} | {dtype_name} | {cfg.block_m}x{cfg.block_n} w{cfg.num_warps} "
              f"s{cfg.num_stages}{mark} | {ms:.3f} | {ratio(ms, base[0])} | {shown(gpu)} | "
              f"{ratio(gpu, base[1])} |", flush=True)


def sweep_chunks(name, spec, args):
    """The probe's and eta's token chunks (fp16): the default (hopfield/token_chunks.py for
    the probe, one chunk for eta) against fewer and more, to check those choices."""
    from hopfield_circulation.hopfield import eta_triton, stability_triton

    batch, heads, tokens, d, joint = spec
    q, k, v = make_qkv(batch, heads, tokens, d, joint, torch.float16)
    x = F.scaled_dot_product_attention(q, k, v)
    base = both_ms(lambda: F.scaled_dot_product_attention(q, k, v), args)

    def probe_chunks(splits):
        geometry = stability_triton.Geometry.of(q, x, splits=splits)
        return geometry.chunks, geometry.chunk

    probe_default = probe_chunks(None)[0]
    kernels = {  # kernel: (run with ``splits`` chunks asked, (chunks, tokens) made, asked)
        "probe": (lambda s: stability_triton.stability_triton(q, k, x, splits=s), probe_chunks,
                  sorted({1, max(1, probe_default // 2), probe_default, 2 * probe_default,
                          4 * probe_default})),
        "eta": (lambda s: eta_triton.symmetry_index_triton(q, k, splits=s),
                lambda s: eta_triton.chunks_of(q, splits=s), [1, 2, 4, 7, 14])}
    for kernel, (run, made, asked) in kernels.items():
        default, seen = made(None), set()
        for splits in asked:
            chunks, chunk = made(splits)
            if chunks in seen:  # more asked than the tokens have tiles
                continue
            seen.add(chunks)
            ms, gpu = both_ms(lambda splits=splits, run=run: run(splits), args)
            mark = " (default)" if (chunks, chunk) == default else ""
            print(f"| {name} | {kernel} | {chunks}{mark} | {chunk} | {ms:.3f} | "
                  f"{ratio(ms, base[0])} | {shown(gpu)} | {ratio(gpu, base[1])} |", flush=True)


def each_shape_and_dtype(shapes: dict, run, args) -> None:
    """``run(name, spec, dtype name, args)`` for every shape, in each of DTYPES."""
    for name, spec in shapes.items():
        for dtype_name in DTYPES:
            run(name, spec, dtype_name, args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--sweep", action="store_true", help="time the tile candidates too")
    parser.add_argument("--sweep-only", action="store_true",
                        help="the sweeps without the table of paths (a step of its own after "
                        "the table, so that a time limit on one keeps the other)")
    parser.add_argument("--shapes", choices=("d64", "d128"), default="d64",
                        help="d64: SDXL and SD3 (default); d128: Flux")
    args = parser.parse_args()
    shapes = SHAPES if args.shapes == "d64" else D128_SHAPES
    args.warmup, args.reps = (3, 10) if args.quick else (5, 30)
    require_gpu()
    import triton

    props = torch.cuda.get_device_properties(0)
    print(f"Device: {props.name} ({props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB); torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, Triton {triton.__version__}")
    with torch.inference_mode():
        if not args.sweep_only:
            print("| shape | dtype | path | ms | × baseline | device ms | × baseline | fused "
                  "TFLOP/s | peak extra MiB | check | Δ err α 0.97 | Δ err α 1.05 |")
            print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            each_shape_and_dtype(shapes, bench_shape, args)
        if args.sweep or args.sweep_only:
            print("\nFused kernel tile candidates (ms as issued and device ms, each × baseline "
                  "SDPA of the same shape):")
            print("| shape | dtype | BLOCK_M x BLOCK_N, warps, stages | ms | × baseline | "
                  "device ms | × baseline |")
            print("|---|---|---|---:|---:|---:|---:|")
            each_shape_and_dtype(shapes, sweep_shape, args)
            print("\nToken chunks of the probe's and eta's kernels, fp16 (ms as issued and "
                  "device ms, each × baseline SDPA):")
            print("| shape | kernel | chunks | tokens per chunk | ms | × baseline | device ms | "
                  "× baseline |")
            print("|---|---|---:|---:|---:|---:|---:|---:|")
            # SDXL's 32 x 32 level too: 60 of its 70 self-attention calls per step
            more = {"SDXL 32x32": (2, 20, 1024, 64, False)} if args.shapes == "d64" else {}
            for name, spec in {**shapes, **more}.items():
                sweep_chunks(name, spec, args)


if __name__ == "__main__":
    main()

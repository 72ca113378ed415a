"""Compile the fused, symmetry-index and Stability Probe kernels for Hopper (sm_90a) on any
machine, no GPU needed, and print what the compiler made of each launch configuration.

    python benchmarks/compile_hopper.py             # the default configs
    python benchmarks/compile_hopper.py --sweep     # candidate tile sizes too
    python benchmarks/compile_hopper.py --kernel eta --sweep    # the symmetry-index kernel
    python benchmarks/compile_hopper.py --kernel stability --sweep    # the probe's kernel

Triton's wheel carries ptxas and cuobjdump, so the whole pipeline (TTIR, TTGIR, PTX, cubin)
runs on a CPU box. Per config it reports registers per thread, spill bytes (stack/local),
shared memory per program, and how many HGMMA (Hopper warpgroup tensor-core) instructions the
SASS holds: a kernel without them would be on the slow mma.sync path. For the fused kernel
also its key loop per thread and iteration: instructions, per-element float operations and
spill loads and stores, for each way it is launched (Skew Circulation's number alpha, a
per-sample alpha, Adaptive). This is a static check: it says the kernel fits the chip and what
its hot loop issues, not how fast it runs (benchmarks/bench_gpu.py times it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, without its warning
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import hopfield  # noqa: E402,F401  (registers the pack's package)
from hopfield_circulation.hopfield import (  # noqa: E402
    eta_triton,
    fused_triton,
    stability_triton,
)
from hopfield_circulation.hopfield.fused_tiles import DEFAULT_CONFIGS, LaunchConfig  # noqa: E402

TYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
SWEEP = [LaunchConfig(bm, bn, w, s) for bm, bn, w in
         [(128, 64, 8), (128, 128, 8), (64, 64, 4), (64, 128, 4), (128, 32, 8), (64, 32, 4)]
         for s in (2, 3)]


def compile_config(dtype: str, d: int, cfg: LaunchConfig, fp32_precision: str, heads=10,
                   length=4096, variant="skew", v16_copy=True) -> dict:
    """The fused kernel for one dtype, head dim and launch configuration, as ``variant``
    launches it: "skew" (Skew Circulation: a number alpha > -1), "per-sample" (alpha a
    tensor), "adaptive" (alpha_eff and beta_eff derived from eta_M in the kernel).
    ``v16_copy=False``: bf16 converting V in its key loop instead of reading its fp16 copy."""
    adaptive = variant == "adaptive"
    kernel = fused_triton._kernel()
    strides = {"b": heads * length * d, "h": length * d, "l": d}
    values = {}
    for t in "qkvo":
        values.update({f"s{t}b": strides["b"], f"s{t}h": strides["h"], f"s{t}l": strides["l"],
                       f"s{t}d": 1})
    values.update(alpha_stride=1, beta_stride=1, heads=heads, length=length,
                  batch=2 if adaptive else 0)
    constants = {"D": d, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                 "ALPHA_PER_SAMPLE": variant == "per-sample", "BETA_PER_SAMPLE": False,
                 "NORM_MATCH": True,
                 "PV_FP16": dtype == "bf16", "HAS_ACTIVE": True,
                 "UPCAST": False, "PRECISION": fp32_precision if dtype == "fp32" else "tf32",
                 "ADAPTIVE": adaptive, "ETA_PER_SAMPLE": True,
                 "ETA_BLOCK": 16 if adaptive else 1,
                 "DIFFERENCE": True, "ANCHOR_PERT": False,  # alpha >= 1's form
                 "FOLD_C1": variant == "skew", "V16_COPY": dtype == "bf16" and v16_copy}
    pointers = {"Q": dtype, "K": dtype, "V": dtype, "Out": dtype, "V16": "fp16",
                "ALPHA": "fp32", "BETA": "fp32", "ETA": "fp32", "COEFS": "fp32", "ACTIVE": "u8"}
    signature = specialise(kernel, constants, pointers,
                           ("alpha_value", "beta_value", "scale_log2"), values)
    return compile_sm90(kernel, *signature, cfg.num_warps, cfg.num_stages)


def specialise(kernel, constants: dict, pointers: dict, floats: tuple, ints: dict):
    """(signature, constexprs, attrs) as Triton's JIT would make them for these arguments:
    ``pointers`` name -> element type, ``floats`` the fp32 scalars, ``ints`` the integer
    arguments' values (a 1 becomes a constant, a multiple of 16 says so)."""
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name], constexprs[name] = "constexpr", constants[name]
        elif name in pointers:
            signature[name] = "*" + TYPES.get(pointers[name], pointers[name])
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        elif ints[name] == 1:  # what the JIT does with an int argument equal to 1
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def compile_sm90(kernel, signature, constexprs, attrs, num_warps, num_stages) -> dict:
    """Compile ``kernel`` for sm_90a and read its resource use and tensor-core instructions."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([tools / "cuobjdump", "--dump-resource-usage", cubin],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tools / "cuobjdump", "--dump-sass", cubin],
                              capture_output=True, text=True, check=True).stdout

    def field(key):
        found = re.search(rf"\b{key}:(\d+)", usage)
        return int(found.group(1)) if found else -1

    return {"regs": field("REG"), "stack": field("STACK"), "local": field("LOCAL"),
            "shared_kb": compiled.metadata.shared / 1024, "hgmma": sass.count("HGMMA"),
            "mufu_ex2": sass.count("MUFU.EX2"), "hmma": sass.count("HMMA"),
            **main_loop(sass)}


FP32_PIPE = ("FFMA", "FMUL", "FADD", "FMNMX", "F2FP")  # per-element float work of a loop


def main_loop(sass: str) -> dict:
    """The innermost loop of the SASS with the most exponentials, the first of equals (the
    fused kernel's key-tile loop; bf16's rerun on scaled V, rare, comes after it): its
    instruction count, how many of them are per-element float work (FP32_PIPE), and its spill
    traffic, per thread and iteration. A static measure: fewer is better only where nothing
    else changed. Innermost: Triton 3.9 puts the divergent-warp paths of its reductions
    (BRA.DIV) after the kernel's exit, and their jumps back span several loops without being
    one; taken as loops they held the most exponentials (4,340 instructions for bf16's
    600-odd)."""
    found = [(int(at, 16), text) for at, text in
             re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    spans = []  # (start, end) of each backward branch: a loop
    for end, text in found:
        target = re.search(r"BRA\s+0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < end:
            spans.append((int(target.group(1), 16), end))
    best: list[str] = []
    for start, end in spans:
        if any(start <= inner[0] and inner[1] <= end and inner != (start, end)
               for inner in spans):
            continue  # holds another loop
        body = [t for at, t in found if start <= at <= end]
        if sum("MUFU.EX2" in t for t in body) > sum("MUFU.EX2" in t for t in best):
            best = body
    opcodes = [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in best]
    return {"loop": len(best), "loop_fp32": sum(op in FP32_PIPE for op in opcodes),
            "loop_spill": sum(op in ("STL", "LDL") for op in opcodes)}


def compile_eta(dtype: str, d: int, config: tuple[int, int, int], heads=10,
                length=4096) -> dict:
    """The symmetry-index kernel (hopfield/eta_triton.py) for one dtype, head dim and tiles."""
    kernel = eta_triton._kernel()
    block_l, warps, stages = config
    values = {"sqb": heads * length * d, "sqh": length * d, "sql": d, "sqd": 1,
              "heads": heads, "length": length, "chunk": 640}
    values.update({f"sk{key[2:]}": value for key, value in values.items() if key[:2] == "sq"})
    constants = {"D": d, "BLOCK_L": block_l, "UPCAST": False,
                 "PRECISION": "ieee" if dtype == "fp32" else "tf32", "SPLIT": True}
    signature = specialise(kernel, constants, {"Q": dtype, "K": dtype, "ETA": "fp32",
                                               "WORK": "fp32"}, (), values)
    return compile_sm90(kernel, *signature, warps, stages)


def compile_eta_reduce(d: int) -> dict:
    """The symmetry index's reduction of the chunks' Grams (split tokens)."""
    kernel = eta_triton._reduce_kernel()
    signature = specialise(kernel, {"D": d, "ROWS": eta_triton.REDUCE_ROWS},
                           {"WORK": "fp32", "ETA": "fp32"}, (), {"splits": 7})
    return compile_sm90(kernel, *signature, 4, 1)


def compile_stability(dtype: str, d: int, config: tuple[int, int, int], heads=10,
                      length=4096) -> dict:
    """The Stability Probe's four stages (hopfield/stability_triton.py), m = d: stage -> the
    compile_sm90 dict. ``config`` is the token-sweeping stages' (grams, field) tiles."""
    block_l, warps, stages = config
    strides = {}
    for t in "qkx":
        strides.update({f"s{t}b": heads * length * d, f"s{t}h": length * d, f"s{t}l": d,
                        f"s{t}d": 1})
    offsets = {"eta_grams": 3 << 20, "stats": 5 << 20, "field": 6 << 20, "tokens": 7 << 20,
               "eta": 8 << 20, "eta_out": 8 << 20}
    values = {**strides, **offsets, "heads": heads, "length": length, "chunk": 640,
              "splits": 7, "out_stride": length + 4}
    shared = {"D": d, "M_BLOCK": stability_triton.M_BLOCK}
    sweeping = {**shared, "BLOCK_L": block_l, "UPCAST": False, "PRECISION": "tf32"}
    pointers = {"Q": dtype, "K": dtype, "X": dtype, "WORK": "fp32", "OUT": "fp32"}
    stages_of = {
        "grams": ({**sweeping, "REF_ROWS": stability_triton.REF_ROWS, "WITH_ETA": d == 64},
                  (), warps, stages),
        "weights": ({**shared, "WITH_ETA": d == 64}, ("field_scale",), warps, 1),
        "field": (sweeping, ("token_scale",), warps, stages),
        "finish": ({**shared, "BLOCKS": 1, "TOKEN_BLOCK": stability_triton.TOKEN_BLOCK},
                   ("head_scale",), stability_triton.STAGE_WARPS, 1),
    }
    found = {}
    for stage, (constants, floats, num_warps, num_stages) in stages_of.items():
        kernel = stability_triton._kernel(stage)
        signature = specialise(kernel, constants, pointers, floats, values)
        found[stage] = compile_sm90(kernel, *signature, num_warps, num_stages)
    return found


STABILITY_SWEEP = [(32, 8, 2), (64, 8, 2), (32, 4, 2), (16, 8, 2), (64, 8, 3), (16, 4, 2)]
ETA_SWEEP = [(64, 4, 3), (32, 4, 2), (128, 4, 3), (64, 8, 3), (32, 8, 2), (64, 8, 2)]


def tile_table(title: str, dtypes, defaults: dict, candidates: list, sweep: bool,
               compile_one, staged: bool = False) -> None:
    """One row per (dtype, head dim, tiles): ``defaults`` head dim -> the shipped tiles,
    ``compile_one(dtype, d, tiles)`` -> compile_sm90's dict, or with ``staged`` a dict of
    them by stage (one row per stage: the probe's kernels)."""
    print(title)
    stage_cell = " stage |" if staged else ""
    print(f"| dtype | d | tokens per tile | warps | stages |{stage_cell} regs/thread "
          "| spill (stack+local B) | shared KB | HGMMA | HMMA (pre-Hopper MMA) | |")
    print("|---|---:|---:|---:|---:|" + ("---|" if staged else "")
          + "---:|---:|---:|---:|---:|---|")
    for dtype in dtypes:
        for d, default in defaults.items():
            tiles = [default, *(c for c in candidates if c != default)] if sweep else [default]
            for config in tiles:
                note = "default" if config == default else ""
                cells = f"| {dtype} | {d} | {config[0]} | {config[1]} | {config[2]} |"
                try:
                    found = compile_one(dtype, d, config)
                except Exception as error:  # a config that does not fit is a finding
                    print(f"{cells}{' |' if staged else ''} failed: {type(error).__name__} "
                          f"| | | | | {note} |")
                    continue
                for stage, r in (found.items() if staged else [("", found)]):
                    print(f"{cells}{f' {stage} |' if staged else ''} {r['regs']} | "
                          f"{r['stack'] + r['local']} | {r['shared_kb']:.0f} | {r['hgmma']} | "
                          f"{r['hmma']} | {note} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="also compile candidate tiles")
    parser.add_argument("--dtype", choices=sorted(TYPES), action="append",
                        help="only these dtypes (repeatable); default all")
    parser.add_argument("--fp32-precision", default=fused_triton.FP32_DOT_PRECISION,
                        help="tl.dot input_precision for fp32 inputs (tf32, tf32x3, ieee)")
    parser.add_argument("--kernel", choices=["fused", "eta", "stability", "all"],
                        default="all", help="which kernel (default: all three)")
    args = parser.parse_args()
    halves = [t for t in ("fp16", "bf16") if not args.dtype or t in args.dtype]
    if args.kernel in ("eta", "all"):
        tile_table("Symmetry-index kernel (split tokens) compiled for sm_90a", halves,
                   eta_triton.ETA_CONFIGS, ETA_SWEEP, args.sweep, compile_eta)
        for d in eta_triton.ETA_CONFIGS:
            r = compile_eta_reduce(d)
            print(f"Its reduction, d = {d}: {r['regs']} registers per thread, "
                  f"{r['stack'] + r['local']} B spilled, {r['shared_kb']:.0f} KB shared")
        print()
    if args.kernel in ("stability", "all"):
        tile_table("Stability Probe kernels compiled for sm_90a (m = d; tiles: the grams' and "
                   "field's)", halves,
                   {d: tiles for (d, _), tiles in stability_triton.STABILITY_CONFIGS.items()},
                   STABILITY_SWEEP, args.sweep, compile_stability, staged=True)
        print()
    if args.kernel not in ("fused", "all"):
        return
    rows = []
    for (d, dtype), cfg in DEFAULT_CONFIGS.items():
        if args.dtype and dtype not in args.dtype:
            continue
        rows.append((dtype, d, cfg, "default"))
        if dtype != "fp32":  # tensor alphas, and eta-bar with the coefficients in-kernel
            rows += [(dtype, d, cfg, "per-sample"), (dtype, d, cfg, "adaptive")]
        if dtype == "bf16":  # as before V's fp16 copy: each program converts V's tiles
            rows.append((dtype, d, cfg, "V in the loop"))
        if args.sweep:
            rows += [(dtype, d, c, "") for c in SWEEP if c != cfg]
    print("Fused kernel compiled for sm_90a (Hopper) by Triton", end=" ")
    import triton

    print(triton.__version__)
    print("| dtype | d | BLOCK_M | BLOCK_N | warps | stages | regs/thread | spill (stack+local B) "
          "| shared KB | HGMMA | MUFU.EX2 | main loop | its float ops | its spills | |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for dtype, d, cfg, note in rows:
        try:
            r = compile_config(dtype, d, cfg, args.fp32_precision,
                               variant=note if note in ("per-sample", "adaptive") else "skew",
                               v16_copy=note != "V in the loop")
        except Exception as error:  # a config that does not fit is a finding, not a crash
            print(f"| {dtype} | {d} | {cfg.block_m} | {cfg.block_n} | {cfg.num_warps} | "
                  f"{cfg.num_stages} | failed: {type(error).__name__} | | | | | | | | {note} |")
            continue
        print(f"| {dtype} | {d} | {cfg.block_m} | {cfg.block_n} | {cfg.num_warps} | "
              f"{cfg.num_stages} | {r['regs']} | {r['stack'] + r['local']} | "
              f"{r['shared_kb']:.0f} | {r['hgmma']} | {r['mufu_ex2']} | {r['loop']} | "
              f"{r['loop_fp32']} | {r['loop_spill']} | {note} |", flush=True)


if __name__ == "__main__":
    main()

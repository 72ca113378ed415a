#!/usr/bin/env bash
# What a lent GPU session checks, one part per command from the repository root (device time is
# scarce: one start, the outputs written as they come so a timeout keeps what ran). A session's
# 15 minutes of device time include the machine's start (about 40 s) and every idle second; the
# machine goes back after 30 s idle, so send the next command at once. Carry .gpu (laid out by
# the workplace's gpu-bundle.sh: a ComfyUI copy and its missing wheels) and run, most needed
# first, two commands back to back (limits from the third lent session, 2026-11-27, on a fresh
# H200, where every Triton kernel compiles for the first time: there the old single "main" of
# 550 s of limits cut off both the tier, at its full-size cases, and the kernel table):
#
#   bash benchmarks/gpu_session.sh main       # <= 415 s: the tier (no full-size, no compile),
#                                             # host and launch costs, SDXL and SD3 fp16 tables
#   bash benchmarks/gpu_session.sh kernels    # <= 290 s: the per-call kernel table, SDXL bf16,
#                                             # the tier's two full-size sampling cases
#   bash benchmarks/gpu_session.sh sweeps     # <= 180 s: tile and token-chunk sweeps (d = 64)
#   bash benchmarks/gpu_session.sh families   # <= 330 s: SD3 bf16, SD3.5-medium
#   bash benchmarks/gpu_session.sh d128       # never run: Flux's head width per call, tiles
#   bash benchmarks/gpu_session.sh compiled   # <= 510 s, a command of its own
#   bash benchmarks/gpu_session.sh compiled_e2e  # <= 420 s, a command of its own
#   bash benchmarks/gpu_session.sh compiled_probe  # <= 420 s: the Probe under
#                                             # TorchCompileModel, end to end
#   HC_GPU_SKIP="gpu_tier triton_launch" bash benchmarks/gpu_session.sh main
#
# main: the GPU test tier without its compile and full-size cases (95 cases in 101 s on a warm
# H200; over 170 s cold); the host's time per steered call (fused path, fp16, tiny shapes) and
# per launch (Triton's own against the cached launcher); the full-size end-to-end tables in
# fp16 (SDXL, then SD3-medium), each its own process, so a slow one still leaves the others'
# rows. kernels: the per-call kernel table (over 85 s cold: it compiles every path's kernels),
# SDXL's end-to-end table in bf16, and the tier's full-size sampling through ComfyUI (SDXL and
# SD3-medium, uncompiled). sweeps: the fused kernel's tile candidates and the probe's and eta's
# token chunks, after the table (``bench_gpu.py --sweep-only``). families: the models and
# dtypes main leaves out. d128: the per-call table and sweeps at Flux's shape (d = 128, never
# timed on a device; the sweep compiles a dozen tiles per dtype, so it gets a command of its
# own). compiled: the tier's compile cases (torch.compile of the steering and the tiny models'
# Probe under TorchCompileModel, then full-size sampling under it), then SDXL's space = input
# row. compiled_e2e: TorchCompileModel alone and with Skew on SDXL fp16 (each inductor compile
# of the UNet takes minutes: 90 s did not finish the first). HC_GPU_STEPS / HC_GPU_ROUNDS
# shorten the end-to-end runs.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-/tmp/hc-gpu}
mkdir -p "$out"
if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu/ComfyUI ] && export COMFYUI_PATH=$PWD/.gpu/ComfyUI
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
steps=${HC_GPU_STEPS:-10}
rounds=${HC_GPU_ROUNDS:-3}

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, say how it ended
  local name=$1 limit=$2
  shift 2
  case " ${HC_GPU_SKIP:-} " in *" $name "*) echo "== $name: skipped (HC_GPU_SKIP)"; return;; esac
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "== $name: exit $?"
  tail -n 12 "$out/$name.txt"
}

export PYTHONUNBUFFERED=1
# a hung test ends itself, not the whole step (where pytest-timeout is installed: pytest
# refuses the flag without it)
timeout_flag=()
compile_timeout_flag=()
if "$py" -c "import pytest_timeout" 2>/dev/null; then
  timeout_flag=(--timeout 90)
  compile_timeout_flag=(--timeout 280)  # the later flag wins
fi
tier=("$py" -m pytest tests/gpu tests/core -m gpu -v -rs -p no:cacheprovider --durations 12 "${timeout_flag[@]}")
compile_cases="compile or (full_size and True)"  # full_size ids: [<compiled>-<model>]
uncompiled_full_size="full_size and False"

# Each part's limits sum to under the device tool's 600 s per command, with room for set-up.
for part in "${@:-main}"; do
  case $part in
  main)
    step gpu_tier 200 "${tier[@]}" -k "not (compile or full_size)"
    # the table's tiles, no timing of candidates: these steps measure the host, not the tiles
    HOPFIELD_CIRCULATION_TUNE=0 step triton_launch 20 "$py" benchmarks/bench_triton_launch.py \
      --device cuda
    HOPFIELD_CIRCULATION_TUNE=0 step host_overhead 25 "$py" benchmarks/bench_host_overhead.py \
      --device cuda --dtype fp16
    # one model per step, so that a slow row costs only its own model's later rows
    step bench_e2e_sdxl_fp16 100 "$py" benchmarks/bench_e2e_gpu.py --models sdxl --dtypes fp16 \
      --steps "$steps" --rounds "$rounds" --skip TorchCompileModel "space = input"
    step bench_e2e_sd3_fp16 70 "$py" benchmarks/bench_e2e_gpu.py --models sd3-medium \
      --dtypes fp16 --steps "$steps" --rounds "$rounds" --skip TorchCompileModel
    ;;
  kernels)
    step bench_gpu 110 "$py" benchmarks/bench_gpu.py --quick
    step bench_e2e_bf16 80 "$py" benchmarks/bench_e2e_gpu.py --models sdxl --dtypes bf16 \
      --steps "$steps" --rounds "$rounds" --skip TorchCompileModel "space = input" core
    step gpu_tier_full_size 100 "${tier[@]}" -k "$uncompiled_full_size"
    ;;
  sweeps)
    step bench_gpu_sweeps 180 "$py" benchmarks/bench_gpu.py --quick --sweep-only
    ;;
  compiled)
    # the small compile cases first (the steering's graph, the probe's kernels as one op, the
    # Probe's records under TorchCompileModel), so that a slow full-size compile cannot cut
    # them off
    step gpu_tier_compile_tiny 170 "${tier[@]}" -k "compile and not full_size"
    # one full-size compile (SDXL) in the tier: on an H200, dynamo alone traced the UNet for
    # over 90 s, so this part gets a command of its own and the test a longer limit
    step gpu_tier_compile 280 "${tier[@]}" -k "full_size and True and sdxl" \
      "${compile_timeout_flag[@]}"
    # the authors' formulation is several times a step: its row alone, after the rest
    step bench_e2e_input_space 60 "$py" benchmarks/bench_e2e_gpu.py --models sdxl \
      --dtypes fp16 --steps "$steps" --rounds 2 --only "space = input"
    ;;
  compiled_e2e)
    step bench_e2e_compiled 420 "$py" benchmarks/bench_e2e_gpu.py --models sdxl --dtypes fp16 \
      --steps "$steps" --rounds 2 --only TorchCompileModel --skip Adaptive Probe
    ;;
  compiled_probe)
    # the Probe compiled with the UNet (its measurement traced into the graph): one more
    # inductor compile of the UNet, so a command of its own
    step bench_e2e_compiled_probe 420 "$py" benchmarks/bench_e2e_gpu.py --models sdxl \
      --dtypes fp16 --steps "$steps" --rounds 2 --only "TorchCompileModel + Probe"
    ;;
  families)
    # the rows main leaves out: SD3-medium in bf16, SD3.5-medium (its extra image
    # self-attention blocks), the peers' rows there included
    step bench_e2e_sd3_bf16 90 "$py" benchmarks/bench_e2e_gpu.py --models sd3-medium \
      --dtypes bf16 --steps "$steps" --rounds "$rounds" --skip TorchCompileModel
    step bench_e2e_sd35_fp16 120 "$py" benchmarks/bench_e2e_gpu.py --models sd3.5-medium \
      --dtypes fp16 --steps "$steps" --rounds "$rounds" --skip TorchCompileModel
    step bench_e2e_sd35_bf16 120 "$py" benchmarks/bench_e2e_gpu.py --models sd3.5-medium \
      --dtypes bf16 --steps "$steps" --rounds "$rounds" --skip TorchCompileModel
    ;;
  d128)
    step bench_gpu_d128 300 "$py" benchmarks/bench_gpu.py --quick --sweep --shapes d128
    ;;
  *)
    echo "gpu_session.sh: unknown part '$part' (main, kernels, sweeps, families, compiled," \
      "compiled_e2e, compiled_probe, d128)" >&2
    exit 2
    ;;
  esac
done

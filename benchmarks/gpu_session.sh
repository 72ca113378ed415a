#!/usr/bin/env bash
# Everything one lent GPU session checks, as one command from the repository root (device time
# is scarce: one start, every check, the outputs written as they come so a timeout keeps what
# ran). Carry .gpu (laid out by the workplace's gpu-bundle.sh: a ComfyUI copy and its missing
# wheels) and run:
#
#   bash benchmarks/gpu_session.sh             # writes $OUT/*.txt (else /tmp/hc-gpu)
#
# Order, most needed first: the GPU test tier; the host's time per steered call (fused path,
# fp16, tiny shapes) and per launch (Triton's own against the cached launcher); the per-call
# kernel table with the tile sweep;
# the full-size end-to-end table, fp16 then bf16 (each its own process, so a slow one still
# leaves the other's rows), then TorchCompileModel's variants on SDXL fp16 (compiling is
# slow). HC_GPU_STEPS / HC_GPU_ROUNDS shorten the end-to-end runs.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-/tmp/hc-gpu}
mkdir -p "$out"
if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu/ComfyUI ] && export COMFYUI_PATH=$PWD/.gpu/ComfyUI
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
steps=${HC_GPU_STEPS:-10}
rounds=${HC_GPU_ROUNDS:-3}

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, say how it ended
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "== $name: exit $?"
  tail -n 40 "$out/$name.txt"
}

# Limits sum to under the device tool's 600 s per command, with room for the wheel install.
step gpu_tier 165 "$py" -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider
# the table's tiles, no timing of candidates: this step measures the host, not the tiles
HOPFIELD_CIRCULATION_TUNE=0 step host_overhead 40 "$py" benchmarks/bench_host_overhead.py \
  --device cuda --dtype fp16
HOPFIELD_CIRCULATION_TUNE=0 step triton_launch 20 "$py" benchmarks/bench_triton_launch.py \
  --device cuda
step bench_gpu 90 "$py" benchmarks/bench_gpu.py --quick --sweep
for dtype in fp16 bf16; do
  step "bench_e2e_$dtype" 95 "$py" benchmarks/bench_e2e_gpu.py --dtypes "$dtype" \
    --steps "$steps" --rounds "$rounds" --skip TorchCompileModel
done
step bench_e2e_compiled 55 "$py" benchmarks/bench_e2e_gpu.py --models sdxl --dtypes fp16 \
  --steps "$steps" --rounds 2 --only TorchCompileModel

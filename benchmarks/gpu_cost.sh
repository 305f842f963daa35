#!/usr/bin/env bash
# What replicating the paper costs, in one command for a session lent a GPU machine (H100/H200;
# no internet there, and none needed: stand-in data, no ImageNet weights, no carried wheels).
#
# On the device (the `run` tool, from the repository root, timeout_s ~540):
#                                             bash benchmarks/gpu_cost.sh
# On a CPU machine, to test the logic:        GPU_COST_DEVICE=cpu bash benchmarks/gpu_cost.sh
#
# Measures every paper config's jobs on stand-in data at the paper's image size and class count
# (benchmarks/gpu_cost.py measure: one pretraining epoch, the Fisher of a forget class at its
# full size, PBU and each baseline, one evaluation), within GPU_COST_BUDGET seconds (default 420;
# the most costly configs first, pairs that would start later are listed as not measured), then
# prints "what replicating the paper costs" (GPU-hours per config) and the resources each config
# should request (measured x GPU_COST_SAFETY, default 2).
#
# What comes back, in "${OUT:-benchmarks/gpu-results/<date>/cost}":
#   gpu_cost.json    every measurement (rewritten after each pair: a run cut short keeps them)
#   resources.json   GPU-hours per config and the derived resources
#   gpu_cost.log     everything printed
# Then, on the developer machine: python benchmarks/gpu_cost.py apply <dir>/resources.json
# writes the resources into config/paper/*.yaml (review the diff).
#
# Environment: GPU_COST_DEVICE (cuda | cpu; cpu = --tiny), GPU_COST_BUDGET (seconds),
# GPU_COST_SAFETY, GPU_COST_CONFIGS (comma-separated names), GPU_COST_ARGS (more measure
# options, e.g. "--fisher-full"), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE="${GPU_COST_DEVICE:-cuda}"
OUT_DIR="${OUT:-benchmarks/gpu-results/$(date +%F)/cost}"
PY="${PYTHON:-python3}"
SAFETY="${GPU_COST_SAFETY:-2}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_cost.log"
: > "$LOG"

args=(measure --device "$DEVICE" --out "$OUT_DIR/gpu_cost.json")
if [ "$DEVICE" = cpu ]; then
  args+=(--tiny --budget "${GPU_COST_BUDGET:-600}" --configs "${GPU_COST_CONFIGS:-fashion_mnist}")
else
  args+=(--budget "${GPU_COST_BUDGET:-420}")
  [ -n "${GPU_COST_CONFIGS:-}" ] && args+=(--configs "$GPU_COST_CONFIGS")
  { nvidia-smi || echo "(no nvidia-smi)"; } 2>&1 | tee -a "$LOG"
fi
# shellcheck disable=SC2206
[ -n "${GPU_COST_ARGS:-}" ] && args+=($GPU_COST_ARGS)

echo "== measure: $PY benchmarks/gpu_cost.py ${args[*]}" | tee -a "$LOG"
"$PY" benchmarks/gpu_cost.py "${args[@]}" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "== measure: rc $rc" | tee -a "$LOG"
if [ -s "$OUT_DIR/gpu_cost.json" ]; then
  "$PY" benchmarks/gpu_cost.py report "$OUT_DIR/gpu_cost.json" --safety "$SAFETY" \
    --out "$OUT_DIR/resources.json" 2>&1 | tee -a "$LOG"
  rc2=${PIPESTATUS[0]}
  [ "$rc2" = 0 ] || rc=$rc2
else
  echo "!! no measurement was written" | tee -a "$LOG"
  rc=1
fi
echo "== done (rc $rc); results in $OUT_DIR: $(cd "$OUT_DIR" && echo *)" | tee -a "$LOG"
exit "$rc"

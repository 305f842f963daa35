#!/usr/bin/env bash
# Every GPU number of the performance issue in one command, for a session lent a GPU machine
# (H100/H200, no internet, no snakemake/mlflow/mlxtend/nngeometry/jsonschema there).
#
# Here, on the developer machine (it has PyPI):   bash benchmarks/gpu_wheels.sh      (-> .whl/)
# On the device (the `run` tool, carry [".whl"], timeout_s ~540, from the repository root):
#                                                 bash benchmarks/gpu_check.sh
# On a CPU machine, to test the script's logic:   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh
#
# Steps, in order of priority, each under its own `timeout` and all of them within
# GPU_CHECK_BUDGET seconds (default 480 on CUDA: a step gets at most what is left); a failed or
# timed-out step does not stop the next one:
#
#   env            nvidia-smi, torch, CUDA, the device; the carried packages import
#   pytest         tests/unit/test_cuda.py (the CUDA tests and their CPU twins)
#   train          bench_train.py: ResNet-18 (3x32x32) and the small CNN, img/s per variant
#                  (fp32, channels_last, bf16, both, both with non-deterministic kernels)
#   fisher_small   bench_fisher.py: small CNN trained on the mnist5k digits, ours vs nngeometry
#   fisher_resnet  bench_fisher.py: ResNet-18 32x32, ours vs nngeometry
#   pipeline       bench_pipeline.py: PBU (Fisher + unlearning) / oracle on mnist5k
#   rules          gpu_check.py rules: each compute rule as a fresh `pbu` process on mnist5k,
#                  its own peak GPU memory (torch.cuda.max_memory_allocated) and time
#   train_compile  bench_train.py: ResNet-18 channels_last + bf16 + torch.compile (CUDA only;
#                  last because compiling is the slowest and least certain part)
#
# What comes back, in "${OUT:-results/gpu}" (7 files, no folders):
#   gpu_check.json   every step's status/time/limit and the headline numbers (rewritten after
#                    each step, so a run cut short still reports what finished)
#   gpu_check.log    everything every step printed
#   bench_train.json, bench_train_compile.json, bench_fisher.json (both models),
#   bench_pipeline.json, rules.json
#
# Environment: GPU_CHECK_DEVICE (cuda | cpu; cpu = tiny settings), GPU_CHECK_BUDGET (seconds),
# GPU_CHECK_STEPS (comma-separated subset of the step names), GPU_CHECK_WHEELS=1 (install .whl/
# on a CPU run too; by default only on CUDA), PYTHON (default python3).
# Exit status 0 only when every step that was due passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT_DIR="${OUT:-results/gpu}"
PY="${PYTHON:-python3}"
ONLY="${GPU_CHECK_STEPS:-}"
if [ "$DEVICE" = cpu ]; then BUDGET="${GPU_CHECK_BUDGET:-900}"; else BUDGET="${GPU_CHECK_BUDGET:-480}"; fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

mkdir -p "$OUT_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT_DIR/gpu_check.log"
STEPS="$WORK/steps.tsv"
: > "$LOG"
: > "$STEPS"
rm -f "$OUT_DIR"/bench_train.json "$OUT_DIR"/bench_train_compile.json \
  "$OUT_DIR"/bench_fisher.json "$OUT_DIR"/bench_pipeline.json "$OUT_DIR"/rules.json \
  "$OUT_DIR"/gpu_check.json
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }

# (a) the carried wheels; pbu itself runs from this source tree (PYTHONPATH), not installed.
SITE="${GPU_CHECK_SITE:-/tmp/site}"
if compgen -G ".whl/*.whl" > /dev/null && { [ "$DEVICE" != cpu ] || [ "${GPU_CHECK_WHEELS:-0}" = 1 ]; }; then
  say "== installing carried wheels into $SITE: $(cd .whl && echo *.whl)"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl >> "$LOG" 2>&1; then
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "!! wheel install failed (see above); steps needing nngeometry/mlxtend/jsonschema will fail"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  [ "$DEVICE" != cpu ] && say "!! no .whl/ here: run 'bash benchmarks/gpu_wheels.sh' on the developer machine and carry .whl"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

summary() {  # rewrite gpu_check.json from what is there now (--final: print the headline too)
  if [ "${1:-}" = --final ]; then
    "$PY" benchmarks/gpu_check.py summary --steps "$STEPS" --out-dir "$OUT_DIR" --work "$WORK" \
      --device "$DEVICE" --final 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || say "!! summary failed"
  else
    "$PY" benchmarks/gpu_check.py summary --steps "$STEPS" --out-dir "$OUT_DIR" --work "$WORK" \
      --device "$DEVICE" >> "$LOG" 2>&1 || say "!! summary failed"
  fi
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$STEPS"; }

# run_step NAME LIMIT_S CMD...: run under `timeout`, log, record status; never stops the script.
run_step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return 0; fi
  local left=$(( BUDGET - (SECONDS - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 15 )); then
    say "== $name: not run, ${left}s left of the ${BUDGET}s budget"
    record "$name" no_time 0 0 "$limit"
    summary
    return 0
  fi
  say "== $name (limit ${limit}s, at $(( SECONDS - START ))s): $*"
  local t0=$SECONDS rc status
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=passed ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  say "== $name: $status (rc $rc, $(( SECONDS - t0 ))s)"
  record "$name" "$status" "$rc" "$(( SECONDS - t0 ))" "$limit"
  summary
}

skip_step() {  # NAME WHY
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$1,"* ]]; then return 0; fi
  say "== $1: skipped ($2)"
  record "$1" skipped 0 0 0
}

BT=benchmarks/bench_train.py
BF=benchmarks/bench_fisher.py
BP=benchmarks/bench_pipeline.py
GC=benchmarks/gpu_check.py

if [ "$DEVICE" = cpu ]; then
  # Tiny settings: the logic, not the numbers.
  run_step env 60 "$PY" $GC env --device cpu --out "$WORK/env.json"
  run_step pytest 180 "$PY" -m pytest tests/unit/test_cuda.py -q -rs -p no:cacheprovider \
    --junitxml="$WORK/pytest.xml"
  run_step train 120 "$PY" $BT --device cpu --models resnet18,small_cnn --variants fp32,cl \
    --batch-size 4 --steps 2 --repeats 1 --threads 1 --out "$OUT_DIR/bench_train.json"
  run_step fisher_small 120 "$PY" $BF --device cpu --models small_cnn --n 16 --batch-size 16 \
    --chunk-size 16 --trained --epochs 1 --channels-last --repeats 1 --threads 1 \
    --out "$WORK/bench_fisher_small_cnn.json"
  run_step fisher_resnet 120 "$PY" $BF --device cpu --models resnet18 --n 2 --batch-size 2 \
    --chunk-size 2 --channels-last --repeats 1 --threads 1 \
    --out "$WORK/bench_fisher_resnet18.json"
  run_step pipeline 180 "$PY" $BP --device cpu --forget 2 --subset 30 --epochs 1 \
    --methods pbu --out "$OUT_DIR/bench_pipeline.json"
  run_step rules 240 "$PY" $GC rules --device cpu --work "$WORK/rules" \
    --out "$OUT_DIR/rules.json" --methods pbu --max-train-per-class 30 --epochs 1 \
    --eval-settings '{"relearn": false, "probe": false, "mia_max_samples": 50}'
  skip_step train_compile "torch.compile is measured on CUDA only"
else
  run_step env 60 bash -c 'nvidia-smi || echo "(no nvidia-smi)"; exec "$@"' _ \
    "$PY" $GC env --device "$DEVICE" --out "$WORK/env.json"
  run_step pytest 120 "$PY" -m pytest tests/unit/test_cuda.py -v -rs -p no:cacheprovider \
    --junitxml="$WORK/pytest.xml"
  run_step train 150 "$PY" $BT --device "$DEVICE" --models resnet18,small_cnn \
    --variants fp32,cl,bf16,cl_bf16,cl_bf16_nondet --out "$OUT_DIR/bench_train.json"
  run_step fisher_small 90 "$PY" $BF --device cuda --models small_cnn --n 1024 \
    --batch-size 256 --chunk-size 256 --trained --channels-last --repeats 3 --fp64-ref \
    --layers --cpu-blocks --unstacked --out "$WORK/bench_fisher_small_cnn.json"
  run_step fisher_resnet 120 "$PY" $BF --device cuda --models resnet18 --n 512 \
    --batch-size 128 --chunk-size 64 --channels-last --repeats 3 --fp64-ref --cpu-blocks \
    --out "$WORK/bench_fisher_resnet18.json"
  run_step pipeline 120 "$PY" $BP --device "$DEVICE" --methods pbu \
    --out "$OUT_DIR/bench_pipeline.json"
  run_step rules 150 "$PY" $GC rules --device "$DEVICE" --work "$WORK/rules" \
    --out "$OUT_DIR/rules.json" --methods pbu,ssd,scrub --threads 4
  run_step train_compile 240 "$PY" $BT --device "$DEVICE" --models resnet18 \
    --variants cl_bf16_compile --no-diagnostics --out "$OUT_DIR/bench_train_compile.json"
fi

if [ -f "$WORK/rules/rules.log" ]; then
  { echo "== rules: the pbu jobs' own logs"; cat "$WORK/rules/rules.log"; } >> "$LOG"
fi
summary --final
say "== done in $(( SECONDS - START ))s; results in $OUT_DIR: $(cd "$OUT_DIR" && echo *)"
if [ -s "$STEPS" ] && ! cut -f2 "$STEPS" | grep -qvE '^(passed|skipped)$'; then
  say "== all steps passed"
  exit 0
fi
say "== NOT all steps passed: $(awk -F'\t' '$2 != "passed" && $2 != "skipped" {printf "%s=%s ", $1, $2}' "$STEPS")"
exit 1

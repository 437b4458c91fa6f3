#!/usr/bin/env bash
# Everything a GPU can prove, in one run (about 5 minutes on one H100/H200; stages have time limits):
#   CUDA projection kernel parity and timing, fast serving path parity (bf16 on CUDA against float32),
#   gated view attention = base model before training (5B, bf16), the 5B serving benchmark (1 and 5
#   denoising steps, peak memory), 5B LoRA training steps with and without activation checkpointing (step
#   time, peak memory) next to the memory plan. Random weights built on the GPU; nothing is downloaded.
# Writes the fragments and $OUT/gpu_check.md (OUT defaults to out/gpu-check).
#
#   scripts/gpu-check.sh                # on a GPU machine
#   scripts/gpu-check.sh --cpu-smoke    # the same stages with the tiny model on a CPU (under a minute)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
SMOKE=""
[ "${1:-}" = "--cpu-smoke" ] && SMOKE="--cpu-smoke"
status=0

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, keep going on failure
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  echo "| $name | $rc | $((SECONDS - started)) |" >> "$OUT/stages.txt"
  [ "$rc" -eq 0 ] || status=1
}

: > "$OUT/stages.txt"
stage environment 60 python bench/gpu_check.py environment --out "$OUT" $SMOKE

run_tests() {
  local log="$OUT/pytest.log"
  if [ -n "$SMOKE" ]; then
    python -m pytest -q -p no:cacheprovider test/test_fast_path_parity.py -k "bad_fast_path or merge_folds" \
      "test/test_model_transformer.py::test_untrained_wan_style_model_is_the_base_model_on_each_view" > "$log" 2>&1
  else
    python -m pytest -q -p no:cacheprovider -rs test/test_cuda_projection.py test/test_fast_path_parity.py \
      test/test_model_transformer.py > "$log" 2>&1
  fi
  local rc=$?
  { echo "## Tests (CUDA projection parity, fast-path parity, transformer)"; echo; echo '```'
    grep -E "passed|failed|error|SKIPPED" "$log" | tail -n 15; echo '```'; } > "$OUT/tests.md"
  return $rc
}
export OUT SMOKE
export -f run_tests
stage tests 240 bash -c run_tests

stage parity 120 python bench/gpu_check.py parity --out "$OUT" $SMOKE

run_serving() {
  local args=(--steps 1 5 --warmup 1 --repeats 3)
  [ -n "$SMOKE" ] && args=(--config tiny --allow-cpu --steps 1 --warmup 0 --repeats 1 --points 5000)
  python bench/bench_serving.py "${args[@]}" > "$OUT/serving.log" 2>&1
  local rc=$?
  { echo "## Serving benchmark (fast path; cloud -> chunk, ms)"; echo
    sed -n '/fast path on/,$p' "$OUT/serving.log"; } > "$OUT/serving.md"
  return $rc
}
export -f run_serving
stage serving 180 bash -c run_serving

if [ -n "$SMOKE" ]; then
  stage train_step 120 python bench/gpu_check.py train-step --out "$OUT" --steps 1 --without-checkpointing $SMOKE
else
  stage train_step 240 python bench/gpu_check.py train-step --out "$OUT" --steps 3 --without-checkpointing
fi

python bench/gpu_check.py report --out "$OUT" $SMOKE > /dev/null
{ echo; echo "## Stages"; echo; echo "| stage | exit | seconds |"; echo "| --- | ---: | ---: |"
  cat "$OUT/stages.txt"; } >> "$OUT/gpu_check.md"
echo "report: $OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
exit $status

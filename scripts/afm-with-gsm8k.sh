#!/usr/bin/env bash
# One GPU-machine session of issues 5 and 8 (docs/results/smollm2-afm.md run 5 and
# docs/results/smollm2-gsm8k.md): the AFM run on the GPU (scripts/afm-experiment.sh: datagen,
# training) while the CPU cores sample GSM8K from the FP model, digital and on a noisy chip; then
# the AFM's evaluation table, its GSM8K curve on a noisy chip and its W4A8 roundings.
# Usage: scripts/afm-with-gsm8k.sh AFM_BINARY WORK_DIR TOKENS STEPS [JOBS]
#   CONFIG=FILE  training configuration (default scripts/smollm2-afm-run5.toml)
#   PROBLEMS=N   GSM8K problems (the first N of the test file; default 16)
#   SAMPLES=N    samples per problem (default 16)
# Every stage resumes from what is on disk; WORK_DIR/done marks the end.
set -euo pipefail
afm=$1 work=$2 tokens=$3 steps=$4 jobs=${5:-16}
data=${AFM_DATA:-../shared/data}
problems=${PROBLEMS:-16} samples=${SAMPLES:-16}
export CONFIG=${CONFIG:-scripts/smollm2-afm-run5.toml}
calib="--calib-text $data/text/tinyshakespeare.txt"
mkdir -p "$work"
scripts/gsm8k-shards.sh "$data" "$work/gsm8k-data" "$problems"
# One job line per (row, problem): AFM_DATA points at the problem's own folder.
gsm() {
  local row=$1 model=$2; shift 2
  for p in "$work"/gsm8k-data/p*; do
    echo "AFM_DATA=$p $afm eval --model $model --tasks gsm8k --samples $samples --limit 1" \
      "--out $work/gsm8k/$row/$(basename "$p") $*"
  done
}
pool() { RAYON_NUM_THREADS=1 xargs -P "$1" -I{} sh -c "{} > /dev/null 2>&1 || echo 'failed: {}'"; }

DATAGEN_BATCH=2048 STOP_AFTER=train scripts/afm-experiment.sh "$afm" "$work" "$tokens" "$steps" \
  > "$work/gpu.log" 2>&1 &
gpu=$!
{ gsm fp smollm2-135m-instruct
  gsm fp-noise smollm2-135m-instruct --no-baseline --tiles afm-paper --seed 0 --seeds 1 $calib
} | pool $((jobs - 2))
wait $gpu || { echo "GPU stage failed: see $work/gpu.log" >&2; exit 1; }

final=$work/train/final
quant() { [ -f "$work/$1/quantization.json" ] || $afm quantize --model "$final" --weights int4 \
  "${@:2}" --inputs static8 --out "$work/$1" > /dev/null; }
# Groups of 64: the better of the two W4 roundings of FP SmolLM2 (docs/results/smollm2-w4a8.md).
quant afm-w4g64a8 --group-size 64
tasks="hellaswag lambada_openai wikitext2 arc_challenge arc_easy piqa boolq winogrande"
# The AFM's table (its own pool of JOBS) beside a pool for its GSM8K curve and W4A8 cells: the
# cores are oversubscribed 1.5x so that neither pool's tail leaves them idle.
SKIP_DATAGEN=1 scripts/afm-experiment.sh "$afm" "$work" "$tokens" "$steps" "$jobs" \
  > "$work/eval.log" 2>&1 &
table=$!
{ for t in $tasks; do
    echo "$afm eval --model $work/afm-w4g64a8 --tasks $t --limit 100 --text-tokens 4096" \
      "--out $work/eval-afm-w4g64a8"
  done
  gsm afm-noise "$final" --no-baseline --tiles afm-paper --seed 0 --seeds 1
} | pool $((jobs / 2))
wait $table || { echo "evaluation failed: see $work/eval.log" >&2; exit 1; }
for q in afm-w4g64a8; do
  $afm eval --model "$work/$q" --tasks "$(echo $tasks | tr ' ' ,)" --limit 100 \
    --text-tokens 4096 --out "$work/eval-$q" > /dev/null
done
python3 scripts/gsm8k-curve.py "$work/gsm8k-curve" "FP=$work/gsm8k/fp" \
  "FP + noise=$work/gsm8k/fp-noise" "AFM + noise=$work/gsm8k/afm-noise"
touch "$work/done"

#!/usr/bin/env bash
# On the device (from scripts/device/start.sh with GPU_EVAL set): trains on the committed
# synthetic data in WORK/data, then evaluates the trained model on the GPU at LIMIT items per
# task (scripts/device/gpu-eval.sh: `ideal` and five `afm-paper` chips). With FP_EXTRA set, the
# FP model's rows again with those `afm eval` flags (e.g. a mapping without training) into
# WORK/eval-fp-extra-ideal (`ideal`) and WORK/eval-fp-extra (five chips). The model folders the
# run exported along the way (`[run] export_every`, the last step's left out: it is the final
# model) get their `ideal` row in WORK/eval-exports, and with EXPORT_SEEDS=N their rows on the
# first N chips too. With EXTRA_EVAL=FLAGS the final model's five chips again with those flags
# (e.g. --weight-clip least-error) into WORK/eval-extra; SKIP_EVAL=1 leaves out the final
# model's plain rows and the exports' (only EXTRA_EVAL's and FP_EXTRA's run); with IDEAL=1 as
# well, the final model's plain `ideal` row still runs (WORK/eval/afm-ideal).
# With CONFIG2 set (a configuration, or several separated by spaces), a run of the first follows
# in WORK/second (same data, steps and evaluation), the next in WORK/second/second, and so on.
# WORK/done marks the end of all.
# Usage: CONFIG=FILE scripts/device/train-and-eval.sh AFM_BINARY WORK_DIR STEPS LIMIT
set -euo pipefail
afm=$1 work=$2 steps=$3 limit=$4
SKIP_DATAGEN=1 STOP_AFTER=train scripts/afm-experiment.sh "$afm" "$work" 0 "$steps" \
  > "$work/gpu.log" 2>&1
[ -n "${SKIP_EVAL:-}" ] || SKIP_FP=1 scripts/device/gpu-eval.sh "$afm" "$work/train/final" \
  "$work/eval" "$limit" > "$work/eval.log" 2>&1
[ -z "${SKIP_EVAL:-}" ] || [ -z "${IDEAL:-}" ] || SKIP_FP=1 SEEDS=0 scripts/device/gpu-eval.sh \
  "$afm" "$work/train/final" "$work/eval" "$limit" > "$work/eval.log" 2>&1
for m in "$work"/train/model-*; do
  [ -z "${SKIP_EVAL:-}" ] && [ -d "$m" ] && [ "$((10#${m##*model-}))" != "$steps" ] || continue
  SKIP_FP=1 SEEDS=${EXPORT_SEEDS:-0} scripts/device/gpu-eval.sh "$afm" "$m" \
    "$work/eval-exports/${m##*/}" "$limit" >> "$work/eval-exports.log" 2>&1
done
if [ -n "${EXTRA_EVAL:-}" ]; then
  SKIP_FP=1 SKIP_IDEAL=1 AFM_EXTRA="$EXTRA_EVAL" scripts/device/gpu-eval.sh "$afm" \
    "$work/train/final" "$work/eval-extra" "$limit" > "$work/eval-extra.log" 2>&1
fi
if [ -n "${FP_EXTRA:-}" ]; then
  FP_TILES=ideal FP_SEEDS=1 scripts/device/gpu-eval.sh "$afm" - "$work/eval-fp-extra-ideal" \
    "$limit" > "$work/eval-fp-extra.log" 2>&1
  scripts/device/gpu-eval.sh "$afm" - "$work/eval-fp-extra" "$limit" >> "$work/eval-fp-extra.log" 2>&1
fi
if [ -n "${CONFIG2:-}" ]; then
  read -r next rest <<< "$CONFIG2"
  mkdir -p "$work/second" && ln -sfn "$work/data" "$work/second/data"
  CONFIG=$next CONFIG2=$rest FP_EXTRA="" scripts/device/train-and-eval.sh "$afm" \
    "$work/second" "$steps" "$limit"
  rm "$work/second/done"
fi
touch "$work/done"

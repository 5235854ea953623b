#!/usr/bin/env bash
# One GPU-machine session of issue 5, run 6 (docs/results/smollm2-afm.md): on the GPU, datagen,
# then the student as training initializes it (one step at learning rate 0: FP weights, the
# data-initialized ranges), then the training run; on the CPU cores meanwhile, the FP + noise
# row again with the calibration fix of session 9, then the initialized student's table, then
# the trained AFM's (scripts/afm-experiment.sh's 48 cells each).
# Usage: scripts/afm-run6.sh AFM_BINARY WORK_DIR TOKENS STEPS [JOBS]
#   CONFIG=FILE    training configuration (default scripts/smollm2-afm-run6.toml)
#   FP_EXTRA=FLAGS more `afm eval` flags for the FP + noise row (run 7: --isolate-outliers 16)
#   AFM_ONLY=1     skip the FP + noise row and the initialized student (a rerun of a recipe
#                  whose start was measured already: the same data and seed give the same start)
# Every stage resumes from what is on disk; WORK_DIR/done marks the end.
set -euo pipefail
afm=$1 work=$2 tokens=$3 steps=$4 jobs=${5:-16}
export CONFIG=${CONFIG:-scripts/smollm2-afm-run6.toml}
mkdir -p "$work/init"
ln -sfn ../data "$work/init/data"
sed -e 's/^lr = .*/lr = 0.0/' -e 's/^warmup_steps = .*/warmup_steps = 0/' "$CONFIG" > "$work/init.toml"
{ DATAGEN_BATCH=2048 STOP_AFTER=datagen scripts/afm-experiment.sh "$afm" "$work" "$tokens" "$steps"
  [ -n "${AFM_ONLY:-}" ] || CONFIG=$work/init.toml SKIP_DATAGEN=1 STOP_AFTER=train \
    scripts/afm-experiment.sh "$afm" "$work/init" "$tokens" 1
  SKIP_DATAGEN=1 STOP_AFTER=train scripts/afm-experiment.sh "$afm" "$work" "$tokens" "$steps"
} > "$work/gpu.log" 2>&1 &
gpu=$!
if [ -z "${AFM_ONLY:-}" ]; then
  EXTRA=${FP_EXTRA:-} PRESETS=afm-paper NO_BASELINE=1 scripts/eval-table.sh "$afm" "$work/fp-noise" \
    $((jobs - 2)) 1 > "$work/fp-noise.log" 2>&1
  while [ ! -d "$work/init/train/final" ]; do
    kill -0 $gpu 2> /dev/null || { echo "GPU stage failed: see $work/gpu.log" >&2; exit 1; }
    sleep 5
  done
  SKIP_DATAGEN=1 scripts/afm-experiment.sh "$afm" "$work/init" "$tokens" 1 $((jobs - 2)) \
    > "$work/init-eval.log" 2>&1
fi
wait $gpu || { echo "GPU stage failed: see $work/gpu.log" >&2; exit 1; }
SKIP_DATAGEN=1 scripts/afm-experiment.sh "$afm" "$work" "$tokens" "$steps" "$jobs" \
  > "$work/eval.log" 2>&1
touch "$work/done"

#!/usr/bin/env bash
# On the device, after `NO_RUN=1 scripts/device/start.sh 0 0` unpacked /tmp/w: the SmolLM2-135M
# checks of a build that changed the CUDA training or evaluation paths, in one call:
# 1. training tokens/s of this build (/tmp/w/afm) against an earlier one (OLD, an afm binary),
#    alternating (scripts/device/train-ab.sh: release recipe, batch 8 x 512, 30 steps);
# 2. `afm eval` of the digital model on the GPU and on the host's CPU, side by side (the scores
#    should agree to float rounding). Usage:
#   scripts/device/check-smollm2.sh OLD OUT [TASKS] [LIMIT]
set -u
old=$1 out=$2 tasks=${3:-hellaswag,gsm8k} limit=${4:-16} W=/tmp/w
mkdir -p "$out"
AFM_DATA=$W/data scripts/device/train-ab.sh $W/afm $W/WORK/data "$out/ab" \
  "BIN=$old" - "BIN=$old" -
for dev in cuda cpu; do
  AFM_DATA=$W/data $W/afm eval --model smollm2-135m-instruct --device $dev --batch 64 \
    --limit "$limit" --tasks "$tasks" --out "$out/eval-$dev" > "$out/eval-$dev.log" 2>&1
  echo "eval on $dev: exit $?"; tail -n 3 "$out/eval-$dev/results.md"
done

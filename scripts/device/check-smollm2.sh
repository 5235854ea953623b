#!/usr/bin/env bash
# On the device, after `NO_RUN=1 scripts/device/start.sh 0 0` unpacked /tmp/w: the SmolLM2-135M
# checks of a build that changed the CUDA training or evaluation paths, in one call:
# 1. training tokens/s of this build (/tmp/w/afm) against an earlier one (OLD, an afm binary),
#    alternating (scripts/device/train-ab.sh: release recipe, batch 8 x 512, 30 steps);
#    (OLD "-": skipped);
# 2. with ADC_GEMM_AB=1, this build in bf16 with `[run] adc_gemm` off and on, alternating (the
#    product with the ADC inside against cuBLAS's product and the separate ADC kernel);
# 3. `afm eval` of the digital model on the GPU and on the host's CPU, side by side (the scores
#    should agree to float rounding; LIMIT 0: skipped). Usage:
#   [ADC_GEMM_AB=1] scripts/device/check-smollm2.sh OLD OUT [TASKS] [LIMIT]
set -u
old=$1 out=$2 tasks=${3:-hellaswag,gsm8k} limit=${4:-16} W=/tmp/w
mkdir -p "$out"
[ "$old" = - ] || AFM_DATA=$W/data scripts/device/train-ab.sh $W/afm $W/WORK/data "$out/ab" \
  "BIN=$old" - "BIN=$old" -
if [ -n "${ADC_GEMM_AB:-}" ]; then
  off='RUN:analog_dtype="bf16" RUN:adc_gemm=false' on='RUN:analog_dtype="bf16"'
  AFM_DATA=$W/data scripts/device/train-ab.sh $W/afm $W/WORK/data "$out/ab-bf16" \
    "$off" "$on" "$off" "$on"
fi
[ "$limit" = 0 ] && exit 0
for dev in cuda cpu; do
  AFM_DATA=$W/data $W/afm eval --model smollm2-135m-instruct --device $dev --batch 64 \
    --limit "$limit" --tasks "$tasks" --out "$out/eval-$dev" > "$out/eval-$dev.log" 2>&1
  echo "eval on $dev: exit $?"; tail -n 3 "$out/eval-$dev/results.md"
done

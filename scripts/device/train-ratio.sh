#!/usr/bin/env bash
# On the device, after start.sh's unpacking, on an idle GPU: training tokens/s of SmolLM2-135M
# (benches/RESULTS.md) for (1) the release recipe against the same loop with every analog
# feature off (issue 5 item 5), alternated full / off (PAIRS times, default 1), 30 steps of
# batch 8 x 512 each on the committed synthetic data, and (2) with LIGHTNING_WHEELS set (the
# aihwkit-lightning 2.1.0 wheel and gguf's, for transformers' GGUF loader; installed --no-deps),
# the peer's step on HF transformers (benches/train_step_gpu.py, issue 9 item 3), last.
# full.toml: `[run] batch_size = 8, checkpoint_every = 0; [analog] range_init_batches = 5`
# (release recipe otherwise: 8-bit DAC with learned ranges, 8-bit ADC at lambda 14, weight noise
# 0.03, clipping at 2.5 std, every projection and lm_head analog and trained); off.toml: the same
# with `dac_bits = 0, adc_bits = 0, out_bound = 0, weight_noise = 0, clip_alpha = 0,
# range_init_batches = 0`. Logs go to OUT_DIR/ratio-*.jsonl, medians of steps 6-30 to
# OUT_DIR/ratio.md.
# PROFILE=1 adds `[run] profile = true` to both (each phase waits for the device, so the
# tokens/s are then a profiled step's, not the plain loop's) and a row of median phase times.
# Usage: [PAIRS=N] [PROFILE=1] [LIGHTNING_WHEELS="WHL..."] scripts/device/train-ratio.sh AFM_BINARY DATA_DIR OUT_DIR
set -euo pipefail
afm=$1 data=$2 out=$3
mkdir -p "$out"
printf '[run]\nbatch_size = 8\ncheckpoint_every = 0\n%b[analog]\nrange_init_batches = 5\n' \
  "$([ -z "${PROFILE:-}" ] || echo 'profile = true\n')" > "$out/full.toml"
{ sed 's/^range_init_batches = .*/range_init_batches = 0/' "$out/full.toml"
  printf 'dac_bits = 0\nadc_bits = 0\nout_bound = 0\nweight_noise = 0\nclip_alpha = 0\n'; } \
  > "$out/off.toml"
echo "| order | recipe | tokens/s (median of steps 6-30) | KL at step 30 |" > "$out/ratio.md"
echo "|---:|---|---:|---:|" >> "$out/ratio.md"
k=0
for r in $(for _ in $(seq "${PAIRS:-1}"); do echo full off; done); do
  k=$((k + 1)); rm -rf "$out/o"
  "$afm" train --teacher smollm2-135m-instruct --data "$data" --out "$out/o" \
    --config "$out/$r.toml" --tiles afm-paper --steps 30 --device cuda > "$out/train.log" 2>&1 \
    || { tail -5 "$out/train.log"; exit 1; }
  cp "$out/o/log.jsonl" "$out/ratio-$k-$r.jsonl"
  python3 "$(dirname "$0")/step-row.py" "$out/o/log.jsonl" "$k" "$r" >> "$out/ratio.md"
done
rm -rf "$out/o"
if [ -n "${LIGHTNING_WHEELS:-}" ]; then
  # shellcheck disable=SC2086
  pip install -q --no-deps --target "$out/site" $LIGHTNING_WHEELS > /dev/null 2>&1
  gguf=~/.cache/afm/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
  (cd benches && PYTHONPATH="$out/site" python3 train_step_gpu.py --gguf "$gguf" --steps 25) \
    > "$out/lightning-step.json" 2> "$out/lightning-step.log" || tail -5 "$out/lightning-step.log"
  cat "$out/lightning-step.json"
fi
cat "$out/ratio.md"

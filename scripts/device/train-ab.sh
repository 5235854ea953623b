#!/usr/bin/env bash
# On the device, after start.sh's unpacking, on an idle GPU: training tokens/s of SmolLM2-135M
# (train-ratio.sh's full.toml: release recipe, batch 8 x 512, 30 steps, median of steps 6-30)
# under each of several environments, in the order given, so that an A/B of a run-time switch
# is measured side by side in one call. Each SETTING is a space-separated list of VAR=VALUE
# ("-" for none); BIN=PATH among them runs that binary instead of AFM_BINARY (an A/B of two
# builds), and RUN:KEY=VALUE adds `KEY = VALUE` to the config's [run] table (an A/B of a config
# switch: RUN:analog_dtype="bf16" RUN:adc_gemm=false). Rows go to OUT_DIR/ab.md, logs to
# OUT_DIR/ab-K.jsonl.
# PROFILE=1 turns on `[run] profile` (phase times; a profiled step runs slower).
# Usage: [PROFILE=1] scripts/device/train-ab.sh AFM_BINARY DATA_DIR OUT_DIR SETTING...
set -euo pipefail
afm=$1 data=$2 out=$3; shift 3
mkdir -p "$out"
profile=$([ -z "${PROFILE:-}" ] || echo 'profile = true\n')
echo "| order | environment | tokens/s (median of steps 6-30) | KL at step 30 |" > "$out/ab.md"
echo "|---:|---|---:|---:|" >> "$out/ab.md"
k=0
for setting in "$@"; do
  k=$((k + 1)); rm -rf "$out/o"
  [ "$setting" = - ] && words=() || read -r -a words <<< "$setting"
  bin=$afm envs=() run=""
  for w in "${words[@]}"; do
    case $w in
      BIN=*) bin=${w#BIN=} ;;
      RUN:*) kv=${w#RUN:}; run+="${kv%%=*} = ${kv#*=}\n" ;;
      *) envs+=("$w") ;;
    esac
  done
  printf '[run]\nbatch_size = 8\ncheckpoint_every = 0\n%b%b[analog]\nrange_init_batches = 5\n' \
    "$profile" "$run" > "$out/ab.toml"
  env "${envs[@]}" "$bin" train --teacher smollm2-135m-instruct --data "$data" --out "$out/o" \
    --config "$out/ab.toml" --tiles afm-paper --steps 30 --device cuda > "$out/train.log" 2>&1 \
    || { tail -5 "$out/train.log"; exit 1; }
  cp "$out/o/log.jsonl" "$out/ab-$k.jsonl"
  python3 "$(dirname "$0")/step-row.py" "$out/o/log.jsonl" "$k" "\`$setting\`" >> "$out/ab.md"
done
rm -rf "$out/o"
cat "$out/ab.md"

#!/usr/bin/env bash
# On the device, after start.sh's unpacking, on an idle GPU: training tokens/s of SmolLM2-135M
# (train-ratio.sh's full.toml: release recipe, batch 8 x 512, 30 steps, median of steps 6-30)
# under each of several environments, in the order given, so that an A/B of a run-time switch
# is measured side by side in one call. Each SETTING is a space-separated list of VAR=VALUE
# ("-" for none); BIN=PATH among them runs that binary instead of AFM_BINARY (an A/B of two
# builds). Rows go to OUT_DIR/ab.md, logs to OUT_DIR/ab-K.jsonl.
# PROFILE=1 turns on `[run] profile` (phase times; a profiled step runs slower).
# Usage: [PROFILE=1] scripts/device/train-ab.sh AFM_BINARY DATA_DIR OUT_DIR SETTING...
set -euo pipefail
afm=$1 data=$2 out=$3; shift 3
mkdir -p "$out"
printf '[run]\nbatch_size = 8\ncheckpoint_every = 0\n%b[analog]\nrange_init_batches = 5\n' \
  "$([ -z "${PROFILE:-}" ] || echo 'profile = true\n')" > "$out/ab.toml"
echo "| order | environment | tokens/s (median of steps 6-30) | KL at step 30 |" > "$out/ab.md"
echo "|---:|---|---:|---:|" >> "$out/ab.md"
k=0
for setting in "$@"; do
  k=$((k + 1)); rm -rf "$out/o"
  [ "$setting" = - ] && words=() || read -r -a words <<< "$setting"
  bin=$afm envs=()
  for w in "${words[@]}"; do case $w in BIN=*) bin=${w#BIN=} ;; *) envs+=("$w") ;; esac; done
  env "${envs[@]}" "$bin" train --teacher smollm2-135m-instruct --data "$data" --out "$out/o" \
    --config "$out/ab.toml" --tiles afm-paper --steps 30 --device cuda > "$out/train.log" 2>&1 \
    || { tail -5 "$out/train.log"; exit 1; }
  cp "$out/o/log.jsonl" "$out/ab-$k.jsonl"
  python3 - "$out/o/log.jsonl" "$k" "$setting" >> "$out/ab.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tps = statistics.median(r["tokens_per_s"] for r in rows[5:30])
print(f"| {sys.argv[2]} | `{sys.argv[3]}` | {tps:,.0f} | {rows[-1]['kl']:.4f} |")
if "phase_ms" in rows[-1]:
    ph = {k: statistics.median(r["phase_ms"].get(k, 0.0) for r in rows[5:30]) for k in rows[-1]["phase_ms"]}
    print("|   | phases, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()) + " | | |")
PY
done
rm -rf "$out/o"
cat "$out/ab.md"

#!/usr/bin/env bash
# docs/results/smollm2-afm.md, section "Session 22, CPU": where the chips' noise costs the
# rotated FP model with weight clipping (mse ranges on tinyshakespeare, 16 isolated down_proj
# inputs, `--weight-clip least-error`): wikitext2 perplexity over its first 1024 tokens (one
# window) on `afm-paper` chips 0-1, with one projection type kept digital, with K isolated
# inputs instead of 16, and with down_proj's inputs smoothed by ALPHA. ~1.5 min a row on 2 cores.
# Usage: scripts/noise-diag.sh AFM_BINARY OUT_DIR
set -euo pipefail
afm=$1 out=$2
row() {  # NAME FLAGS...
  local name=$1; shift
  "$afm" eval --model smollm2-135m-instruct --tasks wikitext2 --text-tokens 1024 --window 1024 \
    --tiles afm-paper --seed 0 --seeds 2 --calib-text ../shared/data/text/tinyshakespeare.txt \
    --calib-mse --rotate --no-baseline --weight-clip least-error "$@" --out "$out/$name" \
    > "$out/$name.log" 2>&1
  echo "$name $(tail -n 1 "$out/$name/results.md")"
}
mkdir -p "$out"
row iso16 --isolate-outliers 16
for d in lm_head down_proj o_proj q_proj,k_proj,v_proj gate_proj,up_proj; do
  row "digital-$d" --isolate-outliers 16 --digital-layers "$d"
done
for k in 8 32 64 128; do row "iso$k" --isolate-outliers "$k"; done
for a in 0 0.25 0.5 0.75; do
  row "smooth-down-$a" --isolate-outliers 16 --smooth "$a" --smooth-layers down_proj
done

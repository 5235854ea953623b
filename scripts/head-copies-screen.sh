#!/usr/bin/env bash
# docs/results/smollm2-afm.md, section "Session 23, CPU": copies of the isolated head block.
# The rotated FP model with least-error ranges on tinyshakespeare and `--weight-clip
# least-error` (the mapping of scripts/noise-diag.sh), K isolated down_proj inputs programmed R
# times in their tile's rows (`--head-copies R`): wikitext2 perplexity over its first 1024
# tokens on `afm-paper` chips 0-1. ~1.5 min a row on 2 cores.
# Usage: scripts/head-copies-screen.sh AFM_BINARY OUT_DIR
set -euo pipefail
afm=$1 out=$2
row() {  # K R
  local name="iso$1-copies$2"
  "$afm" eval --model smollm2-135m-instruct --tasks wikitext2 --text-tokens 1024 --window 1024 \
    --tiles afm-paper --seed 0 --seeds 2 --calib-text ../shared/data/text/tinyshakespeare.txt \
    --calib-mse --rotate --no-baseline --weight-clip least-error --isolate-outliers "$1" \
    --head-copies "$2" --out "$out/$name" > "$out/$name.log" 2>&1
  echo "$name $(tail -n 1 "$out/$name/results.md")"
}
mkdir -p "$out"
for r in 1 2 4 6 8 10 16 32; do row 16 "$r"; done
for kr in "8 8" "8 16" "32 4" "32 8"; do row $kr; done

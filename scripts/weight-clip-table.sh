#!/usr/bin/env bash
# docs/results/smollm2-afm.md, section "Session 21, CPU": the rotated FP model (least-output-error
# ranges on tinyshakespeare, 16 isolated down_proj inputs) on five `afm-paper` chips, 100 items
# per task, with `--weight-clip off` and `least-error` (same chips, same noise draws).
# ~25 min per row on 2 cores. Usage: scripts/weight-clip-table.sh AFM_BINARY OUT_DIR
set -euo pipefail
afm=$1 out=$2
for c in off least-error; do
  "$afm" eval --model smollm2-135m-instruct \
    --tasks hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq,lambada_openai,wikitext2 \
    --limit 100 --text-tokens 4096 --tiles afm-paper --seeds 5 \
    --calib-text ../shared/data/text/tinyshakespeare.txt --calib-mse --rotate \
    --isolate-outliers 16 --no-baseline --weight-clip "$c" --out "$out/table-$c"
  tail -n 1 "$out/table-$c/results.md"
done

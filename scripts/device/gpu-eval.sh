#!/usr/bin/env bash
# The table of docs/results/smollm2-afm.md evaluated on a GPU (`afm eval --device cuda`, 64
# items per batched pass): the FP model digital and on five `afm-paper` chips (abs-max ranges
# from tinyshakespeare, as scripts/eval-table.sh), then an analog model on `ideal` and on the
# same five chips. LIMIT items per task (0: every item); each table resumes from its folder.
# Usage: scripts/device/gpu-eval.sh AFM_BINARY MODEL_DIR OUT_DIR LIMIT
#   MODEL_DIR -  only the FP model's rows;  SKIP_FP=1  only the analog model's rows
#   FP_EXTRA=FLAGS  more flags for the FP rows (e.g. --rotate --calib-mse);  FP_TILES=LIST and
#   FP_SEEDS=N  their presets and chips (default afm-paper, 5);  SEEDS=N  the analog model on
#   `ideal` and N chips (seeds 0..N-1, default 5; 0: `ideal` only);  AFM_EXTRA=FLAGS  more flags
#   for the analog model's rows (e.g. --weight-clip least-error);  SKIP_IDEAL=1  not its `ideal` row
set -euo pipefail
afm=$1 model=$2 out=$3 limit=$4
data=${AFM_DATA:-../shared/data}
tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq,lambada_openai,wikitext2
lim=""; [ "$limit" = 0 ] || lim="--limit $limit"
common="--device cuda --batch 64 $lim --text-tokens 4096 --tasks $tasks"
if [ -z "${SKIP_FP:-}" ]; then
  # shellcheck disable=SC2086
  $afm eval $common --model smollm2-135m-instruct --calib-text "$data/text/tinyshakespeare.txt" \
    --tiles "${FP_TILES:-afm-paper}" --seeds "${FP_SEEDS:-5}" --out "$out/fp" ${FP_EXTRA:-}
  tail -n 4 "$out/fp/results.md"
fi
[ "$model" = - ] && exit 0
if [ -z "${SKIP_IDEAL:-}" ]; then
  # shellcheck disable=SC2086
  $afm eval $common --model "$model" --no-baseline --tiles ideal --seeds 1 \
    --out "$out/afm-ideal" ${AFM_EXTRA:-}
  tail -n 1 "$out/afm-ideal/results.md"
fi
[ "${SEEDS:-5}" = 0 ] && exit 0
# shellcheck disable=SC2086
$afm eval $common --model "$model" --no-baseline --tiles afm-paper --seeds "${SEEDS:-5}" \
  --out "$out/afm" ${AFM_EXTRA:-}
tail -n 1 "$out/afm/results.md"

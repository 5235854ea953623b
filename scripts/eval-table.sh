#!/usr/bin/env bash
# Runs the SmolLM2 table of docs/results/smollm2-afm-paper.md as parallel processes on one
# many-core machine: every (task, row, seed) cell is its own job writing into one --out folder
# (cells are independent and deterministic, so this equals one sequential run), then the
# one-line command of the table finds every cell done and writes results.json and results.md.
# Usage: scripts/eval-table.sh AFM_BINARY OUT_DIR [PARALLEL_JOBS] [THREADS_PER_JOB]
set -euo pipefail
afm=$1 out=$2 jobs=${3:-8} threads=${4:-2}
data=${AFM_DATA:-../shared/data}
tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq,lambada_openai,wikitext2
common="--model smollm2-135m-instruct --limit 100 --text-tokens 4096 \
 --calib-text $data/text/tinyshakespeare.txt --out $out"
# Longest tasks first, so the tail of the run stays short.
for task in hellaswag lambada_openai wikitext2 arc_challenge arc_easy piqa boolq winogrande; do
  echo "--tasks $task"
  for preset in afm-paper afm-paper-noise-only; do
    for seed in 0 1 2 3 4; do echo "--tasks $task --no-baseline --tiles $preset --seed $seed --seeds 1"; done
  done
done | RAYON_NUM_THREADS=$threads xargs -P "$jobs" -I{} sh -c "$afm eval $common {} > /dev/null"
# The table's command: every cell is on disk now, so this only assembles.
$afm eval $common --tasks $tasks --tiles afm-paper,afm-paper-noise-only --seeds 5

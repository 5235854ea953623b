#!/usr/bin/env bash
# The experiment of docs/results/smollm2-afm.md, in resumable stages (re-run it after a kill or
# a time limit and it goes on where it stopped): synthetic data from SmolLM2 on the GPU, HWA
# distillation on the GPU, then the evaluation of the analog model (parallel CPU jobs, one per
# (task, preset, seed) cell, as scripts/eval-table.sh does).
# Usage: scripts/afm-experiment.sh AFM_BINARY WORK_DIR TOKENS [PARALLEL_JOBS]
set -euo pipefail
afm=$1 work=$2 tokens=$3 jobs=${4:-14}
data=${AFM_DATA:-../shared/data}
seq=512
steps=$(( tokens * 99 / 100 / (8 * seq) ))
$afm datagen --model smollm2-135m-instruct --tokens "$tokens" --seq-len $seq --batch 512 \
  --rows-per-shard 512 --out "$work/data" --device cuda
resume=""; [ -f "$work/train/latest.json" ] && resume="--resume"
[ -d "$work/train/final" ] || $afm train --teacher smollm2-135m-instruct --data "$work/data" \
  --out "$work/train" --tiles afm-paper --config scripts/smollm2-afm-train.toml \
  --steps "$steps" --device cuda $resume
common="--model $work/train/final --limit 100 --text-tokens 4096 --out $work/eval --no-baseline"
tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq,lambada_openai,wikitext2
for task in hellaswag lambada_openai wikitext2 arc_challenge arc_easy piqa boolq winogrande; do
  echo "--tasks $task --tiles ideal --seed 0 --seeds 1"
  for seed in 0 1 2 3 4; do echo "--tasks $task --tiles afm-paper --seed $seed --seeds 1"; done
done | RAYON_NUM_THREADS=1 xargs -P "$jobs" -I{} sh -c "$afm eval $common {} > /dev/null"
# The tables' commands: every cell is on disk, so these only assemble.
$afm eval $common --tasks $tasks --tiles ideal --seeds 1
mkdir -p "$work/eval-ideal" && cp "$work"/eval/results.* "$work/eval-ideal/"
$afm eval $common --tasks $tasks --tiles afm-paper --seeds 5

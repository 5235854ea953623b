#!/usr/bin/env bash
# The experiment of docs/results/smollm2-afm.md, in resumable stages (re-run it after a kill or
# a time limit and it goes on where it stopped): synthetic data from SmolLM2 on the GPU, HWA
# distillation on the GPU, then the evaluation of the analog model (parallel CPU jobs, one per
# (task, preset, seed) cell, as scripts/eval-table.sh does).
# Usage: scripts/afm-experiment.sh AFM_BINARY WORK_DIR TOKENS STEPS [PARALLEL_JOBS]
#   SKIP_DATAGEN=1  train on the shards already complete in WORK_DIR/data (a datagen stopped by a
#                   time limit) instead of resuming datagen up to TOKENS;
#   STOP_AFTER=datagen|train  end after that stage;
#   CONFIG=FILE     the training configuration (default scripts/smollm2-afm-train.toml, run 4's);
#   DATAGEN_BATCH=N rows generated at once (default 1024).
set -euo pipefail
afm=$1 work=$2 tokens=$3 steps=$4 jobs=${5:-14}
seq=512
config=${CONFIG:-scripts/smollm2-afm-train.toml}
if [ -z "${SKIP_DATAGEN:-}" ]; then
  $afm datagen --model smollm2-135m-instruct --tokens "$tokens" --seq-len $seq \
    --batch "${DATAGEN_BATCH:-1024}" --rows-per-shard 1024 --out "$work/data" --device cuda
fi
[ "${STOP_AFTER:-}" = datagen ] && exit 0
resume=""; [ -f "$work/train/latest.json" ] && resume="--resume"
[ -d "$work/train/final" ] || $afm train --teacher smollm2-135m-instruct --data "$work/data" \
  --out "$work/train" --tiles afm-paper --config "$config" \
  --steps "$steps" --device cuda $resume
[ "${STOP_AFTER:-}" = train ] && exit 0
common="--model $work/train/final --limit 100 --text-tokens 4096 --out $work/eval --no-baseline"
tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq,lambada_openai,wikitext2
# Longest cells first (run 9's cell times: boolq ~175 s, winogrande ~55 s on one core), so that
# no slow cell starts last: 48 cells on 16 jobs ~320 s instead of ~365 s (simulated from them).
for task in boolq hellaswag piqa arc_challenge lambada_openai wikitext2 arc_easy winogrande; do
  echo "--tasks $task --tiles ideal --seed 0 --seeds 1"
  for seed in 0 1 2 3 4; do echo "--tasks $task --tiles afm-paper --seed $seed --seeds 1"; done
done | RAYON_NUM_THREADS=1 MIMALLOC_PURGE_DELAY=-1 xargs -P "$jobs" -I{} sh -c \
  "$afm eval $common {} > /dev/null"   # purge delay from the start: ~6% faster (benches/RESULTS.md)
# The tables' commands: every cell is on disk, so these only assemble.
$afm eval $common --tasks $tasks --tiles ideal --seeds 1
mkdir -p "$work/eval-ideal" && cp "$work"/eval/results.* "$work/eval-ideal/"
$afm eval $common --tasks $tasks --tiles afm-paper --seeds 5

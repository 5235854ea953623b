#!/usr/bin/env bash
# Runs the SmolLM2 table of docs/results/smollm2-afm-paper.md as parallel processes on one
# many-core machine: every (task, row, seed) cell is its own job writing into one --out folder
# (cells are independent and deterministic, so this equals one sequential run), then the
# one-line command of the table finds every cell done and writes results.json and results.md.
# Usage: scripts/eval-table.sh AFM_BINARY OUT_DIR [PARALLEL_JOBS] [THREADS_PER_JOB]
#   PRESETS="afm-paper afm-paper-noise-only"  the hardware rows (5 chips each; `ideal` gets one,
#                                             it has no noise); each row's table is also kept
#                                             as OUT_DIR/results-PRESET.{json,md}
#   EXTRA="--calib-kappa 18"                  more `afm eval` flags for every cell
#   NO_BASELINE=1                             skip the digital row
set -euo pipefail
afm=$1 out=$2 jobs=${3:-8} threads=${4:-2}
data=${AFM_DATA:-../shared/data}
presets=${PRESETS:-afm-paper afm-paper-noise-only}
tasks=hellaswag,arc_easy,arc_challenge,piqa,winogrande,boolq,lambada_openai,wikitext2
common="--model smollm2-135m-instruct --limit 100 --text-tokens 4096 \
 --calib-text $data/text/tinyshakespeare.txt --out $out ${EXTRA:-}"
chips() { if [ "$1" = ideal ]; then echo 0; else echo 0 1 2 3 4; fi; }
# Longest tasks first, so the tail of the run stays short (run 9's analog cells on one core:
# boolq ~175 s, hellaswag ~125, piqa ~105, arc_challenge ~90, the rest 55-80).
for task in boolq hellaswag piqa arc_challenge lambada_openai wikitext2 arc_easy winogrande; do
  [ -n "${NO_BASELINE:-}" ] || echo "--tasks $task"
  for preset in $presets; do
    for seed in $(chips "$preset"); do
      echo "--tasks $task --no-baseline --tiles $preset --seed $seed --seeds 1"
    done
  done
done | RAYON_NUM_THREADS=$threads xargs -P "$jobs" -I{} sh -c "$afm eval $common {} > /dev/null"
# The tables' commands: every cell is on disk now, so these only assemble.
for preset in $presets; do
  $afm eval $common --tasks $tasks --no-baseline --tiles "$preset" --seeds "$(chips "$preset" | wc -w)" > /dev/null
  cp "$out/results.json" "$out/results-$preset.json"; cp "$out/results.md" "$out/results-$preset.md"
done
if [ -z "${NO_BASELINE:-}" ]; then
  $afm eval $common --tasks $tasks --tiles "$(echo $presets | tr ' ' ,)" --seeds 5
fi

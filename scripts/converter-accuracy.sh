#!/usr/bin/env bash
# The CPU table of docs/results/smollm2-afm.md, session 10: which part of SI8/O8 costs run 6's
# initialized student its task accuracy. The student is the FP model with the input ranges run 6
# initialized on its synthetic data (docs/results/smollm2-afm-run6/init-analog.json); it is
# evaluated on `ideal` with the ADC widened to 16 bits, with both converters widened (only the
# ranges' clipping left), and on `afm-paper` with the ADC widened (chips 0 and 1).
# Usage: scripts/converter-accuracy.sh AFM_BINARY WORK_DIR [JOBS]   (AFM_DATA as for afm eval)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
afm=$(readlink -f "$1") work=$2 jobs=${3:-2}
data=$(readlink -f "${AFM_DATA:-$root/../shared/data}")
mkdir -p "$work" && cd "$work"
# FP weights in an afm model folder: training with the learning rate at 0 leaves them as they are.
[ -d ts ] || "$afm" datagen --model smollm2-135m-instruct --text "$data/text/tinyshakespeare.txt" \
  --seq-len 128 --out ts > /dev/null
printf '[run]\nbatch_size = 1\ncheckpoint_every = 0\n[analog]\nrange_init_batches = 1\nclip_alpha = 0.0\n[optim]\nlr = 0.0\nwarmup_steps = 0\n' > fp.toml
[ -d fp/final ] || "$afm" train --teacher smollm2-135m-instruct --data ts --out fp \
  --tiles afm-paper --steps 1 --config fp.toml > /dev/null
mkdir -p init6
for x in config.json model.safetensors tokenizer.json; do ln -sf "$PWD/fp/final/$x" "init6/$x"; done
cp "$root/docs/results/smollm2-afm-run6/init-analog.json" init6/analog.json
python3 - "$root/tiles" <<'PY'
import re, sys
def widen(base, convs, name):
    s = open(f"{sys.argv[1]}/{base}.toml").read()
    for conv in convs:
        t = re.sub(r"(\[" + conv + r"\]\n(?:#[^\n]*\n)*bits = )8", r"\g<1>16", s, count=1)
        assert t != s, conv
        s = t
    open(f"{name}.toml", "w").write(s.replace(f'name = "{base}"', f'name = "{name}"'))
widen("ideal", ["adc"], "ideal-adc16")
widen("ideal", ["adc", "dac"], "ideal-both16")
widen("afm-paper", ["adc"], "afm-paper-adc16")
PY
common="--model $PWD/init6 --limit 100 --text-tokens 4096 --out $PWD/eval --no-baseline"
tasks="hellaswag lambada_openai wikitext2 arc_challenge arc_easy piqa boolq winogrande"
for t in $tasks; do
  echo "--tasks $t --tiles $PWD/ideal-adc16.toml --seed 0 --seeds 1"
  echo "--tasks $t --tiles $PWD/ideal-both16.toml --seed 0 --seeds 1"
  for s in 0 1; do echo "--tasks $t --tiles $PWD/afm-paper-adc16.toml --seed $s --seeds 1"; done
done | RAYON_NUM_THREADS=1 xargs -P "$jobs" -I{} sh -c "$afm eval $common {} > /dev/null"
all=$(echo $tasks | tr ' ' ,)
for row in ideal-adc16:1 ideal-both16:1 afm-paper-adc16:2; do
  "$afm" eval $common --tasks "$all" --tiles "$PWD/${row%:*}.toml" --seeds "${row#*:}" > /dev/null
  cp eval/results.md "results-${row%:*}.md"; cp eval/results.json "results-${row%:*}.json"
done
cat results-*.md

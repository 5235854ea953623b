#!/usr/bin/env bash
# The CPU table of docs/results/smollm2-afm.md, session 10: which part of SI8/O8 costs run 6's
# initialized student its task accuracy. The student is the FP model with the input ranges run 6
# initialized on its synthetic data (docs/results/smollm2-afm-run6/init-analog.json); it is
# evaluated on `ideal` with the ADC widened to 16 bits, with both converters widened (only the
# ranges' clipping left), and on `afm-paper` with the ADC widened (chips 0 and 1). Then where
# the clipping costs: on `ideal-both16`, one layer kind's ranges x 100 (no clipping there) at a
# time; and on `ideal` (8-bit converters), down_proj's ranges x 2, 4, 10 and 30 (lambada and
# wikitext2 only). Last, smoothing (`analog.smooth_alpha` 0.5 and 0.8, ranges initialized on 4
# batches of 4 x 128 tinyshakespeare tokens, as scripts/range-diagnosis.sh does; alpha 0 is the
# control) on `ideal` and `ideal-both16`.
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
python3 "$root/scripts/widened-presets.py" "$root/tiles"
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
# One layer kind's ranges scaled by F in a copy of the student: ranged KIND F.
ranged() {
  local d="$PWD/ranged-$1-$2"
  mkdir -p "$d"
  for x in config.json model.safetensors tokenizer.json; do ln -sf "$PWD/fp/final/$x" "$d/$x"; done
  python3 -c "import json,sys; a=json.load(open('init6/analog.json')); k,f=sys.argv[1],float(sys.argv[2]); \
a['input_ranges']={n:([v*f for v in r] if k=='all' or n.split('.')[-1]==k else r) for n,r in a['input_ranges'].items()}; \
json.dump(a,open(sys.argv[3]+'/analog.json','w'))" "$1" "$2" "$d"
  echo "$d"
}
{ for k in all down_proj o_proj lm_head gate_proj up_proj v_proj q_proj k_proj; do
    echo "$(ranged $k 100) ideal-both16.toml"
  done
  for f in 2 4 10 30; do echo "$(ranged down_proj $f) ideal"; done
} > ranged.txt
while read -r d tiles; do
  for t in lambada_openai wikitext2; do echo "--model $d --out $d-eval-${tiles%.toml} --tasks $t --tiles $tiles"; done
done < ranged.txt | RAYON_NUM_THREADS=1 xargs -P "$jobs" -I{} sh -c \
  "$afm eval {} --limit 100 --text-tokens 4096 --no-baseline --seed 0 --seeds 1 > /dev/null"
while read -r d tiles; do
  "$afm" eval --model "$d" --out "$d-eval-${tiles%.toml}" --tasks lambada_openai,wikitext2 --tiles "$tiles" \
    --limit 100 --text-tokens 4096 --no-baseline --seed 0 --seeds 1 > /dev/null
  python3 -c "import json,sys; m={c['task']:c['metrics'] for c in json.load(open(sys.argv[1]+'/results.json'))['cells']}; \
print(sys.argv[2], 'lambada', m['lambada_openai']['acc'], 'wikitext2', round(m['wikitext2']['ppl'], 2))" \
    "$d-eval-${tiles%.toml}" "$(basename "$d") on $tiles"
done < ranged.txt
for a in 0 0.5 0.8; do
  printf '[run]\nbatch_size = 4\ncheckpoint_every = 0\n[analog]\nrange_init_batches = 4\nweight_noise = 0.0\nclip_alpha = 0.0\nsmooth_alpha = %s\nsmooth_batches = 4\n[optim]\nlr = 0.0\nwarmup_steps = 0\n' "$a" > "smooth$a.toml"
  [ -d "smooth$a/final" ] || "$afm" train --teacher smollm2-135m-instruct --data ts --out "smooth$a" \
    --tiles afm-paper --steps 4 --config "smooth$a.toml" > /dev/null
done
for a in 0 0.5 0.8; do for tiles in ideal ideal-both16.toml; do for t in lambada_openai wikitext2; do
  echo "--model smooth$a/final --out smooth$a-eval-${tiles%.toml} --tasks $t --tiles $tiles"
done; done; done | RAYON_NUM_THREADS=1 xargs -P "$jobs" -I{} sh -c \
  "$afm eval {} --limit 100 --text-tokens 4096 --no-baseline --seed 0 --seeds 1 > /dev/null"
for a in 0 0.5 0.8; do for tiles in ideal ideal-both16.toml; do
  "$afm" eval --model "smooth$a/final" --out "smooth$a-eval-${tiles%.toml}" --tasks lambada_openai,wikitext2 \
    --tiles "$tiles" --limit 100 --text-tokens 4096 --no-baseline --seed 0 --seeds 1 > /dev/null
  python3 -c "import json,sys; m={c['task']:c['metrics'] for c in json.load(open(sys.argv[1]+'/results.json'))['cells']}; \
print(sys.argv[2], 'lambada', m['lambada_openai']['acc'], 'wikitext2', round(m['wikitext2']['ppl'], 2))" \
    "smooth$a-eval-${tiles%.toml}" "smoothing $a on $tiles"
done; done

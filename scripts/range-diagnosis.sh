#!/usr/bin/env bash
# The CPU diagnosis of docs/results/smollm2-afm.md, session 8: how SmolLM2-135M's SI8/O8
# perplexity depends on its static input ranges and on which converter limits it.
# 1. Ranges as the AFM recipe initializes them (running mean of kappa 18 x std over 4 batches of
#    4 x 128 tinyshakespeare tokens): `afm train` with the learning rate at 0 and no weight
#    noise, so the weights stay the FP model's.
# 2. Those ranges scaled by F (one analog.json per F), smoothing (alpha 0.25, 0.5) before the
#    same initialization, a 16-bit ADC or DAC (`ideal` with one converter widened) and a digital
#    lm_head; wikitext2 perplexity over its first 1024 tokens, one window.
# 3. (session 10) Ranges initialized by the least-output-error search on the first batch
#    (`range_init_mse`) instead of kappa 18.
# Usage: scripts/range-diagnosis.sh AFM_BINARY WORK_DIR   (AFM_DATA as for afm eval)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
afm=$(readlink -f "$1") work=$2
data=$(readlink -f "${AFM_DATA:-$root/../shared/data}")
mkdir -p "$work" && cd "$work"
ppl() { # MODEL OUT [FLAGS...]: prints "OUT ppl"
  local m=$1 o=$2; shift 2
  "$afm" eval --model "$m" --tasks wikitext2 --text-tokens 1024 --window 1024 --seeds 1 \
    --no-baseline --out "$o" "$@" > /dev/null
  python3 -c "import json,sys; c=json.load(open(sys.argv[1]+'/results.json'))['cells'][0]; \
print(sys.argv[1], round(c['metrics']['ppl'], 2))" "$o"
}
"$afm" datagen --model smollm2-135m-instruct --text "$data/text/tinyshakespeare.txt" --seq-len 128 --out ts
init() { # OUT [ANALOG TOML LINES]: FP weights + data-initialized ranges in OUT/final
  printf '[run]\nbatch_size = 4\ncheckpoint_every = 0\n[analog]\nrange_init_batches = 4\nweight_noise = 0.0\nclip_alpha = 0.0\n%s\n[optim]\nlr = 0.0\nwarmup_steps = 0\n' "${2:-}" > "$1.toml"
  [ -d "$1/final" ] || "$afm" train --teacher smollm2-135m-instruct --data ts --out "$1" \
    --tiles afm-paper --steps 4 --config "$1.toml" > /dev/null
}
init k18
for f in 0.22 0.33 0.5 0.75 1.0 1.5 2.5; do
  mkdir -p "scale$f"
  for x in config.json model.safetensors tokenizer.json; do ln -sf "$PWD/k18/final/$x" "scale$f/$x"; done
  python3 -c "import json,sys; a=json.load(open('k18/final/analog.json')); f=float(sys.argv[1]); \
a['input_ranges']={k:[v*f for v in r] for k,r in a['input_ranges'].items()}; \
json.dump(a, open(sys.argv[2]+'/analog.json','w'))" "$f" "scale$f"
  ppl "scale$f" "eval-scale$f" --tiles ideal
done
for a in 0.25 0.5; do
  init "smooth$a" "smooth_alpha = $a
smooth_batches = 4"
  ppl "smooth$a/final" "eval-smooth$a" --tiles ideal
done
python3 - "$root/tiles/ideal.toml" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
for conv in ("adc", "dac"):
    t = re.sub(r"(\[" + conv + r"\]\n(?:#[^\n]*\n)*bits = )8", r"\g<1>16", s, count=1)
    open(f"ideal-{conv}16.toml", "w").write(t.replace('name = "ideal"', f'name = "ideal-{conv}16"'))
PY
ppl k18/final eval-adc16 --tiles ideal-adc16.toml
ppl k18/final eval-dac16 --tiles ideal-dac16.toml
ppl k18/final eval-digital-lm-head --tiles ideal --digital-lm-head
ppl smollm2-135m-instruct eval-absmax --tiles ideal --calib-text "$data/text/tinyshakespeare.txt"
ppl smollm2-135m-instruct eval-kappa18-512 --tiles ideal --calib-text "$data/text/tinyshakespeare.txt" --calib-kappa 18
init mse "range_init_mse = true"
ppl mse/final eval-mse-init --tiles ideal

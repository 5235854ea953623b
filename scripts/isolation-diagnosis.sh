#!/usr/bin/env bash
# The CPU table of docs/results/smollm2-afm.md, session 11: isolating down_proj's largest inputs
# in a row block of their own (`afm eval --isolate-outliers K`), with the FP model and static
# ranges set on tinyshakespeare's first 512 tokens (kappa 18 x std per row block unless the row
# says otherwise), LAMBADA (100 items) and wikitext2 (4096 tokens), one chip, on `ideal` and on
# `ideal` with the ADC or both converters widened to 16 bits. The `auto` rows let each layer pick
# how many to isolate (`--isolate-auto`, at most 64 or 512). The `r` rows (session 12) also put
# the residual stream's 16 or 4 largest channels in a head block of every projection that reads
# it (`--isolate-residual`). Cells already in WORK_DIR are reused.
# Usage: scripts/isolation-diagnosis.sh AFM_BINARY WORK_DIR [JOBS]   (AFM_DATA as for afm eval)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
afm=$(readlink -f "$1") work=$2 jobs=${3:-2}
data=$(readlink -f "${AFM_DATA:-$root/../shared/data}")
mkdir -p "$work" && cd "$work"
python3 "$root/scripts/widened-presets.py" "$root/tiles"
# name | tiles | flags
cat > rows.txt <<ROWS
k0|ideal|--calib-kappa 18
k4|ideal|--calib-kappa 18 --isolate-outliers 4
k8|ideal|--calib-kappa 18 --isolate-outliers 8
k16|ideal|--calib-kappa 18 --isolate-outliers 16
k32|ideal|--calib-kappa 18 --isolate-outliers 32
k64|ideal|--calib-kappa 18 --isolate-outliers 64
k16-kappa8|ideal|--calib-kappa 8 --isolate-outliers 16
k16-kappa12|ideal|--calib-kappa 12 --isolate-outliers 16
k0-mse|ideal|--calib-mse
k16-mse|ideal|--calib-mse --isolate-outliers 16
auto64|ideal|--calib-kappa 18 --isolate-outliers 64 --isolate-auto
auto512|ideal|--calib-kappa 18 --isolate-outliers 512 --isolate-auto
adc16-k0|$PWD/ideal-adc16.toml|--calib-kappa 18
adc16-k16|$PWD/ideal-adc16.toml|--calib-kappa 18 --isolate-outliers 16
both16-k0|$PWD/ideal-both16.toml|--calib-kappa 18
both16-k16|$PWD/ideal-both16.toml|--calib-kappa 18 --isolate-outliers 16
k16-r16|ideal|--calib-kappa 18 --isolate-outliers 16 --isolate-residual 16
k16-r4|ideal|--calib-kappa 18 --isolate-outliers 16 --isolate-residual 4
adc16-k16-r16|$PWD/ideal-adc16.toml|--calib-kappa 18 --isolate-outliers 16 --isolate-residual 16
ROWS
while IFS='|' read -r name tiles flags; do
  echo "--out $PWD/$name --tiles $tiles $flags"
done < rows.txt | RAYON_NUM_THREADS=1 xargs -P "$jobs" -I{} sh -c "$afm eval --model smollm2-135m-instruct \
  --tasks lambada_openai,wikitext2 --limit 100 --text-tokens 4096 --no-baseline --seed 0 --seeds 1 \
  --calib-text $data/text/tinyshakespeare.txt {} > /dev/null 2>&1"
while IFS='|' read -r name tiles flags; do
  python3 -c "import json,sys; m={c['task']:c['metrics'] for c in json.load(open(sys.argv[1]+'/results.json'))['cells']}; \
print(sys.argv[2], 'lambada', m['lambada_openai']['acc'], 'wikitext2', round(m['wikitext2']['ppl'], 2))" "$name" "$name"
done < rows.txt

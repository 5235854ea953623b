#!/usr/bin/env bash
# The CPU table of docs/results/smollm2-afm.md, session 13: how much the `afm-paper` chips' PCM
# programming noise costs against flat Gaussian noise (std a fixed share of each column's max
# |w|, the shape the training recipe adds), on the FP model with down_proj's 16 largest inputs
# isolated and kappa-18 ranges from tinyshakespeare's first 512 tokens: wikitext2 perplexity
# over its first 2048 tokens (windows of 1024), chips 0-4 per preset. The flat presets are
# `afm-paper` with its [device] section replaced. Cells already in WORK_DIR are reused.
# Usage: scripts/noise-shape-diagnosis.sh AFM_BINARY WORK_DIR [JOBS]   (AFM_DATA as for afm eval)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
afm=$(readlink -f "$1") work=$2 jobs=${3:-2}
data=$(readlink -f "${AFM_DATA:-$root/../shared/data}")
mkdir -p "$work/presets"
presets=("$root/tiles/afm-paper.toml")
for s in 0.03 0.035 0.0397; do
  sed -e "s/^name = \"afm-paper\"/name = \"afm-paper-gauss$s\"/" \
    -e "/^model = \"pcm-afm\"/,/^noise_scale/c\\model = \"gaussian\"\\nsigma_rel = $s" \
    "$root/tiles/afm-paper.toml" > "$work/presets/gauss$s.toml"
  presets+=("$work/presets/gauss$s.toml")
done
for p in "${presets[@]}"; do
  for seed in 0 1 2 3 4; do echo "$p $seed"; done
done | RAYON_NUM_THREADS=1 xargs -P "$jobs" -n 2 sh -c "\"$afm\" eval \
  --model smollm2-135m-instruct --tasks wikitext2 --text-tokens 2048 --window 1024 \
  --calib-kappa 18 --calib-text \"$data/text/tinyshakespeare.txt\" --isolate-outliers 16 \
  --data-dir \"$data\" --tiles \$0 --seed \$1 --seeds 1 --no-baseline --out \"$work/eval\" \
  > /dev/null"
python3 - "$work/eval/cells" <<'PY'
import json, math, pathlib, statistics, sys
rows = {}
for f in sorted(pathlib.Path(sys.argv[1]).glob("wikitext2__*.json")):
    d = json.loads(f.read_text())
    rows.setdefault(f.name.split("__")[1], []).append(d["metrics"]["ppl"])
print("| preset | chips | wikitext2 ppl per chip | mean | geometric mean |")
print("|---|---:|---|---:|---:|")
for name, v in rows.items():
    g = math.exp(statistics.mean(math.log(x) for x in v))
    print(f"| {name} | {len(v)} | {', '.join(f'{x:.1f}' for x in v)} | {statistics.mean(v):.1f} | {g:.1f} |")
PY

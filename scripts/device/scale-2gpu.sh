#!/usr/bin/env bash
# Issue 9 item 4 on a machine with two GPUs (kind nvidia-h200-x2), from `SCALE=1
# scripts/device/start.sh` (which unpacks a binary packed with `FEATURES=nccl
# scripts/device/pack.sh` and puts PyTorch's libnccl.so.2 on LD_LIBRARY_PATH): the data-parallel scaling of SmolLM2-135M training. One GPU at batch
# 8 x 512 against two GPUs at global batch 16 (8 rows per GPU, the same work per GPU: weak
# scaling), alternated PAIRS times (default 1), 30 steps each with the release recipe of
# scripts/device/train-ratio.sh's full.toml, median tokens/s of steps 6-30 from log.jsonl.
# Efficiency = tokens/s on two GPUs / (2 x tokens/s on one).
# Usage: [PAIRS=N] scripts/device/scale-2gpu.sh AFM_BINARY DATA_DIR OUT_DIR
set -euo pipefail
afm=$1 data=$2 out=$3
mkdir -p "$out"
for b in 8 16; do
  printf '[run]\nbatch_size = %d\ncheckpoint_every = 0\n[analog]\nrange_init_batches = 5\n' "$b" \
    > "$out/batch$b.toml"
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpus.txt"
k=0
for ranks in $(for _ in $(seq "${PAIRS:-1}"); do echo 1 2; done); do
  k=$((k + 1)); b=$((8 * ranks)); rm -rf "$out/o"
  "$afm" train --teacher smollm2-135m-instruct --data "$data" --out "$out/o" \
    --config "$out/batch$b.toml" --tiles afm-paper --steps 30 --device cuda --ranks "$ranks" \
    > "$out/train.log" 2>&1 || { tail -5 "$out/train.log"; exit 1; }
  cp "$out/o/log.jsonl" "$out/scale-$k-gpus$ranks.jsonl"
done
rm -rf "$out/o"
python3 - "$out" > "$out/scale.md" <<'PY'
import glob, json, statistics, sys
print("| order | GPUs | global batch | tokens/s (median of steps 6-30) | KL at step 30 |")
print("|---:|---:|---:|---:|---:|")
med = {1: [], 2: []}
files = glob.glob(f"{sys.argv[1]}/scale-*-gpus*.jsonl")
for f in sorted(files, key=lambda f: int(f.split("scale-")[-1].split("-")[0])):
    k, gpus = f.split("scale-")[-1].removesuffix(".jsonl").split("-gpus")
    rows = [json.loads(l) for l in open(f)]
    tps = statistics.median(r["tokens_per_s"] for r in rows[5:30])
    med[int(gpus)].append(tps)
    print(f"| {k} | {gpus} | {8 * int(gpus)} | {tps:,.0f} | {rows[-1]['kl']:.4f} |")
one, two = statistics.mean(med[1]), statistics.mean(med[2])
print(f"\nScaling efficiency: {two:,.0f} / (2 x {one:,.0f}) = **{two / (2 * one):.2f}**")
PY
cat "$out/gpus.txt" "$out/scale.md"

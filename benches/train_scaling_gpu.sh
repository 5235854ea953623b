#!/usr/bin/env bash
# Data-parallel scaling of `afm train` (issue 9, item 4): SmolLM2-135M with the full analog
# recipe (afm-paper tiles) on 1 GPU and on N GPUs of one host, the same per-GPU batch (8 rows of
# 512 tokens), so efficiency = tokens/s on N GPUs / (N x tokens/s on 1 GPU).
# Usage: benches/train_scaling_gpu.sh AFM_BINARY WORK_DIR [N_GPUS] [STEPS]
#   AFM_BINARY built with --features nccl (README); the GPU machine's libnccl.so.2 on
#   LD_LIBRARY_PATH. Prints one line per run and the efficiency; logs stay in WORK_DIR.
#   MODEL=... DEVICE=cpu run the same on another model / the CPU (a smoke test of the script).
set -euo pipefail
afm=$1 work=$2 n=${3:-2} steps=${4:-30}
model=${MODEL:-smollm2-135m-instruct} device=${DEVICE:-cuda}
mkdir -p "$work"
[ -f "$work/data/index.json" ] || $afm datagen --model "$model" --tokens 1048576 \
  --seq-len 512 --batch 1024 --rows-per-shard 1024 --out "$work/data" --device "$device"
median() { # median tokens/s of the steps after the first 5 (warm-up) in a log.jsonl
  python3 -c "
import json, statistics, sys
L = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(round(statistics.median(l['tokens_per_s'] for l in L[5:])))" "$1"
}
declare -A tps
for r in 1 "$n"; do
  printf '[run]\nbatch_size = %d\ncheckpoint_every = 0\n[analog]\nrange_init_batches = 5\n' \
    $((8 * r)) > "$work/ranks$r.toml"
  rm -rf "$work/train$r"
  $afm train --teacher "$model" --data "$work/data" --out "$work/train$r" \
    --config "$work/ranks$r.toml" --tiles afm-paper --steps "$steps" --device "$device" --ranks "$r" \
    2> "$work/train$r.err"
  tps[$r]=$(median "$work/train$r/log.jsonl")
  echo "ranks $r: global batch $((8 * r)) x 512, median ${tps[$r]} tokens/s (steps 6-$steps)"
done
python3 -c "print('scaling efficiency on $n GPUs: %.3f' % (${tps[$n]} / ($n * ${tps[1]})))"

#!/usr/bin/env bash
# On the device, in one call: several builds of the train_layer bench side by side, each from a
# folder holding its train_layer.xz (`scripts/device/pack-layer.sh`), the first the baseline.
# Run from the repository root:
#   KERNELS="adc_sum" SHAPES="4096x4096 8192x4096" ROUNDS=2 \
#     scripts/device/ab-builds.sh OUT base=cuda-bin/base pf=cuda-bin/pf ...
# 1. ncu of the KERNELS (a regex) for each build at each shape, fused path, two steps
#    (OUT/NAME/ncu_SHAPE.csv, printed in us); 2. ROUNDS rounds of the fused step (20 steps,
#    median), the builds alternated within each shape (OUT/alt.txt: "NAME json"). SHAPES_NCU
#    (default SHAPES) picks the ncu shapes; empty: none.
set -u
out=$1
shift
mkdir -p "$out"
shapes=${SHAPES:-2048x4096 4096x4096 2048x16384 4096x16384 8192x4096 8192x16384}
for b in "$@"; do
  echo "ncu: ${b%%=*}"
  PATHS=fused KERNELS=${KERNELS:-adc_sum} scripts/device/layer-ncu.sh "${b#*=}" "$out/${b%%=*}" \
    ${SHAPES_NCU-$shapes}
done
. "$(dirname "$0")/unpack.sh"
declare -A bin
for b in "$@"; do
  unpack "${b#*=}" train_layer
  bin[${b%%=*}]=$W/train_layer
done
for r in $(seq "${ROUNDS:-2}"); do
  for shape in $shapes; do
    for b in "$@"; do
      n=${b%%=*}
      "${bin[$n]}" --device cuda --dtype bf16 --dims "${shape%x*}" --tokens "${shape#*x}" \
        --paths fused --reps 20 --warmup 2 2>/dev/null | grep '^{' | sed "s/^/$n /" \
        | tee -a "$out/alt.txt"
    done
  done
done

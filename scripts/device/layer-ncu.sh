#!/usr/bin/env bash
# On the device: every kernel of two steps (forward + backward) of the train_layer bench's
# `plain` and `fused` paths timed by ncu with the clocks and caches
# left as they are, per shape. Run from the repository root with the folder that
# `scripts/device/pack-layer.sh` made here:
#   scripts/device/layer-ncu.sh cuda-bin/layer OUT 2048x4096 4096x4096 ...
# Writes OUT/ncu_DxT.csv (one row per kernel) and prints every kernel in order (the bench's
# set-up, then the plain product's two steps, then the fused layer's two). KERNELS (an ncu
# regex) keeps only the kernels it matches; PATHS (default plain,fused) picks the bench's paths;
# EXTRA (e.g. "--out-bound 0.5") goes to the bench as more arguments.
set -u
bin=$1 out=$2
shift 2
. "$(dirname "$0")/unpack.sh"
unpack "$bin" train_layer
mkdir -p "$out"
for shape in "$@"; do
  d=${shape%x*} t=${shape#*x}
  ncu ${KERNELS:+-k "regex:$KERNELS"} --metrics gpu__time_duration.sum --clock-control none \
    --cache-control none --csv --print-units base "$W/train_layer" --device cuda --dtype bf16 \
    --dims "$d" --tokens "$t" --paths "${PATHS:-plain,fused}" --warmup 1 --reps 1 ${EXTRA:-} \
    > "$out/ncu_$shape.csv" 2> "$out/ncu_$shape.err"
  echo "== $shape (exit $?): every kernel in order, us"
  python3 - "$out/ncu_$shape.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
k, v = head.index("Kernel Name"), head.index("Metric Value")
names = [(r[k], float(r[v].replace(",", "")) / 1e3) for r in rows]
for i, (n, us) in enumerate(names):
    print(f"{i:4d} {us:9.1f}  {n[:100]}")
PY
done

#!/usr/bin/env bash
# On the device: where a training layer step's time goes in a real stream (nsys traces every
# kernel as the bench queues it; ncu serializes them and overstates the small ones). Per shape,
# the train_layer bench's `fused` path (or PATHS) for 2 + REPS steps; prints each kernel's
# total time per step (us) and its share. Run from the repository root with a folder of
# `scripts/device/pack-layer.sh`:
#   [REPS=20] [PATHS=fused] scripts/device/layer-nsys.sh cuda-bin/layer OUT 2048x4096 8192x16384 ...
# Writes OUT/nsys_DxT.csv (nsys's cuda_gpu_kern_sum) per shape.
set -u
bin=$1 out=$2
shift 2
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
W=$(mktemp -d)
xz -dc "$bin/train_layer.xz" > "$W/tl" && chmod +x "$W/tl"
mkdir -p "$out"
reps=${REPS:-20} steps=$((${REPS:-20} + 2))
for shape in "$@"; do
  d=${shape%x*} t=${shape#*x}
  for p in ${PATHS:-fused}; do
    rep="$W/${p}_$shape"
    nsys profile -t cuda -o "$rep" --force-overwrite true "$W/tl" --device cuda --dtype bf16 \
      --dims "$d" --tokens "$t" --paths "$p" --warmup 2 --reps "$reps" > "$out/run_${p}_$shape.log" 2>&1
    nsys stats -q --report cuda_gpu_kern_sum --format csv "$rep.nsys-rep" \
      > "$out/nsys_${p}_$shape.csv" 2> "$out/nsys_${p}_$shape.err"
    echo "== $p $shape (exit $?): per step, us; $(grep -o '"median_ms": [0-9.]*' "$out/run_${p}_$shape.log")"
    python3 - "$out/nsys_${p}_$shape.csv" "$steps" <<'PY'
import csv, sys
rows = list(csv.DictReader(l for l in open(sys.argv[1]) if l.strip() and not l.startswith("Processing")))
steps = int(sys.argv[2])
tot = sum(float(r["Total Time (ns)"]) for r in rows)
for r in rows:
    ns = float(r["Total Time (ns)"])
    print(f"{ns / steps / 1e3:9.1f} {100 * ns / tot:5.1f}%  x{int(r['Instances']) / steps:4.1f}  {r['Name'][:90]}")
print(f"{tot / steps / 1e3:9.1f}  all kernels")
PY
  done
done

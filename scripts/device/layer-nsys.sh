#!/usr/bin/env bash
# On the device: where a training layer step's time goes in a real stream (nsys traces every
# kernel as the bench queues it; ncu serializes them and overstates the small ones). Per shape,
# the train_layer bench's `fused` path (or PATHS) for 2 + REPS steps; prints each kernel's
# total time per step (us) and its share. PATHS may also name `torch`: torch's bf16 Linear,
# forward and backward as benches/train_layer_gpu.py times it (which kernels cuBLAS picks
# there). Run from the repository root with a folder of `scripts/device/pack-layer.sh`:
#   [REPS=20] [PATHS="fused plain torch"] scripts/device/layer-nsys.sh cuda-bin/layer OUT 2048x4096 ...
# Writes OUT/nsys_PATH_DxT.csv (nsys's cuda_gpu_kern_sum) per path and shape.
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
    if [ "$p" = torch ]; then
      cmd=(python3 -c "
import torch
d, t = $d, $t
x = torch.randn(t, d, device='cuda', dtype=torch.bfloat16, requires_grad=True)
g = torch.randn(t, d, device='cuda', dtype=torch.bfloat16)
lin = torch.nn.Linear(d, d, bias=False, device='cuda', dtype=torch.bfloat16)
for _ in range($steps):
    x.grad = None
    lin.zero_grad(set_to_none=True)
    lin(x).backward(g)
torch.cuda.synchronize()
")
    else
      cmd=("$W/tl" --device cuda --dtype bf16 --dims "$d" --tokens "$t" --paths "$p" --warmup 2 \
        --reps "$reps")
    fi
    nsys profile -t cuda -o "$rep" --force-overwrite true "${cmd[@]}" > "$out/run_${p}_$shape.log" 2>&1
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

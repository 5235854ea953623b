#!/usr/bin/env bash
# On the device, in one call: a build of the layer against a baseline where outputs clamp at the
# ADC (a tight bound lambda) and at the release bound. Run from the repository root with two
# folders of `scripts/device/pack-layer.sh` output (NEW with itest.xz and train_layer.xz, BASE
# with train_layer.xz):
#   scripts/device/lambda-sweep.sh NEW BASE OUT
# 1. the CUDA tests of NEW; 2. the fused step (5 steps, median) at d = 2048 and 4096, 4096
# tokens, for lambda in LAMBDAS (OUT/lam.txt); 3. ncu of adc_sum and the corrections at 4096 x
# 4096 for lambda 14 (the release), 0.5 and 6 (`layer-ncu.sh`); 4. `ab-builds.sh` of the two at
# the release bound, two rounds (OUT/ab/alt.txt).
set -u
new=$1 base=$2 out=$3
mkdir -p "$out"
. "$(dirname "$0")/unpack.sh"
unpack "$new"
N=$W
unpack "$base" train_layer
B=$W
nvidia-smi --query-gpu=name --format=csv,noheader > "$out/gpu.txt"
"$N/itest" cuda:: --test-threads 1 > "$out/tests.log" 2>&1
echo "tests exit $?"
grep -E "test result|panicked|FAILED" "$out/tests.log" | tail -5
for lam in ${LAMBDAS:-0.5 1.5 3 6 10}; do
  for b in B N; do
    eval d=\$$b
    "$d/train_layer" --device cuda --dtype bf16 --dims 2048,4096 --tokens 4096 --paths fused \
      --reps 5 --warmup 1 --out-bound "$lam" 2>/dev/null | grep '^{' | sed "s/^/$b $lam /" \
      >> "$out/lam.txt"
  done
done
python3 - "$out/lam.txt" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    b, lam, j = l.split(" ", 2)
    j = json.loads(j)
    print(b, lam, j["dims"], round(j["median_ms"], 3))
PY
for lam in 14 0.5 6; do
  for b in "$base" "$new"; do
    echo "ncu: $b, lambda $lam"
    EXTRA="--out-bound $lam" PATHS=fused KERNELS="adc_sum|clamp_fix" \
      "$(dirname "$0")/layer-ncu.sh" "$b" "$out/ncu_$(basename "$b")_$lam" 4096x4096
  done
done
SHAPES_NCU="" ROUNDS=2 "$(dirname "$0")/ab-builds.sh" "$out/ab" base="$base" new="$new" \
  > "$out/ab.log" 2>&1
python3 - "$out/ab/alt.txt" <<'PY'
import collections, json, sys
d = collections.defaultdict(list)
for l in open(sys.argv[1]):
    n, j = l.split(" ", 1)
    j = json.loads(j)
    d[(j["dims"], j["tokens"])].append("%s:%.3f" % (n, j["median_ms"]))
for k, v in d.items():
    print(k, " ".join(v))
PY

#!/usr/bin/env bash
# On the device, in one call: a patched build of the layer against main's, where the patch's
# kernels have run-time variants chosen by an environment variable. Run from the repository
# root with cuda-bin/layer (`scripts/device/pack-layer.sh` of the patched tree) and cuda-bin/base
# (main's train_layer, stripped and xz'd) carried:
#   VAR=AFM_ADC_SUM VALUES="1 2 3 4" KERNELS="adc_sum|clamp_fix|noisy" \
#     scripts/device/variants.sh OUT [DIMS [TOKENS]]
# 1. the CUDA tests and the bench of the patched build (VAR unset) against main's, two rounds,
#    with torch's Linear (OUT/ab); 2. the fused path under each value (OUT/vK.json); 3. the
#    layer's CUDA tests under each value; 4. ncu of the KERNELS (a regex) at 8192 x 4096, main
#    and each value, two steps each (us; OUT/main, OUT/unset, OUT/vK).
set -u
out=$1 dims=${2:-4096,8192} tokens=${3:-4096,16384}
mkdir -p "$out"
xz -dc cuda-bin/base/train_layer.xz > /tmp/base_tl && chmod +x /tmp/base_tl
scripts/device/layer-bench.sh cuda-bin/layer "$out/ab" --baseline-bench /tmp/base_tl --rounds 2 \
  --dims "$dims" --tokens "$tokens" 2>&1 | grep -vE '^\{' | tail -24
. "$(dirname "$0")/unpack.sh"
unpack cuda-bin/layer
for v in $VALUES; do
  env "$VAR=$v" timeout 90 python3 benches/train_layer_gpu.py --afm-bench "$W/train_layer" \
    --json "$out/v$v.json" --afm-paths fused --skip-torch --dims "$dims" --tokens "$tokens" \
    2>/dev/null | tail -4 | sed "s/^/$VAR=$v /"
  env "$VAR=$v" timeout 90 "$W/itest" cuda::cuda_training_layer --test-threads 1 2>&1 \
    | grep "test result" | sed "s/^/$VAR=$v /"
done
# The KERNELS alone, fused path only (layer-ncu.sh reads KERNELS and PATHS from the
# environment): main's, then this build's unset and under each value.
ncu_of() { echo "ncu: $2"; PATHS=fused scripts/device/layer-ncu.sh "$1" "$out/$2" 8192x4096; }
ncu_of cuda-bin/base main
ncu_of cuda-bin/layer unset
for v in $VALUES; do
  export "$VAR=$v"
  ncu_of cuda-bin/layer "v$v"
done

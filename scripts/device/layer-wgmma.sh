#!/usr/bin/env bash
# On the device, one call for the product with the ADC inside (docs/experiments/
# adc-gemm-wgmma.patch, branch adc-gemm-wgmma, stacked on fused-passes-s30): the branch's CUDA
# tests with the one kernel off (AFM_NO_ADC_GEMM=1: fused-passes-s30's path alone) and on
# (among them the two cuda_adc_gemm tests), then the layer benchmark with the `fused` (one
# kernel) and `fused-cublas` (cuBLAS's product and fused-passes-s30's ADC kernel) paths beside
# main's fused path (cuda-bin/base), then ncu of one step at d = 2048 x 4096 tokens. Every
# stage has a time limit; if the tests with the kernel on time out (a hang), the benchmark
# leaves out `fused` and ncu is skipped, so the rest is still measured. Carry
# ["cuda-bin/layer", "cuda-bin/base"]; run from the repository root:
#   scripts/device/layer-wgmma.sh OUT
set -u
out=$1
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
# The tests find their files under the checkout they were built in (CARGO_MANIFEST_DIR).
mkdir -p /work
for d in /work/main /work/wt-adc; do [ -e $d ] || ln -s "$PWD" $d; done
W=$(mktemp -d)
xz -dc cuda-bin/layer/itest.xz > "$W/itest" && chmod +x "$W/itest"
xz -dc cuda-bin/base/train_layer.xz > "$W/base-tl" && chmod +x "$W/base-tl"
AFM_NO_ADC_GEMM=1 timeout 150 "$W/itest" cuda:: --skip adc_gemm --test-threads 1 \
  > "$out/tests-s30.log" 2>&1
echo "tests without the one kernel: exit $?"
grep -E "^test |test result|panicked" "$out/tests-s30.log" | tail -12
timeout 200 "$W/itest" cuda:: --test-threads 1 > "$out/tests.log" 2>&1
rc=$?
echo "tests with the one kernel: exit $rc"
grep -E "^test |test result|panicked|differs|flags" "$out/tests.log" | tail -16
paths=fused,fused-cublas,plain
[ $rc = 124 ] && paths=fused-cublas,plain
TESTS=- timeout 300 scripts/device/layer-bench.sh cuda-bin/layer "$out/bench" \
  --afm-paths "$paths" --baseline-bench "$W/base-tl"
echo "layer-bench: exit $?"
if [ $rc != 124 ]; then
  timeout 120 scripts/device/layer-ncu.sh cuda-bin/layer "$out/ncu" 2048x4096 > "$out/ncu.log" 2>&1
  echo "ncu: exit $?"; tail -30 "$out/ncu.log"
fi

#!/usr/bin/env bash
# The stand-alone labs of the product with the ADC inside (benches/gpu/adc_gemm_lab.cu and
# adc_gemm_cutlass.cu).
#   scripts/device/adc-gemm-lab.sh build       # here: nvcc (../shared/tools/cuda-env.sh) ->
#                                              # cuda-bin/lab/adc_lab.xz (ignored; carry it)
#   LAB_FLAGS=-DLAB_NO_ADC LAB_SUFFIX=_noadc adc-gemm-lab.sh build   # a variant (switches: the
#                                              # .cu files' heads), built beside the others
#   scripts/device/adc-gemm-lab.sh build-cutlass  # the CUTLASS lab (adc_gemm_cutlass.cu; the
#                                              # headers from pip's nvidia-cutlass 4.2.0)
#   scripts/device/adc-gemm-lab.sh build-algos # cuBLASLt's algorithms for the blocked product
#                                              # (blocked_gemm_algos.cu; no ADC, no ncu)
#   scripts/device/adc-gemm-lab.sh run OUT     # on the device: each lab built, five shapes,
#                                              # then ncu of each (NCU_ONLY=NAME: one)
# Each lab built is run: each run prints the outputs and clamp flags that differ from cuBLAS's
# blocked product plus the crate's adc_sum, and the median times of both and of one plain
# product.
set -euo pipefail
# nvcc for sm_90a with the crate's flags (--fmad=false), linked to cuBLAS: SRC NAME [nvcc args].
lab_build() {
  . ../shared/tools/cuda-env.sh > /dev/null
  local env_dir=${CUDA_ENV_DIR:-$HOME/.cache/cuda13-env} src=$1 name=$2
  shift 2
  local lib
  lib=$(ls -d "$env_dir"/venv/lib/python3*/site-packages/nvidia/cu13/lib)
  mkdir -p cuda-bin/lab
  nvcc -gencode arch=compute_90a,code=sm_90a -O3 --fmad=false -std=c++17 -Xptxas -v \
    ${LAB_FLAGS:-} "$@" -o "cuda-bin/lab/$name" "$src" -L"$lib" -L"$env_dir/link" \
    -Xlinker -rpath-link="$lib" -lcublas -lcublasLt -lcuda 2>&1 | grep -E "adc_gemm|Used|spill|C75" || true
  xz -9 -f "cuda-bin/lab/$name"
  du -b "cuda-bin/lab/$name.xz"
}
case ${1:-} in
  build) lab_build benches/gpu/adc_gemm_lab.cu "adc_lab${LAB_SUFFIX:-}" ;;
  build-algos) lab_build benches/gpu/blocked_gemm_algos.cu gemm_algos ;;
  build-cutlass)
    cache=${CUTLASS_DIR:-$HOME/.cache/afm-cutlass}
    if [ ! -d "$cache/cutlass_library/source/include" ]; then
      mkdir -p "$cache"
      pip download --no-deps -q -d "$cache" nvidia-cutlass==4.2.0
      (cd "$cache" && python3 -m zipfile -e nvidia_cutlass-*.whl .)
    fi
    inc=$cache/cutlass_library/source
    lab_build benches/gpu/adc_gemm_cutlass.cu "adc_cutlass${LAB_SUFFIX:-}" --expt-relaxed-constexpr \
      -I "$inc/include" -I "$inc/tools/util/include"
    ;;
  run)
    out=${2:?usage: adc-gemm-lab.sh run OUT}
    mkdir -p "$out"
    export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
    for packed in cuda-bin/lab/*.xz; do
      lab=$(basename "$packed" .xz)
      xz -dc "$packed" > /tmp/$lab && chmod +x /tmp/$lab
      for args in "8192 4096 14" "8192 4096 0.5" "4096 4096 14" "2048 16384 14" "8192 16384 14"; do
        echo "== $lab $args" | tee -a "$out/$lab.log"
        timeout 120 /tmp/$lab $args 2>&1 | tee -a "$out/$lab.log"
      done
      # NCU_ONLY=NAME: ncu for that lab alone; the algorithm sweep has no ADC kernel to profile.
      [ "$lab" = gemm_algos ] && continue
      [ -n "${NCU_ONLY:-}" ] && [ "$lab" != "$NCU_ONLY" ] && continue
      timeout 120 ncu -k regex:"adc_gemm|adc_sum|gemm|nvjet" --metrics \
        gpu__time_duration.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
        --csv /tmp/$lab 8192 4096 14 1 > "$out/$lab.ncu.csv" 2> "$out/$lab.ncu.err" || true
      grep -E '^"' "$out/$lab.ncu.csv" | awk -F'","' 'NR > 1 {print $5, $(NF-2), $NF}' | tail -12
    done
    ;;
  *) echo "usage: $0 build | build-cutlass | run OUT" >&2; exit 2 ;;
esac

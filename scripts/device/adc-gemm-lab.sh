#!/usr/bin/env bash
# The stand-alone lab of the product with the ADC inside (benches/gpu/adc_gemm_lab.cu).
#   scripts/device/adc-gemm-lab.sh build       # here: nvcc (../shared/tools/cuda-env.sh) ->
#                                              # cuda-bin/lab/adc_lab.xz (ignored; carry it)
#   LAB_FLAGS=-DLAB_NO_ADC adc-gemm-lab.sh build   # a variant (switches: adc_gemm_lab.cu)
#   scripts/device/adc-gemm-lab.sh run OUT     # on the device: four shapes, then ncu of one
# Each run prints the outputs and clamp flags that differ from cuBLAS's blocked product plus
# the crate's adc_sum, and the median times of both and of one plain product.
set -euo pipefail
case ${1:-} in
  build)
    . ../shared/tools/cuda-env.sh > /dev/null
    env_dir=${CUDA_ENV_DIR:-$HOME/.cache/cuda13-env}
    lib=$(ls -d "$env_dir"/venv/lib/python3*/site-packages/nvidia/cu13/lib)
    mkdir -p cuda-bin/lab
    nvcc -gencode arch=compute_90a,code=sm_90a -O3 --fmad=false -std=c++17 -Xptxas -v ${LAB_FLAGS:-} \
      -o cuda-bin/lab/adc_lab benches/gpu/adc_gemm_lab.cu -L"$lib" \
      -L"$env_dir/link" -Xlinker -rpath-link="$lib" \
      -lcublas -lcuda 2>&1 | grep -E "adc_gemm|Used|spill|C75" || true
    xz -9 -f cuda-bin/lab/adc_lab
    du -b cuda-bin/lab/adc_lab.xz
    ;;
  run)
    out=${2:?usage: adc-gemm-lab.sh run OUT}
    mkdir -p "$out"
    export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
    xz -dc cuda-bin/lab/adc_lab.xz > /tmp/adc_lab && chmod +x /tmp/adc_lab
    for args in "8192 4096 14" "8192 4096 0.5" "4096 4096 14" "2048 16384 14" "8192 16384 14"; do
      timeout 120 /tmp/adc_lab $args 2>&1 | tee -a "$out/lab.log"
    done
    timeout 120 ncu -k regex:"adc_gemm|adc_ref|gemm|nvjet" --metrics \
      gpu__time_duration.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
      --csv /tmp/adc_lab 8192 4096 14 1 > "$out/ncu.csv" 2> "$out/ncu.err" || true
    grep -E '^"' "$out/ncu.csv" | awk -F'","' 'NR > 1 {print $5, $(NF-2), $NF}' | tail -12
    ;;
  *) echo "usage: $0 build | run OUT" >&2; exit 2 ;;
esac

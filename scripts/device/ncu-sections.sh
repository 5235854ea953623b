#!/usr/bin/env bash
# On the device: ncu's throughput, memory, occupancy, scheduler and warp-state sections for the
# fused layer's ADC, weight-noise and clamp-fix kernels of the train_layer bench (first step).
# Run from the repository root with a folder that `scripts/device/pack-layer.sh` made here:
#   scripts/device/ncu-sections.sh cuda-bin/layer TAG 8192x4096 ...
# Writes $OUT/full_TAG_DxT.txt and prints the headline rows (ncu locks the clocks at base).
set -u
bin=$1 tag=$2
shift 2
. "$(dirname "$0")/unpack.sh"
unpack "$bin" train_layer
for shape in "$@"; do
  d=${shape%x*} t=${shape#*x}
  f=$OUT/full_${tag}_$shape.txt
  ncu -k regex:"adc_sum|noisy_wblocks|clamp_fix_g" -c 4 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --section LaunchStats --section ComputeWorkloadAnalysis --section SchedulerStats \
    "$W/train_layer" --device cuda --dtype bf16 --dims "$d" --tokens "$t" --paths fused --warmup 0 \
    --reps 1 > "$f" 2>&1
  echo "== $tag $shape exit $?"
  grep -E "^  [a-z_]+_bf16|Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Registers Per|Issue Slots Busy" \
    "$f" | sed 's/  */ /g'
done

#!/usr/bin/env bash
# On the device, after start.sh's unpacking: every CUDA kernel of one training step of
# SmolLM2-135M (the release recipe of train-ratio.sh's full.toml, batch 8 x 512), timed by ncu
# and summed by kernel name, to see where a step's time goes. `[run] cuda_profile_step`
# brackets step STEP (default 7, after the 5 range-initializing steps) with cuProfilerStart /
# Stop, so ncu (`--profile-from-start off`) records that step alone; clocks and caches are left
# as they are (ncu would otherwise lock the clock at base and flush the caches per kernel).
# Writes OUT_DIR/kernels.md (top kernels by total time, kernel count, sum of kernel times) and
# the raw OUT_DIR/kernels.csv.xz.
# Usage: scripts/device/kernel-profile.sh AFM_BINARY DATA_DIR OUT_DIR [STEP]
set -euo pipefail
afm=$1 data=$2 out=$3 step=${4:-7}
mkdir -p "$out"
printf '[run]\nbatch_size = 8\ncheckpoint_every = 0\ncuda_profile_step = %d\n[analog]\nrange_init_batches = 5\n' \
  "$step" > "$out/profile.toml"
rm -rf "$out/o"
ncu --profile-from-start off --metrics gpu__time_duration.sum --clock-control none \
  --cache-control none -f -o "$out/step" \
  "$afm" train --teacher smollm2-135m-instruct --data "$data" --out "$out/o" \
  --config "$out/profile.toml" --tiles afm-paper --steps "$step" --device cuda \
  > "$out/ncu.log" 2>&1 || { tail -5 "$out/ncu.log"; exit 1; }
ncu -i "$out/step.ncu-rep" --csv --print-units base > "$out/kernels.csv"
python3 - "$out/kernels.csv" > "$out/kernels.md" <<'PY'
import collections, csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("Metric Name") == "gpu__time_duration.sum"]
tot, cnt = collections.Counter(), collections.Counter()
for r in rows:
    ms = float(r["Metric Value"].replace(",", "")) / 1e6   # ns
    tot[r["Kernel Name"]] += ms
    cnt[r["Kernel Name"]] += 1
all_ms = sum(tot.values())
print(f"{len(rows)} kernels, {all_ms:.1f} ms of kernel time in one step\n")
print("| kernel | launches | total ms | share |\n|---|---:|---:|---:|")
for k, v in tot.most_common(40):
    print(f"| `{k[:90]}` | {cnt[k]} | {v:.2f} | {100 * v / all_ms:.1f}% |")
PY
xz -f "$out/kernels.csv"
rm -rf "$out/o" "$out/step.ncu-rep"
cat "$out/kernels.md" | head -30

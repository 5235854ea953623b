#!/usr/bin/env bash
# Parallel speed-up of `afm sweep` (issue 7 asks >= 1.7x with 2 threads over 1): the sweep
# tiles/sweeps/adc-bits-x-rows.toml (12 points x 3 chips, SmolLM2 WikiText-2 perplexity over 4096 tokens)
# with --jobs 2 and --jobs 1, each into a fresh folder. Prints each wall time, the ratio, the
# load average around each run (other work on the machine skews the ratio) and checks that
# both runs wrote the same results.json. Usage: benches/sweep_jobs.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
out=${1:-$(mktemp -d)}
mkdir -p "$out"
# A private copy, so a rebuild during the ~45 minutes does not change the binary under test.
cp target/release/afm "$out/afm"
declare -A wall
for j in 2 1; do
  rm -rf "$out/jobs$j"
  echo "jobs $j: load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  t0=$(date +%s.%N)
  "$out/afm" sweep tiles/sweeps/adc-bits-x-rows.toml --out "$out/jobs$j" --jobs "$j"
  t1=$(date +%s.%N)
  wall[$j]=$(echo "$t1 - $t0" | bc -l)
  echo "jobs $j: ${wall[$j]} s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
cmp "$out/jobs1/results.json" "$out/jobs2/results.json" && echo "results.json identical"
echo "speed-up (jobs 1 / jobs 2): $(echo "${wall[1]} / ${wall[2]}" | bc -l)"

#!/usr/bin/env bash
# On the device: GPU memory against training step for variants of run 16's recipe
# (scripts/smollm2-afm-run16.toml, 16 steps each), to find what grows the memory from step to
# step (session 24: ~0.5 GB a step until out of memory). Prints per variant the memory at the
# first sample at or after step 4 and the last one, the growth per step between them, and the
# peak.
# Usage: [VARIANTS="base ..."] [STEPS=16] scripts/device/mem-bisect.sh AFM_BINARY DATA_DIR OUT_DIR
set -uo pipefail
afm=$1 data=$2 out=$3 steps=${STEPS:-16}
mkdir -p "$out"
base=$(sed -e 's/^checkpoint_every = .*/checkpoint_every = 0/' -e 's/^export_every = .*/export_every = 0/' \
  -e '/^#/d' scripts/smollm2-afm-run16.toml)
all='frozen = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]'
variant() {
  case $1 in
    base) printf '%s\n' "$base" ;;
    allfrozen) printf '%s\n' "$base" | sed "s/^frozen = .*/$all/" ;;
    analogoff) printf '%s\n' "$base" | sed -e 's/^range_init_batches = .*/range_init_batches = 0/' \
      -e '/^range_init_mse/d' -e 's/^\[analog\]/[analog]\ndac_bits = 0\nadc_bits = 0\nout_bound = 0\nweight_noise = 0/' ;;
    batch4) printf '%s\n' "$base" | sed 's/^batch_size = .*/batch_size = 4/' ;;
  esac
}
for v in ${VARIANTS:-base allfrozen analogoff batch4}; do
  variant "$v" > "$out/$v.toml"
  rm -rf "$out/o"
  "$afm" train --teacher smollm2-135m-instruct --data "$data" --out "$out/o" --config "$out/$v.toml" \
    --tiles afm-paper --steps "$steps" --device cuda > "$out/$v.log" 2>&1 &
  pid=$!
  : > "$out/$v.mem"
  while kill -0 $pid 2> /dev/null; do
    s=$(tail -n 1 "$out/o/log.jsonl" 2> /dev/null | sed -n 's/^{"step":\([0-9]*\).*/\1/p')
    echo "${s:-0} $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)" >> "$out/$v.mem"
    sleep 0.5
  done
  awk -v v="$v" '$1 >= 4 && !a { a = $2; sa = $1 } { b = $2; sb = $1 }
    END { if (a && sb > sa) printf "%-10s step %d: %d MiB, step %d: %d MiB, %.0f MiB/step\n", v, sa, a, sb, b, (b - a) / (sb - sa);
          else print v ": no steps after 4 (" $0 ")" }' "$out/$v.mem"
  sort -k2 -n "$out/$v.mem" | tail -1 | awk -v v="$v" '{ printf "%-10s peak %d MiB at step %d\n", v, $2, $1 }'
  grep -m1 -i "error" "$out/$v.log"
done

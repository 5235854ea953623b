#!/usr/bin/env bash
# On the device, in one call: the CUDA tests and issue 9's layer benchmark, from a folder of
# xz binaries that `scripts/device/pack-layer.sh` made here (the test binary and the
# train_layer bench, ~15 MB together: no data or GGUF needed). Run from the repository root:
#   scripts/device/layer-bench.sh cuda-bin/layer OUT [--afm-paths fused,plain --baseline-bench BIN ...]
# Writes OUT/tests.log, OUT/layer.json and OUT/layer.md; extra arguments go to
# benches/train_layer_gpu.py. TESTS=filter picks the tests (default cuda::; "-": none).
set -u
bin=$1 out=$2
shift 2
[ -d /work/main ] || { mkdir -p /work; ln -s "$PWD" /work/main; }
. "$(dirname "$0")/unpack.sh"
unpack "$bin"
mkdir -p "$out"
if [ "${TESTS:-cuda::}" != - ]; then
  "$W/itest" "${TESTS:-cuda::}" --test-threads 1 > "$out/tests.log" 2>&1
  echo "tests: exit $?"; grep -E "^test |test result|panicked|differ" "$out/tests.log" | tail -20
fi
python3 benches/train_layer_gpu.py --afm-bench "$W/train_layer" --json "$out/layer.json" \
  --afm-paths fused,plain "$@" > "$out/layer.md" 2> "$out/layer.err"
echo "bench: exit $?"; cat "$out/layer.md"; tail -3 "$out/layer.err"

#!/usr/bin/env bash
# Builds the CUDA test binary and the train_layer bench and packs them (stripped, xz) into
# cuda-bin/layer (ignored) for one device call of `scripts/device/layer-bench.sh`: carry
# ["cuda-bin/layer"]. Run from the repository root after `cargo fetch`.
set -euo pipefail
(source ../shared/tools/cuda-env.sh && CARGO_TARGET_DIR=target/cuda \
  cargo build --release --features cuda --tests --bench train_layer)
newest() { ls -t target/cuda/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
rm -rf cuda-bin/layer && mkdir -p cuda-bin/layer
for pair in "itest:$(newest integration)" "train_layer:$(newest train_layer)"; do
  strip -o "cuda-bin/layer/${pair%%:*}" "${pair#*:}"
  xz -9 -T2 "cuda-bin/layer/${pair%%:*}"
done
du -b cuda-bin/layer/*

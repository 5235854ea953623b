#!/usr/bin/env bash
# Packs one GPU session's inputs for the device calls: the CUDA `afm` binary and test binary
# (stripped, xz -9), ../shared/data and the SmolLM2 GGUF in one tar stream, cut into pieces
# that fit a call (64 MiB, tracked tree included) as cuda-bin/c1, c2, ... (ignored). Call K
# carries cuda-bin/cK and runs `scripts/device/receive.sh K`; the last call then runs
# scripts/device/start.sh. Run from the repository root after `cargo fetch`.
set -euo pipefail
limit=$((64 * 1024 * 1024 - 1024 * 1024))   # a call's limit, less a margin
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
piece=$((limit - tree))
gguf=${AFM_CACHE:-$HOME/.cache/afm}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$gguf" ] || { echo "no GGUF at $gguf: run \`afm model fetch smollm2-135m-instruct\`" >&2; exit 1; }
# FEATURES=nccl builds the multi-GPU binary (scripts/nccl-env.sh: a link-time stub of libnccl;
# on the device the library that comes with PyTorch loads at run time: scripts/device/scale-2gpu.sh).
if [ "${FEATURES:-cuda}" = nccl ]; then env=scripts/nccl-env.sh; else env=../shared/tools/cuda-env.sh; fi
(source "$env" && CARGO_TARGET_DIR=target/cuda \
  cargo build --release --features "${FEATURES:-cuda}" --bins --tests)
itest=$(ls -t target/cuda/release/deps/integration-* | grep -v '\.d$' | head -1)
rm -rf cuda-bin && mkdir -p cuda-bin/payload
strip -o cuda-bin/afm target/cuda/release/afm
strip -o cuda-bin/itest "$itest"
xz -9 -T2 -c cuda-bin/afm > cuda-bin/payload/afm.xz
xz -9 -T2 -c cuda-bin/itest > cuda-bin/payload/itest.xz
tar -C ../shared -cJf cuda-bin/payload/shared-data.tar.xz data
cp "$gguf" cuda-bin/payload/model.gguf
tar -C cuda-bin/payload -cf - . | split -b "$piece" -d -a 2 - cuda-bin/piece.
rm -r cuda-bin/payload cuda-bin/afm cuda-bin/itest
k=0
for p in cuda-bin/piece.*; do k=$((k + 1)); mkdir cuda-bin/c$k; mv "$p" cuda-bin/c$k/; done
du -b cuda-bin/c*/*
echo "$k calls: tree $tree bytes + at most $piece per piece"

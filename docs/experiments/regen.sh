#!/usr/bin/env bash
# Regenerates adc-gemm-wgmma.patch from its local branch: main -> adc-gemm-wgmma, code only
# (docs, scripts and the bench notes live on main), and checks that it applies on main and
# gives the branch's code. Run from the repository root on main.
set -euo pipefail
root=$PWD
ex=(-- . ':!docs' ':!scripts' ':!benches/RESULTS.md' ':!benches/train_layer_gpu.py' ':!benches/results')
git diff main adc-gemm-wgmma "${ex[@]}" > docs/experiments/adc-gemm-wgmma.patch
wt=$(mktemp -d)
git worktree add -q --detach "$wt" main
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
cd "$wt"
git apply "$root/docs/experiments/adc-gemm-wgmma.patch"
git add -A
git diff --cached --quiet adc-gemm-wgmma "${ex[@]}" || { echo "the patch does not give adc-gemm-wgmma's code" >&2; exit 1; }
echo "adc-gemm-wgmma.patch regenerated; applied on main it gives the branch's code"

#!/usr/bin/env bash
# Regenerates the two stacked patches from their local branches: fused-passes-s30.patch is
# main -> fused-passes-s30 (kernels, src); adc-gemm-wgmma.patch is (main + that patch) ->
# adc-gemm-wgmma (code only: docs, scripts and the bench notes live on main). Checks that both
# apply in order on main and give the branch's code. Run from the repository root on main.
set -euo pipefail
root=$PWD
ex=(-- . ':!docs' ':!scripts' ':!benches/RESULTS.md' ':!benches/train_layer_gpu.py')
git diff main fused-passes-s30 -- kernels src > docs/experiments/fused-passes-s30.patch
wt=$(mktemp -d)
git worktree add -q --detach "$wt" main
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
cd "$wt"
git apply "$root/docs/experiments/fused-passes-s30.patch"
git add -A
git -c user.name=regen -c user.email=regen@localhost commit -qm "main + fused-passes-s30.patch"
git diff HEAD adc-gemm-wgmma "${ex[@]}" > "$root/docs/experiments/adc-gemm-wgmma.patch"
git apply "$root/docs/experiments/adc-gemm-wgmma.patch"
git add -A
git diff --cached --quiet adc-gemm-wgmma "${ex[@]}" || { echo "the patches do not give adc-gemm-wgmma's code" >&2; exit 1; }
echo "both patches regenerated; applied in order on main they give adc-gemm-wgmma's code"

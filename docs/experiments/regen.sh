#!/usr/bin/env bash
# Regenerates docs/experiments/BRANCH.patch from its local branch: main -> BRANCH, code only
# (docs, scripts and the bench notes live on main), and checks that it applies on main and
# gives the branch's code. Run from the repository root on main:
#   docs/experiments/regen.sh adc-gemm-wgmma
set -euo pipefail
branch=${1:?usage: docs/experiments/regen.sh BRANCH}
root=$PWD
ex=(-- . ':!docs' ':!scripts' ':!benches/RESULTS.md' ':!benches/train_layer_gpu.py' ':!benches/results')
git diff main "$branch" "${ex[@]}" > "docs/experiments/$branch.patch"
wt=$(mktemp -d)
git worktree add -q --detach "$wt" main
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
cd "$wt"
git apply "$root/docs/experiments/$branch.patch"
git add -A
git diff --cached --quiet "$branch" "${ex[@]}" || { echo "the patch does not give $branch's code" >&2; exit 1; }
echo "$branch.patch regenerated; applied on main it gives the branch's code"

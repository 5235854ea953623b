#!/usr/bin/env bash
# On the device, when a session's budget cannot cover the evaluation there: the trained student
# (WORK/train/final, 651 MB for SmolLM2) back in 16 MB pieces, 4 per call (a call returns at
# most 64 MB in all), to be evaluated on the CPU here. Session 16 took 11 calls of ~10-15 s of
# held time each. Call K (1, 2, ...) writes pieces 4(K-1) .. 4K-1 to $OUT; the first call also
# cuts them and prints their count and the files' sha256. Here: cat the pieces in order into
# `tar -x` to get final/, and check the sha256 sums.
# Usage: scripts/device/collect-model.sh K
set -eu
k=$1 w=/tmp/w/WORK r=/tmp/w/ret
if [ ! -d $r ]; then
  mkdir -p $r
  tar -C $w/train -cf - final | split -b 16000000 -d -a 2 - $r/final.tar.
  ls $r | wc -l
  sha256sum $w/train/final/*
fi
ls $r | sed -n "$((4 * k - 3)),$((4 * k))p" | while read -r f; do cp $r/$f "$OUT"/; done
ls "$OUT"

#!/usr/bin/env bash
# On the device, after scripts/device/poll.sh reported done: the run's results into $OUT (at
# most 8 files come back per call), named as in docs/results/smollm2-afm-runN/.
set -u
w=/tmp/w/WORK
cp $w/train/final/analog.json $w/train/final/config.json "$OUT"/
cp $w/data/index.json "$OUT"/data-index.json
cp $w/eval-ideal/results.json "$OUT"/eval-ideal.json
cp $w/eval/results.json "$OUT"/eval-afm-paper.json
cp $w/train/log.jsonl "$OUT"/train-log.jsonl
tail -c 2000 $w/gpu.log | tr '\r' '\n' | tail -4 > "$OUT"/gpu-log-tail.txt
tail -3 $w/eval/results.md
ls -la "$OUT"

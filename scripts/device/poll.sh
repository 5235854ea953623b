#!/usr/bin/env bash
# On the device: waits up to $1 s for the run that scripts/device/start.sh began (WORK/done),
# printing every 30 s the training step, the evaluation's cell count and the last log line.
W=/tmp/w; end=$((SECONDS + $1))
while [ $SECONDS -lt $end ] && [ ! -f $W/WORK/done ]; do
  sleep 30
  echo "== $(date +%T) $(tail -c 300 $W/WORK/gpu.log 2>/dev/null | tr '\r' '\n' | tail -1)"
  tail -n 1 "$(find $W/WORK -name log.jsonl -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 \
    | cut -d' ' -f2)" 2>/dev/null | cut -c 1-200
  echo "cells: $(find $W/WORK -path "*/cells/*" -type f 2>/dev/null | wc -l)"
done
[ -f $W/WORK/done ] && echo "done $(date +%T)"

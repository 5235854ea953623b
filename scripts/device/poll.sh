#!/usr/bin/env bash
# On the device: waits up to $1 s for the run that scripts/device/start.sh began (WORK/done),
# printing every 30 s the training step, the evaluation's cell count and the last log line
# (and WORK-par's training step while PAR_CONFIG's run goes on beside it, WORK-fp's cells).
W=/tmp/w; end=$((SECONDS + $1))
finished() { [ -f $W/WORK/done ] && { [ ! -d $W/WORK-par ] || [ -f $W/WORK-par/done ]; } \
  && { [ ! -d $W/WORK-fp ] || [ -f $W/WORK-fp/done ]; }; }
while [ $SECONDS -lt $end ] && ! finished; do
  sleep 30
  echo "== $(date +%T) $(tail -c 300 $W/WORK/gpu.log 2>/dev/null | tr '\r' '\n' | tail -1)"
  [ -d $W/WORK-par ] && echo "par: $(tail -c 300 $W/WORK-par/gpu.log 2>/dev/null \
    | tr '\r' '\n' | tail -1)"
  tail -n 1 "$(find $W/WORK -name log.jsonl -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 \
    | cut -d' ' -f2)" 2>/dev/null | cut -c 1-200
  echo "cells: $(find $W/WORK -path "*/cells/*" -type f 2>/dev/null | wc -l)"
  [ -d $W/WORK-fp ] && echo "fp cells: $(find $W/WORK-fp -path "*/cells/*" -type f | wc -l)"
done
finished && echo "done $(date +%T)"

#!/usr/bin/env bash
# Splits the first PROBLEMS problems of GSM8K's test file into one data folder per problem, so
# that a many-core machine can score a sampled (--samples N) generation run as one
# single-thread `afm eval` process per problem, each given its folder as AFM_DATA;
# scripts/gsm8k-curve.py then adds the per-problem results.json up into one curve.
# Usage: scripts/gsm8k-shards.sh DATA_DIR SHARDS_DIR PROBLEMS
#   DATA_DIR: the shared data folder (bench/gsm8k_test.jsonl and bench/gsm8k_train.jsonl, the
#   few-shot examples, which every shard links to).
set -euo pipefail
data=$1 shards=$2 problems=$3
test=$data/bench/gsm8k_test.jsonl
[ -f "$test" ] || { echo "$test: not found (the GSM8K test file)" >&2; exit 1; }
have=$(wc -l < "$test")
[ "$problems" -le "$have" ] || { echo "$test: $have problems, $problems asked" >&2; exit 1; }
train=$(cd "$data/bench" && pwd)/gsm8k_train.jsonl
for i in $(seq 1 "$problems"); do
  dir=$shards/$(printf 'p%04d' "$i")/bench
  mkdir -p "$dir"
  sed -n "${i}p" "$test" > "$dir/gsm8k_test.jsonl"
  ln -sf "$train" "$dir/gsm8k_train.jsonl"
done

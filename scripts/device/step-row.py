"""One Markdown row of a training run's speed, for train-ratio.sh and train-ab.sh: the median
tokens/s of steps 6-30 and the KL of the last step from a `log.jsonl`, plus a row of median
phase times when the run was profiled (`[run] profile`).
Usage: python3 step-row.py LOG_JSONL ORDER LABEL"""
import json
import statistics
import sys

log, order, label = sys.argv[1:4]
rows = [json.loads(line) for line in open(log)]
tps = statistics.median(r["tokens_per_s"] for r in rows[5:30])
print(f"| {order} | {label} | {tps:,.0f} | {rows[-1]['kl']:.4f} |")
if "phase_ms" in rows[-1]:
    ph = {k: statistics.median(r["phase_ms"].get(k, 0.0) for r in rows[5:30]) for k in rows[-1]["phase_ms"]}
    print("|   | phases, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()) + " | | |")

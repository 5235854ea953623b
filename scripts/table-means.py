#!/usr/bin/env python3
"""Per-chip and mean task averages of `afm eval` results.json files, as docs/results/smollm2-afm.md
quotes them: the average over the accuracy tasks (wikitext2's perplexity left out), per chip
(seed) and over chips, with and without the tasks named by --without (e.g. boolq).

Usage: scripts/table-means.py [--without boolq] results.json ...
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--without", default="", help="tasks left out, comma-separated")
    a = ap.parse_args()
    skip = {"wikitext2", "ptb", "average"} | {t for t in a.without.split(",") if t}
    for path in a.files:
        d = json.load(open(path))
        rows = {}
        for s in d["summary"]:
            if s["task"] not in skip and s["metric"] != "ppl":
                rows.setdefault(s["row"], []).append(s)
        for row, tasks in rows.items():
            chips = len(tasks[0]["values"])
            per = [100 * sum(t["values"][i] for t in tasks) / len(tasks) for i in range(chips)]
            names = ",".join(t["task"] for t in tasks)
            print(f"{path} | {row} | {len(tasks)} tasks ({names}) | per chip "
                  + " ".join(f"{v:.1f}" for v in per) + f" | mean {sum(per) / chips:.2f}")


if __name__ == "__main__":
    main()

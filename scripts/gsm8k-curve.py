#!/usr/bin/env python3
"""Merges sharded `afm eval --samples N` runs into one maj@k / pass@k curve per row.

A many-core machine evaluates a generation task fastest as one single-thread process per slice
of the problems (each process given its own AFM_DATA folder holding that slice of the task's
test file). Every process writes its own results.json; this script adds them up, weighting
each shard by its item count, and writes a markdown table, a JSON and an SVG plot.

Usage: gsm8k-curve.py OUT_PREFIX LABEL=DIR [LABEL=DIR ...]
  DIR holds one sub-folder per shard, each with the results.json of `afm eval`.
"""
import glob
import json
import os
import sys


def merge(folder):
    """Per (row, select): items and the summed correct counts per k, over every shard."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(folder, "*", "results.json"))):
        with open(path) as f:
            res = json.load(f)
        for cell in res["cells"]:
            m = cell["metrics"]
            items = m["items"]
            r = rows.setdefault(cell["row"], {"items": 0, "shards": 0, "maj": {}, "pass": {}})
            r["items"] += items
            r["shards"] += 1
            for key, v in m.items():
                sel, _, k = key.partition("@")
                if sel in ("maj", "pass") and k.isdigit():
                    r[sel][int(k)] = r[sel].get(int(k), 0.0) + v * items
    return rows


def svg(curves, path):
    """A plain line chart of maj@k (solid) and pass@k (dashed) against k on a log2 axis."""
    w, h, pad = 520, 320, 50
    ks = sorted({k for c in curves for k in c["maj"]})
    top = max([v for c in curves for v in list(c["maj"].values()) + list(c["pass"].values())] + [1.0])
    x = lambda k: pad + (w - 2 * pad) * (ks.index(k) / max(len(ks) - 1, 1))
    y = lambda v: h - pad - (h - 2 * pad) * v / top
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-12}" text-anchor="middle">samples per problem N</text>',
           f'<text x="12" y="{pad-12}">accuracy (%)</text>']
    for k in ks:
        out.append(f'<text x="{x(k)}" y="{h-pad+14}" text-anchor="middle">{k}</text>')
    for t in range(5):
        v = top * t / 4
        out.append(f'<text x="{pad-6}" y="{y(v)+4}" text-anchor="end">{v:.1f}</text>')
    for i, c in enumerate(curves):
        col = colors[i % len(colors)]
        for sel, dash in (("maj", ""), ("pass", ' stroke-dasharray="5,4"')):
            pts = " ".join(f"{x(k):.1f},{y(c[sel][k]):.1f}" for k in ks if k in c[sel])
            out.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{w-pad-150}" y="{pad+14*i}" fill="{col}">{c["label"]}</text>')
    out.append(f'<text x="{w-pad-150}" y="{pad+14*len(curves)}">solid maj@N, dashed pass@N</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    prefix, curves = sys.argv[1], []
    for arg in sys.argv[2:]:
        label, _, folder = arg.partition("=")
        rows = merge(folder)
        if not rows:
            sys.exit(f"{folder}: no */results.json")
        for row, r in rows.items():
            n = r["items"]
            curves.append({
                "label": label if len(rows) == 1 else f"{label}: {row}",
                "row": row, "items": n, "shards": r["shards"],
                "maj": {k: 100 * v / n for k, v in sorted(r["maj"].items())},
                "pass": {k: 100 * v / n for k, v in sorted(r["pass"].items())},
            })
    ks = sorted({k for c in curves for k in c["maj"]})
    lines = ["| model / hardware | problems | " + " | ".join(f"maj@{k}" for k in ks) + " | "
             + " | ".join(f"pass@{k}" for k in ks) + " |",
             "|---|---:|" + "---:|" * (2 * len(ks))]
    for c in curves:
        lines.append(f"| {c['label']} | {c['items']:.0f} | "
                     + " | ".join(f"{c['maj'].get(k, float('nan')):.1f}" for k in ks) + " | "
                     + " | ".join(f"{c['pass'].get(k, float('nan')):.1f}" for k in ks) + " |")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(prefix + ".json", "w") as f:
        json.dump(curves, f, indent=1)
    svg(curves, prefix + ".svg")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

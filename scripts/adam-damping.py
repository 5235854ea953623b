#!/usr/bin/env python3
"""How much AdamW's epsilon damps the student's steps: reads a training checkpoint's optimizer
state (`optim.safetensors` of `afm train`, moments m.NAME and v.NAME after STEPS steps) and
prints, per projection type, the rms of the gradient that v estimates (sqrt of the
bias-corrected v), the share of weights whose sqrt(v) is below eps, and the mean damping
factor sqrt(v) / (sqrt(v) + eps) at eps 1e-6 (the recipe's) and 1e-8. docs/results/smollm2-afm.md,
section "Session 23, CPU: AdamW's epsilon".

Usage: scripts/adam-damping.py CHECKPOINT_DIR STEPS [BETA2]
"""
import json
import struct
import sys
from collections import defaultdict

import numpy as np


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32)
    return out


def main():
    ckpt, steps = sys.argv[1], int(sys.argv[2])
    beta2 = float(sys.argv[3]) if len(sys.argv) > 3 else 0.98
    t = load(f"{ckpt}/optim.safetensors")
    c2 = 1.0 - beta2**steps
    by_type = defaultdict(list)
    for name, v in t.items():
        if not name.startswith("v.") or not name.endswith(".weight"):
            continue
        kind = name[2:].split(".")[-2]
        by_type[kind].append(np.sqrt(v.astype(np.float64) / c2))
    print(f"{ckpt}: {steps} steps, beta2 {beta2}")
    print("| projection | weights | rms grad | median sqrt(v) | sqrt(v) < 1e-6 | damping at eps 1e-6 | at 1e-8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in sorted(by_type):
        s = np.concatenate(by_type[kind])
        rms = float(np.sqrt(np.mean(s**2)))
        row = [kind, f"{s.size}", f"{rms:.2e}", f"{np.median(s):.2e}",
               f"{np.mean(s < 1e-6):.1%}", f"{np.mean(s / (s + 1e-6)):.3f}",
               f"{np.mean(s / (s + 1e-8)):.3f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

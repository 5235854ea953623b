"""The rms of the afm-paper preset's PCM programming noise (pcm-afm: src/device/mod.rs's
afm_sigma, weights scaled so that each tile column's largest |w| is 180), relative to that
column's largest |w|, over every weight of SmolLM2-135M-Instruct's projections split into
512-row blocks as the tile mapping splits them: the number to compare with the training's
per-channel Gaussian weight noise (`[analog] weight_noise`, relative to the same max).

    pip install gguf numpy
    python3 scripts/pcm-noise-rms.py ~/.cache/afm/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import sys

import gguf
import numpy as np


def afm_sigma(w):
    """src/device/mod.rs afm_sigma: programming-noise std at |w| in [0, 180]."""
    lo = 2.939751381126213e-05 * w**3 - 0.00371581208142707 * w**2 + 0.22419685954327148 * w \
        + 2.5797410660159494
    hi = 1.2329755395573392e-05 * w**3 - 0.003054993405157235 * w**2 + 0.2453487119885723 * w \
        + 2.110295720240385
    return np.where(w <= 52.5, lo, hi)


def row_blocks(n, rows=512):
    """src/tile/mapping.rs split_sizes: near-equal blocks of at most `rows`."""
    nb = -(-n // rows)
    base, extra = divmod(n, nb)
    start = 0
    for b in range(nb):
        length = base + (1 if b < extra else 0)
        yield start, length
        start += length


def main():
    reader = gguf.GGUFReader(sys.argv[1])
    per_kind = {}
    for t in reader.tensors:
        if not (t.name.startswith("blk.") and t.name.endswith(".weight")) or "norm" in t.name:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.abs(w.reshape(-1, w.shape[-1]))  # (out, in)
        sq = []
        for start, length in row_blocks(w.shape[1]):
            blk = w[:, start:start + length]
            m = blk.max(axis=1, keepdims=True)
            m[m == 0] = 1.0
            sq.append(((afm_sigma(blk / m * 180.0) / 180.0) ** 2).ravel())
        per_kind.setdefault(t.name.split(".")[2], []).append(np.concatenate(sq))
    everything = []
    for kind, parts in sorted(per_kind.items()):
        v = np.concatenate(parts)
        everything.append(v)
        print(f"{kind:12s} rms noise / column max = {np.sqrt(v.mean()):.4f}")
    print(f"{'all':12s} rms noise / column max = {np.sqrt(np.concatenate(everything).mean()):.4f}")


if __name__ == "__main__":
    main()

# The GPU probes' timer: the median of `reps` calls of f in ms, each between two CUDA events,
# after `warm` calls. Imported by the scripts beside it (run from any folder: Python puts the
# script's own folder on the path).
import torch


def median_ms(f, reps=20, warm=3):
    for _ in range(warm):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]

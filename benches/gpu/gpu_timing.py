# What the GPU probes share: the timer (the median of `reps` calls of f in ms, each between two
# CUDA events, after `warm` calls) and the ADC probes' operands and torch's ADC of them.
# Imported by the scripts beside it (run from any folder: Python puts the script's own folder
# on the path).
import torch

RB = 512  # rows per block, host side
INV_STATES = 1.0 / 127.5  # 8-bit ADC: 2 * 127.5 states across [-b, b]


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


def adc_operands(T, d):
    """x (T, d) and w (d, d) in bf16 from seed 0, and x's row blocks xb (d / RB, T, RB)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(T, d, device="cuda", generator=g) * 0.5).to(torch.bfloat16)
    w = (torch.randn(d, d, device="cuda", generator=g) * 0.03).to(torch.bfloat16)
    xb = x.view(T, d // RB, RB).transpose(0, 1).contiguous()
    return x, w, xb


def adc_reference(yb, bound_std):
    """torch's ADC of the block products yb (nb, T, out): per (block, channel) bounds of
    `bound_std` standard deviations of the block's outputs, 1 / res, the levelled q, the clamped
    cl and their sum over blocks in bf16."""
    bound = (yb.float().std(dim=1) * bound_std).contiguous()
    inv = (1.0 / ((bound * 2.0) * INV_STATES)).contiguous()
    q = torch.round(yb.float() * inv[:, None, :]) * (bound * (2.0 * INV_STATES))[:, None, :]
    cl = torch.minimum(torch.maximum(q, -bound[:, None, :]), bound[:, None, :])
    return bound, inv, q, cl, cl.sum(0).to(torch.bfloat16)

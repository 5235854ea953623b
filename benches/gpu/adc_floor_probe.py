# Probe (session 41): the memory floor of the forward's ADC (adc_sum), and whether the block
# sums' layout matters. A Triton kernel sums nb blocks of bf16 block outputs in f32 (no ADC, no
# bounds, no clamp mask: only the bytes adc_sum must move), read as planes (nb, T, out: the
# blocked product's layout) or with a token's blocks side by side (T, nb, out); a plain copy of
# the planes gives the device's bandwidth. Run on the GPU machine: python3 adc_floor_probe.py
import torch, triton, triton.language as tl
from gpu_timing import median_ms as bench

@triton.jit
def sum_blocks(yb, y, T, OUT, NB: tl.constexpr, s_stride, t_stride, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    cb = tl.program_id(1)
    c = cb * BLOCK + tl.arange(0, BLOCK)
    m = c < OUT
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(NB):
        v = tl.load(yb + s * s_stride + t * t_stride + c, mask=m, other=0.0)
        acc += v.to(tl.float32)
    tl.store(y + t * OUT + c, acc.to(tl.bfloat16), mask=m)

print(torch.cuda.get_device_name())
for nb, T, out in [(8, 4096, 4096), (16, 4096, 8192), (4, 16384, 2048), (8, 16384, 4096)]:
    planar = torch.randn(nb, T, out, device="cuda", dtype=torch.bfloat16)
    inter = torch.randn(T, nb, out, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(T, out, device="cuda", dtype=torch.bfloat16)
    gb = (nb * T * out * 2 + T * out * 2) / 1e9
    res = []
    for BLOCK in (1024, 2048):
        grid = (T, triton.cdiv(out, BLOCK))
        tp = bench(lambda: sum_blocks[grid](planar, y, T, out, nb, T * out, out, BLOCK=BLOCK))
        ti = bench(lambda: sum_blocks[grid](inter, y, T, out, nb, out, nb * out, BLOCK=BLOCK))
        res.append((BLOCK, tp, ti))
    dst = torch.empty_like(planar)
    tc = bench(lambda: dst.copy_(planar))
    print(f"nb {nb} T {T} out {out}: copy {2*planar.numel()*2/1e9/tc*1e3:.0f} GB/s; " + "; ".join(
        f"BLOCK {b}: planar {tp*1e3:.1f} us ({gb/tp*1e3:.0f} GB/s), side by side {ti*1e3:.1f} us ({gb/ti*1e3:.0f} GB/s)"
        for b, tp, ti in res))
    del planar, inter, dst

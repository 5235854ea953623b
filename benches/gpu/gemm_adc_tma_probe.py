# Probe (session 42): does Triton's main loop reach cuBLAS's rate on this GPU when it loads
# through tensor descriptors (TMA) rather than pointers, and what does the ADC inside its K loop
# cost then? gemm_adc_probe.py found pointer loads at 1.47x cuBLAS's mm before any ADC. Times
# (CUDA events, medians): torch's mm and bmm of the 512-row blocks, a TMA GEMM over all of K,
# and the same loop over the blocks with each block's partial sums levelled, clamped and summed
# in registers (no clamp mask: the main loop's cost only); checks the last against torch.
# Run on the GPU machine: python3 benches/gpu/gemm_adc_tma_probe.py [DxT ...]; environment:
# PROBE_BOUND_STD (bounds in standard deviations of the block sums, default 2.5: every flag
# tile clamps; 8: none does, the release bound's common case), PROBE_ONLY (run the variants
# whose names contain it).
# Run in session 43 (benches/RESULTS.md): TMA brings the GEMM to 1.03-1.15x cuBLAS; the ADC loop
# without mask 0.87-0.94 of cuBLAS + adc_sum, with mask and flags (tma_gemm_adc_full) 2.6x on
# this data, where every flag tile clamps, and 1.7-2.0x where none does (PROBE_BOUND_STD=8).
# Not kept. Compiled here by pip's Triton 3.9.0
# for sm_90a, ptxas 13.0: the GEMM 93-176 registers, the loop with the ADC 164 (128 x 64 tiles),
# 180 (128 x 128, no spills) and 255 with spills (128 x 256).
import os, sys
import torch, triton, triton.language as tl
from triton.language.extra import libdevice
from triton.tools.tensor_descriptor import TensorDescriptor
from gemm_adc_triton import adc_block, grouped_tile
from gpu_timing import median_ms

RB = 512
BOUND_STD = float(os.environ.get("PROBE_BOUND_STD", "2.5"))
ONLY = os.environ.get("PROBE_ONLY", "")
INV_STATES = 1.0 / 127.5


@triton.jit
def tma_gemm_adc(a_desc, b_desc, bound, inv, y, T, OUT, NB, two_inv, R: tl.constexpr,
                 ADC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 GM: tl.constexpr, STAGES: tl.constexpr):
    # a_desc: (NB * T, R) blocked inputs; b_desc: (NB * OUT, R) weight blocks; NB = 1 and R = K
    # for the plain GEMM (ADC off).
    pm, pn = grouped_tile(T // BM, OUT // BN, GM)
    rn = pn * BN + tl.arange(0, BN)
    main = tl.zeros((BM, BN), dtype=tl.float32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, NB * R, BK, num_stages=STAGES):
        s = k // R
        kk = k % R
        a = a_desc.load([s * T + pm * BM, kk])
        b = b_desc.load([s * OUT + pn * BN, kk])
        acc = tl.dot(a, b.T, acc)
        if ADC:
            if kk + BK == R:
                v = acc.to(tl.bfloat16).to(tl.float32)
                bd = tl.load(bound + s * OUT + rn)[None, :]
                iv = tl.load(inv + s * OUT + rn)[None, :]
                q = libdevice.rint(v * iv) * (bd * two_inv)
                main += tl.minimum(tl.maximum(q, -bd), bd)
                acc = tl.zeros((BM, BN), dtype=tl.float32)
    if not ADC:
        main = acc
    rm = pm * BM + tl.arange(0, BM)
    tl.store(y + rm[:, None].to(tl.int64) * OUT + rn[None, :], main.to(tl.bfloat16))


@triton.jit
def adc_block_masked(acc, main, s, rm, rn, bound, inv, clamps, flags, T, OUT, two_inv, ft, fo,
                     BM: tl.constexpr, BN: tl.constexpr):
    # adc_block (EXACT 0) without its tile-wide test for a clamp (a reduction through shared
    # memory at every block's end): the mask's atomics and the flags' stores are issued
    # masked for every output, so a tile with no clamp pays their predicates only.
    v = acc.to(flags.dtype.element_ty).to(tl.float32)
    bd = tl.load(bound + s * OUT + rn)[None, :]
    iv = tl.load(inv + s * OUT + rn)[None, :]
    res = bd * two_inv
    a = v * iv
    lv = libdevice.rint(a)
    lv = tl.where(tl.abs(a - lv) == 0.5, a + tl.where(a < 0.0, -0.5, 0.5), lv)
    q = lv * res
    cl = tl.minimum(tl.maximum(q, -bd), bd)
    on = bd > 0.0
    main += tl.where(on, cl, v)
    hit = on & (cl != q) & (rm < T)[:, None]
    word = ((s * T + rm) * (OUT // 32))[:, None] + (rn // 32)[None, :]
    tl.atomic_or(clamps + word, (1 << (rn % 32)).to(tl.uint32)[None, :], mask=hit, sem="relaxed")
    fi = (s * ft + rm // 64)[:, None] * fo + (rn // 64)[None, :]
    tl.store(flags + fi, tl.full((BM, BN), 1.0, flags.dtype.element_ty), mask=hit)
    return main


@triton.jit
def tma_gemm_adc_full(a_desc, b_desc, bound, inv, y, flags, clamps, T, OUT, NB, two_inv, win,
                      ft, fo, R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, GM: tl.constexpr, STAGES: tl.constexpr,
                      EXACT: tl.constexpr):
    # tma_gemm_adc's loop with the crate patch's whole ADC (adc_block: mask bits and flag tiles
    # where something clamped; EXACT 1: the division near halves, as adc_sum has it; EXACT 2:
    # adc_block_masked, no tile-wide test).
    pm, pn = grouped_tile(T // BM, OUT // BN, GM)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    main = tl.full((BM, BN), -0.0, tl.float32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, NB * R, BK, num_stages=STAGES):
        s = k // R
        kk = k % R
        a = a_desc.load([s * T + pm * BM, kk])
        b = b_desc.load([s * OUT + pn * BN, kk])
        acc = tl.dot(a, b.T, acc)
        if kk + BK == R:
            if EXACT == 2:
                main = adc_block_masked(acc, main, s, rm, rn, bound, inv, clamps, flags, T, OUT,
                                        two_inv, ft, fo, BM, BN)
            else:
                main = adc_block(acc, main, s, rm, rn, bound, inv, clamps, flags, T, OUT,
                                 two_inv, win, ft, fo, pm, pn, BM, BN, 64, EXACT)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
    tl.store(y + rm[:, None].to(tl.int64) * OUT + rn[None, :], main.to(tl.bfloat16))


def bench(f):
    return median_ms(f) * 1e3


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    shapes = [(4096, 8192), (4096, 4096)]
    if len(sys.argv) > 1:
        shapes = [tuple(int(v) for v in a.split("x"))[::-1] for a in sys.argv[1:]]
    for T, d in shapes:
        nb = d // RB
        g = torch.Generator(device="cuda").manual_seed(0)
        x = (torch.randn(T, d, device="cuda", generator=g) * 0.5).to(torch.bfloat16)
        w = (torch.randn(d, d, device="cuda", generator=g) * 0.03).to(torch.bfloat16)
        xb = x.view(T, nb, RB).transpose(0, 1).contiguous()  # (nb, T, R)
        wb = w.view(d, nb, RB).transpose(0, 1).contiguous()  # (nb, out, R)
        yb = torch.bmm(xb, wb.transpose(1, 2))
        bound = (yb.float().std(dim=1) * BOUND_STD).contiguous()
        inv = (1.0 / ((bound * 2.0) * INV_STATES)).contiguous()
        two_inv = 2.0 * INV_STATES
        q = torch.round(yb.float() * inv[:, None, :]) * (bound * two_inv)[:, None, :]
        ref = torch.minimum(torch.maximum(q, -bound[:, None, :]), bound[:, None, :]).sum(0)
        ref = ref.to(torch.bfloat16)
        y = torch.empty(T, d, device="cuda", dtype=torch.bfloat16)
        row = {"mm": bench(lambda: torch.mm(x, w.T, out=y)),
               "bmm": bench(lambda: torch.bmm(xb, wb.transpose(1, 2), out=yb))}
        for bm, bn, bk, nw, st in [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
                                   (128, 64, 64, 4, 4)]:
            tag = f"{bm}x{bn}x{bk}_w{nw}_s{st}"
            grid = ((T // bm) * (d // bn),)
            for adc in (False, True):
                name = ("adc_" if adc else "gemm_") + tag
                if ONLY not in name:
                    continue
                try:
                    if adc:
                        ad = TensorDescriptor.from_tensor(xb.view(nb * T, RB), [bm, bk])
                        bd = TensorDescriptor.from_tensor(wb.view(nb * d, RB), [bn, bk])
                        args = (ad, bd, bound, inv, y, T, d, nb, two_inv)
                        r = RB
                    else:
                        ad = TensorDescriptor.from_tensor(x, [bm, bk])
                        bd = TensorDescriptor.from_tensor(w, [bn, bk])
                        args = (ad, bd, bound, inv, y, T, d, 1, two_inv)
                        r = d
                    run = lambda: tma_gemm_adc[grid](*args, R=r, ADC=adc, BM=bm, BN=bn, BK=bk,
                                                     GM=8, STAGES=st, num_warps=nw)
                    run()
                    want = ref if adc else (x @ w.T)
                    bad = (y != want).float().mean().item()
                    row[name] = bench(run)
                    print(f"   {name}: {row[name]:.1f} us, {bad:.2e} of outputs differ from torch")
                except Exception as e:
                    print(f"   {name} failed: {repr(e)[:300]}")
        # The whole ADC: mask words (u32, zeroed each launch) and flag tiles, against torch's.
        ft, fo = T // 64, d // 64
        hit = (q != torch.minimum(torch.maximum(q, -bound[:, None, :]), bound[:, None, :]))
        want_flags = hit.view(nb, ft, 64, fo, 64).any(4).any(2).to(torch.bfloat16)
        clamps = torch.zeros(nb * T * d // 32, device="cuda", dtype=torch.int32)
        flags = torch.zeros(nb * ft * fo, device="cuda", dtype=torch.bfloat16)
        win = 0.5 - 4.8e-7 * (0.5 / INV_STATES + 3.0)
        for bm, bn, bk, nw, st in [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3)]:
            for exact in (0, 1, 2):
                name = f"full{exact}_{bm}x{bn}x{bk}_w{nw}_s{st}"
                if ONLY not in name:
                    continue
                try:
                    ad = TensorDescriptor.from_tensor(xb.view(nb * T, RB), [bm, bk])
                    bd = TensorDescriptor.from_tensor(wb.view(nb * d, RB), [bn, bk])
                    grid = ((T // bm) * (d // bn),)

                    def run():
                        clamps.zero_()
                        flags.zero_()
                        tma_gemm_adc_full[grid](ad, bd, bound, inv, y, flags, clamps, T, d, nb,
                                                two_inv, win, ft, fo, R=RB, BM=bm, BN=bn, BK=bk,
                                                GM=8, STAGES=st, EXACT=exact, num_warps=nw)
                    run()
                    bad = (y != ref).float().mean().item()
                    fbad = (flags != want_flags.flatten()).sum().item()
                    row[name] = bench(run)
                    print(f"   {name}: {row[name]:.1f} us, {bad:.2e} of outputs differ from "
                          f"torch, {fbad} of {flags.numel()} flag tiles differ "
                          f"({int(want_flags.sum().item())} set)")
                except Exception as e:
                    print(f"   {name} failed: {repr(e)[:300]}")
        print(f"d {d} T {T} nb {nb}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))


if __name__ == "__main__":
    main()

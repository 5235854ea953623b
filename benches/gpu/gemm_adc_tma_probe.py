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
# without mask 0.87-0.94 of cuBLAS + adc_sum, with mask and flags (MODE 2) 2.6x on
# this data, where every flag tile clamps, and 1.7-2.0x where none does (PROBE_BOUND_STD=8)
# (session 43 ran it as two kernels; now one, tma_gemm_adc with MODE).
# Not kept. Compiled here by pip's Triton 3.9.0
# for sm_90a, ptxas 13.0: the GEMM 93-176 registers, the loop with the ADC 164 (128 x 64 tiles),
# 180 (128 x 128, no spills) and 255 with spills (128 x 256).
import os, sys
import torch, triton, triton.language as tl
from triton.language.extra import libdevice
from triton.tools.tensor_descriptor import TensorDescriptor
from gemm_adc_triton import adc_block, grouped_tile
from gpu_timing import INV_STATES, RB, adc_operands, adc_reference, median_ms

BOUND_STD = float(os.environ.get("PROBE_BOUND_STD", "2.5"))
ONLY = os.environ.get("PROBE_ONLY", "")


@triton.jit
def tma_gemm_adc(a_desc, b_desc, bound, inv, y, flags, clamps, T, OUT, NB, two_inv, win, ft, fo,
                 R: tl.constexpr, MODE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, GM: tl.constexpr, STAGES: tl.constexpr):
    # a_desc: (NB * T, R) blocked inputs; b_desc: (NB * OUT, R) weight blocks. MODE 0: the plain
    # GEMM (NB = 1, R = K); 1: each block's sums levelled, clamped and summed in registers, no
    # clamp mask (the main loop's cost only); 2, 3, 4: the crate patch's whole ADC (adc_block:
    # mask bits and flag tiles where a tile clamped; 3: the division near halves, as adc_sum
    # has it; 4: without the tile-wide test, the mask's atomics and flags' stores masked).
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
        if MODE > 0:
            if kk + BK == R:
                if MODE == 1:
                    v = acc.to(tl.bfloat16).to(tl.float32)
                    bd = tl.load(bound + s * OUT + rn)[None, :]
                    iv = tl.load(inv + s * OUT + rn)[None, :]
                    q = libdevice.rint(v * iv) * (bd * two_inv)
                    main += tl.minimum(tl.maximum(q, -bd), bd)
                else:
                    main = adc_block(acc, main, s, rm, rn, bound, inv, clamps, flags, T, OUT,
                                     two_inv, win, ft, fo, pm, pn, BM, BN, 64, MODE == 3,
                                     MODE != 4)
                acc = tl.zeros((BM, BN), dtype=tl.float32)
    if MODE == 0:
        main = acc
    tl.store(y + rm[:, None].to(tl.int64) * OUT + rn[None, :], main.to(tl.bfloat16))


def bench(f):
    return median_ms(f) * 1e3


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    shapes = [(4096, 8192), (4096, 4096)]
    if len(sys.argv) > 1:
        shapes = [tuple(int(v) for v in a.split("x"))[::-1] for a in sys.argv[1:]]
    tiles = [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (128, 64, 64, 4, 4)]
    # (name, MODE, tiles): the whole ADC at the two tiles that kept one block per SM
    variants = [("gemm", 0, tiles), ("adc", 1, tiles)] + \
        [(f"full{m - 2}", m, [tiles[1], tiles[0]]) for m in (2, 3, 4)]
    for T, d in shapes:
        nb = d // RB
        x, w, xb = adc_operands(T, d)
        wb = w.view(d, nb, RB).transpose(0, 1).contiguous()  # (nb, out, R)
        yb = torch.bmm(xb, wb.transpose(1, 2))
        bound, inv, q, cl, ref = adc_reference(yb, BOUND_STD)
        two_inv = 2.0 * INV_STATES
        y = torch.empty(T, d, device="cuda", dtype=torch.bfloat16)
        row = {"mm": bench(lambda: torch.mm(x, w.T, out=y)),
               "bmm": bench(lambda: torch.bmm(xb, wb.transpose(1, 2), out=yb))}
        # For the whole ADC: mask words (u32, zeroed each launch) and flag tiles, against torch's.
        ft, fo = T // 64, d // 64
        want_flags = (q != cl).view(nb, ft, 64, fo, 64).any(4).any(2).to(torch.bfloat16).flatten()
        clamps = torch.zeros(nb * T * d // 32, device="cuda", dtype=torch.int32)
        flags = torch.zeros(nb * ft * fo, device="cuda", dtype=torch.bfloat16)
        win = 0.5 - 4.8e-7 * (0.5 / INV_STATES + 3.0)
        for prefix, mode, cfgs in variants:
            for bm, bn, bk, nw, st in cfgs:
                name = f"{prefix}_{bm}x{bn}x{bk}_w{nw}_s{st}"
                if ONLY not in name:
                    continue
                try:
                    if mode == 0:
                        ad = TensorDescriptor.from_tensor(x, [bm, bk])
                        bd = TensorDescriptor.from_tensor(w, [bn, bk])
                        n, r = 1, d
                    else:
                        ad = TensorDescriptor.from_tensor(xb.view(nb * T, RB), [bm, bk])
                        bd = TensorDescriptor.from_tensor(wb.view(nb * d, RB), [bn, bk])
                        n, r = nb, RB
                    grid = ((T // bm) * (d // bn),)

                    def run():
                        if mode >= 2:
                            clamps.zero_()
                            flags.zero_()
                        tma_gemm_adc[grid](ad, bd, bound, inv, y, flags, clamps, T, d, n, two_inv,
                                           win, ft, fo, R=r, MODE=mode, BM=bm, BN=bn, BK=bk, GM=8,
                                           STAGES=st, num_warps=nw)
                    run()
                    bad = (y != (ref if mode else x @ w.T)).float().mean().item()
                    row[name] = bench(run)
                    line = f"   {name}: {row[name]:.1f} us, {bad:.2e} of outputs differ from torch"
                    if mode >= 2:
                        line += (f", {(flags != want_flags).sum().item()} of {flags.numel()} "
                                 f"flag tiles differ ({int(want_flags.sum().item())} set)")
                    print(line)
                except Exception as e:
                    print(f"   {name} failed: {repr(e)[:300]}")
        print(f"d {d} T {T} nb {nb}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))


if __name__ == "__main__":
    main()

# Probe (session 42; measured on an H100, benches/RESULTS.md session 42: no, the Triton main loop
# alone is 1.47x cuBLAS's here): can a Triton product with the ADC inside its K loop (each 512-row block's
# partial sums rounded to bf16, levelled, clamped and added to a second accumulator in
# registers, so no (nb, T, out) planes go through memory) beat cuBLAS's blocked product plus
# the crate's `adc_sum`? Times, on one GPU, CUDA events, medians: torch's plain mm (the floor),
# torch's bmm of the blocks (the product our forward runs), a plain Triton GEMM (its main loop's
# quality) and the fused kernel, with and without the clamp mask and flags; checks the fused
# outputs against torch's bmm + the ADC written in torch. Run on the GPU machine:
#   python3 benches/gpu/gemm_adc_probe.py
import sys
import torch, triton, triton.language as tl
from triton.language.extra import libdevice

import gemm_adc_triton as ship  # the kernel docs/experiments/product-adc-triton.patch launches
from gemm_adc_triton import grouped_tile
from gpu_timing import INV_STATES, RB, adc_operands, adc_reference, median_ms

R = tl.constexpr(RB)


def configs():
    out = []
    for bm, bn, w, s in [(128, 128, 8, 3), (128, 128, 8, 4), (128, 128, 4, 4), (128, 256, 8, 3),
                         (256, 128, 8, 3), (64, 256, 4, 4)]:
        out.append(triton.Config({"BM": bm, "BN": bn, "BK": 64, "GM": 8}, num_warps=w, num_stages=s))
    return out


@triton.jit
def adc_step(acc, main, s, pm, pn, rm, rn, bound, inv, clamps, flags, T, OUT, two_inv,
             MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, EXACT: tl.constexpr):
    v = acc.to(tl.bfloat16).to(tl.float32)
    bd = tl.load(bound + s * OUT + rn)
    iv = tl.load(inv + s * OUT + rn)
    res = (bd * two_inv)[None, :]
    a = v * iv[None, :]
    lv = libdevice.rint(a)
    if EXACT:
        # the crate's adc_level: the division where the product lies near a half
        near = tl.abs(a - lv) >= 0.4999
        lv = tl.where(near, libdevice.round(libdevice.div_rn(v, res)), lv)
    q = lv * res
    cl = tl.minimum(tl.maximum(q, -bd[None, :]), bd[None, :])
    main += cl
    if MASK:
        hit = (cl != q).to(tl.int32)
        bits = tl.reshape(hit, (BM, BN // 8, 8)) << tl.arange(0, 8)[None, None, :]
        byte = tl.sum(bits, axis=2).to(tl.uint8)
        cb = pn * (BN // 8) + tl.arange(0, BN // 8)
        tl.store(clamps + (s * T + rm[:, None]).to(tl.int64) * (OUT // 8) + cb[None, :], byte)
        t4 = tl.reshape(hit, (BM // 64, 64, BN // 64, 64))
        anyt = tl.max(tl.max(t4, axis=3), axis=1)
        ft = T // 64
        fo = OUT // 64
        fi = (s * ft + pm * (BM // 64) + tl.arange(0, BM // 64))[:, None] * fo + \
            (pn * (BN // 64) + tl.arange(0, BN // 64))[None, :]
        tl.store(flags + fi, anyt.to(tl.bfloat16), mask=anyt > 0)
    return main


@triton.autotune(configs=configs(), key=["T", "OUT", "NIN", "MODE"])
@triton.jit
def gemm_adc(x, w, bound, inv, y, clamps, flags, T, OUT, NIN, two_inv, NB: tl.constexpr,
             MODE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
             GM: tl.constexpr):
    # MODE 0: plain GEMM over all of NIN; 1: ADC per block, no mask; 2: ADC + clamp mask + flags;
    # 3: as 2 in one flat K loop (the ADC under a branch every R rows); 4: as 2 with the
    # division near halves (the crate's exact levels).
    pm, pn = grouped_tile(tl.cdiv(T, BM), tl.cdiv(OUT, BN), GM)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    xp = x + rm[:, None].to(tl.int64) * NIN + rk[None, :]
    wp = w + rn[None, :].to(tl.int64) * NIN + rk[:, None]
    main = tl.zeros((BM, BN), dtype=tl.float32)
    if MODE == 0:
        for k in range(0, NIN, BK):
            a = tl.load(xp)
            b = tl.load(wp)
            main = tl.dot(a, b, main)
            xp += BK
            wp += BK
    elif MODE == 1 or MODE == 2 or MODE == 4:
        for s in range(NB):
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k in range(0, R, BK):
                a = tl.load(xp)
                b = tl.load(wp)
                acc = tl.dot(a, b, acc)
                xp += BK
                wp += BK
            main = adc_step(acc, main, s, pm, pn, rm, rn, bound, inv, clamps, flags, T, OUT,
                            two_inv, MODE >= 2, BM, BN, MODE == 4)
    elif MODE == 3:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, NIN, BK):
            a = tl.load(xp)
            b = tl.load(wp)
            acc = tl.dot(a, b, acc)
            xp += BK
            wp += BK
            if (k + BK) % R == 0:
                main = adc_step(acc, main, k // R, pm, pn, rm, rn, bound, inv, clamps, flags, T,
                                OUT, two_inv, True, BM, BN, False)
                acc = tl.zeros((BM, BN), dtype=tl.float32)
    tl.store(y + rm[:, None].to(tl.int64) * OUT + rn[None, :], main.to(tl.bfloat16))


def bench(f):
    return median_ms(f) * 1e3


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    shapes = [(4096, 4096), (4096, 8192), (16384, 2048), (16384, 4096)]
    if len(sys.argv) > 1:
        shapes = [tuple(int(v) for v in a.split("x"))[::-1] for a in sys.argv[1:]]
    for T, d in shapes:
        nb = d // RB
        x, w, xb = adc_operands(T, d)
        wbt = w.view(d, nb, RB).permute(1, 2, 0).contiguous()
        yb = torch.bmm(xb, wbt)  # (nb, T, d), bf16
        # bounds: 2.5 std of each block's outputs per channel, so a few percent clamp
        bound, inv, q, cl, ref = adc_reference(yb, 2.5)
        two_inv = 2.0 * INV_STATES
        clamp_frac = (cl != q).float().mean().item()
        y = torch.empty(T, d, device="cuda", dtype=torch.bfloat16)
        clamps = torch.zeros(nb, T, d // 8, device="cuda", dtype=torch.uint8)
        flags = torch.zeros(nb * (T // 64) * (d // 64), device="cuda", dtype=torch.bfloat16)
        grid = lambda META: (triton.cdiv(T, META["BM"]) * triton.cdiv(d, META["BN"]),)
        run = lambda mode: gemm_adc[grid](x, w, bound, inv, y, clamps, flags, T, d, d, two_inv,
                                          NB=nb, MODE=mode)
        run(0)
        err0 = (y.float() - (x @ w.T).float()).abs().max().item()
        run(2)
        diff = (y != ref)
        res = (bound * two_inv).max().item()
        maxd = (y.float() - ref.float()).abs().max().item()
        want_bits = (cl != q)
        got = clamps.view(nb, T, d // 8, 1).bitwise_and(
            (1 << torch.arange(8, device="cuda", dtype=torch.int32)).to(torch.uint8)) != 0
        mask_diff = (got.view(nb, T, d) != want_bits).float().mean().item()
        # the patch's kernel (gemm_adc_triton.py): levels, clamp mask words, flag tiles
        xbk = xb  # (nb, T, R)
        wbk = w.view(d, nb, RB).transpose(0, 1).contiguous()  # (nb, out, R)
        words = torch.zeros(nb * T * d // 32, device="cuda", dtype=torch.int32)
        fl2 = torch.zeros(nb * (T // 64) * (d // 64), device="cuda", dtype=torch.bfloat16)
        win = 0.5 - 4.8e-7 * (0.5 / INV_STATES + 3.0)
        def ship_run(exact=0, cfg=ship.CONFIG):
            words.zero_()
            fl2.zero_()
            sgrid = (triton.cdiv(T, cfg["BM"]) * (d // cfg["BN"]),)
            ship.gemm_adc[sgrid](xbk, wbk, bound, inv, y, fl2, words, T, d, nb, two_inv, win,
                                 T // 64, d // 64, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"],
                                 GM=cfg["GM"], FT=cfg["FT"], EXACT=exact, num_warps=cfg["num_warps"],
                                 num_stages=cfg["num_stages"])
        ships = {}
        for bm, bn, nw, ns in [(128, 128, 8, 3), (128, 64, 8, 3), (64, 128, 8, 4), (128, 128, 8, 4)]:
            cfg = dict(ship.CONFIG, BM=bm, BN=bn, num_warps=nw, num_stages=ns)
            name = f"ship_{bm}x{bn}_w{nw}_s{ns}"
            try:
                ship_run(0, cfg)
                sd = (y != ref).float().mean().item()
                sbits = words.view(torch.uint8).view(nb, T, d // 8, 1).bitwise_and(
                    (1 << torch.arange(8, device="cuda", dtype=torch.int32)).to(torch.uint8)) != 0
                smd = (sbits.view(nb, T, d) != want_bits).float().mean().item()
                want_fl = want_bits.view(nb, T // 64, 64, d // 64, 64).any(4).any(2).flatten()
                fld = ((fl2 != 0) != want_fl).float().mean().item()
                ships[name] = bench(lambda: ship_run(0, cfg))
                print(f"   {name}: {sd:.2e} of outputs differ from torch bmm+ADC, mask bits differ "
                      f"{smd:.2e}, flags differ {fld:.2e}; {ships[name]:.1f} us")
            except Exception as e:  # report and go on with the rest
                print(f"   {name} failed:", repr(e)[:400])
        try:
            ship_run(1)
            print(f"   ship kernel, exact levels: {(y != ref).float().mean().item():.2e} of outputs differ")
            ships["ship_exact"] = bench(lambda: ship_run(1))
        except Exception as e:
            print("   ship exact failed:", repr(e)[:400])
        row = {
            "mm": bench(lambda: torch.mm(x, w.T, out=y)),
            "bmm": bench(lambda: torch.bmm(xb, wbt, out=yb)),
            "triton_gemm": bench(lambda: run(0)),
            "fused_nomask": bench(lambda: run(1)),
            "fused_mask": bench(lambda: run(2)),
            "fused_flat": bench(lambda: run(3)),
            "fused_exact": bench(lambda: run(4)),
            **ships,
        }
        print(f"d {d} T {T} nb {nb}: " + ", ".join(f"{k} {v:.1f} us" for k, v in row.items()))
        print(f"   plain triton max err {err0:.3g}; fused vs torch bmm+ADC: {diff.float().mean().item():.2e} "
              f"of outputs differ, max |diff| {maxd:.3g} (largest res {res:.3g}); clamped {clamp_frac:.3%}, "
              f"mask bits differ {mask_diff:.2e}")
        for key, cfg in gemm_adc.cache.items():
            if key[0] == T and key[1] == d:
                print("   best", key[3], cfg)
        del x, w, xb, wbt, yb, q, cl, clamps, flags
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

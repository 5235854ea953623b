# The forward product with the ADC inside, in Triton: the kernel of
# docs/experiments/product-adc-triton.patch (session 42; measured on an H100 and dropped: the
# layer step 1.08-1.30x the two-kernel path's, benches/RESULTS.md session 42). To try the patch
# again: `git apply` it, then `python3 benches/gpu/gemm_adc_triton.py` (pip's triton==3.9.0, no
# GPU needed) writes kernels/gemm_adc_sm90_{bf16,f16}.ptx and .json, which it includes.
#
# y[t, c] = sum over row blocks s of ADC_s(sum over k of xb[s, t, k] * wb[s, c, k]): each block's
# partial sum stays in registers, is rounded to the compute dtype (as cuBLAS's blocked product
# stores it), levelled, clamped at the block's bound and added to a second accumulator, so the
# (nb, T, out) block planes never reach memory. Clamps, flags and clamp-mask bits are those of
# `adc_sum` in kernels/adc_sum.cuh; the levels are rint(y * (1 / res)) with exact halves away
# from zero, which differs from adc_sum where a quotient lies within its window of a half (it
# divides there: EXACT = 1 does too, through predicated inline PTX, and ran 4-5x slower in the
# probe). Outputs whose bound is off (0) pass exactly. The clamp mask must be zeroed before the
# launch. The loop over k runs flat over all blocks, the ADC under a branch at each block's
# end, so loads of the next block are in flight while one block's ADC runs.
#
# benches/gpu/gemm_adc_probe.py times the kernel on a GPU (JIT, the machine's own Triton).
import triton
import triton.language as tl
from triton.language.extra import libdevice

# Rows per block the kernel is built for (the release config's tiles); a constexpr.
R = tl.constexpr(512)


@triton.jit
def adc_block(acc, main, s, rm, rn, bound, inv, clamps, flags, T, OUT, two_inv, win, ft, fo,
              pm, pn, BM: tl.constexpr, BN: tl.constexpr, FT: tl.constexpr, EXACT: tl.constexpr,
              TILE_TEST: tl.constexpr = True):
    v = acc.to(flags.dtype.element_ty).to(tl.float32)
    bd = tl.load(bound + s * OUT + rn)[None, :]
    iv = tl.load(inv + s * OUT + rn)[None, :]
    res = bd * two_inv
    if EXACT:
        lv = adc_level(v, iv, win, res)
    else:
        a = v * iv
        lv = libdevice.rint(a)
        # exact halves away from zero, as roundf takes them (rint takes them to even)
        lv = tl.where(tl.abs(a - lv) == 0.5, a + tl.where(a < 0.0, -0.5, 0.5), lv)
    q = lv * res
    cl = tl.minimum(tl.maximum(q, -bd), bd)
    on = bd > 0.0
    main += tl.where(on, cl, v)
    # Clamps are rare at the release bound: a tile with none skips the mask (zeroed before the
    # launch) and the flags; in one with some, each clamp sets its bit (u32 words: a row of the
    # mask is out / 8 bytes, a multiple of 4) and its flag tile. TILE_TEST off (a probe's
    # variant, benches/gpu/gemm_adc_tma_probe.py) issues them masked for every tile instead.
    hit = on & (cl != q) & (rm < T)[:, None]
    if TILE_TEST:
        if tl.max(tl.max(hit.to(tl.int32), axis=1), axis=0) > 0:
            mark_clamps(hit, s, rm, rn, clamps, flags, T, OUT, ft, fo, BM, BN, FT)
    else:
        mark_clamps(hit, s, rm, rn, clamps, flags, T, OUT, ft, fo, BM, BN, FT)
    return main


@triton.jit
def mark_clamps(hit, s, rm, rn, clamps, flags, T, OUT, ft, fo, BM: tl.constexpr,
                BN: tl.constexpr, FT: tl.constexpr):
    # each clamped output's bit in the mask and its flag tile
    word = ((s * T + rm) * (OUT // 32))[:, None] + (rn // 32)[None, :]
    tl.atomic_or(clamps + word, (1 << (rn % 32)).to(tl.uint32)[None, :], mask=hit,
                 sem="relaxed")
    fi = (s * ft + rm // FT)[:, None] * fo + (rn // FT)[None, :]
    one = tl.full((BM, BN), 1.0, flags.dtype.element_ty)
    tl.store(flags + fi, one, mask=hit)


# The level of y for 1 / res `iv` and step `res` as the CUDA kernels' adc_level gives it:
# rint(y * iv) where that product lies within `win` of an integer, else roundf(y / res) (half
# away from zero). The division is predicated, so it costs only where it runs (rarely); written
# as one select it held a division's registers for every output and spilled.
ADC_LEVEL_ASM = tl.constexpr("""
{
.reg .f32 a, r, d, q, e, h;
.reg .pred far, tie;
mul.rn.f32 a, $1, $2;
cvt.rni.f32.f32 r, a;
sub.rn.f32 d, a, r;
abs.f32 d, d;
setp.geu.f32 far, d, $3;
mov.f32 $0, r;
@far div.rn.f32 q, $1, $4;
@far cvt.rni.f32.f32 $0, q;
@far sub.rn.f32 e, q, $0;
@far abs.f32 e, e;
setp.eq.and.f32 tie, e, 0f3F000000, far;
@tie copysign.f32 h, q, 0f3F000000;
@tie add.rn.f32 $0, q, h;
}
""")


@triton.jit
def adc_level(v, iv, win, res):
    return tl.inline_asm_elementwise(ADC_LEVEL_ASM, "=f,f,f,f,f", [v, iv, win, res],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def grouped_tile(npm, npn, GM: tl.constexpr):
    # (tile row, tile column) of this program among npm x npn output tiles, GM tile rows at a
    # time down each column (so neighbouring programs share operand tiles in L2)
    pid = tl.program_id(0)
    group = pid // (GM * npn)
    first = group * GM
    gsz = min(npm - first, GM)
    pm = first + (pid % (GM * npn)) % gsz
    pn = (pid % (GM * npn)) // gsz
    return pm, pn


@triton.jit
def gemm_adc(xb, wb, bound, inv, y, flags, clamps, T, OUT, NB, two_inv, win, ft, fo,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GM: tl.constexpr,
             FT: tl.constexpr, EXACT: tl.constexpr):
    pm, pn = grouped_tile(tl.cdiv(T, BM), OUT // BN, GM)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    # Rows past the tokens read row T - 1 (in bounds, never stored) rather than a masked load.
    rx = tl.minimum(rm, T - 1)
    xp = xb + rx[:, None].to(tl.int64) * R + rk[None, :]
    wp = wb + rn[None, :].to(tl.int64) * R + rk[:, None]
    xs = T.to(tl.int64) * R
    ws = OUT.to(tl.int64) * R
    main = tl.full((BM, BN), -0.0, tl.float32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, NB * R, BK):
        s = k // R
        kk = k % R
        a = tl.load(xp + s * xs + kk)
        b = tl.load(wp + s * ws + kk)
        acc = tl.dot(a, b, acc)
        if kk + BK == R:
            main = adc_block(acc, main, s, rm, rn, bound, inv, clamps, flags, T, OUT, two_inv,
                             win, ft, fo, pm, pn, BM, BN, FT, EXACT)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
    yp = y + rm[:, None].to(tl.int64) * OUT + rn[None, :]
    tl.store(yp, main.to(y.dtype.element_ty), mask=(rm < T)[:, None])


# The launch the patch makes (its src/train/fused/gemm_adc.rs; a test holds it to the .json
# beside each PTX): tile, warps, pipeline stages.
CONFIG = {"BM": 128, "BN": 128, "BK": 64, "GM": 8, "FT": 64, "EXACT": 0, "num_warps": 8,
          "num_stages": 3}


def compile_ptx(dtype, config=CONFIG):
    """(ptx, metadata) of gemm_adc for 'bf16' or 'fp16' on sm_90a."""
    from triton.backends.compiler import GPUTarget
    t = "*" + dtype
    sig = {"xb": t, "wb": t, "bound": "*fp32", "inv": "*fp32", "y": t, "flags": t,
           "clamps": "*u32", "T": "i32", "OUT": "i32", "NB": "i32", "two_inv": "fp32",
           "win": "fp32", "ft": "i32", "fo": "i32"}
    consts = {k: config[k] for k in ("BM", "BN", "BK", "GM", "FT", "EXACT")}
    for k in consts:
        sig[k] = "constexpr"
    # Pointers 16-byte aligned and OUT a multiple of 16: the launch checks both.
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 6, 8)}
    src = triton.compiler.ASTSource(fn=gemm_adc, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": config["num_warps"],
                                "num_stages": config["num_stages"],
                                # no FMA contraction: the CUDA kernels are built --fmad=false
                                "enable_fp_fusion": False})
    return k.asm["ptx"], k.metadata


if __name__ == "__main__":
    import json, os, re
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "kernels")
    for dt, suf in (("bf16", "bf16"), ("fp16", "f16")):
        ptx, md = compile_ptx(dt)
        # The CUDA 13.0 driver reads PTX ISA 9.0; the kernel uses nothing newer.
        ptx = re.sub(r"^\.version \d+\.\d+", ".version 9.0", ptx, count=1, flags=re.M)
        ptx = ptx.replace(".entry gemm_adc(", f".entry gemm_adc_{suf}(")
        ptx = re.sub(r"gemm_adc_param_", f"gemm_adc_{suf}_param_", ptx)
        with open(os.path.join(here, f"gemm_adc_sm90_{suf}.ptx"), "w") as f:
            f.write(ptx)
        meta = {"triton": triton.__version__, "shared": md.shared, "num_warps": md.num_warps,
                "global_scratch_size": getattr(md, "global_scratch_size", 0),
                "profile_scratch_size": getattr(md, "profile_scratch_size", 0), **CONFIG}
        with open(os.path.join(here, f"gemm_adc_sm90_{suf}.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(suf, meta)

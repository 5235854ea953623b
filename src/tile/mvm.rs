//! The fused analog MVM on CPU: y = sum over row blocks of ADC(W_s DAC(x_s) + noise).
//!
//! Per row block s the inputs are clipped to the static range beta_s and rounded to the DAC's
//! levels, multiplied with the programmed weights (one GEMM per block), perturbed by read noise
//! (Gaussian with variance (x^2)(sigma^2)^T, exact without drawing per-device noise) and output
//! noise, digitized by the ADC with bound lambda beta_s w_max[c], scaled by the tile's drift gain
//! and summed digitally. Noise comes from streams named by (seed, layer, block, effect, call,
//! token), so results do not depend on the thread count.

use super::program::AnalogLayer;
use crate::error::{Error, Result};
use crate::executor::few_rows;
use crate::rng::{Effect, StreamKey};
use rayon::prelude::*;

/// Rounds half to even for |v| < 2^22 with one add and one subtract (vectorizes, unlike
/// `round_ties_even` on baseline x86-64): adding 1.5 * 2^23 leaves no fraction bits.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Clamps to [lo, hi], keeping NaN as NaN.
#[inline(always)]
fn clip(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// Number of steps of a symmetric `bits`-bit converter (8 bits: 254, levels -127..127).
pub fn steps(bits: u32) -> f32 {
    ((1u64 << bits) - 2) as f32
}

/// Quantizes `v` to the levels of a symmetric `bits`-bit converter with bound `bound`, rounding
/// half to even as torch does. `bits` = 0 only clips.
#[inline]
pub fn quantize(v: f32, bound: f32, bits: u32) -> f32 {
    if bits == 0 {
        return clip(v, -bound, bound);
    }
    if bound <= 0.0 {
        return 0.0;
    }
    let step = (2.0 * bound) / steps(bits);
    round_even(clip(v, -bound, bound) / step) * step
}

/// The ADC of one column: quantization first, then clipping, in aihwkit-lightning's order.
/// Pre-clipping the level to +-(half + 1) changes nothing but keeps the rounding trick exact.
#[inline(always)]
pub(super) fn adc(v: f32, bound: f32, step: f32, half: f32) -> f32 {
    let level = round_even(clip(v / step, -half - 1.0, half + 1.0));
    let q = clip(level * step, -bound, bound);
    if bound > 0.0 {
        q
    } else {
        0.0
    }
}

/// C (m x n, row-major) = A (m x k, row stride `lda`) * B^T where B is n x k row-major.
/// Single-threaded: parallelism lives one level up, over token and column chunks.
pub(super) fn gemm_abt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
) {
    assert!(
        m == 0 || a.len() >= (m - 1) * lda + k,
        "gemm: lhs too short"
    );
    assert!(
        b.len() >= n * k && c.len() >= m * n,
        "gemm: rhs or dst too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the asserts above bound every index the strides reach: lhs (i, p) at i*lda + p,
    // rhs (p, j) at j*k + p, dst (i, j) at i*n + j; dst does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Checks the inputs of an MVM: sizes and input ranges.
pub fn check_inputs(layer: &AnalogLayer, x: &[f32], tokens: usize, ranges: &[f32]) -> Result<()> {
    let n_in = layer.in_features();
    if x.len() != tokens * n_in {
        return Err(Error::Shape(format!(
            "analog MVM input has {} values, expected {tokens} tokens x {n_in} features",
            x.len()
        )));
    }
    check_ranges(layer, ranges)
}

/// Checks the input ranges of an MVM: one finite value > 0 per row block.
pub fn check_ranges(layer: &AnalogLayer, ranges: &[f32]) -> Result<()> {
    if ranges.len() != layer.blocks.len() {
        return Err(Error::Shape(format!(
            "analog MVM got {} input ranges, the layer has {} row blocks",
            ranges.len(),
            layer.blocks.len()
        )));
    }
    if let Some((s, r)) = ranges
        .iter()
        .enumerate()
        .find(|(_, r)| !(r.is_finite() && **r > 0.0))
    {
        return Err(Error::Value(format!(
            "input range of row block {s} is {r}, expected a finite value > 0"
        )));
    }
    Ok(())
}

/// Stream of a per-MVM effect on row block `s` for MVM number `call`.
pub fn mvm_stream(layer: &AnalogLayer, s: usize, effect: Effect, call: u64) -> StreamKey {
    StreamKey::new(layer.seed, layer.layer, s as u64, effect).child(call)
}

/// Token rows below which the work splits over output columns only (decode and short prompts).
const FEW_TOKENS: usize = 128;

/// Columns per work item when there are few tokens (decode), so several cores get work. Even,
/// so every chunk starts a pair of counter-based normals.
const COL_CHUNK: usize = 256;

/// Tokens per work item: the GEMM packs a chunk's weights once per call, so larger chunks pack
/// them fewer times (lm_head at 512 tokens: 1.55x a plain product in chunks of 64 tokens, 1.2x
/// in chunks of 256), while at least two chunks keep two cores busy. Depends on the sizes only,
/// never on the thread count.
fn token_chunk(tokens: usize) -> usize {
    match tokens {
        t if t >= 512 => 256,
        t if t >= 256 => 128,
        t if t >= FEW_TOKENS => 64,
        t => t.max(1),
    }
}

/// Columns per work item for a chunk of `mt` tokens. With many tokens the chunk's partial
/// products (mt x columns, f32) stay near 256 KiB, so that the GEMM's output, the ADC's pass
/// over it and the output rows it adds to stay in L2: with every column in one item, lm_head's
/// 49,152 columns streamed ~50 MB per row block through memory and took 2.8x a plain matmul.
/// Even, so every chunk starts a pair of counter-based normals.
fn col_chunk(mt: usize) -> usize {
    if mt < FEW_TOKENS {
        COL_CHUNK
    } else {
        (64 * 1024 / mt).max(COL_CHUNK) / 2 * 2
    }
}

/// Per-column constants of one row block for one call.
struct BlockConsts {
    bound: Vec<f32>,
    step: Vec<f32>,
    out_noise: Vec<f32>,
}

/// The DAC's output for a chunk of tokens: every row block's inputs clipped to its range and
/// rounded to the DAC's levels (and squared, for conductance-proportional read noise), with
/// each (token, row block)'s sum of squared inputs for state-independent read noise.
struct DacRows {
    xq: Vec<f32>,
    xq2: Vec<f32>,
    sumsq: Vec<f32>,
}

impl DacRows {
    fn new(layer: &AnalogLayer, x: &[f32], ranges: &[f32], t0: usize, mt: usize) -> Self {
        let n_in = layer.in_features();
        let mut xq = vec![0f32; mt * n_in];
        for (q, xr) in xq.chunks_mut(n_in).zip(x[t0 * n_in..].chunks(n_in)) {
            for (b, &r) in layer.blocks.iter().zip(ranges) {
                for (qv, &xv) in q[b.start..b.start + b.len]
                    .iter_mut()
                    .zip(&xr[b.start..b.start + b.len])
                {
                    *qv = quantize(xv, r, layer.cfg.dac_bits);
                }
            }
        }
        let xq2 = if layer.cfg.read_rel > 0.0 {
            xq.iter().map(|v| v * v).collect()
        } else {
            Vec::new()
        };
        let sumsq = if layer.cfg.read_abs > 0.0 {
            xq.chunks(n_in)
                .flat_map(|q| {
                    layer
                        .blocks
                        .iter()
                        .map(|b| q[b.start..b.start + b.len].iter().map(|v| v * v).sum())
                })
                .collect()
        } else {
            Vec::new()
        };
        DacRows { xq, xq2, sumsq }
    }
}

/// Rows of an output to add into: row r's columns at `data[r * stride + col..][..cols]`.
struct OutRows<'a> {
    data: &'a mut [f32],
    stride: usize,
    col: usize,
}

/// Runs the analog MVM of `layer` on `tokens` input rows `x` (tokens x in, row-major) with
/// static input ranges `ranges` (one per row block); `call` numbers the MVM for its noise
/// streams. Returns tokens x out, row-major, without bias.
///
/// Work is split into (token chunk, column chunk) items run in parallel; the split depends only
/// on the sizes and the noise is counter-based, so the thread count never changes a bit.
pub fn analog_mvm(
    layer: &AnalogLayer,
    x: &[f32],
    tokens: usize,
    ranges: &[f32],
    call: u64,
) -> Result<Vec<f32>> {
    check_inputs(layer, x, tokens, ranges)?;
    let n_out = layer.out_features();
    let cfg = layer.cfg;
    let inv_sqrt_blocks = 1.0 / (layer.blocks.len() as f32).sqrt();
    let consts: Vec<BlockConsts> = layer
        .blocks
        .iter()
        .zip(ranges)
        .map(|(b, &beta)| {
            let bound: Vec<f32> = b.w_max.iter().map(|m| cfg.lambda * m * beta).collect();
            let step = if cfg.adc_bits > 0 {
                bound
                    .iter()
                    .map(|v| (2.0 * v) / steps(cfg.adc_bits))
                    .collect()
            } else {
                Vec::new()
            };
            let out_noise = b
                .w_max
                .iter()
                .map(|m| cfg.output_gamma * beta * m * inv_sqrt_blocks)
                .collect();
            BlockConsts {
                bound,
                step,
                out_noise,
            }
        })
        .collect();
    let mut y = vec![0f32; tokens * n_out];
    if tokens == 0 || n_out == 0 {
        return Ok(y);
    }
    let tc = token_chunk(tokens);
    let cc = col_chunk(tc);
    if tokens >= FEW_TOKENS {
        // Each item owns whole output rows; its column chunks run one after the other.
        y.par_chunks_mut(tc * n_out)
            .enumerate()
            .for_each(|(i, rows)| {
                let (t0, mt) = (i * tc, rows.len() / n_out);
                let dac = DacRows::new(layer, x, ranges, t0, mt);
                for c0 in (0..n_out).step_by(cc) {
                    let out = OutRows {
                        data: &mut *rows,
                        stride: n_out,
                        col: c0,
                    };
                    let nc = cc.min(n_out - c0);
                    run_item(layer, &consts, &dac, call, (t0, mt), (c0, nc), out);
                }
            });
    } else {
        // Few tokens: the columns are what splits over the cores.
        let dac = DacRows::new(layer, x, ranges, 0, tokens);
        let parts: Vec<Vec<f32>> = (0..n_out)
            .into_par_iter()
            .step_by(cc)
            .map(|c0| {
                let nc = cc.min(n_out - c0);
                let mut part = vec![0f32; tokens * nc];
                let out = OutRows {
                    data: &mut part,
                    stride: nc,
                    col: 0,
                };
                run_item(layer, &consts, &dac, call, (0, tokens), (c0, nc), out);
                part
            })
            .collect();
        for (i, part) in parts.iter().enumerate() {
            let (c0, nc) = (i * cc, cc.min(n_out - i * cc));
            for (r, p) in part.chunks_exact(nc).enumerate() {
                y[r * n_out + c0..r * n_out + c0 + nc].copy_from_slice(p);
            }
        }
    }
    Ok(y)
}

/// C (m x n, row-major) = rows of `a` (m x k, row stride `lda`) times B^T (B: n x k,
/// row-major). A few rows take [`few_rows`]' products, which read each weight once where the
/// GEMM would first pack them all; the choice depends on `m` only.
#[allow(clippy::too_many_arguments)]
fn block_product(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    rows: &mut Vec<f32>,
) {
    if m > few_rows::MAX_ROWS {
        return gemm_abt(m, n, k, a, lda, b, c);
    }
    rows.clear();
    for r in 0..m {
        rows.extend_from_slice(&a[r * lda..r * lda + k]);
    }
    few_rows::product_serial(rows, m, &b[..n * k], n, k, &mut c[..m * n]);
}

/// One work item: tokens t0..t0+mt, columns c0..c0+nc, all row blocks, added into `out`.
fn run_item(
    layer: &AnalogLayer,
    consts: &[BlockConsts],
    dac: &DacRows,
    call: u64,
    (t0, mt): (usize, usize),
    (c0, nc): (usize, usize),
    out: OutRows,
) {
    let n_in = layer.in_features();
    let cfg = layer.cfg;
    let (xq, xq2) = (&dac.xq, &dac.xq2);
    let needs_var = cfg.read_rel > 0.0 || cfg.read_abs > 0.0;
    let mut buf = vec![0f32; mt * nc];
    let mut var = vec![0f32; if cfg.read_rel > 0.0 { mt * nc } else { 0 }];
    let mut noise = vec![0f32; nc];
    let mut rows = Vec::new();
    let half = steps(cfg.adc_bits.max(1)) / 2.0;
    for (s, (b, k)) in layer.blocks.iter().zip(consts).enumerate() {
        let cols = c0 * b.len..(c0 + nc) * b.len;
        let w = &b.w[cols.clone()];
        block_product(mt, nc, b.len, &xq[b.start..], n_in, w, &mut buf, &mut rows);
        if let Some(sig2) = &b.sigma2 {
            let s2 = &sig2[cols];
            block_product(
                mt,
                nc,
                b.len,
                &xq2[b.start..],
                n_in,
                s2,
                &mut var,
                &mut rows,
            );
        }
        let read_key = mvm_stream(layer, s, Effect::ReadPerMvm, call);
        let out_key = mvm_stream(layer, s, Effect::OutputNoise, call);
        let alpha = &b.alpha[c0..c0 + nc];
        for r in 0..mt {
            let t = (t0 + r) as u64;
            let row = &mut buf[r * nc..(r + 1) * nc];
            if needs_var {
                read_key.fill_normal_at(t, c0, &mut noise);
                let sumsq = dac.sumsq.get(r * layer.blocks.len() + s).copied();
                let vr = if var.is_empty() {
                    &[][..]
                } else {
                    &var[r * nc..(r + 1) * nc]
                };
                for (c, v) in row.iter_mut().enumerate() {
                    let mut s2 = if vr.is_empty() { 0.0 } else { vr[c] };
                    if let (Some(av), Some(sq)) = (&b.abs_var, sumsq) {
                        s2 += sq * av[c0 + c];
                    }
                    *v += s2.max(0.0).sqrt() * noise[c];
                }
            }
            if cfg.output_gamma > 0.0 {
                out_key.fill_normal_at(t, c0, &mut noise);
                for ((v, n), g) in row.iter_mut().zip(&noise).zip(&k.out_noise[c0..c0 + nc]) {
                    *v += g * n;
                }
            }
            let yr = &mut out.data[r * out.stride + out.col..][..nc];
            if cfg.adc_bits > 0 {
                let bound = &k.bound[c0..c0 + nc];
                let step = &k.step[c0..c0 + nc];
                for c in 0..nc {
                    yr[c] += alpha[c] * adc(row[c], bound[c], step[c], half);
                }
            } else {
                for c in 0..nc {
                    yr[c] += alpha[c] * row[c];
                }
            }
        }
    }
}

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

/// Columns per work item when there are few tokens (decode), so several cores get work. Even,
/// so every chunk starts a pair of counter-based normals.
const COL_CHUNK: usize = 256;

/// (tokens, columns) per work item. Larger token chunks amortize the packing of the weights in
/// the GEMM; with few tokens the columns are split instead. The split depends on the sizes only,
/// never on the thread count.
fn item_shape(tokens: usize, n_out: usize) -> (usize, usize) {
    match tokens {
        t if t >= 1024 => (256, n_out),
        t if t >= 128 => (64, n_out),
        t => (t.max(1), COL_CHUNK),
    }
}

/// Per-column constants of one row block for one call.
struct BlockConsts {
    bound: Vec<f32>,
    step: Vec<f32>,
    out_noise: Vec<f32>,
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
    let (token_chunk, col_chunk) = item_shape(tokens, n_out);
    let mut items = Vec::new();
    for t0 in (0..tokens).step_by(token_chunk) {
        for c0 in (0..n_out).step_by(col_chunk.max(1)) {
            items.push((
                t0,
                token_chunk.min(tokens - t0),
                c0,
                col_chunk.min(n_out - c0),
            ));
        }
    }
    let parts: Vec<Vec<f32>> = items
        .par_iter()
        .map(|&(t0, mt, c0, nc)| run_item(layer, &consts, x, ranges, call, t0, mt, c0, nc))
        .collect();
    let mut y = vec![0f32; tokens * n_out];
    for (&(t0, mt, c0, nc), part) in items.iter().zip(&parts) {
        for r in 0..mt {
            y[(t0 + r) * n_out + c0..(t0 + r) * n_out + c0 + nc]
                .copy_from_slice(&part[r * nc..(r + 1) * nc]);
        }
    }
    Ok(y)
}

/// One work item: tokens t0..t0+mt, columns c0..c0+nc, all row blocks.
#[allow(clippy::too_many_arguments)]
fn run_item(
    layer: &AnalogLayer,
    consts: &[BlockConsts],
    x: &[f32],
    ranges: &[f32],
    call: u64,
    t0: usize,
    mt: usize,
    c0: usize,
    nc: usize,
) -> Vec<f32> {
    let n_in = layer.in_features();
    let cfg = layer.cfg;
    let mut xq = vec![0f32; mt * n_in];
    for (q, xr) in xq.chunks_mut(n_in).zip(x[t0 * n_in..].chunks(n_in)) {
        for (b, &r) in layer.blocks.iter().zip(ranges) {
            for (qv, &xv) in q[b.start..b.start + b.len]
                .iter_mut()
                .zip(&xr[b.start..b.start + b.len])
            {
                *qv = quantize(xv, r, cfg.dac_bits);
            }
        }
    }
    let xq2: Vec<f32> = if cfg.read_rel > 0.0 {
        xq.iter().map(|v| v * v).collect()
    } else {
        Vec::new()
    };
    let needs_var = cfg.read_rel > 0.0 || cfg.read_abs > 0.0;
    let mut y = vec![0f32; mt * nc];
    let mut buf = vec![0f32; mt * nc];
    let mut var = vec![0f32; if cfg.read_rel > 0.0 { mt * nc } else { 0 }];
    let mut noise = vec![0f32; nc];
    let half = steps(cfg.adc_bits.max(1)) / 2.0;
    for (s, (b, k)) in layer.blocks.iter().zip(consts).enumerate() {
        let cols = c0 * b.len..(c0 + nc) * b.len;
        gemm_abt(
            mt,
            nc,
            b.len,
            &xq[b.start..],
            n_in,
            &b.w[cols.clone()],
            &mut buf,
        );
        if let Some(sig2) = &b.sigma2 {
            gemm_abt(mt, nc, b.len, &xq2[b.start..], n_in, &sig2[cols], &mut var);
        }
        let read_key = mvm_stream(layer, s, Effect::ReadPerMvm, call);
        let out_key = mvm_stream(layer, s, Effect::OutputNoise, call);
        let alpha = &b.alpha[c0..c0 + nc];
        for r in 0..mt {
            let t = (t0 + r) as u64;
            let row = &mut buf[r * nc..(r + 1) * nc];
            if needs_var {
                read_key.fill_normal_at(t, c0, &mut noise);
                let sumsq: f32 = xq[r * n_in + b.start..r * n_in + b.start + b.len]
                    .iter()
                    .map(|v| v * v)
                    .sum();
                let vr = if var.is_empty() {
                    &[][..]
                } else {
                    &var[r * nc..(r + 1) * nc]
                };
                for (c, v) in row.iter_mut().enumerate() {
                    let mut s2 = if vr.is_empty() { 0.0 } else { vr[c] };
                    if let Some(av) = &b.abs_var {
                        s2 += sumsq * av[c0 + c];
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
            let yr = &mut y[r * nc..(r + 1) * nc];
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
    y
}

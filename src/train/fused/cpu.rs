//! CPU twins of `kernels/analog_train.cu`: the same arithmetic in the same order, element by
//! element, so a CPU run and a CUDA run of the fused layer differ only where cuBLAS sums the
//! products in another order.

use super::{Blocks, FixTarget, FLAG_TILE};
use crate::rng::normal_pair;
use crate::train::layer::NoiseShape;
use rayon::prelude::*;

/// Flagged tiles whose clamped terms a row of the correction sums before taking them out of
/// the gradient (`FIX_CHUNK` in `kernels/clamp_fix.cuh`, which holds their clamp bits in shared
/// memory).
pub const FIX_CHUNK: usize = 16;

/// `v` rounded to the levels of a quantizer over ±bound with 1 / states `inv_states`
/// (lightning's step (2 * bound) / states, as candle's scalar division: times the f32
/// reciprocal); None: `v` unchanged. What the kernels' `adc_level` computes without dividing.
#[inline]
fn quantize(v: f32, bound: f32, inv_states: Option<f32>) -> f32 {
    match inv_states {
        Some(inv) => {
            let res = (bound * 2.0) * inv;
            (v / res).round() * res
        }
        None => v,
    }
}

/// DAC: xb (nb, tokens, r) from x (tokens, n_in).
pub fn dac_fwd(
    x: &[f32],
    ranges: &[f32],
    g: &Blocks,
    tokens: usize,
    inv_states: Option<f32>,
    used: bool,
) -> Vec<f32> {
    let mut xb = vec![0f32; g.nb * tokens * g.r];
    xb.par_chunks_mut(g.r).enumerate().for_each(|(row, out)| {
        let (s, t) = (row / tokens, row % tokens);
        let (start, len) = (g.start(s), g.len(s));
        let b = ranges[s];
        for (j, o) in out[..len].iter_mut().enumerate() {
            let mut v = x[t * g.n_in + start + j];
            if used && b > 0.0 {
                v = quantize(v.min(b).max(-b), b, inv_states);
            }
            *o = v;
        }
    });
    xb
}

/// Gradient of x through the DAC: straight through, zero where |x| > range.
pub fn dac_grad_x(
    gxb: &[f32],
    x: &[f32],
    ranges: &[f32],
    g: &Blocks,
    tokens: usize,
    used: bool,
) -> Vec<f32> {
    let mut gx = vec![0f32; tokens * g.n_in];
    gx.par_chunks_mut(g.n_in).enumerate().for_each(|(t, row)| {
        for (i, o) in row.iter_mut().enumerate() {
            let (s, j) = g.of(i);
            let b = ranges[s];
            let clipped = used && b > 0.0 && x[t * g.n_in + i].abs() > b;
            *o = if clipped {
                0.0
            } else {
                gxb[(s * tokens + t) * g.r + j]
            };
        }
    });
    gx
}

/// Gradient of the ranges: range * (pull of the clipped inputs' gradients), plus range * decay
/// while more than `min_inside` of the block's inputs sit inside.
pub fn range_grad(
    gxb: &[f32],
    x: &[f32],
    ranges: &[f32],
    g: &Blocks,
    tokens: usize,
    used: bool,
    decay: (f32, f32),
) -> Vec<f32> {
    let grad = |s: usize, t: usize, j: usize| gxb[(s * tokens + t) * g.r + j];
    range_grad_by(grad, x, ranges, g, tokens, used, decay)
}

/// [`range_grad`] with x's gradient at (block s, token t, input j of the block) from `grad`.
fn range_grad_by(
    grad: impl Fn(usize, usize, usize) -> f32,
    x: &[f32],
    ranges: &[f32],
    g: &Blocks,
    tokens: usize,
    used: bool,
    (decay, min_inside): (f32, f32),
) -> Vec<f32> {
    (0..g.nb)
        .map(|s| {
            let b = ranges[s];
            if !(used && b > 0.0) {
                return 0.0;
            }
            let (start, len) = (g.start(s), g.len(s));
            let (mut pull, mut cnt) = (0f64, 0f64);
            for t in 0..tokens {
                for j in 0..len {
                    let xv = x[t * g.n_in + start + j];
                    let gv = grad(s, t, j);
                    if xv >= b {
                        pull += f64::from(gv.min(0.0));
                        cnt += 1.0;
                    }
                    if xv <= -b {
                        pull -= f64::from(gv.max(0.0));
                        cnt += 1.0;
                    }
                }
            }
            let mut gb = pull as f32 * b;
            if decay > 0.0 {
                let n = (tokens * len) as f32;
                if 1.0 - cnt as f32 / n > min_inside {
                    gb += b * decay;
                }
            }
            gb
        })
        .collect()
}

/// [`dac_grad_x`] and [`range_grad`] for x's gradient gx (tokens, n_in) in place (as the GPU's
/// direct product leaves it): the ranges' gradient, and gx zeroed where |x| > range.
pub fn dac_grad_in_place(
    gx: &mut [f32],
    x: &[f32],
    ranges: &[f32],
    g: &Blocks,
    tokens: usize,
    used: bool,
    decay: (f32, f32),
) -> Vec<f32> {
    let grad = |s: usize, t: usize, j: usize| gx[t * g.n_in + g.start(s) + j];
    let gr = range_grad_by(grad, x, ranges, g, tokens, used, decay);
    for (i, v) in gx.iter_mut().enumerate() {
        let b = ranges[g.of(i % g.n_in).0];
        if used && b > 0.0 && x[i].abs() > b {
            *v = 0.0;
        }
    }
    gr
}

/// The DAC's clip mask as `kernels/analog_train.cu`'s `dac_fwd` writes it: bit j % 8 of byte
/// (s * tokens + t) * ceil(r / 8) + j / 8 is |x| >= range for input j of block s at token t.
pub fn clip_mask(x: &[f32], ranges: &[f32], g: &Blocks, tokens: usize) -> Vec<u8> {
    let rb = g.r.div_ceil(8);
    let mut m = vec![0u8; g.nb * tokens * rb];
    m.par_chunks_mut(rb).enumerate().for_each(|(row, bytes)| {
        let (s, t) = (row / tokens, row % tokens);
        let b = ranges[s];
        for j in 0..g.len(s) {
            if x[t * g.n_in + g.start(s) + j].abs() >= b {
                bytes[j / 8] |= 1 << (j % 8);
            }
        }
    });
    m
}

/// Inputs with |x| >= range, over the row blocks whose range is in use.
pub fn clip_count(x: &[f32], ranges: &[f32], g: &Blocks, tokens: usize, used: bool) -> u64 {
    (0..g.nb)
        .map(|s| {
            let b = ranges[s];
            if !(used && b > 0.0) {
                return 0;
            }
            let (start, len) = (g.start(s), g.len(s));
            (0..tokens)
                .flat_map(|t| &x[t * g.n_in + start..t * g.n_in + start + len])
                .filter(|v| v.abs() >= b)
                .count() as u64
        })
        .sum()
}

/// Max |w| of every (block, channel): (nb, out).
pub fn block_absmax(w: &[f32], g: &Blocks, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; g.nb * out];
    m.par_chunks_mut(out).enumerate().for_each(|(s, row)| {
        let (start, len) = (g.start(s), g.len(s));
        for (c, o) in row.iter_mut().enumerate() {
            let seg = &w[c * g.n_in + start..c * g.n_in + start + len];
            *o = seg.iter().fold(0f32, |a, v| a.max(v.abs()));
        }
    });
    m
}

/// wb (nb, out, r): the blocked weights plus (wmax * gamma * shape(|w| / wmax)) times block
/// s's counter-based normals (element c * len + j of the stream with `keys[s]`); gamma 0: a
/// plain copy.
pub fn noisy_wblocks(
    w: &[f32],
    wmax: &[f32],
    keys: &[(u32, u32)],
    g: &Blocks,
    out: usize,
    gamma: f32,
    shape: NoiseShape,
) -> Vec<f32> {
    let mut wb = vec![0f32; g.nb * out * g.r];
    wb.par_chunks_mut(out * g.r)
        .enumerate()
        .for_each(|(s, blk)| {
            let (start, len) = (g.start(s), g.len(s));
            let mut noise = Vec::new();
            if gamma > 0.0 {
                noise = vec![0f32; out * len + 1];
                for (p, pair) in noise.chunks_exact_mut(2).enumerate() {
                    let (a, b) = normal_pair(keys[s].0, keys[s].1, p as u32);
                    pair[0] = a;
                    pair[1] = b;
                }
            }
            for c in 0..out {
                let m = wmax[s * out + c];
                let sc = m * gamma;
                for j in 0..len {
                    let mut v = w[c * g.n_in + start + j];
                    if gamma > 0.0 {
                        let r = if m > 0.0 { v.abs() / m } else { 0.0 };
                        v += noise[c * len + j] * sc * shape.rel_std(r);
                    }
                    blk[c * g.r + j] = v;
                }
            }
        });
    wb
}

/// Gradient of w from the gradient of the blocked weights.
pub fn unblock_w(gwb: &[f32], g: &Blocks, out: usize) -> Vec<f32> {
    let mut gw = vec![0f32; out * g.n_in];
    gw.par_chunks_mut(g.n_in).enumerate().for_each(|(c, row)| {
        for (i, o) in row.iter_mut().enumerate() {
            let (s, j) = g.of(i);
            *o = gwb[(s * out + c) * g.r + j];
        }
    });
    gw
}

/// The ADC's output for block output `y` and whether it clamps (the kernels' `adc_level` and
/// clamp in `adc_sum`); a bound <= 0 (or NaN) means no ADC: `y` exactly, never clamped.
#[inline]
fn adc(y: f32, bound: f32, inv_states: Option<f32>) -> (f32, bool) {
    if bound.is_nan() || bound <= 0.0 {
        return (y, false);
    }
    let q = quantize(y, bound, inv_states);
    (q.min(bound).max(-bound), q > bound || q < -bound)
}

/// The ADC's bounds (nb, out): (wmax * lambda) * range of the block, rounded in that order
/// (the kernels' `adc_prep`); all 0 for `lambda` 0.
pub fn adc_bounds(wmax: &[f32], ranges: &[f32], lambda: f32) -> Vec<f32> {
    let out = wmax.len() / ranges.len().max(1);
    wmax.iter()
        .enumerate()
        .map(|(i, &m)| {
            if lambda > 0.0 {
                (m * lambda) * ranges[i / out]
            } else {
                0.0
            }
        })
        .collect()
}

/// ADC per block and the sum over blocks: y (tokens, out) from yb (nb, tokens, out), then the
/// clamp flags (nb, ceil(tokens / FLAG_TILE), ceil(out / FLAG_TILE)): 1 where some output of
/// the tile clamps in that block; and the clamp mask (nb, tokens, ceil(out / 8)), bit c % 8
/// of byte (s, t, c / 8) set where output c of block s clamps for token t.
pub fn adc_sum(
    yb: &[f32],
    bound: &[f32],
    nb: usize,
    tokens: usize,
    out: usize,
    inv_states: Option<f32>,
) -> (Vec<f32>, Vec<u8>) {
    let plane = tokens * out;
    let (ft, fo) = (tokens.div_ceil(FLAG_TILE), out.div_ceil(FLAG_TILE));
    let mut y = vec![0f32; plane + nb * ft * fo];
    let (ys, flags) = y.split_at_mut(plane);
    // Each row lists the (block, channel) pairs where it clamped; few, so set afterwards.
    let hits: Vec<Vec<(usize, usize)>> = ys
        .par_chunks_mut(out)
        .enumerate()
        .map(|(t, row)| {
            let mut hit = Vec::new();
            for (c, o) in row.iter_mut().enumerate() {
                let mut acc = 0f32;
                for s in 0..nb {
                    let (v, clamps) =
                        adc(yb[s * plane + t * out + c], bound[s * out + c], inv_states);
                    if clamps {
                        hit.push((s, c));
                    }
                    acc = if s == 0 { v } else { acc + v };
                }
                *o = acc;
            }
            hit
        })
        .collect();
    let mb = out.div_ceil(8);
    let mut mask = vec![0u8; nb * tokens * mb];
    for (t, hit) in hits.iter().enumerate() {
        for &(s, c) in hit {
            flags[(s * ft + t / FLAG_TILE) * fo + c / FLAG_TILE] = 1.0;
            mask[(s * tokens + t) * mb + c / 8] |= 1 << (c % 8);
        }
    }
    (y, mask)
}

/// The clamped terms taken back out of a straight-through ADC gradient computed as if nothing
/// clamped (the kernels' `clamp_fix_gx` / `clamp_fix_gw`): with `target` X, dst = gxb (nb,
/// tokens, r) and `other` = wb (nb, out, r), dst[s, t, k] -= sum over clamped o of g[t, o]
/// other[s, o, k]; with W, dst = gwb (nb, out, r) and `other` = xb (nb, tokens, r),
/// dst[s, o, k] -= sum over clamped t of g[t, o] other[s, t, k]; the operands are g, flags
/// and other, and the clamped outputs are those [`adc_sum`]'s mask `clamps` marks. Only
/// flagged tiles are visited, in ascending order as on the GPU, and a row's sum is taken out
/// once per [`FIX_CHUNK`] flagged tiles, as the kernels do.
pub fn clamp_fix(
    dst: &mut [f32],
    target: FixTarget,
    [g, flags, other]: [&[f32]; 3],
    clamps: &[u8],
    (tokens, out, r): (usize, usize, usize),
) {
    let (ft, fo) = (tokens.div_ceil(FLAG_TILE), out.div_ceil(FLAG_TILE));
    let mb = out.div_ceil(8);
    let rows = match target {
        FixTarget::X => tokens,
        FixTarget::W => out,
    };
    dst.par_chunks_mut(r).enumerate().for_each(|(row, d)| {
        let (s, i) = (row / rows, row % rows);
        let (tiles, sum_len) = match target {
            FixTarget::X => (fo, out),
            FixTarget::W => (ft, tokens),
        };
        let flagged: Vec<usize> = (0..tiles)
            .filter(|&tile| {
                let flag = match target {
                    FixTarget::X => flags[(s * ft + i / FLAG_TILE) * fo + tile],
                    FixTarget::W => flags[(s * ft + tile) * fo + i / FLAG_TILE],
                };
                flag != 0.0
            })
            .collect();
        for chunk in flagged.chunks(FIX_CHUNK) {
            let mut acc = vec![0f32; r];
            let mut any = false;
            for &tile in chunk {
                for j in tile * FLAG_TILE..((tile + 1) * FLAG_TILE).min(sum_len) {
                    let (t, o) = match target {
                        FixTarget::X => (i, j),
                        FixTarget::W => (j, i),
                    };
                    if clamps[(s * tokens + t) * mb + o / 8] & (1 << (o % 8)) == 0 {
                        continue;
                    }
                    any = true;
                    let gv = g[t * out + o];
                    let src = &other[(s * sum_len + j) * r..][..r];
                    for (a, b) in acc.iter_mut().zip(src) {
                        *a += gv * b;
                    }
                }
            }
            if any {
                for (v, a) in d.iter_mut().zip(&acc) {
                    *v -= a;
                }
            }
        }
    });
}

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

/// Quantizes `v` to the levels of a symmetric `bits`-bit converter with bound `bound`, rounding
/// half to even as torch does. `bits` = 0 leaves the value as it is.
#[inline]
pub fn quantize(v: f32, bound: f32, bits: u32) -> f32 {
    if bits == 0 {
        return v;
    }
    if bound <= 0.0 {
        return 0.0;
    }
    let step = (2.0 * bound) / (((1u64 << bits) - 2) as f32);
    ((v.clamp(-bound, bound) / step).round_ties_even() * step).clamp(-bound, bound)
}

/// The ADC: quantization first, then clipping, in aihwkit-lightning's order.
#[inline]
fn adc(v: f32, bound: f32, bits: u32) -> f32 {
    if bits == 0 {
        return v;
    }
    if bound <= 0.0 {
        return 0.0;
    }
    let step = (2.0 * bound) / (((1u64 << bits) - 2) as f32);
    ((v / step).round_ties_even() * step).clamp(-bound, bound)
}

/// C (m x n, row-major) = A (m x k, row stride `lda`) * B^T where B is n x k row-major.
fn gemm_abt(m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], c: &mut [f32]) {
    assert!(m == 0 || a.len() >= (m - 1) * lda + k, "gemm: lhs too short");
    assert!(b.len() >= n * k && c.len() >= m * n, "gemm: rhs or dst too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
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
            par,
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

/// Runs the analog MVM of `layer` on `tokens` input rows `x` (tokens x in, row-major) with
/// static input ranges `ranges` (one per row block); `call` numbers the MVM for its noise
/// streams. Returns tokens x out, row-major, without bias.
pub fn analog_mvm(
    layer: &AnalogLayer,
    x: &[f32],
    tokens: usize,
    ranges: &[f32],
    call: u64,
) -> Result<Vec<f32>> {
    check_inputs(layer, x, tokens, ranges)?;
    let (n_in, n_out) = (layer.in_features(), layer.out_features());
    let cfg = layer.cfg;
    let mut xq = vec![0f32; tokens * n_in];
    xq.par_chunks_mut(n_in.max(1))
        .zip(x.par_chunks(n_in.max(1)))
        .for_each(|(q, xr)| {
            for (b, &r) in layer.blocks.iter().zip(ranges) {
                for (qv, &xv) in q[b.start..b.start + b.len]
                    .iter_mut()
                    .zip(&xr[b.start..b.start + b.len])
                {
                    *qv = if cfg.dac_bits == 0 {
                        xv.clamp(-r, r)
                    } else {
                        quantize(xv, r, cfg.dac_bits)
                    };
                }
            }
        });
    let needs_var = cfg.read_rel > 0.0 || cfg.read_abs > 0.0;
    let xq2: Vec<f32> = if cfg.read_rel > 0.0 {
        xq.par_iter().map(|v| v * v).collect()
    } else {
        Vec::new()
    };
    let mut y = vec![0f32; tokens * n_out];
    let mut buf = vec![0f32; tokens * n_out];
    let mut var = if needs_var {
        vec![0f32; tokens * n_out]
    } else {
        Vec::new()
    };
    let inv_sqrt_blocks = 1.0 / (layer.blocks.len() as f32).sqrt();
    for (s, (b, &beta)) in layer.blocks.iter().zip(ranges).enumerate() {
        gemm_abt(tokens, n_out, b.len, &xq[b.start..], n_in, &b.w, &mut buf);
        if let Some(sig2) = &b.sigma2 {
            gemm_abt(tokens, n_out, b.len, &xq2[b.start..], n_in, sig2, &mut var);
        } else if needs_var {
            var.fill(0.0);
        }
        let read_key = mvm_stream(layer, s, Effect::ReadPerMvm, call);
        let out_key = mvm_stream(layer, s, Effect::OutputNoise, call);
        let post = |(t, (yr, (br, vr))): (usize, (&mut [f32], (&[f32], &[f32])))| {
            let sumsq: f32 = if b.abs_var.is_some() {
                xq[t * n_in + b.start..t * n_in + b.start + b.len]
                    .iter()
                    .map(|v| v * v)
                    .sum()
            } else {
                0.0
            };
            let mut read_rng = needs_var.then(|| read_key.rng(t as u64));
            let mut out_rng = (cfg.output_gamma > 0.0).then(|| out_key.rng(t as u64));
            for c in 0..n_out {
                let mut v = br[c];
                if let Some(rng) = read_rng.as_mut() {
                    let mut s2 = if vr.is_empty() { 0.0 } else { vr[c] };
                    if let Some(av) = &b.abs_var {
                        s2 += sumsq * av[c];
                    }
                    v += s2.max(0.0).sqrt() * rng.normal();
                }
                if let Some(rng) = out_rng.as_mut() {
                    v += cfg.output_gamma * beta * b.w_max[c] * inv_sqrt_blocks * rng.normal();
                }
                let bound = cfg.lambda * b.w_max[c] * beta;
                yr[c] += b.alpha[c] * adc(v, bound, cfg.adc_bits);
            }
        };
        let vchunks: Vec<&[f32]> = if var.is_empty() {
            vec![&[][..]; tokens]
        } else {
            var.chunks(n_out).collect()
        };
        y.par_chunks_mut(n_out.max(1))
            .zip(buf.par_chunks(n_out.max(1)).zip(vchunks.into_par_iter()))
            .enumerate()
            .for_each(post);
    }
    Ok(y)
}

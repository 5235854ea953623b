//! Static input ranges chosen for the converters' error (post-training calibration).
//!
//! A block's range sets both converters: the DAC clips inputs beyond it and rounds the rest to
//! range / 127 steps, and the ADC's bound lambda * w_max[c] * range scales with it, so a wide
//! range (abs-max) keeps the few outlier inputs but leaves a typical output a few ADC steps,
//! while a narrow one clips. Here each block tries ranges from its inputs' abs-max down by
//! factors of sqrt(2) and keeps the one whose digitized output is closest, in squared error over
//! a calibration batch, to the exact product of the same inputs with the programmed weights.

use super::mvm::{adc, gemm_abt, quantize, steps};
use super::program::AnalogLayer;
use rayon::prelude::*;

/// Range candidates per block: abs-max x 2^(-k/2) for k = 0..CANDIDATES (down to 1/64).
pub const CANDIDATES: usize = 13;

/// Output columns per work item of the search.
const COLS: usize = 256;

/// The squared error of row block `s`'s digitized output against its exact product, summed
/// over the calibration batch x (tokens x n_in, row-major), for each range in `ranges`. No
/// read or output noise: the converters' error alone.
pub fn block_errors(
    layer: &AnalogLayer,
    s: usize,
    x: &[f32],
    tokens: usize,
    ranges: &[f32],
) -> Vec<f64> {
    let b = &layer.blocks[s];
    let (n_in, n_out, cfg) = (layer.in_features(), layer.out_features(), layer.cfg);
    let slice = |t: usize| &x[t * n_in + b.start..t * n_in + b.start + b.len];
    let exact_x: Vec<f32> = (0..tokens).flat_map(|t| slice(t).to_vec()).collect();
    let quantized: Vec<Vec<f32>> = ranges
        .iter()
        .map(|&r| {
            exact_x
                .iter()
                .map(|&v| quantize(v, r, cfg.dac_bits))
                .collect()
        })
        .collect();
    let half = steps(cfg.adc_bits.max(1)) / 2.0;
    let chunks: Vec<(usize, usize)> = (0..n_out)
        .step_by(COLS)
        .map(|c0| (c0, COLS.min(n_out - c0)))
        .collect();
    let per_chunk: Vec<Vec<f64>> = chunks
        .par_iter()
        .map(|&(c0, nc)| {
            let w = &b.w[c0 * b.len..(c0 + nc) * b.len];
            let mut exact = vec![0f32; tokens * nc];
            gemm_abt(tokens, nc, b.len, &exact_x, b.len, w, &mut exact);
            let mut y = vec![0f32; tokens * nc];
            ranges
                .iter()
                .zip(&quantized)
                .map(|(&r, xq)| {
                    gemm_abt(tokens, nc, b.len, xq, b.len, w, &mut y);
                    let mut err = 0f64;
                    for c in 0..nc {
                        let bound = cfg.lambda * b.w_max[c0 + c] * r;
                        let step = if cfg.adc_bits > 0 {
                            (2.0 * bound) / steps(cfg.adc_bits)
                        } else {
                            0.0
                        };
                        for t in 0..tokens {
                            let v = y[t * nc + c];
                            let got = match (cfg.adc_bits, bound > 0.0) {
                                (_, false) => v,
                                (0, true) => v.clamp(-bound, bound),
                                _ => adc(v, bound, step, half),
                            };
                            err += f64::from(got - exact[t * nc + c]).powi(2);
                        }
                    }
                    err
                })
                .collect()
        })
        .collect();
    (0..ranges.len())
        .map(|k| per_chunk.iter().map(|e| e[k]).sum())
        .collect()
}

/// Per row block of `layer`, the range among abs_max[s] x 2^(-k/2) (k < [`CANDIDATES`]) with
/// the least squared output error on the calibration batch x (tokens x n_in); the widest wins
/// ties. `abs_max` is each block's input abs-max as abs-max calibration takes it (at least
/// 1e-6); a block at that floor keeps it.
pub fn mse_ranges(layer: &AnalogLayer, x: &[f32], tokens: usize, abs_max: &[f32]) -> Vec<f32> {
    abs_max
        .iter()
        .enumerate()
        .map(|(s, &a)| {
            if a <= 1e-6 {
                return a;
            }
            let ranges: Vec<f32> = (0..CANDIDATES)
                .map(|k| a * 0.5f32.powf(k as f32 / 2.0))
                .collect();
            let errors = block_errors(layer, s, x, tokens, &ranges);
            let best = errors
                .iter()
                .enumerate()
                .fold(0, |best, (k, &e)| if e < errors[best] { k } else { best });
            ranges[best]
        })
        .collect()
}

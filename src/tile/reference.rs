//! The slow, obvious analog MVM: the same model as [`super::mvm`] written with plain candle
//! tensor ops, one row block at a time, for testing the fused path.
//!
//! It draws the very same noise numbers (same streams, same order) and differs only in the
//! summation order of the products and in rounding exact ties (candle rounds half away from
//! zero), so the two agree to within one converter step on rare elements.

use super::mvm::{check_inputs, mvm_stream};
use super::program::AnalogLayer;
use crate::error::Result;
use crate::rng::Effect;
use candle_core::{Device, Tensor};

fn levels(bits: u32) -> f64 {
    ((1u64 << bits) - 2) as f64
}

/// Noise tensor (tokens x out) of one per-MVM effect on row block `s`.
fn noise(
    layer: &AnalogLayer,
    s: usize,
    effect: Effect,
    call: u64,
    tokens: usize,
) -> Result<Tensor> {
    let key = mvm_stream(layer, s, effect, call);
    let n = layer.out_features();
    let mut v = vec![0f32; tokens * n];
    for (t, row) in v.chunks_mut(n.max(1)).enumerate() {
        key.fill_normal_at(t as u64, 0, row);
    }
    Ok(Tensor::from_vec(v, (tokens, n), &Device::Cpu)?)
}

/// Reference analog MVM of `x` (tokens x in); see [`super::mvm::analog_mvm`].
pub fn analog_mvm_reference(
    layer: &AnalogLayer,
    x: &Tensor,
    ranges: &[f32],
    call: u64,
) -> Result<Tensor> {
    let (tokens, _) = x.dims2()?;
    let n_out = layer.out_features();
    let xv = x.flatten_all()?.to_vec1::<f32>()?;
    check_inputs(layer, &xv, tokens, ranges)?;
    let cfg = layer.cfg;
    let dev = &Device::Cpu;
    let row = |v: &[f32]| Tensor::from_slice(v, (1, n_out), dev);
    let mut y = Tensor::zeros((tokens, n_out), candle_core::DType::F32, dev)?;
    for (s, (b, &beta)) in layer.blocks.iter().zip(ranges).enumerate() {
        let beta64 = f64::from(beta);
        let mut xs = x.narrow(1, b.start, b.len)?.clamp(-beta, beta)?;
        if cfg.dac_bits > 0 {
            let step = 2.0 * beta64 / levels(cfg.dac_bits);
            xs = ((xs / step)?.round()? * step)?;
        }
        let w = Tensor::from_slice(&b.w, (n_out, b.len), dev)?;
        let mut ys = xs.matmul(&w.t()?)?;
        if cfg.read_rel > 0.0 || cfg.read_abs > 0.0 {
            let x2 = xs.sqr()?;
            let mut var = Tensor::zeros((tokens, n_out), candle_core::DType::F32, dev)?;
            if let Some(s2) = &b.sigma2 {
                var = (var + x2.matmul(&Tensor::from_slice(s2, (n_out, b.len), dev)?.t()?)?)?;
            }
            if let Some(av) = &b.abs_var {
                var = (var + x2.sum_keepdim(1)?.broadcast_mul(&row(av)?)?)?;
            }
            ys = (ys + (var.sqrt()? * noise(layer, s, Effect::ReadPerMvm, call, tokens)?)?)?;
        }
        if cfg.output_gamma > 0.0 {
            let scale = f64::from(cfg.output_gamma) * beta64 / (layer.blocks.len() as f64).sqrt();
            let n = noise(layer, s, Effect::OutputNoise, call, tokens)?;
            ys = (ys + (n * scale)?.broadcast_mul(&row(&b.w_max)?)?)?;
        }
        if cfg.adc_bits > 0 {
            let bound: Vec<f32> = b.w_max.iter().map(|m| cfg.lambda * m * beta).collect();
            let bound = row(&bound)?;
            let step = (&bound * (2.0 / levels(cfg.adc_bits)))?;
            ys = ys.broadcast_div(&step)?.round()?.broadcast_mul(&step)?;
            ys = ys
                .broadcast_minimum(&bound)?
                .broadcast_maximum(&bound.neg()?)?;
        }
        y = (y + ys.broadcast_mul(&row(&b.alpha)?)?)?;
    }
    Ok(y)
}

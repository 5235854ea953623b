//! Error-optimal initial input ranges for training: the rule of `afm eval --calib-mse`
//! (`tile::calibrate`) on the device's tensors.
//!
//! The recipe's kappa x std init ignores the ADC: a block's range also sets the ADC bound
//! lambda * w_max[c] * range, and at kappa 18 a typical SmolLM2 output spans a few ADC steps.
//! Here a block tries its inputs' abs-max down by factors of sqrt(2) and keeps the range whose
//! DAC- and ADC-quantized output (no weight noise) is closest to the exact product.

use super::layer::AnalogTrainConfig;
use crate::error::Result;
use crate::tile::calibrate::CANDIDATES;
use candle_core::Tensor;

/// The range among abs-max(xs) x 2^(-k/2), k < [`CANDIDATES`], whose digitized output of the
/// block (the converters of `cfg`) has the least squared error against xs . ws^T; the widest
/// wins ties. xs (tokens, len) and ws (out, len) are f32; `None` when the inputs are all (near)
/// zero, as abs-max calibration leaves such a block alone.
pub fn mse_range(xs: &Tensor, ws: &Tensor, cfg: &AnalogTrainConfig) -> Result<Option<f32>> {
    let abs_max = xs.abs()?.max(1)?.max(0)?.to_scalar::<f32>()?;
    if abs_max <= 1e-6 {
        return Ok(None);
    }
    let wt = ws.t()?;
    let exact = xs.matmul(&wt)?;
    let w_max = ws.abs()?.max_keepdim(1)?.t()?;
    let ranges: Vec<f32> = (0..CANDIDATES)
        .map(|k| abs_max * 0.5f32.powf(k as f32 / 2.0))
        .collect();
    let errors = ranges
        .iter()
        .map(|&r| {
            let r64 = f64::from(r);
            let mut xq = xs.clamp(-r, r)?;
            if cfg.dac_bits > 0 {
                let res = (2.0 * r64) / AnalogTrainConfig::states(cfg.dac_bits);
                xq = ((xq / res)?.round()? * res)?;
            }
            let mut y = xq.matmul(&wt)?;
            if cfg.out_bound > 0.0 {
                let bound = ((&w_max * cfg.out_bound)? * r64)?;
                if cfg.adc_bits > 0 {
                    let res = ((&bound * 2.0)? / AnalogTrainConfig::states(cfg.adc_bits))?
                        .maximum(1e-30)?;
                    y = y.broadcast_div(&res)?.round()?.broadcast_mul(&res)?;
                }
                y = y
                    .broadcast_minimum(&bound)?
                    .broadcast_maximum(&bound.neg()?)?;
            }
            Ok((y - &exact)?.sqr()?.sum(1)?.sum(0)?.reshape(1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let errors = Tensor::cat(&errors, 0)?.to_vec1::<f32>()?;
    let best = errors
        .iter()
        .enumerate()
        .fold(0, |best, (k, &e)| if e < errors[best] { k } else { best });
    Ok(Some(ranges[best]))
}

//! Error-optimal initial input ranges for training: the rule of `afm eval --calib-mse`
//! (`tile::calibrate`) on the device's tensors.
//!
//! The recipe's kappa x std init ignores the ADC: a block's range also sets the ADC bound
//! lambda * w_max[c] * range, and at kappa 18 a typical SmolLM2 output spans a few ADC steps.
//! Here a block tries its inputs' abs-max down by factors of sqrt(2) and keeps the range whose
//! DAC- and ADC-quantized output (no weight noise) is closest to the exact product.

use crate::error::Result;
use crate::tile::calibrate::CANDIDATES;
use candle_core::Tensor;

/// The converters of a row block, as the training layer applies them.
#[derive(Debug, Clone, Copy)]
pub struct Converters {
    /// DAC bits (0: inputs only clipped).
    pub dac_bits: u32,
    /// ADC bits (0: outputs only clamped to the bound).
    pub adc_bits: u32,
    /// ADC bound lambda in units of w_max * range (0: no bound).
    pub out_bound: f64,
}

/// Steps of a symmetric `bits`-bit converter (lightning's 2^bits - 2).
fn states(bits: u32) -> f64 {
    (1u64 << bits) as f64 - 2.0
}

/// The range among abs-max(xs) x 2^(-k/2), k < [`CANDIDATES`], whose digitized output of the
/// block has the least squared error against xs . ws^T; the widest wins ties. xs (tokens, len)
/// and ws (out, len) are f32; `None` when the inputs are all (near) zero, as abs-max
/// calibration leaves such a block alone.
pub fn mse_range(xs: &Tensor, ws: &Tensor, conv: Converters) -> Result<Option<f32>> {
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
            if conv.dac_bits > 0 {
                let res = (2.0 * r64) / states(conv.dac_bits);
                xq = ((xq / res)?.round()? * res)?;
            }
            let mut y = xq.matmul(&wt)?;
            if conv.out_bound > 0.0 {
                let bound = ((&w_max * conv.out_bound)? * r64)?;
                if conv.adc_bits > 0 {
                    let res = ((&bound * 2.0)? / states(conv.adc_bits))?.maximum(1e-30)?;
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

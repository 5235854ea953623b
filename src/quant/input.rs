//! Static integer inputs: each row block of a projection's inputs has one fixed range r, and an
//! input x becomes step * round(clamp(x, -r, r) / step) with step = r / (2^(b-1) - 1), the
//! analog tile's DAC done by a digital chip. The ranges come from an analog model's learned
//! DAC ranges or from the abs-max of a calibration text.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::sync::RwLock;

/// A projection's static input quantizer.
#[derive(Debug)]
pub struct StaticInput {
    /// Bits per input (8: levels -127..=127).
    pub bits: u32,
    /// Row blocks of the input features: (start, len).
    pub blocks: Vec<(usize, usize)>,
    /// Range per row block; empty until the first forward calibrates it (abs-max per block).
    pub ranges: RwLock<Vec<f32>>,
}

impl StaticInput {
    /// A quantizer of `bits` over `blocks` with `ranges` (empty: calibrate on first use).
    pub fn new(bits: u32, blocks: Vec<(usize, usize)>, ranges: Vec<f32>) -> Result<Self> {
        if !(2..=16).contains(&bits) {
            return Err(Error::Value(format!("input bits {bits}: expected 2 to 16")));
        }
        if !ranges.is_empty() && ranges.len() != blocks.len() {
            return Err(Error::Value(format!(
                "{} input ranges for {} row blocks",
                ranges.len(),
                blocks.len()
            )));
        }
        if let Some(bad) = ranges.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return Err(Error::Value(format!(
                "input range {bad} (expected finite and > 0)"
            )));
        }
        Ok(StaticInput {
            bits,
            blocks,
            ranges: RwLock::new(ranges),
        })
    }

    /// The current ranges (empty before calibration).
    pub fn ranges(&self) -> Vec<f32> {
        self.ranges.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Quantizes x (..., in) with the block ranges, calibrating them from x first if unset.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n_in = *x.dims().last().unwrap_or(&0);
        let covered: usize = self.blocks.iter().map(|b| b.1).sum();
        if covered != n_in {
            return Err(Error::Value(format!(
                "input of {n_in} features for static input blocks covering {covered}"
            )));
        }
        let x32 = x.to_dtype(DType::F32)?;
        if self.ranges().is_empty() {
            let r = crate::executor::linear::block_abs_max(&x32, self.blocks.iter().copied())?;
            if let Ok(mut w) = self.ranges.write() {
                if w.is_empty() {
                    *w = r;
                }
            }
        }
        let ranges = self.ranges();
        let qmax = ((1u32 << (self.bits - 1)) - 1) as f32;
        let mut range = vec![0f32; n_in];
        for (&(s, l), &r) in self.blocks.iter().zip(&ranges) {
            range[s..s + l].iter_mut().for_each(|v| *v = r);
        }
        let step: Vec<f32> = range.iter().map(|r| r / qmax).collect();
        let dev = x.device();
        let range = Tensor::from_vec(range, n_in, dev)?;
        let step = Tensor::from_vec(step, n_in, dev)?;
        let q = x32
            .broadcast_minimum(&range)?
            .broadcast_maximum(&range.neg()?)?
            .broadcast_div(&step)?
            .round()?
            .broadcast_mul(&step)?;
        Ok(q.to_dtype(x.dtype())?)
    }
}

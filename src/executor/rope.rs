//! Rotary position embeddings: the frequency tables of plain, Llama 3 and LongRoPE scaling.
//!
//! Angles are computed in f32 exactly as `transformers` does (inv_freq in f32, one f32 product
//! per position), because at long positions the angle's rounding is visible in the logits.

use super::config::{HfConfig, RopeScaling};
use crate::error::Result;
use candle_core::{Device, Tensor};

/// The rotary tables of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    short: Vec<f32>,
    long: Option<(Vec<f32>, usize)>,
    attention_factor: f32,
}

fn base_inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

impl Rope {
    /// Builds the tables of `cfg`.
    pub fn new(cfg: &HfConfig) -> Self {
        let base = base_inv_freq(cfg.rope_theta, cfg.head_dim);
        match &cfg.rope_scaling {
            RopeScaling::None => Rope {
                short: base,
                long: None,
                attention_factor: 1.0,
            },
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            } => {
                let (factor, low, high, orig) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *orig as f32,
                );
                let (low_wl, high_wl) = (orig / low, orig / high);
                let inv = base
                    .iter()
                    .map(|&f| {
                        let wl = 2.0 * std::f32::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let s = (orig / wl - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    })
                    .collect();
                Rope {
                    short: inv,
                    long: None,
                    attention_factor: 1.0,
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: orig,
            } => {
                let scaled = |fs: &[f64]| -> Vec<f32> {
                    base.iter().zip(fs).map(|(f, s)| f / *s as f32).collect()
                };
                let scale = cfg.max_position_embeddings as f64 / orig;
                let attention_factor = if scale <= 1.0 {
                    1.0
                } else {
                    (1.0 + scale.ln() / orig.ln()).sqrt() as f32
                };
                Rope {
                    short: scaled(short_factor),
                    long: Some((scaled(long_factor), *orig as usize)),
                    attention_factor,
                }
            }
        }
    }

    /// (cos, sin) tables, each (len x head_dim / 2), for positions `start..start + len` of a
    /// sequence that will be `total` tokens long (LongRoPE switches factors on that length).
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        total: usize,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.rows((start..start + len).map(|p| (p, total)), (len,), dev)
    }

    /// (cos, sin) rows for `(position, total length of its sequence)` pairs, shaped `shape`
    /// with head_dim / 2 appended: the tables of a packed batch whose rows belong to sequences
    /// of different lengths.
    pub fn rows(
        &self,
        at: impl Iterator<Item = (usize, usize)>,
        shape: impl Into<candle_core::Shape>,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.short.len();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for (p, total) in at {
            let inv = match &self.long {
                Some((long, orig)) if total > *orig => long,
                _ => &self.short,
            };
            for &f in inv {
                let a = f * p as f32;
                cos.push(a.cos() * self.attention_factor);
                sin.push(a.sin() * self.attention_factor);
            }
        }
        let mut dims = shape.into().dims().to_vec();
        dims.push(half);
        Ok((
            Tensor::from_vec(cos, dims.clone(), dev)?,
            Tensor::from_vec(sin, dims, dev)?,
        ))
    }
}

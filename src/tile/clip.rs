//! Weight clipping at programming time: each column's full scale per row block.
//!
//! A column's weights are stored relative to its full scale (the largest |w| of its row
//! block), and the programming noise of PCM grows much more slowly than the conductance it is
//! programmed to (the `pcm-afm` std is ~8 units at 50 and at 100 of 180): a full scale below
//! the largest |w| clips the few largest weights but raises every other weight's conductance and
//! with it its signal-to-noise ratio. It also lowers the column's ADC bound, which is
//! proportional to the full scale. [`WeightClip::LeastError`] picks, per column and row block,
//! the full scale whose expected squared weight error (clipping plus the device model's
//! programming noise, [`Device::expected_sq_error`]) is least; the ADC is left out of the choice
//! because the noise dominates it by far at 8 bits.

use crate::device::Device;

/// How a column's full scale is chosen when its weights are programmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightClip {
    /// The largest |w| of the column's row block: nothing clipped (aihwkit's and the AFM
    /// paper's mapping).
    #[default]
    Off,
    /// Among max |w| x 2^(-k/16), k = 0..=16, the full scale with the least expected squared
    /// weight error under the preset's device model (clipping + programming noise).
    LeastError,
}

impl WeightClip {
    /// Parses `off` or `least-error` (the CLI's spelling, [`WeightClip::name`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(WeightClip::Off),
            "least-error" => Some(WeightClip::LeastError),
            _ => None,
        }
    }

    /// The CLI's spelling.
    pub fn name(self) -> &'static str {
        match self {
            WeightClip::Off => "off",
            WeightClip::LeastError => "least-error",
        }
    }
}

/// Candidates of [`WeightClip::LeastError`]: full scales down to half the largest |w|.
const STEPS: i32 = 16;

/// The full scale of one column's weights `row` in a row block, whose largest |w| is `m`.
pub fn full_scale(row: &[f32], m: f32, clip: WeightClip, device: &Device) -> f32 {
    match clip {
        WeightClip::Off => m,
        WeightClip::LeastError if m <= 0.0 || device.is_ideal() => m,
        WeightClip::LeastError => {
            let mut best = (expected_error(row, m, device), m);
            for k in 1..=STEPS {
                let s = m * 2f32.powf(-(k as f32) / STEPS as f32);
                let e = expected_error(row, s, device);
                // Strictly less: ties keep the larger scale, so nothing is clipped for nothing.
                if e < best.0 {
                    best = (e, s);
                }
            }
            best.1
        }
    }
}

/// Expected squared error of `row` programmed at full scale `s` (weight units squared).
pub fn expected_error(row: &[f32], s: f32, device: &Device) -> f64 {
    let s = f64::from(s);
    row.iter()
        .map(|&v| {
            let a = f64::from(v.abs());
            let over = (a - s).max(0.0);
            over * over + device.expected_sq_error(a.min(s) / s) * s * s
        })
        .sum()
}

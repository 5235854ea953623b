//! Round-to-nearest symmetric integer weights, per output channel or per group of inputs.
//!
//! Each group of weights gets one scale, max|w| / (2^(b-1) - 1), and every weight the nearest
//! integer level in -(2^(b-1) - 1)..=(2^(b-1) - 1) (4 bits: -7..=7, symmetric around zero as
//! the analog model's differential conductance pairs are). The error of one weight is at most
//! half its group's scale.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which weights share a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Grouping {
    /// One scale per output channel (row of the out x in matrix).
    PerChannel,
    /// One scale per `size` consecutive inputs of a channel (the last group of a row may be
    /// shorter).
    Group {
        /// Inputs per group.
        size: usize,
    },
}

impl Grouping {
    /// Inputs per group for rows of `inp` inputs.
    pub fn group_len(&self, inp: usize) -> usize {
        match *self {
            Grouping::PerChannel => inp.max(1),
            Grouping::Group { size } => size.max(1),
        }
    }
}

/// An out x in matrix as integer levels and one scale per (channel, group).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// Levels, row-major out x in.
    pub levels: Vec<i8>,
    /// Scales, row-major out x groups per row.
    pub scales: Vec<f32>,
    /// Output channels.
    pub out: usize,
    /// Inputs.
    pub inp: usize,
    /// Inputs per group.
    pub group_len: usize,
    /// Bits per weight.
    pub bits: u32,
}

/// Largest level of a `bits`-bit symmetric quantizer.
pub fn max_level(bits: u32) -> i32 {
    (1i32 << (bits - 1)) - 1
}

/// Quantizes `w` (row-major out x in) to `bits`-bit symmetric levels with round to nearest
/// (ties away from zero).
pub fn quantize(
    w: &[f32],
    out: usize,
    inp: usize,
    bits: u32,
    grouping: Grouping,
) -> Result<QuantizedWeight> {
    if !(2..=8).contains(&bits) {
        return Err(Error::Value(format!("weight bits {bits}: expected 2 to 8")));
    }
    if w.len() != out * inp {
        return Err(Error::Value(format!(
            "weight of {} values for a {out} x {inp} matrix",
            w.len()
        )));
    }
    if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
        return Err(Error::Value(format!(
            "weight value {bad} cannot be quantized"
        )));
    }
    let g = grouping.group_len(inp);
    let qmax = max_level(bits) as f32;
    let mut levels = vec![0i8; w.len()];
    let mut scales = Vec::with_capacity(out * inp.div_ceil(g));
    for (row, lv) in w.chunks(inp.max(1)).zip(levels.chunks_mut(inp.max(1))) {
        for (grp, lg) in row.chunks(g).zip(lv.chunks_mut(g)) {
            let amax = grp.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / qmax;
            scales.push(scale);
            if scale > 0.0 {
                for (v, l) in grp.iter().zip(lg.iter_mut()) {
                    *l = (v / scale).round().clamp(-qmax, qmax) as i8;
                }
            }
        }
    }
    Ok(QuantizedWeight {
        levels,
        scales,
        out,
        inp,
        group_len: g,
        bits,
    })
}

impl QuantizedWeight {
    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.inp.div_ceil(self.group_len)
    }

    /// The weights the levels stand for (row-major out x in).
    pub fn dequantize(&self) -> Vec<f32> {
        let gpr = self.groups();
        self.levels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let (r, c) = (i / self.inp, i % self.inp);
                l as f32 * self.scales[r * gpr + c / self.group_len]
            })
            .collect()
    }

    /// Levels packed two per byte, as `l + 8` in a nibble (low nibble first); a row of odd
    /// length ends with a zero high nibble. Only for 4 bits or fewer.
    pub fn pack_nibbles(&self) -> Vec<u8> {
        let per_row = self.inp.div_ceil(2);
        let mut out = vec![0u8; self.out * per_row];
        for (row, dst) in self
            .levels
            .chunks(self.inp.max(1))
            .zip(out.chunks_mut(per_row.max(1)))
        {
            for (i, &l) in row.iter().enumerate() {
                dst[i / 2] |= ((l + 8) as u8 & 0xf) << (4 * (i % 2));
            }
        }
        out
    }

    /// Inverse of [`QuantizedWeight::pack_nibbles`]; a nibble outside the levels of `bits` is
    /// an error naming `what`.
    pub fn from_nibbles(
        what: &str,
        packed: &[u8],
        scales: Vec<f32>,
        out: usize,
        inp: usize,
        group_len: usize,
        bits: u32,
    ) -> Result<Self> {
        let per_row = inp.div_ceil(2);
        let groups = inp.div_ceil(group_len.max(1));
        if packed.len() != out * per_row || scales.len() != out * groups || group_len == 0 {
            return Err(Error::Value(format!(
                "`{what}`: {} packed bytes and {} scales for a {out} x {inp} matrix in groups \
                 of {group_len} (expected {} and {})",
                packed.len(),
                scales.len(),
                out * per_row,
                out * groups
            )));
        }
        if let Some(bad) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(Error::Value(format!(
                "`{what}`: scale {bad} (expected finite and >= 0)"
            )));
        }
        let qmax = max_level(bits);
        let mut levels = Vec::with_capacity(out * inp);
        for row in packed.chunks(per_row.max(1)).take(out) {
            for i in 0..inp {
                let l = ((row[i / 2] >> (4 * (i % 2))) & 0xf) as i32 - 8;
                if l.abs() > qmax {
                    return Err(Error::Value(format!(
                        "`{what}`: level {l} outside the {bits}-bit range -{qmax}..={qmax}"
                    )));
                }
                levels.push(l as i8);
            }
        }
        Ok(QuantizedWeight {
            levels,
            scales,
            out,
            inp,
            group_len,
            bits,
        })
    }
}

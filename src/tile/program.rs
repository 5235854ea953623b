//! Programming a layer's weights onto its tiles: one programmed chip per seed.
//!
//! Per row block s and output column c the target weights are normalized by
//! w_max[c] = max |W[c, block s]| (the differential pair's full scale; less with weight
//! clipping, `tile::clip`, which clips the weights above it), realized by the device
//! model at the preset's inference time, and scaled back. Drift compensation measures each tile's
//! mean |weight| right after programming and at time t and keeps the ratio as a digital gain.
//! An isolated head block of k inputs leaves most of its tile's rows empty; with r copies
//! ([`Placement::head_copies`]) its weights fill k x r rows, the column sums the r copies'
//! currents (programming noise grows as sqrt(r), the signal as r), and the output is divided by r
//! after the ADC, whose bound in weight units is then r times smaller.

use super::clip::{full_scale, WeightClip};
use super::mapping::TileMap;
use super::preset::TilePreset;
use crate::device::{ColumnStreams, Device};
use crate::error::{Error, Result};
use crate::rng::{name_hash, Effect, StreamKey};
use rayon::prelude::*;

/// Per-MVM settings of a programmed layer, taken from the preset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MvmConfig {
    /// DAC bits (0: off).
    pub dac_bits: u32,
    /// ADC bits (0: off).
    pub adc_bits: u32,
    /// Global ADC bound factor.
    pub lambda: f32,
    /// Output noise gamma.
    pub output_gamma: f32,
    /// Read noise relative to each device's conductance.
    pub read_rel: f32,
    /// Read noise relative to g_max per device.
    pub read_abs: f32,
}

impl MvmConfig {
    /// The per-MVM settings of a (validated) preset.
    pub fn from_preset(p: &TilePreset) -> Self {
        MvmConfig {
            dac_bits: p.dac.bits as u32,
            adc_bits: p.adc.bits as u32,
            lambda: p.adc.lambda as f32,
            output_gamma: p.noise.output_gamma as f32,
            read_rel: p.noise.read_rel as f32,
            read_abs: p.noise.read_abs as f32,
        }
    }
}

/// Where a layer's weights go on its tiles beyond the preset: an isolated head block and the
/// weight clipping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    /// Leading inputs in a row block of their own ([`TileMap::with_head`]; 0: the plain split).
    pub head: usize,
    /// How each column's full scale is chosen ([`WeightClip`]).
    pub clip: WeightClip,
    /// Copies of the head block's weights in its tile's rows, summed by the column and divided
    /// by this count after the ADC (0 or 1: one copy). `head` x `head_copies` must fit a tile.
    pub head_copies: usize,
}

/// One row block of a programmed layer (all its column tiles side by side).
#[derive(Debug, Clone)]
pub struct RowBlock {
    /// First input of the block.
    pub start: usize,
    /// Inputs in the block.
    pub len: usize,
    /// Effective weights at inference time, out x len row-major, in weight units.
    pub w: Vec<f32>,
    /// Per-column full scale, max |W_target[c, block]| unless clipped (sets the ADC bound).
    pub w_max: Vec<f32>,
    /// Per-column drift-compensation gain (the gain of the tile holding the column).
    pub alpha: Vec<f32>,
    /// Per-weight read-noise variance per unit x^2 (out x len), when `read_rel` > 0.
    pub sigma2: Option<Vec<f32>>,
    /// Per-column read-noise variance per unit x^2 from state-independent noise (`read_abs`).
    pub abs_var: Option<Vec<f32>>,
}

/// A layer programmed onto tiles: the result of one chip instance (seed).
#[derive(Debug, Clone)]
pub struct AnalogLayer {
    /// Tile mapping.
    pub map: TileMap,
    /// Row blocks in input order.
    pub blocks: Vec<RowBlock>,
    /// Per-MVM settings.
    pub cfg: MvmConfig,
    /// Run seed.
    pub seed: u64,
    /// Hash of the layer name (names the layer's streams).
    pub layer: u64,
    /// The row blocks copied to a GPU by the first MVM there (`tile::blocked`).
    pub(super) device_copy: std::sync::OnceLock<Vec<super::blocked::DeviceBlock>>,
}

impl AnalogLayer {
    /// Programs `weight` (out x in, row-major) onto tiles of `preset` for chip `seed`.
    pub fn program(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        preset: &TilePreset,
        seed: u64,
        layer_name: &str,
    ) -> Result<Self> {
        Self::program_with_head(
            weight,
            out_features,
            in_features,
            0,
            preset,
            seed,
            layer_name,
        )
    }

    /// [`AnalogLayer::program`] with the first `head` inputs in a row block of their own
    /// ([`TileMap::with_head`]; 0: the plain split).
    pub fn program_with_head(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        head: usize,
        preset: &TilePreset,
        seed: u64,
        layer_name: &str,
    ) -> Result<Self> {
        let place = Placement {
            head,
            ..Placement::default()
        };
        Self::program_placed(
            weight,
            out_features,
            in_features,
            place,
            preset,
            seed,
            layer_name,
        )
    }

    /// [`AnalogLayer::program`] with the isolated head block and weight clipping of `place`.
    pub fn program_placed(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        place: Placement,
        preset: &TilePreset,
        seed: u64,
        layer_name: &str,
    ) -> Result<Self> {
        let head = place.head;
        let copies = place.head_copies.max(1);
        if head * copies > preset.rows() || head > in_features {
            return Err(Error::Shape(format!(
                "layer `{layer_name}`: an isolated block of {head} inputs x {copies} copies does \
                 not fit {in_features} inputs on tiles of {} rows",
                preset.rows()
            )));
        }
        if weight.len() != out_features * in_features {
            return Err(Error::Shape(format!(
                "weight of layer `{layer_name}` has {} values, expected {out_features} x {in_features}",
                weight.len()
            )));
        }
        if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
            return Err(Error::Value(format!(
                "weight of layer `{layer_name}` has a non-finite value at [{}, {}]",
                i / in_features,
                i % in_features
            )));
        }
        let map = TileMap::with_head(
            in_features,
            out_features,
            head,
            preset.rows(),
            preset.cols(),
        )
        .with_head_copies(copies);
        let device = preset.device.build();
        let cfg = MvmConfig::from_preset(preset);
        let layer = name_hash(layer_name);
        let blocks = map
            .row_blocks
            .iter()
            .enumerate()
            .map(|(s, &(start, len))| {
                let block = BlockSpec {
                    s,
                    start,
                    len,
                    copies: map.copies(s),
                };
                program_block(
                    weight,
                    in_features,
                    &map,
                    block,
                    &device,
                    preset,
                    seed,
                    layer,
                    place.clip,
                )
            })
            .collect();
        Ok(AnalogLayer {
            map,
            blocks,
            cfg,
            seed,
            layer,
            device_copy: std::sync::OnceLock::new(),
        })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.map.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.map.out_features
    }
}

/// Which row block [`program_block`] programs: index, inputs and copies in its tile's rows.
#[derive(Clone, Copy)]
struct BlockSpec {
    s: usize,
    start: usize,
    len: usize,
    copies: usize,
}

#[allow(clippy::too_many_arguments)]
fn program_block(
    weight: &[f32],
    in_features: usize,
    map: &TileMap,
    block: BlockSpec,
    device: &Device,
    preset: &TilePreset,
    seed: u64,
    layer: u64,
    clip: WeightClip,
) -> RowBlock {
    let BlockSpec {
        s,
        start,
        len,
        copies,
    } = block;
    let out = map.out_features;
    let col_tile = |c: usize| {
        map.col_blocks
            .iter()
            .position(|&(b0, bl)| c >= b0 && c < b0 + bl)
            .unwrap_or(0)
    };
    let mut w = vec![0f32; out * len];
    let mut dev_sq = vec![0f32; out * len];
    let mut w_max = vec![0f32; out];
    let t_s = preset.drift_time_s;
    // In weight units after the division by the copies: the ADC bound and step follow w_max.
    let per_copy = 1.0 / copies as f32;
    let readouts: Vec<(f64, f64)> = w
        .par_chunks_mut(len)
        .zip(dev_sq.par_chunks_mut(len))
        .zip(w_max.par_iter_mut())
        .enumerate()
        .map(|(c, ((wc, sq), wm))| {
            let row = &weight[c * in_features + start..c * in_features + start + len];
            let m = full_scale(
                row,
                row.iter().fold(0f32, |a, v| a.max(v.abs())),
                clip,
                device,
            );
            *wm = m * per_copy;
            if device.is_ideal() {
                for ((w, q), v) in wc.iter_mut().zip(sq.iter_mut()).zip(row) {
                    *w = v.clamp(-m, m);
                    let u = if m > 0.0 { *w / m } else { 0.0 };
                    *q = u * u * copies as f32;
                }
                return (0.0, 0.0);
            }
            let tile = map.tile_index(s, col_tile(c)) as u64;
            let key = |e| StreamKey::new(seed, layer, tile, e).rng(c as u64);
            let mut streams = ColumnStreams {
                program: key(Effect::Program),
                drift: key(Effect::DriftNu),
                read: key(Effect::ReadAtTime),
            };
            let target: Vec<f32> = row
                .iter()
                .map(|v| {
                    if m > 0.0 {
                        (v / m).clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            let r = if copies == 1 {
                device.realize_column(&target, t_s, &mut streams, wc, sq)
            } else {
                // The column holds the copies one after another, so they draw from its stream
                // in row order like any other devices of the column; their currents add.
                let rows = target.repeat(copies);
                let (mut big_w, mut big_sq) = (vec![0f32; rows.len()], vec![0f32; rows.len()]);
                let r = device.realize_column(&rows, t_s, &mut streams, &mut big_w, &mut big_sq);
                wc.fill(0.0);
                sq.fill(0.0);
                for (bw, bq) in big_w.chunks(len).zip(big_sq.chunks(len)) {
                    for (((w, q), &v), &v2) in wc.iter_mut().zip(sq.iter_mut()).zip(bw).zip(bq) {
                        *w += v;
                        *q += v2;
                    }
                }
                r
            };
            for v in wc.iter_mut() {
                *v *= m * per_copy;
            }
            (r.sum_abs_t0 * f64::from(m), r.sum_abs_t * f64::from(m))
        })
        .collect();
    let mut alpha = vec![1f32; out];
    if preset.drift_compensation && !device.is_ideal() {
        for &(b0, bl) in &map.col_blocks {
            let (r0, rt) = readouts[b0..b0 + bl]
                .iter()
                .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
            // aihwkit clamps each mean |readout| at 1e-4 so an empty tile keeps unit gain.
            let cells = (bl * len * copies) as f64;
            let g = ((r0 / cells).max(1e-4) / (rt / cells).max(1e-4)) as f32;
            alpha[b0..b0 + bl].fill(g);
        }
    }
    // dev_sq sums the copies' squared conductances: the summed currents' read-noise variance,
    // which w_max^2 (already divided by the copies squared) brings to weight units.
    let sigma2 = (preset.noise.read_rel > 0.0).then(|| {
        let r2 = (preset.noise.read_rel * preset.noise.read_rel) as f32;
        dev_sq
            .iter()
            .enumerate()
            .map(|(k, q)| {
                let m = w_max[k / len];
                r2 * q * m * m
            })
            .collect()
    });
    // Two devices per weight and copy, each with std read_abs * g_max.
    let abs_var = (preset.noise.read_abs > 0.0).then(|| {
        let a2 = (2.0 * preset.noise.read_abs * preset.noise.read_abs) as f32 * copies as f32;
        w_max.iter().map(|m| a2 * m * m).collect()
    });
    RowBlock {
        start,
        len,
        w,
        w_max,
        alpha,
        sigma2,
        abs_var,
    }
}

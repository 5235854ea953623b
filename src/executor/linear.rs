//! A projection of a transformer: a digital matmul or an analog layer on tiles.
//!
//! Analog projections keep static input ranges, one per row block. A model converted from a
//! plain checkpoint has none yet: the first batch it sees sets them (calibration), after which
//! they stay fixed like a real chip's DAC ranges. Calibration takes the abs-max of each row
//! block's inputs, kappa times their std as the AFM recipe initializes its learned ranges, or
//! the range with the least output error: an LLM's few outlier inputs make the abs-max range so
//! wide that the DAC leaves the typical input a few levels and the ADC, whose bound grows with
//! the range, a few steps.

use crate::error::Result;
use crate::tile::program::Placement;
use crate::tile::{AnalogLayer, TilePreset};
use candle_core::{DType, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// One analog projection.
#[derive(Debug)]
pub struct AnalogProjection {
    /// The programmed tiles.
    pub layer: AnalogLayer,
    /// Input range per row block (empty until calibrated).
    pub ranges: RwLock<Vec<f32>>,
    /// Optional bias, added digitally.
    pub bias: Option<Tensor>,
    calls: AtomicU64,
    /// How the first batch sets empty ranges.
    calib: RwLock<Calibration>,
}

/// How an analog projection calibrates its empty input ranges from the first batch it sees.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Calibration {
    /// The abs-max of each row block's inputs.
    #[default]
    AbsMax,
    /// kappa times their std, as the AFM recipe initializes its learned ranges.
    Kappa(f32),
    /// The range with the least squared error of the block's digitized output against its
    /// exact product (`tile::calibrate`).
    Mse,
}

/// A projection y = x W^T (+ b).
#[derive(Debug)]
pub enum Projection {
    /// Exact digital matmul.
    Digital {
        /// out x in.
        weight: Tensor,
        /// Optional bias.
        bias: Option<Tensor>,
    },
    /// Analog layer on tiles.
    Analog(Box<AnalogProjection>),
    /// Analog training layer (hardware-aware training).
    Train(Box<crate::train::layer::AnalogTrainLinear>),
    /// Digital matmul with integer weights (stored dequantized) and static integer inputs.
    Quant(Box<QuantProjection>),
    /// Exact digital matmul that records the abs-max of every input column it sees
    /// (calibration statistics for activation smoothing).
    Probe(Box<ProbeProjection>),
}

/// A digital projection that keeps statistics of every input column it sees.
#[derive(Debug)]
pub struct ProbeProjection {
    /// out x in.
    pub weight: Tensor,
    /// Optional bias.
    pub bias: Option<Tensor>,
    /// What it has seen so far.
    pub stats: std::sync::Mutex<ColumnStats>,
}

/// Per input column: the largest |x| and the sum of x^2 over the rows seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnStats {
    /// Largest |x| per column (empty before the first row).
    pub abs_max: Vec<f32>,
    /// Sum of x^2 per column.
    pub sum_sq: Vec<f64>,
    /// Rows seen.
    pub rows: usize,
}

impl ColumnStats {
    /// Mean x^2 per column (0 before the first row).
    pub fn mean_sq(&self) -> Vec<f64> {
        let n = self.rows.max(1) as f64;
        self.sum_sq.iter().map(|s| s / n).collect()
    }

    /// Adds the rows of x (rows, columns).
    fn add(&mut self, x: &Tensor) -> Result<()> {
        let (rows, _) = x.dims2()?;
        let seen = x.abs()?.max(0)?.to_vec1::<f32>()?;
        let sq = x.sqr()?.to_dtype(DType::F64)?.sum(0)?.to_vec1::<f64>()?;
        if self.abs_max.is_empty() {
            (self.abs_max, self.sum_sq) = (seen, sq);
        } else {
            self.abs_max
                .iter_mut()
                .zip(seen)
                .for_each(|(a, b)| *a = a.max(b));
            self.sum_sq.iter_mut().zip(sq).for_each(|(a, b)| *a += b);
        }
        self.rows += rows;
        Ok(())
    }
}

/// A digitally quantized projection: RTN weights (`afm quantize`) and a static input quantizer.
#[derive(Debug)]
pub struct QuantProjection {
    /// The dequantized weight, out x in.
    pub weight: Tensor,
    /// Optional bias.
    pub bias: Option<Tensor>,
    /// Static input quantization (none: inputs stay in the compute dtype).
    pub input: Option<crate::quant::input::StaticInput>,
}

impl Projection {
    /// A digital projection.
    pub fn digital(weight: Tensor, bias: Option<Tensor>) -> Self {
        Projection::Digital { weight, bias }
    }

    /// A copy of a digital projection (its tensors are shared); an analog one is refused, since
    /// a programmed chip is not copied but programmed again.
    pub fn clone_digital(&self, name: &str) -> Result<Self> {
        match self {
            Projection::Digital { weight, bias } => Ok(Projection::Digital {
                weight: weight.clone(),
                bias: bias.clone(),
            }),
            Projection::Analog(_)
            | Projection::Train(_)
            | Projection::Quant(_)
            | Projection::Probe(_) => Err(crate::Error::Value(format!(
                "projection `{name}` is analog, quantized or a probe; load the digital model \
                 again instead"
            ))),
        }
    }

    /// Forgets the run state of an analog projection: the MVM counter that numbers its per-MVM
    /// noise draws and, with `clear_ranges`, its calibrated input ranges. Evaluating a task
    /// after a reset gives the same numbers whatever ran before it on the same chip.
    pub fn reset(&self, clear_ranges: bool) {
        if let Projection::Analog(a) = self {
            a.calls.store(0, Ordering::Relaxed);
            if clear_ranges {
                if let Ok(mut r) = a.ranges.write() {
                    r.clear();
                }
            }
        }
    }

    /// Sets how an analog projection calibrates its empty ranges (default: abs-max).
    pub fn set_calibration(&self, rule: Calibration) {
        if let Projection::Analog(a) = self {
            if let Ok(mut c) = a.calib.write() {
                *c = rule;
            }
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            Projection::Digital { weight, .. } => weight.dims()[0],
            Projection::Analog(a) => a.layer.out_features(),
            Projection::Train(t) => t.weight.as_tensor().dims()[0],
            Projection::Quant(q) => q.weight.dims()[0],
            Projection::Probe(p) => p.weight.dims()[0],
        }
    }

    /// Programs this projection onto tiles of `preset` for chip `seed`, placed by `place` (an
    /// isolated head block, weight clipping; the default: the plain split, nothing clipped).
    pub fn to_analog(
        &self,
        preset: &TilePreset,
        seed: u64,
        name: &str,
        place: Placement,
    ) -> Result<Self> {
        match self {
            Projection::Digital { weight, bias } => {
                let (out, inp) = weight.dims2()?;
                let w = weight
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let layer = AnalogLayer::program_placed(&w, out, inp, place, preset, seed, name)?;
                Ok(Projection::Analog(Box::new(AnalogProjection {
                    layer,
                    ranges: RwLock::new(Vec::new()),
                    bias: bias.clone(),
                    calls: AtomicU64::new(0),
                    calib: RwLock::new(Calibration::AbsMax),
                })))
            }
            Projection::Analog(_) | Projection::Train(_) => Err(crate::Error::Value(format!(
                "projection `{name}` is already analog"
            ))),
            Projection::Probe(_) => Err(crate::Error::Value(format!(
                "projection `{name}` is a calibration probe; load the digital model again"
            ))),
            Projection::Quant(_) => Err(crate::Error::Value(format!(
                "projection `{name}` is quantized for a digital chip; put the model it came \
                 from on tiles instead"
            ))),
        }
    }

    /// Applies the projection to x (..., in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Digital { weight, bias } => matmul(x, weight, bias.as_ref()),
            Projection::Quant(q) => match &q.input {
                Some(input) => matmul(&input.forward(x)?, &q.weight, q.bias.as_ref()),
                None => matmul(x, &q.weight, q.bias.as_ref()),
            },
            Projection::Analog(a) => {
                let dtype = x.dtype();
                let x32 = x.to_dtype(DType::F32)?;
                if a.ranges.read().map(|r| r.is_empty()).unwrap_or(true) {
                    let blocks = a.layer.blocks.iter().map(|b| (b.start, b.len));
                    let rule = a.calib.read().map(|c| *c).unwrap_or_default();
                    let ranges = match rule {
                        Calibration::AbsMax => block_abs_max(&x32, blocks)?,
                        Calibration::Kappa(kappa) => block_std(&x32, blocks)?
                            .into_iter()
                            .map(|s| (s * kappa).max(1e-6))
                            .collect(),
                        Calibration::Mse => {
                            let abs_max = block_abs_max(&x32, blocks)?;
                            let n_in = a.layer.in_features();
                            let flat = x32.flatten_all()?.to_vec1::<f32>()?;
                            let tokens = flat.len() / n_in.max(1);
                            crate::tile::calibrate::mse_ranges(&a.layer, &flat, tokens, &abs_max)
                        }
                    };
                    if let Ok(mut w) = a.ranges.write() {
                        if w.is_empty() {
                            *w = ranges;
                        }
                    }
                }
                let ranges = a.ranges.read().map(|r| r.clone()).unwrap_or_default();
                let call = a.calls.fetch_add(1, Ordering::Relaxed);
                let y = a.layer.forward(&x32, &ranges, call)?;
                let y = match &a.bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
                    None => y,
                };
                Ok(y.to_dtype(dtype)?)
            }
            Projection::Train(t) => Ok(t.forward(x)?.to_dtype(x.dtype())?),
            Projection::Probe(p) => {
                let n_in = *x.dims().last().unwrap_or(&0);
                p.stats
                    .lock()
                    .map_err(|_| crate::Error::Value("probe statistics lock poisoned".into()))?
                    .add(&x.to_dtype(DType::F32)?.reshape(((), n_in))?)?;
                matmul(x, &p.weight, p.bias.as_ref())
            }
        }
    }
}

/// x (..., in) W^T (+ b).
fn matmul(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (lead, n_in) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let x2 = x.reshape((rows, n_in[0]))?;
    let few = rows <= super::few_rows::MAX_ROWS
        && x.device().is_cpu()
        && (x.dtype(), weight.dtype()) == (DType::F32, DType::F32)
        && !(x.track_op() || weight.track_op());
    let y = if few {
        // Decoding: a few rows; see `few_rows` for why not candle's matmul.
        let (n, k) = weight.dims2()?;
        let xs = x2.flatten_all()?.to_vec1::<f32>()?;
        let w = weight.contiguous()?.flatten_all()?;
        let (w, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            unreachable!("checked to be on the CPU")
        };
        let at = layout.start_offset();
        let w = &w.as_slice::<f32>()?[at..at + n * k];
        Tensor::from_vec(
            super::few_rows::product(&xs, rows, w, n, k),
            (rows, n),
            x.device(),
        )?
    } else {
        x2.matmul(&weight.t()?)?
    };
    let mut shape = lead.to_vec();
    shape.push(weight.dims()[0]);
    let y = y.reshape(shape)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `f` of each block (start, len) of the inputs of x (..., in), given that block's slice of
/// every row.
fn per_block<T>(
    x: &Tensor,
    blocks: impl Iterator<Item = (usize, usize)>,
    f: impl Fn(&[&[f32]]) -> T,
) -> Result<Vec<T>> {
    let n_in = *x.dims().last().unwrap_or(&0);
    let flat = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(blocks
        .map(|(start, len)| {
            let rows: Vec<&[f32]> = flat
                .chunks(n_in.max(1))
                .map(|r| &r[start..start + len])
                .collect();
            f(&rows)
        })
        .collect())
}

/// The abs-max of x (..., in) over each block (start, len) of its inputs, at least 1e-6: the
/// static input ranges that a calibration batch sets.
pub fn block_abs_max(x: &Tensor, blocks: impl Iterator<Item = (usize, usize)>) -> Result<Vec<f32>> {
    per_block(x, blocks, |rows| {
        rows.iter()
            .flat_map(|r| r.iter())
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-6)
    })
}

/// The sample std (n - 1) of x (..., in) over each block (start, len) of its inputs, all rows
/// together, as the training layer's range initialization takes it (0 for fewer than 2 values).
pub fn block_std(x: &Tensor, blocks: impl Iterator<Item = (usize, usize)>) -> Result<Vec<f32>> {
    per_block(x, blocks, |rows| {
        let vals = || rows.iter().flat_map(|r| r.iter()).map(|&v| f64::from(v));
        let n = rows.iter().map(|r| r.len()).sum::<usize>();
        if n < 2 {
            return 0.0;
        }
        let mean = vals().sum::<f64>() / n as f64;
        let var = vals().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        var.sqrt() as f32
    })
}

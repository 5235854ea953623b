//! The analog training layer (DESIGN §3.4, aihwkit-lightning's `TorchLinear` semantics): per row
//! block of at most `tile_rows` inputs, a learned static input range clips the inputs and an
//! 8-bit DAC quantizes them; the weights get per-channel Gaussian noise every training forward;
//! the block's output is quantized by an ADC whose bound is lambda * w_max[c] * range and
//! clamped to it; the blocks' outputs add up.
//!
//! The rounding is straight-through; the input ranges start from the data (a running mean of
//! kappa * std over the first batches) and then learn by the AFM gradient (see `ops`).

use super::fused::{self, inv_states, Blocks, ClipCount, LayerSpec};
use super::ops::{AdcStage, InputStage};
use super::range_search;
use crate::error::{Error, Result};
use crate::rng::{name_hash, Effect, StreamKey};
use crate::tile::mapping::split_with_head;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The hardware-aware training settings (DESIGN §3.4; defaults are the AFM release values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalogTrainConfig {
    /// Inputs per row block (tile rows) [512].
    pub tile_rows: usize,
    /// DAC bits (0: inputs exact) [8].
    pub dac_bits: u32,
    /// ADC bits (0: outputs exact) [8].
    pub adc_bits: u32,
    /// ADC bound lambda, in units of w_max * input range (0: no bound) [14].
    pub out_bound: f64,
    /// Per-channel weight noise, relative to the channel's max |w| (training only) [0.03].
    /// With `weight_noise_shape = "pcm"` it scales the chips' noise instead (1.0: the same).
    pub weight_noise: f64,
    /// How the weight noise's std depends on the weight [flat: `weight_noise` x the max |w| of
    /// the channel's row block, as the release recipe]. `pcm`: the `pcm-afm` programming noise
    /// of the `afm-paper` chips (the AFM paper's fit, `device::afm_sigma`, with the block
    /// channel's max |w| at 180 units), times `weight_noise`: 1.4% of the max at w = 0, 10.7% at
    /// the max (rms 3.97% of the max over SmolLM2's weights), where flat noise gives every weight
    /// the same std.
    pub weight_noise_shape: NoiseShape,
    /// Output noise relative to w_max * range / sqrt(blocks) (training only) [0].
    pub out_noise: f64,
    /// Weight clipping after every step at alpha * std of the channel (0: off) [2.5].
    pub clip_alpha: f64,
    /// Alpha of the first step when clipping ramps down to `clip_alpha` (0: no ramp) [0]: a
    /// model with heavy-tailed rows loses its large weights at once at the release alpha (our
    /// SmolLM2 runs), a gradual ramp lets training follow.
    pub clip_alpha_start: f64,
    /// Steps over which alpha goes linearly from `clip_alpha_start` to `clip_alpha` [0].
    pub clip_ramp_steps: usize,
    /// Batches whose input std initializes the ranges [500].
    pub range_init_batches: usize,
    /// kappa: initial range = kappa * std of the inputs [18].
    pub range_init_kappa: f64,
    /// Initialize each range on the first training batch by the least-output-error rule of
    /// `afm eval --calib-mse` (abs-max / 2^(k/2), k < 13, against the exact product with the
    /// weights, no noise) instead of the kappa * std running mean; the window of
    /// `range_init_batches` then ends after that batch [false: the release's kappa rule].
    pub range_init_mse: bool,
    /// Range decay [0.01].
    pub range_decay: f64,
    /// Share of inputs inside the range above which the decay acts [0.95].
    pub range_min_inside: f64,
    /// Fake-quantized weights for quantization-aware training (0: off) [0]: symmetric
    /// round-to-nearest per output channel as `afm quantize --per-channel` does it, with a
    /// straight-through gradient (LLM-QAT style); `afm train --mode qat-w4a8` sets 4.
    pub weight_bits: u32,
    /// Activation smoothing before training (0: off) [0]: input column i of every projection
    /// is divided by max|x_i|^alpha / max|w_i|^(1 - alpha) and its weight column multiplied by
    /// it, the division folded into the norm gain or the projection before (see
    /// `train::smooth`), so that one DAC range per row block need not cover outlier columns.
    pub smooth_alpha: f64,
    /// Rotate the residual stream and each head's values before training [false]: an orthogonal
    /// matrix from the run's seed, folded into the weights with the norm gains (exact up to
    /// rounding; `train::rotate`), so that the projections reading the stream and o_proj see
    /// no outlier channels and a tighter range serves every input.
    pub rotate: bool,
    /// Training batches whose inputs give the smoothing and outlier statistics [8].
    pub smooth_batches: usize,
    /// down_proj's inputs with the largest |x| over the statistics batches that get a row block
    /// of their own (0: off) [0]: the MLP's intermediate channels are permuted so that they
    /// come first (exact; `train::outliers`), and that block has its own range and ADC bound.
    /// Its own tiles on a chip; the other blocks need not cover the outliers.
    pub isolate_outliers: usize,
    /// With `isolate_outliers` as the cap, each layer isolates the fewest of its largest
    /// inputs that leave none above `range_init_kappa` x the rms of the rest (what a kappa
    /// range would clip) [false: every layer isolates `isolate_outliers`].
    pub isolate_auto: bool,
    /// Residual-stream channels with the largest inputs (relative to their projection's input
    /// rms) over the statistics batches that get a row block of their own in every projection
    /// reading the stream: q/k/v, gate/up, lm_head (0: off) [0]. The whole stream is permuted
    /// (exact up to rounding; `train::outliers::isolate_residual_outliers`).
    pub isolate_residual: usize,
    /// Gradient through the ADC bound lambda * w_max[c] * range [false: lightning detaches the
    /// bound]. On, the bound gets the straight-through step-size gradient of LSQ (Esser et al.,
    /// ICLR 2020): (q - y) / bound inside, the sign of y where clamped; it reaches the range and
    /// the channel's largest |w|, so training can trade input clipping and large weights
    /// against ADC resolution per row block (the limit our SmolLM2 runs measured).
    pub adc_bound_grad: bool,
}

/// How the training weight noise's std depends on the weight (see
/// [`AnalogTrainConfig::weight_noise_shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseShape {
    /// The same std for every weight of a channel's row block.
    #[default]
    Flat,
    /// The `pcm-afm` programming noise's std as a function of |w|.
    Pcm,
}

impl NoiseShape {
    /// The noise std of a weight whose |w| is `r` times its block channel's max, relative to
    /// that max (before the `weight_noise` factor). The fused CUDA kernel has the same function
    /// (`noise_rel` in kernels/analog_train.cu); the CUDA tests compare them.
    pub fn rel_std(self, r: f32) -> f32 {
        match self {
            NoiseShape::Flat => 1.0,
            NoiseShape::Pcm => {
                (crate::device::afm_sigma(f64::from(r.clamp(0.0, 1.0)) * PCM_W_MAX) / PCM_W_MAX)
                    as f32
            }
        }
    }
}

/// [`NoiseShape::rel_std`] of every weight of a block, `ws` (out, len) with its channels' max
/// |w| `wmax` (out, 1), element by element on the host: the reference path's obvious version.
fn noise_shape_of(ws: &Tensor, wmax: &Tensor, shape: NoiseShape) -> Result<Tensor> {
    let w = ws.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let m = wmax.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let rel: Vec<f32> = w
        .iter()
        .zip(&m)
        .flat_map(|(row, m)| {
            row.iter()
                .map(move |v| shape.rel_std(if m[0] > 0.0 { v.abs() / m[0] } else { 0.0 }))
        })
        .collect();
    Ok(Tensor::from_vec(rel, ws.dims(), ws.device())?.to_dtype(ws.dtype())?)
}

/// The weight, in the AFM paper's units, that a block channel's max |w| is programmed at
/// (`device::afm_sigma` is fitted on [0, 180]).
const PCM_W_MAX: f64 = 180.0;

impl Default for AnalogTrainConfig {
    fn default() -> Self {
        AnalogTrainConfig {
            tile_rows: 512,
            dac_bits: 8,
            adc_bits: 8,
            out_bound: 14.0,
            weight_noise: 0.03,
            weight_noise_shape: NoiseShape::Flat,
            out_noise: 0.0,
            clip_alpha: 2.5,
            clip_alpha_start: 0.0,
            clip_ramp_steps: 0,
            range_init_batches: 500,
            range_init_kappa: 18.0,
            range_init_mse: false,
            range_decay: 0.01,
            range_min_inside: 0.95,
            weight_bits: 0,
            smooth_alpha: 0.0,
            rotate: false,
            smooth_batches: 8,
            isolate_outliers: 0,
            isolate_auto: false,
            isolate_residual: 0,
            adc_bound_grad: false,
        }
    }
}

impl AnalogTrainConfig {
    /// Checks every value; `field` errors name the offending field.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((f.to_string(), m));
        if self.tile_rows == 0 {
            return bad("tile_rows", "must be >= 1".into());
        }
        for (f, b) in [("dac_bits", self.dac_bits), ("adc_bits", self.adc_bits)] {
            if !(b == 0 || (2..=16).contains(&b)) {
                return bad(f, format!("must be 0 (off) or 2..=16, got {b}"));
            }
        }
        if !(self.weight_bits == 0 || (2..=8).contains(&self.weight_bits)) {
            return bad(
                "weight_bits",
                format!("must be 0 (off) or 2..=8, got {}", self.weight_bits),
            );
        }
        for (f, v) in [
            ("out_bound", self.out_bound),
            ("weight_noise", self.weight_noise),
            ("out_noise", self.out_noise),
            ("clip_alpha", self.clip_alpha),
            ("clip_alpha_start", self.clip_alpha_start),
            ("range_init_kappa", self.range_init_kappa),
            ("range_decay", self.range_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(f, format!("must be a finite number >= 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.smooth_alpha) {
            return bad("smooth_alpha", "must be in 0..=1 (0: off)".into());
        }
        let isolating = self.isolate_outliers > 0 || self.isolate_residual > 0;
        if (self.smooth_alpha > 0.0 || isolating) && self.smooth_batches == 0 {
            return bad(
                "smooth_batches",
                "must be >= 1 when smoothing or isolating outliers".into(),
            );
        }
        if self.isolate_auto && self.isolate_outliers == 0 {
            return bad(
                "isolate_auto",
                "needs isolate_outliers >= 1 (the most inputs a layer isolates)".into(),
            );
        }
        for (field, k) in [
            ("isolate_outliers", self.isolate_outliers),
            ("isolate_residual", self.isolate_residual),
        ] {
            if k > self.tile_rows {
                return bad(
                    field,
                    format!(
                        "{k} inputs do not fit one row block of tile_rows = {}",
                        self.tile_rows
                    ),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.range_min_inside) {
            return bad("range_min_inside", "must be in 0..=1".into());
        }
        if self.clip_alpha_start > 0.0 && (self.clip_alpha == 0.0 || self.clip_ramp_steps == 0) {
            return bad(
                "clip_alpha_start",
                "a ramp needs clip_alpha > 0 (where it ends) and clip_ramp_steps >= 1".into(),
            );
        }
        if self.adc_bits > 0 && self.out_bound == 0.0 {
            return bad("out_bound", "must be > 0 when adc_bits > 0".into());
        }
        if self.range_init_mse && self.range_init_batches == 0 {
            return bad(
                "range_init_mse",
                "needs range_init_batches >= 1 (the search runs on the first batch)".into(),
            );
        }
        Ok(())
    }

    /// Clipping alpha after optimizer step `step` (1-based): the ramp, then `clip_alpha`.
    pub fn clip_alpha_at(&self, step: usize) -> f64 {
        if self.clip_alpha_start <= 0.0 || step >= self.clip_ramp_steps || self.clip_ramp_steps < 2
        {
            return self.clip_alpha;
        }
        let f = step.saturating_sub(1) as f64 / (self.clip_ramp_steps - 1) as f64;
        self.clip_alpha_start + (self.clip_alpha - self.clip_alpha_start) * f
    }

    /// Whether the input ranges are in use: a DAC, an ADC bound or their data initialization.
    fn ranges_used(&self) -> bool {
        self.dac_bits > 0 || self.out_bound > 0.0 || self.range_init_batches > 0
    }

    /// Quantization states of `bits` (lightning's 2^bits - 2: levels -(2^(b-1)-1)..2^(b-1)-1).
    pub(crate) fn states(bits: u32) -> f64 {
        (1u64 << bits) as f64 - 2.0
    }
}

/// Per-layer run state: training or not, the forward counter (numbers the noise draws), and how
/// many batches have initialized each range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerState {
    /// Training forward (noise on, ranges initialize from data).
    pub training: bool,
    /// Forwards so far (the noise stream index).
    pub calls: u64,
    /// Batches seen by each range's initialization.
    pub seen: Vec<usize>,
    /// Row blocks whose range is known to be positive (active), so the host need not read
    /// the range back on every forward.
    #[serde(skip)]
    pub active: Vec<bool>,
}

/// One analog training projection y = x W^T (+ b).
#[derive(Debug)]
pub struct AnalogTrainLinear {
    /// Weight (out, in), trained.
    pub weight: Var,
    /// Optional bias, trained.
    pub bias: Option<Var>,
    /// Input range per row block, trained.
    pub ranges: Var,
    /// Row blocks (start, length) over the inputs.
    pub blocks: Vec<(usize, usize)>,
    /// Inputs of the first row block when they sit in a block of their own (isolated
    /// outliers; 0: the plain split).
    pub head: usize,
    /// Settings.
    pub cfg: AnalogTrainConfig,
    /// Seed of the noise streams.
    pub seed: u64,
    /// Layer name (names its noise streams).
    pub name: String,
    /// Run state.
    pub state: Mutex<LayerState>,
    /// Dtype of the fused forward's products and stages (f32; bf16 or f16 on CUDA), the
    /// master weights and ranges staying f32.
    pub compute: DType,
    /// Run the plain-tensor reference forward instead of the fused one (slow; for checks).
    pub reference: bool,
    /// (clipped inputs, inputs) of the training forwards since the last
    /// [`AnalogTrainLinear::take_clip_stats`], summed on the device.
    clip_stats: Mutex<Option<(Tensor, usize)>>,
}

impl AnalogTrainLinear {
    /// A training layer from a weight (out, in); ranges start at 0 until data initialize them.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: &AnalogTrainConfig,
        seed: u64,
        name: &str,
    ) -> Result<Self> {
        Self::with_head(weight, bias, cfg, seed, name, 0)
    }

    /// [`AnalogTrainLinear::new`] with the first `head` inputs in a row block of their own.
    pub fn with_head(
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: &AnalogTrainConfig,
        seed: u64,
        name: &str,
        head: usize,
    ) -> Result<Self> {
        let (_, n_in) = weight.dims2()?;
        if head > cfg.tile_rows {
            return Err(Error::Value(format!(
                "layer `{name}`: an isolated block of {head} inputs on tiles of {} rows",
                cfg.tile_rows
            )));
        }
        let head = if head >= n_in { 0 } else { head };
        let blocks = split_with_head(n_in, head, cfg.tile_rows);
        let dev = weight.device();
        Ok(AnalogTrainLinear {
            weight: Var::from_tensor(&weight.to_dtype(DType::F32)?)?,
            bias: match bias {
                Some(b) => Some(Var::from_tensor(&b.to_dtype(DType::F32)?)?),
                None => None,
            },
            ranges: Var::from_tensor(&Tensor::zeros(blocks.len(), DType::F32, dev)?)?,
            state: Mutex::new(LayerState {
                training: false,
                calls: 0,
                seen: vec![0; blocks.len()],
                active: vec![false; blocks.len()],
            }),
            clip_stats: Mutex::new(None),
            compute: DType::F32,
            reference: false,
            blocks,
            head,
            cfg: cfg.clone(),
            seed,
            name: name.to_string(),
        })
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, LayerState>> {
        self.state
            .lock()
            .map_err(|_| Error::Value(format!("layer `{}`: state lock poisoned", self.name)))
    }

    /// Standard normals of `shape` for forward `call`, effect `effect`, block `block`: the
    /// counter-based stream the fused CUDA kernels draw from too, made on the host.
    fn normals(
        &self,
        shape: (usize, usize),
        call: u64,
        block: usize,
        effect: Effect,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut v = vec![0f32; shape.0 * shape.1];
        StreamKey::new(self.seed, name_hash(&self.name), block as u64, effect)
            .fill_normal_at(call, 0, &mut v);
        Ok(Tensor::from_vec(v, shape, dev)?)
    }

    /// Updates range `s` from the std of its inputs during the initialization window: the
    /// running mean of kappa * std (n - 1), computed on the device. lightning skips a batch whose
    /// std is 0; here such a batch leaves the range as it is but still counts.
    /// With `range_init_mse`, the first batch sets the range by the output-error search over
    /// the block's weights `ws` (out, len) and closes the window.
    fn init_range(&self, s: usize, xs: &Tensor, ws: &Tensor, state: &mut LayerState) -> Result<()> {
        if state.seen[s] >= self.cfg.range_init_batches {
            return Ok(());
        }
        let n = xs.elem_count();
        if n < 2 {
            return Ok(());
        }
        if self.cfg.range_init_mse {
            let ws = ws.detach().to_dtype(DType::F32)?.contiguous()?;
            if let Some(r) = range_search::mse_range(xs, &ws, &self.cfg)? {
                self.set_range(s, &Tensor::new(&[r], xs.device())?)?;
            }
            state.seen[s] = self.cfg.range_init_batches;
            return Ok(());
        }
        let mean = (total(xs)? / n as f64)?;
        let var = (total(&xs.broadcast_sub(&mean)?.sqr()?)? / (n as f64 - 1.0))?;
        let std = var.sqrt()?.reshape(1)?;
        let old = self.ranges.as_tensor().narrow(0, s, 1)?;
        let k = state.seen[s] as f64;
        let new = (((&old * k)? + (&std * self.cfg.range_init_kappa)?)? / (k + 1.0))?.abs()?;
        let zero = std.eq(&Tensor::zeros(1, DType::F32, std.device())?)?;
        self.set_range(s, &zero.where_cond(&old, &new)?)?;
        state.seen[s] += 1;
        Ok(())
    }

    /// Sets range `s` to the one-element tensor `r` (on the ranges' device).
    fn set_range(&self, s: usize, r: &Tensor) -> Result<()> {
        let block = s..s + 1;
        let all = self.ranges.as_tensor();
        self.ranges
            .set(&all.slice_assign(std::slice::from_ref(&block), r)?)?;
        Ok(())
    }

    /// Whether the input stage of row block `s` runs: the ranges are in use (DAC, ADC bound or
    /// data initialization configured) and range `s` is positive (read from the device until
    /// it first is).
    fn block_active(&self, s: usize, state: &mut LayerState) -> Result<bool> {
        if !self.cfg.ranges_used() {
            return Ok(false);
        }
        if state.active.len() != self.blocks.len() {
            state.active = vec![false; self.blocks.len()];
        }
        if !state.active[s] {
            state.active[s] = self.ranges.as_tensor().narrow(0, s, 1)?.to_scalar_like()? > 0.0;
        }
        Ok(state.active[s])
    }

    /// Whether some input range of this layer is still in its data initialization window.
    pub fn initializing(&self) -> Result<bool> {
        let n = self.cfg.range_init_batches;
        Ok(self.state()?.seen.iter().any(|&k| k < n))
    }

    /// Share of inputs clipped by the ranges in the training forwards since the last call (and
    /// how many inputs), as a device scalar; resets the count.
    pub fn take_clip_stats(&self) -> Result<Option<(Tensor, usize)>> {
        Ok(self.clip_stats_lock()?.take())
    }

    /// Applies the layer to x (..., in): the fused ops (one batched product over all row
    /// blocks) on any device, the plain-tensor reference where the fused path lacks a feature
    /// (output noise).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.reference || self.cfg.out_noise > 0.0 {
            return self.forward_reference(x);
        }
        self.forward_fused(x)
    }

    fn weight_used(&self) -> Result<Tensor> {
        Ok(if self.cfg.weight_bits > 0 {
            fake_quant_weight(self.weight.as_tensor(), self.cfg.weight_bits)?
        } else {
            self.weight.as_tensor().clone()
        })
    }

    /// Adds `n` clipped inputs (a device scalar) out of `k` to the training statistics.
    fn add_clip_stats(&self, n: Tensor, k: usize) -> Result<()> {
        let mut acc = self.clip_stats_lock()?;
        *acc = Some(match acc.take() {
            Some((c, k0)) => ((c + n)?, k0 + k),
            None => (n, k),
        });
        Ok(())
    }

    /// The fused forward (see `train::fused`): DAC into padded row blocks, noisy blocked weights,
    /// one batched product, ADC and the sum over blocks; computes in `self.compute` (f32, or
    /// bf16/f16 on CUDA, the master weights staying f32).
    pub fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let dims = x.dims().to_vec();
        let (lead, n_in) = dims.split_at(dims.len() - 1);
        let tokens: usize = lead.iter().product();
        let x = x
            .reshape((tokens, n_in[0]))?
            .to_dtype(self.compute)?
            .contiguous()?;
        let (spec, w, counted) = self.prepare(&x)?;
        let out_f = w.dims()[0];
        let mut y = fused::forward(&spec, &x, &w, self.ranges.as_tensor())?;
        self.record_clips(&spec, counted)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.as_tensor().to_dtype(self.compute)?)?;
        }
        let mut shape = lead.to_vec();
        shape.push(out_f);
        Ok(y.reshape(shape)?.to_dtype(dtype)?)
    }

    /// One fused forward pass over x (tokens, in) without autograd, bias excluded: its value
    /// and, from an upstream gradient, the gradients of x, W and the ranges (benchmarks; the
    /// same state updates as [`AnalogTrainLinear::forward`]).
    pub fn pass(&self, x: &Tensor) -> Result<fused::LayerPass> {
        let x = x.to_dtype(self.compute)?.contiguous()?;
        let (spec, w, counted) = self.prepare(&x)?;
        let pass = fused::LayerPass::new(&spec, &x, &w, self.ranges.as_tensor())?;
        self.record_clips(&spec, counted)?;
        Ok(pass)
    }

    /// Keeps the running total that the fused DAC left (its count of the `counted` inputs
    /// added to the total `prepare` gave it).
    fn record_clips(&self, spec: &LayerSpec, counted: usize) -> Result<()> {
        if let Some(c) = &spec.clips {
            let total = c.total.take()?;
            let mut acc = self.clip_stats_lock()?;
            let k0 = acc.as_ref().map_or(0, |(_, k)| *k);
            *acc = Some((total, k0 + counted));
        }
        Ok(())
    }

    fn clip_stats_lock(&self) -> Result<std::sync::MutexGuard<'_, Option<(Tensor, usize)>>> {
        self.clip_stats
            .lock()
            .map_err(|_| Error::Value(format!("layer `{}`: lock poisoned", self.name)))
    }

    /// The state updates of one fused forward over x (tokens, in) (forward counter, range
    /// initialization), its settings and weight, and how many inputs the DAC counts clips among
    /// (0: none; then `spec.clips` is None).
    fn prepare(&self, x: &Tensor) -> Result<(LayerSpec, Tensor, usize)> {
        let g = Blocks::with_head(x.dims()[1], self.cfg.tile_rows, self.head);
        let mut state = self.state()?;
        let (training, call) = (state.training, state.calls);
        state.calls += 1;
        let used = self.cfg.ranges_used();
        let w = self.weight_used()?;
        let mut counted = 0;
        if training {
            for (s, &(start, len)) in self.blocks.iter().enumerate() {
                if state
                    .seen
                    .get(s)
                    .is_some_and(|&k| k < self.cfg.range_init_batches)
                {
                    let xs = x.narrow(1, start, len)?.detach().to_dtype(DType::F32)?;
                    let ws = w.narrow(1, start, len)?;
                    self.init_range(s, &xs.contiguous()?, &ws, &mut state)?;
                }
                if self.block_active(s, &mut state)? {
                    counted += x.dims()[0] * len;
                }
            }
        }
        let spec = LayerSpec {
            blocks: g,
            used,
            dac: inv_states(self.cfg.dac_bits),
            adc: inv_states(self.cfg.adc_bits),
            out_bound: self.cfg.out_bound,
            decay: self.cfg.range_decay as f32,
            min_inside: self.cfg.range_min_inside as f32,
            gamma: if training {
                self.cfg.weight_noise as f32
            } else {
                0.0
            },
            noise_shape: self.cfg.weight_noise_shape,
            seed: self.seed,
            layer: name_hash(&self.name),
            call,
            compute: self.compute,
            bound_grad: self.cfg.adc_bound_grad,
            clips: match counted {
                0 => None,
                _ => Some(ClipCount {
                    prev: self.clip_stats_lock()?.as_ref().map(|(c, _)| c.clone()),
                    total: Default::default(),
                }),
            },
        };
        Ok((spec, w, counted))
    }

    /// The plain-tensor layer, block by block (the slow, obvious reference of the fused path;
    /// also the path with output noise).
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, n_in) = dims.split_at(dims.len() - 1);
        let tokens: usize = lead.iter().product();
        let x = x.reshape((tokens, n_in[0]))?.to_dtype(DType::F32)?;
        let mut state = self.state()?;
        let (training, call) = (state.training, state.calls);
        state.calls += 1;
        let w = &self.weight_used()?;
        let out_f = w.dims()[0];
        let nb = self.blocks.len();
        let mut y: Option<Tensor> = None;
        for (s, &(start, len)) in self.blocks.iter().enumerate() {
            let xs = x.narrow(1, start, len)?.contiguous()?;
            if training {
                self.init_range(s, &xs.detach(), &w.narrow(1, start, len)?, &mut state)?;
            }
            let beta = self.ranges.as_tensor().narrow(0, s, 1)?;
            let bd = beta.detach();
            let mut xin = xs.clone();
            let active = self.block_active(s, &mut state)?;
            if active {
                let mut v = xs
                    .detach()
                    .broadcast_minimum(&bd)?
                    .broadcast_maximum(&bd.neg()?)?;
                if self.cfg.dac_bits > 0 {
                    // lightning's op order: (2 * range) / states.
                    let res = ((&bd * 2.0)? / AnalogTrainConfig::states(self.cfg.dac_bits))?;
                    v = v.broadcast_div(&res)?.round()?.broadcast_mul(&res)?;
                }
                let stage = InputStage {
                    decay: self.cfg.range_decay,
                    min_inside: self.cfg.range_min_inside,
                };
                xin = xs.apply_op3(&beta, &v.contiguous()?, stage)?;
                if training {
                    let n = xs.detach().abs()?.broadcast_ge(&bd)?.to_dtype(DType::F32)?;
                    self.add_clip_stats(total(&n)?, xs.elem_count())?;
                }
            }
            // cuBLAS takes only compact operands: a column block of W is copied out.
            let ws = w.narrow(1, start, len)?.contiguous()?;
            let wmax = ws.abs()?.max_keepdim(1)?;
            let ws = if training && self.cfg.weight_noise > 0.0 {
                let n = self.normals((out_f, len), call, s, Effect::WeightNoise, x.device())?;
                let std = (wmax.detach() * self.cfg.weight_noise)?;
                let n = match self.cfg.weight_noise_shape {
                    NoiseShape::Flat => n.broadcast_mul(&std)?,
                    shape => (n * noise_shape_of(&ws, &wmax, shape)?)?.broadcast_mul(&std)?,
                };
                (&ws + n)?
            } else {
                ws
            };
            let mut ys = xin.matmul(&ws.t()?)?;
            if training && self.cfg.out_noise > 0.0 {
                let n = self.normals((tokens, out_f), call, s, Effect::OutputNoise, x.device())?;
                let scale = (wmax.detach().t()?.broadcast_mul(&bd)?
                    * (self.cfg.out_noise / (nb as f64).sqrt()))?;
                ys = (ys + n.broadcast_mul(&scale)?)?;
            }
            if self.cfg.out_bound > 0.0 && active {
                // lightning's op order: (lambda * w_max) * range, without gradient (its
                // `no_grad` block): neither W nor the range learn through the ADC bound, unless
                // `adc_bound_grad` asks for it.
                let bdt = (wmax.t()? * self.cfg.out_bound)?.broadcast_mul(&beta)?;
                let bdt = if self.cfg.adc_bound_grad {
                    bdt
                } else {
                    bdt.detach()
                };
                let bdd = bdt.detach();
                let mut q = ys.detach();
                if self.cfg.adc_bits > 0 {
                    let res = ((&bdd * 2.0)? / AnalogTrainConfig::states(self.cfg.adc_bits))?;
                    q = q.broadcast_div(&res)?.round()?.broadcast_mul(&res)?;
                }
                let v = q.broadcast_minimum(&bdd)?.broadcast_maximum(&bdd.neg()?)?;
                let stage = AdcStage {
                    q,
                    bound_grad: self.cfg.adc_bound_grad,
                };
                ys = ys.apply_op3(&bdt, &v.contiguous()?, stage)?;
            }
            y = Some(match y {
                Some(acc) => (acc + ys)?,
                None => ys,
            });
        }
        let mut y = y.ok_or_else(|| Error::Value("layer with no inputs".into()))?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b.as_tensor())?;
        }
        let mut shape = lead.to_vec();
        shape.push(out_f);
        Ok(y.reshape(shape)?)
    }

    /// Clips every channel of the weight to `alpha` * its std (after an optimizer step; alpha
    /// from [`AnalogTrainConfig::clip_alpha_at`]; 0: no clipping).
    pub fn clip_weights(&self, alpha: f64) -> Result<()> {
        if alpha <= 0.0 {
            return Ok(());
        }
        Ok(super::step_ops::clip_rows(&self.weight, alpha)?)
    }
}

/// The sum of all elements of a (rows, cols) tensor, row sums first: one GPU thread block per
/// row instead of candle's single block for a whole-tensor sum (milliseconds on large inputs).
fn total(t: &Tensor) -> Result<Tensor> {
    Ok(match t.rank() {
        2 => t.sum(1)?.sum_all()?,
        _ => t.sum_all()?,
    })
}

/// A scalar of a one-element tensor as f32 (for host-side decisions on ranges).
trait ScalarLike {
    fn to_scalar_like(&self) -> Result<f32>;
}

impl ScalarLike for Tensor {
    fn to_scalar_like(&self) -> Result<f32> {
        Ok(self.flatten_all()?.to_vec1::<f32>()?[0])
    }
}

/// W rounded to `bits`-bit symmetric levels per output channel (scale max|w| / (2^(b-1) - 1),
/// as [`crate::quant::rtn::quantize`]) in the forward pass, W itself in the backward pass
/// (straight-through estimator: w + (q - w) with the difference detached).
pub fn fake_quant_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
    let qmax = crate::quant::rtn::max_level(bits) as f64;
    let wd = w.detach();
    let scale = (wd.abs()?.max_keepdim(1)? / qmax)?.maximum(1e-30)?;
    let q = wd
        .broadcast_div(&scale)?
        .round()?
        .clamp(-qmax, qmax)?
        .broadcast_mul(&scale)?;
    Ok((w + (q - &wd)?.detach())?)
}

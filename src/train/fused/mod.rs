//! The analog training layer as a few fused ops around one batched matrix product.
//!
//! The plain-tensor layer (`AnalogTrainLinear::forward_reference`) runs ~30 small tensor ops per
//! row block, each a pass over memory. Here the row blocks are laid out side by side, padded to
//! the longest block, so one strided-batched GEMM computes every block's partial outputs, and
//! each stage around it is one pass: the DAC (clip and round, with its straight-through and
//! range gradients), the noisy weight copy (per-channel Gaussian noise from our counter-based
//! stream, the same bits on CPU and GPU), and the ADC with the sum over blocks. The backward
//! needs no per-block output gradient: straight through the ADC it is the upstream gradient
//! wherever the ADC did not clamp, so two plain products (one g for all blocks) give the
//! gradients, and a correction visits only the tiles where outputs clamped. Every op has a
//! CPU path (`cpu`) and a CUDA path (`cuda`, `kernels/analog_train.cu`); tests hold them to the
//! reference layer.

mod backward;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod lt;
mod pass;
mod product;

pub use backward::{ClampFix, ClampFixPair, DacGradInPlace, DirectGrad, FixTarget};
pub use pass::{forward, LayerPass, LayerSpec};
pub use product::{blocked_product, BlockedProduct};

use crate::rng::{Effect, StreamKey};
use crate::train::layer::NoiseShape;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use std::sync::{Arc, Mutex};

/// How a layer's inputs split into row blocks (as `tile::mapping::split_with_head`: an optional
/// head block of the first `head` inputs, then the rest as `split_sizes` splits it: the first
/// `extra` of those blocks hold `base + 1` inputs, the others `base`), and the padded block
/// length `r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// Inputs of the layer.
    pub n_in: usize,
    /// Row blocks.
    pub nb: usize,
    /// Inputs of the shorter blocks after the head.
    pub base: usize,
    /// Blocks after the head holding one input more than `base`.
    pub extra: usize,
    /// Inputs of the head block (0: none).
    pub head: usize,
    /// Padded block length (the longest block).
    pub r: usize,
}

impl Blocks {
    /// The blocks of `n_in` inputs on tiles of `rows` rows.
    pub fn new(n_in: usize, rows: usize) -> Self {
        Self::with_head(n_in, rows, 0)
    }

    /// The blocks of `n_in` inputs on tiles of `rows` rows, the first `head` in a block of
    /// their own (0, or `head` >= `n_in`: the plain split).
    pub fn with_head(n_in: usize, rows: usize, head: usize) -> Self {
        let head = if head >= n_in { 0 } else { head };
        let rest = n_in - head;
        let nr = rest.div_ceil(rows.max(1)).max(1);
        let (base, extra) = (rest / nr, rest % nr);
        Blocks {
            n_in,
            nb: nr + usize::from(head > 0),
            base,
            extra,
            head,
            r: (base + usize::from(extra > 0)).max(head),
        }
    }

    /// 1 with a head block, else 0: the index of the first block of the plain split.
    fn o(&self) -> usize {
        usize::from(self.head > 0)
    }

    /// First input of block `s`.
    pub fn start(&self, s: usize) -> usize {
        match s.checked_sub(self.o()) {
            Some(t) => self.head + t * self.base + t.min(self.extra),
            None => 0,
        }
    }

    /// Inputs of block `s`.
    pub fn len(&self, s: usize) -> usize {
        match s.checked_sub(self.o()) {
            Some(t) => self.base + usize::from(t < self.extra),
            None => self.head,
        }
    }

    /// Whether every block holds the same number of inputs (no head block, no longer blocks):
    /// then the padded blocks are the inputs themselves, block s at s * r.
    pub fn uniform(&self) -> bool {
        self.head == 0 && self.extra == 0
    }

    /// Whether the layer has no inputs.
    pub fn is_empty(&self) -> bool {
        self.n_in == 0
    }

    /// (block, offset in the block) of input `i`.
    pub fn of(&self, i: usize) -> (usize, usize) {
        if i < self.head {
            return (0, i);
        }
        let k = i - self.head;
        let big = self.extra * (self.base + 1);
        let t = if k < big {
            k / (self.base + 1)
        } else {
            self.extra + (k - big) / self.base
        };
        let s = t + self.o();
        (s, i - self.start(s))
    }
}

/// The stage a [`FusedOp`] computes.
#[derive(Debug, Clone)]
pub enum Stage {
    /// (x (T, n_in), ranges (nb)) -> xb (nb, T, r): clip to the range and round to the DAC's
    /// levels; its gradients come from [`Stage::DacGrad`].
    Dac {
        /// Whether the ranges are in use (a block with range 0 is not yet initialized: exact).
        used: bool,
        /// 1 / (2^bits - 2) of the DAC, None: no rounding.
        inv_states: Option<f32>,
        /// The count of inputs with |x| >= range, over the blocks whose range is in use, taken
        /// in the same pass and added to a running total (training statistics).
        clips: Option<ClipCount>,
        /// Where to leave the same test's bits, u8 (nb, T, ceil(r / 8)) ([`cpu::clip_mask`]):
        /// what [`DacGradInPlace`] visits on the GPU.
        mask: Option<SideOutput>,
    },
    /// (gxb, x, ranges) -> gx (T, n_in), and the gradient of the ranges (nb, f32) into
    /// `ranges_grad`: one pass over gxb and x for both.
    DacGrad {
        /// As in [`Stage::Dac`].
        used: bool,
        /// Range decay.
        decay: f32,
        /// Share of inputs inside above which the decay acts.
        min_inside: f32,
        /// Where the op leaves the ranges' gradient.
        ranges_grad: SideOutput,
    },
    /// w (out, n_in; f32 or the compute dtype) -> wb (nb, out, r) in the compute dtype: w as
    /// that dtype rounds it, plus (wmax * gamma) * normals, with wmax (nb, out, f32) the max |w|
    /// per (block, channel), also left in `wmax`; backward: [`Stage::Unblock`].
    NoisyWeights {
        /// The dtype of wb (the products' inputs).
        compute: DType,
        /// Where the op leaves the max |w| per (block, channel).
        wmax: SideOutput,
        /// Noise relative to the channel's max |w| (0: none).
        gamma: f32,
        /// How the std depends on |w| (times `gamma`).
        shape: NoiseShape,
        /// The noise stream: block s draws from (seed, layer, s, weight noise), sub-stream
        /// `call` (the forward counter).
        seed: u64,
        /// Layer name hash of the stream.
        layer: u64,
        /// Forward counter.
        call: u64,
    },
    /// gwb (nb, out, r) -> gw (out, n_in).
    Unblock,
    /// (yb (nb, T, out), wmax (nb, out), ranges (nb)) -> y (T, out) and the clamp flags,
    /// packed into one vector (T * out + nb * ceil(T / [`FLAG_TILE`]) * ceil(out /
    /// [`FLAG_TILE`])): ADC per block with the bound (wmax * lambda) * range, summed (bound
    /// 0: exact); a flag is 1 where some output of its tile clamps in that block. The bounds
    /// (nb, out, f32) go to `bound`, the clamped outputs to `clamps`. Its gradient is
    /// [`ClampFix`] after two plain products.
    Adc {
        /// 1 / (2^bits - 2) of the ADC, None: no rounding (clamp only).
        inv_states: Option<f32>,
        /// Bound in units of w_max * range (0: no bound, the outputs pass exactly).
        lambda: f32,
        /// Where the op leaves the bounds.
        bound: SideOutput,
        /// Where the op leaves which outputs clamped, u8 (nb, T, ceil(out / 8)): bit c % 8 of
        /// byte (s, t, c / 8) for output c of block s and token t (what [`ClampFix`] reads,
        /// so the backward needs no block outputs).
        clamps: SideOutput,
    },
}

/// The DAC's clipped-input count of [`Stage::Dac`], added on the device to the total of the
/// earlier passes, so a layer's statistics cost no kernel of their own. The count is an exact
/// integer, rounded to f32 once when it is added.
#[derive(Debug, Clone, Default)]
pub struct ClipCount {
    /// The total so far (an f32 scalar on the op's device), None: 0.
    pub prev: Option<Tensor>,
    /// Where the op leaves `prev` plus this pass's count (f32 scalar).
    pub total: SideOutput,
}

/// A second output of a [`FusedOp`] (candle's custom ops return one tensor): the op puts it
/// here and the caller takes it after the op ran.
#[derive(Debug, Clone, Default)]
pub struct SideOutput(Arc<Mutex<Option<Tensor>>>);

impl SideOutput {
    fn put(&self, t: Tensor) -> Result<()> {
        *self.0.lock().map_err(|_| side_poisoned())? = Some(t);
        Ok(())
    }

    /// The tensor the op left, once.
    pub fn take(&self) -> Result<Tensor> {
        self.0
            .lock()
            .map_err(|_| side_poisoned())?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("fused analog op: no side output".into()))
    }
}

fn side_poisoned() -> candle_core::Error {
    candle_core::Error::Msg("fused analog op: side output lock poisoned".into())
}

/// Edge of the square (tokens x channels) tiles of the ADC's clamp flags: the backward
/// corrects the plain products tile by tile where outputs clamped (`FLAG_TILE` in
/// `kernels/adc_sum.cuh`).
pub const FLAG_TILE: usize = 64;

/// Dims of [`Stage::Adc`]'s clamp mask for `nb` blocks, `tokens` and `out` outputs: a bit per
/// output, eight to a byte.
pub(crate) fn clamp_mask_dims(nb: usize, tokens: usize, out: usize) -> (usize, usize, usize) {
    (nb, tokens, out.div_ceil(8))
}

/// One fused stage of the analog training layer over the row blocks `blocks`.
#[derive(Debug, Clone)]
pub struct FusedOp {
    /// The row blocks.
    pub blocks: Blocks,
    /// What it computes.
    pub stage: Stage,
}

/// 1 / (2^bits - 2) for `bits` > 0 (lightning's quantization states).
pub fn inv_states(bits: u32) -> Option<f32> {
    (bits > 0).then(|| (1.0 / ((1u64 << bits) as f64 - 2.0)) as f32)
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::tile::op::cpu_f32s("fused analog op", s, l, what)
}

fn out(v: Vec<f32>, shape: impl Into<Shape>) -> Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(v), shape.into()))
}

impl FusedOp {
    /// Output shape of the stage for its first argument's dims (and the second's, if any).
    fn shape(&self, a: &[usize], b: &[usize]) -> Result<Shape> {
        let g = &self.blocks;
        Ok(match &self.stage {
            Stage::Dac { .. } => (g.nb, a[0], g.r).into(),
            Stage::DacGrad { .. } => b.to_vec().into(),
            Stage::NoisyWeights { .. } => (g.nb, a[0], g.r).into(),
            Stage::Unblock => (a[1], g.n_in).into(),
            Stage::Adc { .. } => {
                let flags = g.nb * a[1].div_ceil(FLAG_TILE) * a[2].div_ceil(FLAG_TILE);
                (a[1] * a[2] + flags).into()
            }
        })
    }
}

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        "afm-fused-analog-1"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.blocks;
        let a = f32s(s, l, "input")?;
        let shape = self.shape(l.dims(), &[])?;
        match &self.stage {
            Stage::NoisyWeights {
                gamma,
                shape: noise,
                seed,
                layer,
                call,
                wmax,
                ..
            } => {
                let out_f = l.dims()[0];
                let keys: Vec<_> = (0..g.nb)
                    .map(|s| {
                        StreamKey::new(*seed, *layer, s as u64, Effect::WeightNoise)
                            .counter_keys(*call)
                    })
                    .collect();
                let m = cpu::block_absmax(a, g, out_f);
                let wb = cpu::noisy_wblocks(a, &m, &keys, g, out_f, *gamma, *noise);
                wmax.put(Tensor::from_vec(
                    m,
                    (g.nb, out_f),
                    &candle_core::Device::Cpu,
                )?)?;
                out(wb, shape)
            }
            Stage::Unblock => out(cpu::unblock_w(a, g, l.dims()[1]), shape),
            s => candle_core::bail!("fused analog op: {s:?} takes more arguments"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(l.dims(), &[])?;
        Ok((cuda::run(self, &[(s, l)], &shape)?, shape))
    }
}

impl CustomOp2 for FusedOp {
    fn name(&self) -> &'static str {
        "afm-fused-analog-2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.blocks;
        let (a, b) = (f32s(s1, l1, "input 1")?, f32s(s2, l2, "input 2")?);
        let shape = self.shape(l1.dims(), l2.dims())?;
        let d = l1.dims();
        match &self.stage {
            Stage::Dac {
                used,
                inv_states,
                clips,
                mask,
            } => {
                if let Some(c) = clips {
                    let prev = match &c.prev {
                        Some(p) => p.to_dtype(DType::F32)?.to_scalar::<f32>()?,
                        None => 0.0,
                    };
                    let n = cpu::clip_count(a, b, g, d[0], *used);
                    c.total
                        .put(Tensor::new(prev + n as f32, &candle_core::Device::Cpu)?)?;
                }
                if let Some(side) = mask {
                    let m = cpu::clip_mask(a, b, g, d[0]);
                    let dims = (g.nb, d[0], g.r.div_ceil(8));
                    side.put(Tensor::from_vec(m, dims, &candle_core::Device::Cpu)?)?;
                }
                out(cpu::dac_fwd(a, b, g, d[0], *inv_states, *used), shape)
            }
            s => candle_core::bail!("fused analog op: {s:?} does not take two arguments"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(l1.dims(), l2.dims())?;
        Ok((cuda::run(self, &[(s1, l1), (s2, l2)], &shape)?, shape))
    }
}

impl CustomOp3 for FusedOp {
    fn name(&self) -> &'static str {
        "afm-fused-analog-3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.blocks;
        let a = f32s(s1, l1, "input 1")?;
        let (b, c) = (f32s(s2, l2, "input 2")?, f32s(s3, l3, "input 3")?);
        let shape = self.shape(l1.dims(), l2.dims())?;
        match &self.stage {
            Stage::DacGrad {
                used,
                decay,
                min_inside,
                ranges_grad,
            } => {
                let tokens = l2.dims()[0];
                let gr = cpu::range_grad(a, b, c, g, tokens, *used, (*decay, *min_inside));
                ranges_grad.put(Tensor::from_vec(gr, g.nb, &candle_core::Device::Cpu)?)?;
                out(cpu::dac_grad_x(a, b, c, g, tokens, *used), shape)
            }
            Stage::Adc {
                inv_states,
                lambda,
                bound,
                clamps,
            } => {
                let d = l1.dims();
                let bd = cpu::adc_bounds(b, c, *lambda);
                let (y, mask) = cpu::adc_sum(a, &bd, d[0], d[1], d[2], *inv_states);
                let dev = candle_core::Device::Cpu;
                bound.put(Tensor::from_vec(bd, l2.dims(), &dev)?)?;
                clamps.put(Tensor::from_vec(
                    mask,
                    clamp_mask_dims(d[0], d[1], d[2]),
                    &dev,
                )?)?;
                out(y, shape)
            }
            s => candle_core::bail!("fused analog op: {s:?} does not take three arguments"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(l1.dims(), l2.dims())?;
        Ok((
            cuda::run(self, &[(s1, l1), (s2, l2), (s3, l3)], &shape)?,
            shape,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Blocks;
    use crate::tile::mapping::split_with_head;

    #[test]
    fn blocks_split_like_the_tile_mapping_and_invert() {
        for n in 1..600 {
            for (rows, head) in [
                (1, 0),
                (3, 0),
                (4, 0),
                (64, 0),
                (100, 0),
                (512, 0),
                (4, 1),
                (64, 3),
                (100, 100),
                (512, 16),
            ] {
                let g = Blocks::with_head(n, rows, head);
                let parts = split_with_head(n, head, rows);
                assert_eq!(g.nb, parts.len(), "{n} {rows}");
                for (s, &(start, len)) in parts.iter().enumerate() {
                    assert_eq!(
                        (g.start(s), g.len(s)),
                        (start, len),
                        "{n} {rows} {head} {s}"
                    );
                    assert!(len <= g.r);
                    for j in 0..len {
                        assert_eq!(g.of(start + j), (s, j));
                    }
                }
            }
        }
    }
}

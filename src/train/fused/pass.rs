//! One forward pass of the whole fused layer ([`LayerPass`]) and its backward: the stages of
//! [`super::Stage`] in order around the products, kept together as one autograd node.

use super::{
    Blocks, ClampFix, ClampFixPair, ClipCount, DacGradInPlace, DirectGrad, FixTarget, FusedOp,
    SideOutput, Stage,
};
use crate::train::layer::NoiseShape;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Settings of one fused forward of the analog layer.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Row blocks of the inputs.
    pub blocks: Blocks,
    /// Whether the input ranges are in use (see [`Stage::Dac`]).
    pub used: bool,
    /// DAC: 1 / (2^bits - 2), None: inputs exact.
    pub dac: Option<f32>,
    /// ADC: 1 / (2^bits - 2), None: no rounding.
    pub adc: Option<f32>,
    /// ADC bound lambda in units of w_max * range (0: no ADC at all).
    pub out_bound: f64,
    /// Range decay.
    pub decay: f32,
    /// Share of inputs inside above which the decay acts.
    pub min_inside: f32,
    /// Weight noise relative to the channel's max |w| (0: none).
    pub gamma: f32,
    /// How the weight noise's std depends on |w|.
    pub noise_shape: NoiseShape,
    /// Noise stream seed.
    pub seed: u64,
    /// Noise stream layer hash.
    pub layer: u64,
    /// Forward counter (noise sub-stream).
    pub call: u64,
    /// Compute dtype of the stages and products.
    pub compute: DType,
    /// Whether the ADC bound passes a gradient to the ranges and the channels' max |w| (see
    /// `AnalogTrainConfig::adc_bound_grad`).
    pub bound_grad: bool,
    /// The DAC's clipped-input count and the total it adds to (see [`Stage::Dac`]), None: not
    /// counted.
    pub clips: Option<ClipCount>,
}

/// What the layer's forward keeps for its backward.
#[derive(Debug)]
struct Saved {
    spec: LayerSpec,
    x: Tensor,
    w: Tensor,
    ranges: Tensor,
    xb: Tensor,
    /// The DAC's clip mask where the backward takes x's gradient in place (GPU, blocks of
    /// equal length).
    mask: Option<Tensor>,
    wmax: Tensor,
    wb: Tensor,
    /// The block outputs and the ADC's bounds, kept only for the gradients through the bound.
    for_bound: Option<(Tensor, Tensor)>,
    flags: Tensor,
    clamps: Tensor,
    value: Tensor,
}

/// One forward pass of the whole layer, kept for its backward: as a custom op over (x, w,
/// ranges) it is one autograd node (the forward computed by the stages on detached tensors, the
/// backward by their gradient stages and two batched products), so autograd keeps no
/// per-stage intermediate gradients.
#[derive(Debug)]
pub struct LayerPass(Saved);

/// y (T, out) of the analog layer for x (T, n_in), w (out, n_in) and the ranges (nb), in the
/// compute dtype, differentiable in all three.
pub fn forward(spec: &LayerSpec, x: &Tensor, w: &Tensor, ranges: &Tensor) -> Result<Tensor> {
    x.apply_op3(w, ranges, LayerPass::new(spec, x, w, ranges)?)
}

impl LayerPass {
    /// Runs the forward stages (no autograd).
    pub fn new(spec: &LayerSpec, x: &Tensor, w: &Tensor, ranges: &Tensor) -> Result<Self> {
        let op = |stage| FusedOp {
            blocks: spec.blocks,
            stage,
        };
        let xc = x.detach().to_dtype(spec.compute)?.contiguous()?;
        // The weight noise kernel takes f32 master weights as they are (and rounds them to the
        // compute dtype itself).
        let wc = match w.dtype() {
            DType::F32 => w.detach(),
            _ => w.detach().to_dtype(spec.compute)?,
        }
        .contiguous()?;
        let rd = ranges.detach().contiguous()?;
        // On the GPU, blocks of equal length get x's gradient in place (DacGradInPlace), which
        // visits only the inputs this mask marks.
        let mask = (x.device().is_cuda() && spec.blocks.uniform()).then(SideOutput::default);
        let xb = xc.apply_op2_no_bwd(
            &rd,
            &op(Stage::Dac {
                used: spec.used,
                inv_states: spec.dac,
                clips: spec.clips.clone(),
                mask: mask.clone(),
            }),
        )?;
        let mask = mask.map(|m| m.take()).transpose()?;
        let wmax = SideOutput::default();
        let wb = wc.apply_op1_no_bwd(&op(Stage::NoisyWeights {
            compute: spec.compute,
            wmax: wmax.clone(),
            gamma: spec.gamma,
            shape: spec.noise_shape,
            seed: spec.seed,
            layer: spec.layer,
            call: spec.call,
        }))?;
        let wmax = wmax.take()?;
        let yb = super::blocked_product(&xb, &wb)?;
        let (bound, clamps) = (SideOutput::default(), SideOutput::default());
        let lambda = if spec.out_bound > 0.0 && spec.used {
            spec.out_bound as f32
        } else {
            0.0
        };
        let packed = yb.apply_op3_no_bwd(
            &wmax,
            &rd,
            &op(Stage::Adc {
                inv_states: spec.adc,
                lambda,
                bound: bound.clone(),
                clamps: clamps.clone(),
            }),
        )?;
        let (bound, clamps) = (bound.take()?, clamps.take()?);
        let (tokens, out) = (xb.dims()[1], wb.dims()[1]);
        let plane = tokens * out;
        let value = packed.narrow(0, 0, plane)?.reshape((tokens, out))?;
        let flags = packed.narrow(0, plane, packed.elem_count() - plane)?;
        Ok(LayerPass(Saved {
            spec: spec.clone(),
            x: xc,
            w: wc,
            ranges: rd,
            xb,
            mask,
            wmax,
            wb,
            for_bound: spec.bound_grad.then_some((yb, bound)),
            flags,
            clamps,
            value,
        }))
    }

    /// The layer's output y (T, out), compute dtype.
    pub fn value(&self) -> &Tensor {
        &self.0.value
    }

    /// Gradients of x, w (compute dtype) and the ranges (f32) for the upstream gradient `g` of y.
    pub fn grads(&self, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let sv = &self.0;
        let spec = &sv.spec;
        let g = g.to_dtype(spec.compute)?.contiguous()?;
        // Every block's output gradient is g but where its ADC clamped: the products take g for
        // all blocks at once (batch stride 0), and ClampFix takes the clamped terms back out.
        let gb = g
            .unsqueeze(0)?
            .broadcast_as((spec.blocks.nb, g.dims()[0], g.dims()[1]))?;
        // On the GPU, blocks of equal length get gx and gw in place from the products
        // themselves (no blocked gradient to unblock): exactly where the forward asked the DAC
        // for the clip mask that the in-place DAC backward visits.
        let direct = sv.mask.is_some();
        let product = |target, other: &Tensor| -> Result<Tensor> {
            if direct {
                let blocks = spec.blocks;
                return g.apply_op2_no_bwd(other, &DirectGrad { blocks, target });
            }
            match target {
                FixTarget::X => gb.matmul(other),
                FixTarget::W => gb.transpose(1, 2)?.matmul(other),
            }
        };
        let (gxb, gwb) = (
            product(FixTarget::X, &sv.wb)?,
            product(FixTarget::W, &sv.xb)?,
        );
        let fix_x = ClampFix {
            blocks: spec.blocks,
            target: FixTarget::X,
            g: g.clone(),
            clamps: sv.clamps.clone(),
            flags: sv.flags.clone(),
            other: sv.wb.clone(),
        };
        let pair = ClampFixPair {
            x: fix_x,
            xb: sv.xb.clone(),
            gw: gwb.clone(),
        };
        // One grid for both corrections on the GPU (see ClampFixPair).
        if gxb.device().is_cuda() {
            gxb.inplace_op1(&pair)?;
        } else {
            gxb.inplace_op1(&pair.x)?;
            gwb.inplace_op1(&pair.w())?;
        }
        let ranges_grad = SideOutput::default();
        let gx = if direct {
            gxb.inplace_op1(&DacGradInPlace {
                blocks: spec.blocks,
                used: spec.used,
                decay: spec.decay,
                min_inside: spec.min_inside,
                x: sv.x.clone(),
                ranges: sv.ranges.clone(),
                mask: sv.mask.clone(),
                ranges_grad: ranges_grad.clone(),
            })?;
            gxb
        } else {
            gxb.apply_op3_no_bwd(
                &sv.x,
                &sv.ranges,
                &self.op(Stage::DacGrad {
                    used: spec.used,
                    decay: spec.decay,
                    min_inside: spec.min_inside,
                    ranges_grad: ranges_grad.clone(),
                }),
            )?
        };
        let gr = ranges_grad.take()?;
        let gw = if direct {
            gwb
        } else {
            gwb.apply_op1_no_bwd(&self.op(Stage::Unblock))?
        };
        if spec.bound_grad && spec.out_bound > 0.0 && spec.used {
            let (gw_b, gr_b) = self.bound_grads(&g)?;
            return Ok((gx, (gw + gw_b)?, (gr + gr_b)?));
        }
        Ok((gx, gw, gr))
    }

    /// The gradients of W and the ranges through the ADC bound lambda * w_max[s, c] *
    /// range[s] (plain tensor ops on either device; f32): the bound's gradient per (block,
    /// channel) goes to the range of the block and to the channel's largest |w| in the block
    /// (to every tied maximum, as autograd's max does it).
    fn bound_grads(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let sv = &self.0;
        let (spec, gb) = (&sv.spec, &sv.spec.blocks);
        let (yb, bound) = sv.for_bound.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("fused analog op: block outputs not kept for the bound".into())
        })?;
        let y = yb.to_dtype(DType::F32)?;
        let bound = bound.to_dtype(DType::F32)?.unsqueeze(1)?;
        let q = match spec.adc {
            Some(inv) => {
                let res = ((&bound * 2.0)? * inv as f64)?;
                y.broadcast_div(&res)?.round()?.broadcast_mul(&res)?
            }
            None => y.clone(),
        };
        let d = crate::train::ops::bound_grad_factor(&y, &q, &bound)?;
        let g = g.to_dtype(DType::F32)?.unsqueeze(0)?;
        let g_bound = d.broadcast_mul(&g)?.sum(1)?;
        let lambda = spec.out_bound;
        let wmax = sv.wmax.to_dtype(DType::F32)?;
        let gr = ((&g_bound * &wmax)? * lambda)?.sum(1)?;
        let per_wmax = (g_bound.broadcast_mul(&sv.ranges.reshape((gb.nb, 1))?)? * lambda)?;
        // As the compute dtype rounds them (the maxima are of those), compared in f32 (exactly
        // the same values, so the comparison finds them).
        let wr = sv.w.to_dtype(spec.compute)?.to_dtype(DType::F32)?;
        let mut parts = Vec::with_capacity(gb.nb);
        for s in 0..gb.nb {
            let ws = wr.narrow(1, gb.start(s), gb.len(s))?;
            let m = wmax.narrow(0, s, 1)?.t()?;
            let at_max = ws.abs()?.broadcast_eq(&m)?.to_dtype(DType::F32)?;
            let sign = ws.ge(0f64)?.to_dtype(DType::F32)?.affine(2.0, -1.0)?;
            let coef = per_wmax.narrow(0, s, 1)?.t()?;
            parts.push((at_max * sign)?.broadcast_mul(&coef)?);
        }
        let gw = Tensor::cat(&parts, 1)?.to_dtype(spec.compute)?;
        Ok((gw, gr))
    }

    fn op(&self, stage: Stage) -> FusedOp {
        FusedOp {
            blocks: self.0.spec.blocks,
            stage,
        }
    }
}

impl CustomOp3 for LayerPass {
    fn name(&self) -> &'static str {
        "afm-analog-layer"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        crate::train::ops::held_value_cpu(&self.0.value, "analog layer")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::train::ops::held_value_cuda(&self.0.value, "analog layer")
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        ranges: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gr) = self.grads(g)?;
        Ok((
            Some(gx.to_dtype(x.dtype())?),
            Some(gw.to_dtype(w.dtype())?),
            Some(gr.to_dtype(ranges.dtype())?),
        ))
    }
}

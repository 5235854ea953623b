//! The two custom-gradient stages of the analog training layer, as aihwkit-lightning's torch path
//! defines them.
//!
//! Each op takes its forward value precomputed by plain tensor ops (so it runs on any device)
//! and only supplies the backward: the input stage clips and quantizes with a straight-through
//! estimator and gives the input range the AFM gradient (pull the range out where clipped inputs
//! want to grow, shrink it by `decay` while enough inputs sit inside); the ADC stage passes the
//! gradient through its rounding and, when asked, gives the output bound LSQ's step-size
//! gradient (none in lightning).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Returns the precomputed value (argument 3) as the op's result.
fn pass_through_cpu(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("analog training op: the precomputed value must be contiguous");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

#[cfg(feature = "cuda")]
fn pass_through_cuda(
    s: &candle_core::CudaStorage,
    l: &Layout,
) -> Result<(candle_core::CudaStorage, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("analog training op: the precomputed value must be contiguous");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

/// A tensor computed outside the autograd graph, copied out as a custom op's result on the
/// CPU: how an op whose forward runs untracked (the fused analog layer, the causal attention)
/// hands that forward's value to the graph.
pub(crate) fn held_value_cpu(t: &Tensor, op: &str) -> Result<(CpuStorage, Shape)> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("{op}: its value is not on the CPU"),
    }
}

/// [`held_value_cpu`] on the GPU.
#[cfg(feature = "cuda")]
pub(crate) fn held_value_cuda(t: &Tensor, op: &str) -> Result<(candle_core::CudaStorage, Shape)> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("{op}: its value is not on the GPU"),
    }
}

/// Input stage of one row block: x (tokens, n) clipped to the range beta (shape (1,)) and
/// quantized; arguments (x, beta, value).
#[derive(Debug, Clone, Copy)]
pub struct InputStage {
    /// Range decay (lightning `input_range.decay`).
    pub decay: f64,
    /// Share of inputs that must sit inside the range for the decay to act
    /// (lightning `input_min_percentage`).
    pub min_inside: f64,
}

impl CustomOp3 for InputStage {
    fn name(&self) -> &'static str {
        "afm-input-stage"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through_cpu(s3, l3)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        pass_through_cuda(s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        beta: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(candle_core::DType::F32)?;
        let x = x.to_dtype(candle_core::DType::F32)?;
        let b = beta.to_dtype(candle_core::DType::F32)?;
        let upper = x.broadcast_ge(&b)?.to_dtype(candle_core::DType::F32)?;
        let lower = x
            .broadcast_le(&b.neg()?)?
            .to_dtype(candle_core::DType::F32)?;
        // Inputs exactly at the range keep their gradient (lightning's straight-through clamp).
        let at = x
            .abs()?
            .broadcast_eq(&b)?
            .to_dtype(candle_core::DType::F32)?;
        let clipped = ((&upper + &lower)? - &at)?;
        let gx = (&g * (1.0 - clipped)?)?;
        let pull = ((g.clamp(f32::NEG_INFINITY, 0f32)? * &upper)?.sum_all()?
            - (g.clamp(0f32, f32::INFINITY)? * &lower)?.sum_all()?)?;
        let mut gb = (pull.reshape(1)? * &b)?;
        if self.decay > 0.0 {
            // The decay acts while more than `min_inside` of the inputs are inside; decided on
            // the device so the backward never waits for the host.
            let n = x.elem_count().max(1) as f64;
            let outside = (&upper + &lower)?.sum_all()?.reshape(1)?;
            let inside = (1.0 - (outside / n)?)?;
            let acts = inside
                .gt(&Tensor::full(self.min_inside as f32, 1, inside.device())?)?
                .to_dtype(candle_core::DType::F32)?;
            gb = (gb + (&b * self.decay)?.mul(&acts)?)?;
        }
        Ok((
            Some(gx.to_dtype(beta.dtype())?),
            Some(gb.to_dtype(beta.dtype())?),
            None,
        ))
    }
}

/// ADC stage of one row block: y (tokens, out) quantized (straight through) to `q` then
/// clamped to ±bound (shape (1, out)); arguments (y, bound, value).
#[derive(Debug, Clone)]
pub struct AdcStage {
    /// The quantized outputs, exactly as they reach the clamp (its masks are taken on them).
    pub q: Tensor,
    /// Whether the bound gets a gradient (see [`bound_grad_factor`]); lightning's: none.
    pub bound_grad: bool,
}

/// d(ADC output)/d(bound) per element, straight through the rounding (LSQ's step-size
/// gradient, the step being proportional to the bound): (q - y) / bound where the quantized
/// output q lies inside ±bound, +1 above it, -1 below it, 0 where the bound is 0 (no ADC).
/// `y`, `q` (.., out) and `bound` (broadcastable) in f32.
pub fn bound_grad_factor(y: &Tensor, q: &Tensor, bound: &Tensor) -> Result<Tensor> {
    let above = q.broadcast_gt(bound)?;
    let below = q.broadcast_lt(&bound.neg()?)?;
    let off = bound.eq(0f64)?.broadcast_as(y.shape())?;
    let ones = y.ones_like()?;
    let zeros = y.zeros_like()?;
    // A bound of 0 would divide by zero: those elements take 0 below, whatever this gives.
    let safe = off.where_cond(&ones, &bound.broadcast_as(y.shape())?)?;
    let inside = (q - y)?.div(&safe)?;
    let d = above.where_cond(&ones, &below.where_cond(&ones.neg()?, &inside)?)?;
    off.where_cond(&zeros, &d)
}

impl CustomOp3 for AdcStage {
    fn name(&self) -> &'static str {
        "afm-adc-stage"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through_cpu(s3, l3)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        pass_through_cuda(s3, l3)
    }

    fn bwd(
        &self,
        y: &Tensor,
        bound: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // torch.clamp(q, -bound, bound): q gets the gradient where -bound <= q <= bound. The
        // bound is a constant (lightning computes it under `no_grad`), so it gets none unless
        // `bound_grad` asks for it.
        let above = self.q.broadcast_gt(bound)?.to_dtype(g.dtype())?;
        let below = self.q.broadcast_lt(&bound.neg()?)?.to_dtype(g.dtype())?;
        let gy = (g * (1.0 - (&above + &below)?)?)?;
        let gb = if self.bound_grad {
            let d = bound_grad_factor(y, &self.q, bound)?;
            Some((g * d)?.sum_keepdim(0)?)
        } else {
            None
        };
        Ok((Some(gy), gb, None))
    }
}

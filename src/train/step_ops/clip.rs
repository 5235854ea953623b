//! Weight clipping after each optimizer step (DESIGN §3.4): every output channel's weights
//! clamped to +-alpha times that channel's standard deviation, in place, one pass per channel
//! (the generic composition was ten launches and two allocations per layer).

use super::{cpu, cpu_f32_mut};
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, Var, D};

struct ClipRows {
    alpha: f32,
}

impl InplaceOp1 for ClipRows {
    fn name(&self) -> &'static str {
        "afm-clip-rows"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let n = l.dims()[1];
        cpu::clip_rows(cpu_f32_mut(s, l, self.name())?, n, self.alpha);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        let (rows, n) = (l.dims()[0], l.dims()[1]);
        super::cuda::clip_rows(s, l, rows, n, self.alpha)
    }
}

/// Clips each row of the weights `w` (out, in) to +-alpha x its standard deviation, in place:
/// fused for contiguous f32, else the generic composition.
pub fn clip_rows(w: &Var, alpha: f64) -> Result<()> {
    let t = w.as_tensor();
    if t.rank() == 2 && t.dtype() == DType::F32 && t.is_contiguous() {
        return t.inplace_op1(&ClipRows {
            alpha: alpha as f32,
        });
    }
    w.set(&clip_rows_reference(t, alpha)?)
}

/// [`clip_rows`] from generic ops: the clipped copy.
pub fn clip_rows_reference(w: &Tensor, alpha: f64) -> Result<Tensor> {
    let n = w.dims()[1] as f64;
    let mean = w.mean_keepdim(D::Minus1)?;
    let var = (w.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0).max(1.0))?;
    let lim = (var.sqrt()? * alpha)?;
    w.broadcast_minimum(&lim)?.broadcast_maximum(&lim.neg()?)
}

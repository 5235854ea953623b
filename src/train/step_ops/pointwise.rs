//! Two point-wise stages of the decoder as single graph nodes: SwiGLU's silu(gate) * up and the
//! rotary embedding of queries and keys. Composed from candle's ops they were a cat, narrows
//! and four products forward (rotary) and a sigmoid chain (SwiGLU), each with a backward that
//! adds its gradient to a fresh zero tensor; here each is one kernel forward and one backward.

use super::{cpu, cpu_f32};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// silu(a) * b of two f32 tensors of one shape.
struct SwiGlu;

fn same_len(l1: &Layout, l2: &Layout, op: &str) -> Result<usize> {
    if l1.dims() != l2.dims() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
    }
    Ok(l1.shape().elem_count())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "afm-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_len(l1, l2, self.name())?;
        let (a, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        Ok((CpuStorage::F32(cpu::swiglu(a, b)), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let n = same_len(l1, l2, self.name())?;
        Ok((
            super::cuda::swiglu((s1, l1), (s2, l2), n)?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = a.elem_count();
        let both = a.apply_op3_no_bwd(b, &grad.contiguous()?, &SwiGluGrad)?;
        let da = both.narrow(0, 0, n)?.reshape(a.shape())?;
        let db = both.narrow(0, n, n)?.reshape(a.shape())?;
        Ok((Some(da), Some(db)))
    }
}

/// da then db (2n, flat); arguments (a, b, g).
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "afm-swiglu-grad"
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
        let n = same_len(l1, l2, self.name())?;
        same_len(l1, l3, self.name())?;
        let (a, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let g = cpu_f32(s3, l3, self.name())?;
        Ok((
            CpuStorage::F32(cpu::swiglu_grad(a, b, g)),
            Shape::from(2 * n),
        ))
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
        let n = same_len(l1, l2, self.name())?;
        same_len(l1, l3, self.name())?;
        let out = super::cuda::swiglu_grad([(s1, l1), (s2, l2), (s3, l3)], n)?;
        Ok((out, Shape::from(2 * n)))
    }
}

/// silu(gate) * up of f32 tensors of one shape, differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// [`swiglu`] from candle's ops.
pub fn swiglu_reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(gate)? * up
}

/// Rotary embedding of x (b, heads, t, 2h) by cos, sin (t, h); `inverse` rotates back.
struct Rope {
    inverse: bool,
}

/// (rows, t, h) of x (..., t, 2h) and tables (t, h), checked.
fn rope_dims(lx: &Layout, lc: &Layout, ls: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let d = lx.dims();
    if d.len() < 2 {
        candle_core::bail!("{op}: x must be (..., tokens, head dim), got {d:?}");
    }
    let (t, two_h) = (d[d.len() - 2], d[d.len() - 1]);
    if two_h % 2 != 0 || lc.dims() != [t, two_h / 2] || ls.dims() != lc.dims() {
        candle_core::bail!(
            "{op}: x {d:?} needs cos and sin of ({t}, {}), got {:?} and {:?}",
            two_h / 2,
            lc.dims(),
            ls.dims()
        );
    }
    Ok((lx.shape().elem_count() / two_h, t, two_h / 2))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "afm-rope"
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
        let (_, t, h) = rope_dims(l1, l2, l3, self.name())?;
        let x = cpu_f32(s1, l1, self.name())?;
        let (c, s) = (cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        let y = cpu::rope(x, c, s, t, h, self.inverse);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
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
        let (rows, t, h) = rope_dims(l1, l2, l3, self.name())?;
        let y = super::cuda::rope([(s1, l1), (s2, l2), (s3, l3)], rows, t, h, self.inverse)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = Rope {
            inverse: !self.inverse,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary embedding (rotate-half layout) of f32 x (b, heads, t, d) by cos, sin (t, d / 2),
/// differentiable in x (the tables are constants).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?.detach(),
        &sin.contiguous()?.detach(),
        Rope { inverse: false },
    )
}

/// [`rope`] from candle's ops (`rope_slow`).
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_slow(x, cos, sin)
}

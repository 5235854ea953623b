//! Fused ops of the training step outside the analog layer: attention (its causal softmax as
//! one kernel, the whole of it as one graph node), RMSNorm, the distillation KL, AdamW's update
//! and the weight clipping after it; SwiGLU and the rotary embedding.
//!
//! Built from candle's generic ops, a layer's causal softmax was about 13 launches forward and
//! backward, each a pass over the (batch, heads, tokens, keys) scores, and the KL over the
//! (tokens, vocabulary) logits about 30; on an H200 those passes were ~53% of a SmolLM2 step's
//! kernel time (`scripts/device/kernel-profile.sh`, benches/RESULTS.md). Here each is one pass
//! forward and one backward, and AdamW is three in-place passes per tensor instead of ~15
//! allocating ones. Every op has a CPU path (`cpu`) and a CUDA path (`cuda`,
//! `kernels/train_ops.cu`), f32 only; the `*_reference` functions beside them are the generic
//! compositions they replace, which the tests hold them to.

mod attention;
mod clip;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod pointwise;

pub use attention::{causal_attention, causal_attention_reference};
pub use clip::{clip_rows, clip_rows_reference};
pub use pointwise::{rope, rope_reference, swiglu, swiglu_reference};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2, InplaceOp3, Layout, Result,
    Shape, Tensor, D,
};

/// The contiguous f32 elements of a CPU argument.
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: the input must be contiguous"),
        (s, _) => candle_core::bail!("{op}: expected f32, got {:?}", s.dtype()),
    }
}

/// Mutable twin of [`cpu_f32`] for the in-place ops.
fn cpu_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: the tensor must be contiguous"),
        (s, _) => candle_core::bail!("{op}: expected f32, got {:?}", s.dtype()),
    }
}

/// (rows, t, s) of scores (..., t, s): t queries (the last t positions) over s keys, s >= t.
fn score_dims(l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let dims = l.dims();
    if dims.len() < 2 || dims[dims.len() - 1] < dims[dims.len() - 2] {
        candle_core::bail!(
            "{op}: scores must be (..., queries, keys) with keys >= queries, got {dims:?}"
        );
    }
    let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    Ok((l.shape().elem_count() / s.max(1), t, s))
}

/// softmax(scale * x) over the last dimension with causal masking: row r of a (..., t, s)
/// tensor is query `r % t` at position `s - t + r % t`, which sees keys up to its own position.
#[derive(Debug, Clone, Copy)]
struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "afm-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, t, keys) = score_dims(l, self.name())?;
        let x = cpu_f32(s, l, self.name())?;
        let y = cpu::causal_softmax(x, t, keys, self.scale);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, t, keys) = score_dims(l, self.name())?;
        let y = cuda::causal_softmax(s, l, rows, t, keys, self.scale)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &g,
            &CausalSoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// dx = scale * y * (g - sum(g * y)) per row; arguments (y, g).
#[derive(Debug, Clone, Copy)]
struct CausalSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "afm-causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, _, keys) = score_dims(l1, self.name())?;
        let (y, g) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let dx = cpu::causal_softmax_grad(y, g, keys, self.scale);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, _, keys) = score_dims(l1, self.name())?;
        let dx = cuda::causal_softmax_grad(s1, l1, s2, l2, rows, keys, self.scale)?;
        Ok((dx, l1.shape().clone()))
    }
}

/// Causal attention weights softmax(scale * scores + causal mask) of scores (..., t, s), f32,
/// with its gradient; row r's query sits at position `s - t + r % t` (the first `s - t` keys
/// are cached ones every query sees).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
    })
}

/// [`causal_softmax`] from generic ops: scale, an additive mask of -inf, softmax.
pub fn causal_softmax_reference(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = scores.dims();
    let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mask: Vec<f32> = (0..t * s)
        .map(|k| {
            if k % s > s - t + k / s {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, s), scores.device())?;
    candle_nn::ops::softmax(&(scores * scale)?.broadcast_add(&mask)?, D::Minus1)
}

/// Per-row KL(softmax(t / T) || softmax(s / T)) of teacher and student logits (rows, v);
/// the teacher gets no gradient.
#[derive(Debug, Clone, Copy)]
struct KlRows {
    inv_t: f32,
}

/// (rows, v) of a pair of logit matrices, checked to agree.
fn logit_dims(l1: &Layout, l2: &Layout, op: &str) -> Result<(usize, usize)> {
    if l1.dims().len() != 2 || l1.dims() != l2.dims() {
        candle_core::bail!(
            "{op}: teacher and student logits must both be (rows, vocab), got {:?} and {:?}",
            l1.dims(),
            l2.dims()
        );
    }
    Ok((l1.dims()[0], l1.dims()[1]))
}

impl CustomOp2 for KlRows {
    fn name(&self) -> &'static str {
        "afm-kl-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, v) = logit_dims(l1, l2, self.name())?;
        let (t, s) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        Ok((
            CpuStorage::F32(cpu::kl_rows(t, s, v, self.inv_t)),
            Shape::from(rows),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, v) = logit_dims(l1, l2, self.name())?;
        let kl = cuda::kl_rows(s1, l1, s2, l2, rows, v, self.inv_t)?;
        Ok((kl, Shape::from(rows)))
    }

    fn bwd(
        &self,
        t: &Tensor,
        s: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let ds = t.apply_op3_no_bwd(s, &g, &KlGrad { inv_t: self.inv_t })?;
        Ok((None, Some(ds)))
    }
}

/// ds = g[r] / T * (softmax(s / T) - softmax(t / T)); arguments (t, s, g).
#[derive(Debug, Clone, Copy)]
struct KlGrad {
    inv_t: f32,
}

impl CustomOp3 for KlGrad {
    fn name(&self) -> &'static str {
        "afm-kl-grad"
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
        let (_, v) = logit_dims(l1, l2, self.name())?;
        let (t, s) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let g = cpu_f32(s3, l3, self.name())?;
        let ds = cpu::kl_grad(t, s, g, v, self.inv_t);
        Ok((CpuStorage::F32(ds), l2.shape().clone()))
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
        let (rows, v) = logit_dims(l1, l2, self.name())?;
        let ds = cuda::kl_grad([(s1, l1), (s2, l2), (s3, l3)], rows, v, self.inv_t)?;
        Ok((ds, l2.shape().clone()))
    }
}

/// Per-row KL(softmax(t / T) || softmax(s / T)) of f32 logits (rows, vocab), differentiable in
/// the student's `s`; `t` is treated as a constant.
pub fn kl_rows(t: &Tensor, s: &Tensor, temperature: f64) -> Result<Tensor> {
    let t = t.detach().contiguous()?;
    t.apply_op2(
        &s.contiguous()?,
        KlRows {
            inv_t: (1.0 / temperature) as f32,
        },
    )
}

/// [`kl_rows`] from generic ops: two log-softmaxes and the sum of p (log p - log q).
pub fn kl_rows_reference(t: &Tensor, s: &Tensor, temperature: f64) -> Result<Tensor> {
    let lt = candle_nn::ops::log_softmax(&(t.detach() / temperature)?, D::Minus1)?;
    let ls = candle_nn::ops::log_softmax(&(s / temperature)?, D::Minus1)?;
    (lt.exp()? * (&lt - &ls)?)?.sum(D::Minus1)
}

/// RMSNorm of x (..., n) with weights w (n,): (x / sqrt(mean(x^2) + eps)) * w.
#[derive(Debug, Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

/// (rows, n) of x (..., n) and w (n,), checked to agree.
fn norm_dims(lx: &Layout, lw: &Layout, op: &str) -> Result<(usize, usize)> {
    let n = lx.dims().last().copied().unwrap_or(0);
    if lw.dims() != [n] || n == 0 {
        candle_core::bail!(
            "{op}: weights {:?} do not match the input's last dimension {:?}",
            lw.dims(),
            lx.dims()
        );
    }
    Ok((lx.shape().elem_count() / n, n))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "afm-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, n) = norm_dims(l1, l2, self.name())?;
        let (x, w) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        Ok((
            CpuStorage::F32(cpu::rms_norm(x, w, n, self.eps)),
            l1.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, n) = norm_dims(l1, l2, self.name())?;
        let y = cuda::rms_norm((s1, l1), (s2, l2), rows, n, self.eps)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = w.dim(0)?;
        let g = grad.contiguous()?;
        let both = x.apply_op3_no_bwd(w, &g, &RmsNormGrad { eps: self.eps })?;
        let dx = both.narrow(0, 0, x.elem_count())?.reshape(x.shape())?;
        let dw = both
            .narrow(0, x.elem_count(), x.elem_count())?
            .reshape(((), n))?
            .sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dx and g * x / d one after the other (2 * len elements, flat); arguments (x, w, g).
#[derive(Debug, Clone, Copy)]
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "afm-rms-norm-grad"
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
        let (_, n) = norm_dims(l1, l2, self.name())?;
        let (x, w) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let g = cpu_f32(s3, l3, self.name())?;
        let out = cpu::rms_norm_grad(x, w, g, n, self.eps);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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
        let (rows, n) = norm_dims(l1, l2, self.name())?;
        let out = cuda::rms_norm_grad([(s1, l1), (s2, l2), (s3, l3)], rows, n, self.eps)?;
        Ok((out, Shape::from(2 * rows * n)))
    }
}

/// RMSNorm of f32 `x` (..., n) with weights `w` (n,), differentiable in both.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

/// [`rms_norm`] from generic ops (candle's `rms_norm_slow`).
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    candle_nn::ops::rms_norm_slow(x, w, eps)
}

/// One AdamW step's constants (each rounded to f32 as candle's scalar ops round them).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// beta1.
    pub b1: f64,
    /// beta2.
    pub b2: f64,
    /// 1 / (1 - beta1^t).
    pub ic1: f64,
    /// 1 / (1 - beta2^t).
    pub ic2: f64,
    /// The denominator's epsilon.
    pub eps: f64,
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub decay: f64,
    /// Factor on the gradient (the global-norm clip's; 1: none), applied as the moments read it.
    pub scale: f64,
}

/// One AdamW moment in place, argument g scaled first (gs = g * scale): m = m * b + gs * one_b,
/// or with `square` v = v * b + gs^2 * one_b.
struct AdamMoment {
    b: f32,
    one_b: f32,
    square: bool,
    scale: f32,
}
/// w = w * (1 - lr * decay) - (m / c1) / (sqrt(v / c2) + eps) * lr, in place on w.
struct AdamW(cpu::AdamConsts);

impl InplaceOp2 for AdamMoment {
    fn name(&self) -> &'static str {
        if self.square {
            "afm-adam-v"
        } else {
            "afm-adam-m"
        }
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = cpu_f32(s2, l2, self.name())?;
        let m = cpu_f32_mut(s1, l1, self.name())?;
        cpu::adam_moment(m, g, (self.b, self.one_b, self.scale), self.square);
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        cuda::adam_moment(
            s1,
            l1,
            s2,
            l2,
            (self.b, self.one_b, self.scale),
            self.square,
        )
    }
}

impl InplaceOp3 for AdamW {
    fn name(&self) -> &'static str {
        "afm-adam-w"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (m, v) = (cpu_f32(s2, l2, self.name())?, cpu_f32(s3, l3, self.name())?);
        cpu::adam_weights(cpu_f32_mut(s1, l1, self.name())?, m, v, &self.0);
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        cuda::adam_weights([(s2, l2), (s3, l3)], s1, l1, &self.0)
    }
}

/// Whether the fused AdamW can update these tensors: contiguous f32, one shape.
pub fn adamw_fusable(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor) -> bool {
    [w, m, v, g]
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.is_contiguous() && t.dims() == w.dims())
}

/// One AdamW update in place: the moments `m`, `v` from the gradient `g` (times `k.scale`), then
/// the weights `w`
/// (all contiguous f32 of one shape, [`adamw_fusable`]). The same f32 operations in the same
/// order as the generic composition in `train::optim`, so on the CPU the same bits.
pub fn adamw_update(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, k: &AdamStep) -> Result<()> {
    let f = |x: f64| x as f32;
    let moment = |b: f64, square| AdamMoment {
        b: f(b),
        one_b: f(1.0 - b),
        square,
        scale: f(k.scale),
    };
    m.inplace_op2(g, &moment(k.b1, false))?;
    v.inplace_op2(g, &moment(k.b2, true))?;
    w.inplace_op3(
        m,
        v,
        &AdamW(cpu::AdamConsts {
            keep: f(1.0 - k.lr * k.decay),
            ic1: f(k.ic1),
            ic2: f(k.ic2),
            eps: f(k.eps),
            lr: f(k.lr),
        }),
    )
}

/// [`adamw_update`] from generic ops (any dtype or layout): the new (w, m, v).
pub fn adamw_reference(
    w: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    k: &AdamStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = (g * k.scale)?;
    let m = ((m * k.b1)? + (&g * (1.0 - k.b1))?)?;
    let v = ((v * k.b2)? + (g.sqr()? * (1.0 - k.b2))?)?;
    let update = ((&m * k.ic1)? / ((&v * k.ic2)?.sqrt()? + k.eps)?)?;
    let w = ((w * (1.0 - k.lr * k.decay))? - (update * k.lr)?)?;
    Ok((w, m, v))
}

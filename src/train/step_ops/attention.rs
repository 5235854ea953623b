//! Causal attention as one node of the autograd graph, recomputing its scores in the backward.
//!
//! Built from tensor ops, a layer's attention leaves the (batch, heads, tokens, keys) scores
//! and weights in the graph, and candle's backward adds every gradient it produces to a fresh
//! zero tensor of that size (five such adds a layer, ~25 ms of a SmolLM2 step on an H200).
//! Here the forward runs untracked (two products around [`super::causal_softmax`]'s kernel)
//! and only its (batch, kv heads, rows, head dim) result enters the graph; the backward
//! recomputes the weights (one product more) and gives q, k and v their gradients, as
//! flash-attention's backward does.

use super::{CausalSoftmax, CausalSoftmaxGrad};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// The attention result computed untracked in [`causal_attention`], handed to the graph.
struct CausalAttention {
    /// Query rows per (batch, query head) group: the token count t.
    t: usize,
    scale: f32,
    out: Tensor,
}

impl CausalAttention {
    /// softmax(scale * q k^T + causal mask) of q (b, g, rows, d), k (b, g, s, d), where every
    /// `t` rows of a group are one query head's tokens.
    fn weights(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        let scores = q.matmul(&k.t()?)?;
        let (b, g, rows, s) = scores.dims4()?;
        let heads = scores.reshape((b, g * rows / self.t, self.t, s))?;
        heads
            .apply_op1_no_bwd(&CausalSoftmax { scale: self.scale })?
            .reshape((b, g, rows, s))
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "afm-causal-attention"
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
        crate::train::ops::held_value_cpu(&self.out, self.name())
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
        crate::train::ops::held_value_cuda(&self.out, self.name())
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let g = grad.contiguous()?;
        let p = self.weights(&q, &k)?;
        let dp = g.matmul(&v.t()?)?;
        let (b, gr, rows, s) = p.dims4()?;
        let heads = (b, gr * rows / self.t, self.t, s);
        let ds = p
            .reshape(heads)?
            .apply_op2_no_bwd(
                &dp.reshape(heads)?,
                &CausalSoftmaxGrad { scale: self.scale },
            )?
            .reshape((b, gr, rows, s))?;
        let dq = ds.matmul(&k)?;
        let dk = ds.t()?.matmul(&q)?;
        let dv = p.t()?.matmul(&g)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal attention softmax(scale * q k^T + mask) v of f32 q (b, g, rows, d) and k, v
/// (b, g, s, d), grouped as the decoder lays out grouped-query attention: each of the g key/value
/// heads serves rows / t query heads of t tokens each, the tokens at positions s - t .. s.
/// Differentiable in q, k and v with one graph node (see the module docs).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    t: usize,
    scale: f64,
) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let rows = q.dim(2)?;
    if t == 0 || rows % t != 0 || k.dim(2)? < t {
        candle_core::bail!(
            "causal attention: {rows} query rows are not whole heads of {t} tokens over {} keys",
            k.dim(2)?
        );
    }
    let mut op = CausalAttention {
        t,
        scale: scale as f32,
        out: Tensor::zeros((), q.dtype(), q.device())?,
    };
    let p = op.weights(&q.detach(), &k.detach())?;
    op.out = p.matmul(&v.detach())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        // Nothing to differentiate (a frozen teacher): the value is all.
        return Ok(op.out);
    }
    q.apply_op3(&k, &v, op)
}

/// [`causal_attention`] from generic ops: scores, scale, additive mask, softmax, product.
pub fn causal_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    t: usize,
    scale: f64,
) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?;
    let (b, g, rows, s) = scores.dims4()?;
    let p = super::causal_softmax_reference(&scores.reshape((b, g * rows / t, t, s))?, scale)?;
    p.reshape((b, g, rows, s))?.matmul(v)
}

//! The backward's own ops: the clamp correction of the two plain products ([`ClampFix`]) and,
//! on the GPU, the W gradient written in place by one batched product ([`GradW`]). Straight
//! through the ADC every block's output gradient is the upstream g except where the ADC
//! clamped, so the products take g for all blocks at once and these ops take the clamped terms
//! back out, or skip the blocked layout.

#[cfg(feature = "cuda")]
use super::cuda;
#[cfg(doc)]
use super::Stage;
use super::{cpu, f32s, out, Blocks};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Which gradient a [`ClampFix`] corrects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixTarget {
    /// gxb (nb, T, r); the other operand is wb.
    X,
    /// gwb (nb, out, r); the other operand is xb.
    W,
}

/// In place on gxb or gwb computed with the upstream gradient g for every block: subtracts the
/// terms of the outputs whose ADC clamped (their gradient is zero), visiting only the tiles
/// [`Stage::Adc`] flagged. On the GPU the W gradient may also be gw (out, n_in) as [`GradW`]
/// wrote it (blocks of equal length side by side); the CPU takes the blocked layouts only.
#[derive(Debug, Clone)]
pub struct ClampFix {
    /// The row blocks.
    pub blocks: Blocks,
    /// The gradient corrected.
    pub target: FixTarget,
    /// As in [`Stage::Adc`].
    pub inv_states: Option<f32>,
    /// Upstream gradient (T, out).
    pub g: Tensor,
    /// Block outputs (nb, T, out).
    pub yb: Tensor,
    /// ADC bounds (nb, out), f32.
    pub bound: Tensor,
    /// Clamp flags of [`Stage::Adc`].
    pub flags: Tensor,
    /// wb (nb, out, r) for [`FixTarget::X`], xb (nb, T, r) for [`FixTarget::W`].
    pub other: Tensor,
}

impl candle_core::InplaceOp1 for ClampFix {
    fn name(&self) -> &'static str {
        "afm-fused-analog-clamp-fix"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, l: &Layout) -> Result<()> {
        let held = [&self.g, &self.yb, &self.bound, &self.flags, &self.other];
        let guards: Vec<_> = held.iter().map(|t| t.storage_and_layout()).collect();
        let vals = guards
            .iter()
            .map(|(s, l)| match &**s {
                candle_core::Storage::Cpu(c) => f32s(c, l, "a tensor of the backward"),
                _ => candle_core::bail!(
                    "fused analog op: a tensor of the backward is not on the CPU"
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let d = self.yb.dims();
        let dims = (d[1], d[2], self.blocks.r);
        if l.dims().len() != 3 {
            candle_core::bail!(
                "fused analog op: the CPU clamp correction takes a blocked gradient (blocks, \
                 rows, {}), got dims {:?}",
                self.blocks.r,
                l.dims()
            );
        }
        let buf = match (dst, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &mut v[a..b],
            _ => candle_core::bail!("fused analog op: the gradient must be contiguous f32"),
        };
        let ops = [vals[0], vals[1], vals[2], vals[3], vals[4]];
        cpu::clamp_fix(buf, self.target, ops, dims, self.inv_states);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dst: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        cuda::clamp_fix(self, dst, l)
    }
}

/// (g (T, out), xb (nb, T, r)) -> gw (out, n_in): gw[c, start(s) + j] = sum over t of
/// g[t, c] xb[s, t, j], the W gradient of every block (as if no output clamped) put in place.
/// On the GPU, for blocks of equal length, one strided-batched product writes it there directly
/// (no blocked gwb, no [`Stage::Unblock`] pass); the CPU path is the plain sum, the reference
/// the tests hold the batched product and the unblocking to.
#[derive(Debug, Clone)]
pub struct GradW {
    /// The row blocks.
    pub blocks: Blocks,
}

impl CustomOp2 for GradW {
    fn name(&self) -> &'static str {
        "afm-fused-analog-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.blocks;
        let (gv, xb) = (f32s(s1, l1, "g")?, f32s(s2, l2, "xb")?);
        let (tokens, n_out) = self.dims(l1, l2)?;
        let mut gw = vec![0f32; n_out * g.n_in];
        for c in 0..n_out {
            for s in 0..g.nb {
                for j in 0..g.len(s) {
                    gw[c * g.n_in + g.start(s) + j] = (0..tokens)
                        .map(|t| gv[t * n_out + c] * xb[(s * tokens + t) * g.r + j])
                        .sum();
                }
            }
        }
        out(gw, (n_out, g.n_in))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, n_out) = self.dims(l1, l2)?;
        let shape = Shape::from((n_out, self.blocks.n_in));
        Ok((cuda::grad_w(&self.blocks, (s1, l1), (s2, l2))?, shape))
    }
}

impl GradW {
    /// (tokens, outputs) of g, once xb is checked to be (nb, tokens, r).
    fn dims(&self, g: &Layout, xb: &Layout) -> Result<(usize, usize)> {
        let b = &self.blocks;
        let (tokens, n_out) = (g.dims()[0], g.dims()[1]);
        if xb.dims() != [b.nb, tokens, b.r] {
            candle_core::bail!(
                "fused analog op: xb of dims {:?}, expected ({}, {tokens}, {})",
                xb.dims(),
                b.nb,
                b.r
            );
        }
        Ok((tokens, n_out))
    }
}

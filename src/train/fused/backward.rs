//! The backward's own ops: the clamp correction of the two plain products ([`ClampFix`]), on
//! the GPU the x and W gradients written in place by one batched product each ([`DirectGrad`]),
//! and the DAC's backward on x's gradient in place ([`DacGradInPlace`]). Straight
//! through the ADC every block's output gradient is the upstream g except where the ADC
//! clamped, so the products take g for all blocks at once and these ops take the clamped terms
//! back out, or skip the blocked layout.

#[cfg(feature = "cuda")]
use super::cuda;
#[cfg(doc)]
use super::Stage;
use super::{clamp_mask_dims, cpu, f32s, out, Blocks, SideOutput};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, StorageRef, Tensor};

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
/// [`Stage::Adc`] flagged and reading which outputs clamped from its clamp mask. On the GPU the
/// gradient may also be gx (T, n_in) or gw (out, n_in) as [`DirectGrad`] wrote it (blocks of
/// equal length side by side); the CPU takes the blocked layouts only.
#[derive(Debug, Clone)]
pub struct ClampFix {
    /// The row blocks.
    pub blocks: Blocks,
    /// The gradient corrected.
    pub target: FixTarget,
    /// Upstream gradient (T, out).
    pub g: Tensor,
    /// Which outputs clamped, u8 (nb, T, ceil(out / 8)) ([`Stage::Adc`]'s `clamps`).
    pub clamps: Tensor,
    /// Clamp flags of [`Stage::Adc`].
    pub flags: Tensor,
    /// wb (nb, out, r) for [`FixTarget::X`], xb (nb, T, r) for [`FixTarget::W`].
    pub other: Tensor,
}

impl ClampFix {
    /// (tokens, outputs) of g, once the clamp mask is checked to match it.
    pub(crate) fn dims(&self) -> Result<(usize, usize)> {
        let (tokens, out) = match self.g.dims() {
            &[t, o] => (t, o),
            d => candle_core::bail!("fused analog op: g of dims {d:?}, expected (tokens, outputs)"),
        };
        let (nb, rows, bytes) = clamp_mask_dims(self.blocks.nb, tokens, out);
        let want = [nb, rows, bytes];
        if self.clamps.dims() != want || self.clamps.dtype() != candle_core::DType::U8 {
            candle_core::bail!(
                "fused analog op: clamp mask of dims {:?} ({:?}), expected u8 {want:?}",
                self.clamps.dims(),
                self.clamps.dtype()
            );
        }
        Ok((tokens, out))
    }
}

impl candle_core::InplaceOp1 for ClampFix {
    fn name(&self) -> &'static str {
        "afm-fused-analog-clamp-fix"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (tokens, out) = self.dims()?;
        let held = [&self.g, &self.flags, &self.other];
        let guards: Vec<_> = held.iter().map(|t| t.storage_and_layout()).collect();
        let vals = held_f32s(&guards, &["g", "flags", "other"])?;
        let mask_guard = self.clamps.storage_and_layout();
        let clamps = match (&*mask_guard.0, mask_guard.1.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::U8(v)), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!(
                "fused analog op: the clamp mask is not contiguous u8 on the CPU"
            ),
        };
        if l.dims().len() != 3 {
            candle_core::bail!(
                "fused analog op: the CPU clamp correction takes a blocked gradient (blocks, \
                 rows, {}), got dims {:?}",
                self.blocks.r,
                l.dims()
            );
        }
        let buf = crate::tile::op::cpu_f32s_mut("fused analog op", dst, l, "the gradient")?;
        let ops = [vals[0], vals[1], vals[2]];
        cpu::clamp_fix(buf, self.target, ops, clamps, (tokens, out, self.blocks.r));
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dst: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        cuda::clamp_fix(self, dst, l)
    }
}

/// [`ClampFix`] of x's gradient (the op's tensor) and of W's (`gw`) in one launch on the GPU:
/// where few outputs clamp, each correction is a few memory latencies long whatever its size,
/// and one grid of both overlaps them. The GPU's path only; the CPU takes the two
/// [`ClampFix`]es ([`ClampFixPair::w`] is W's).
#[derive(Debug, Clone)]
pub struct ClampFixPair {
    /// The correction of x's gradient (target [`FixTarget::X`]): its g, clamp mask and flags
    /// serve both.
    pub x: ClampFix,
    /// xb (nb, T, r), the other operand of W's correction.
    pub xb: Tensor,
    /// W's gradient (gwb or gw), corrected in place through its storage: a fresh product that
    /// no other tensor (the op's included) shares.
    pub gw: Tensor,
}

impl ClampFixPair {
    /// The correction of W's gradient as a [`ClampFix`] of its own.
    pub fn w(&self) -> ClampFix {
        ClampFix {
            target: FixTarget::W,
            other: self.xb.clone(),
            ..self.x.clone()
        }
    }
}

impl candle_core::InplaceOp1 for ClampFixPair {
    fn name(&self) -> &'static str {
        "afm-fused-analog-clamp-fix-pair"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!(
            "fused analog op: the paired clamp correction runs on the GPU only (the CPU takes              the two ClampFix ops)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dst: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        cuda::clamp_fix_pair(self, dst, l)
    }
}

/// The gradient of x or W of every block (as if no output clamped) put in place, from g (T,
/// out) and the other operand: for [`FixTarget::X`], (g, wb (nb, out, r)) -> gx (T, n_in) with
/// gx[t, start(s) + j] = sum over c of g[t, c] wb[s, c, j]; for [`FixTarget::W`], (g, xb (nb, T,
/// r)) -> gw (out, n_in) with gw[c, start(s) + j] = sum over t of g[t, c] xb[s, t, j]. On the
/// GPU, for blocks of equal length, one strided-batched product writes it there directly (no
/// blocked gradient, no unblocking pass); the CPU path is the plain sum, the reference the tests
/// hold the batched product and the unblocking to.
#[derive(Debug, Clone)]
pub struct DirectGrad {
    /// The row blocks.
    pub blocks: Blocks,
    /// The gradient computed.
    pub target: FixTarget,
}

impl CustomOp2 for DirectGrad {
    fn name(&self) -> &'static str {
        "afm-fused-analog-direct-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.blocks;
        let (gv, other) = (f32s(s1, l1, "g")?, f32s(s2, l2, "the other operand")?);
        let (tokens, n_out, rows) = self.dims(l1, l2)?;
        let mut d = vec![0f32; rows * g.n_in];
        for (row, dr) in d.chunks_mut(g.n_in).enumerate() {
            for s in 0..g.nb {
                for j in 0..g.len(s) {
                    dr[g.start(s) + j] = match self.target {
                        FixTarget::X => (0..n_out)
                            .map(|c| gv[row * n_out + c] * other[(s * n_out + c) * g.r + j])
                            .sum(),
                        FixTarget::W => (0..tokens)
                            .map(|t| gv[t * n_out + row] * other[(s * tokens + t) * g.r + j])
                            .sum(),
                    };
                }
            }
        }
        out(d, (rows, g.n_in))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, _, rows) = self.dims(l1, l2)?;
        let shape = Shape::from((rows, self.blocks.n_in));
        let d = cuda::direct_grad(&self.blocks, self.target, (s1, l1), (s2, l2))?;
        Ok((d, shape))
    }
}

impl DirectGrad {
    /// (tokens, outputs, rows of the result) of g, once the other operand is checked to be
    /// (nb, outputs, r) for X or (nb, tokens, r) for W.
    fn dims(&self, g: &Layout, other: &Layout) -> Result<(usize, usize, usize)> {
        let b = &self.blocks;
        let (tokens, n_out) = match g.dims() {
            &[t, o] => (t, o),
            d => candle_core::bail!("fused analog op: g of dims {d:?}, expected (tokens, outputs)"),
        };
        let (mid, rows, name) = match self.target {
            FixTarget::X => (n_out, tokens, "wb"),
            FixTarget::W => (tokens, n_out, "xb"),
        };
        if other.dims() != [b.nb, mid, b.r] {
            candle_core::bail!(
                "fused analog op: {name} of dims {:?}, expected ({}, {mid}, {})",
                other.dims(),
                b.nb,
                b.r
            );
        }
        Ok((tokens, n_out, rows))
    }
}

/// In place on x's gradient gx (T, n_in) as [`DirectGrad`] wrote it (and [`ClampFix`]
/// corrected it): the DAC's backward, [`Stage::DacGrad`] without the blocked layout. gx is
/// zeroed where |x| > range, and the ranges' gradient (nb, f32) goes to `ranges_grad`. On the
/// GPU only the inputs the DAC's clip mask marks are visited (blocks of equal length); the CPU
/// path reads every input, the reference.
#[derive(Debug, Clone)]
pub struct DacGradInPlace {
    /// The row blocks.
    pub blocks: Blocks,
    /// As in [`Stage::DacGrad`].
    pub used: bool,
    /// Range decay.
    pub decay: f32,
    /// Share of inputs inside above which the decay acts.
    pub min_inside: f32,
    /// The layer's input x (T, n_in), in gx's dtype.
    pub x: Tensor,
    /// The ranges (nb), f32.
    pub ranges: Tensor,
    /// The DAC's clip mask ([`Stage::Dac`]'s `mask`); the GPU path needs it.
    pub mask: Option<Tensor>,
    /// Where the op leaves the ranges' gradient.
    pub ranges_grad: SideOutput,
}

impl candle_core::InplaceOp1 for DacGradInPlace {
    fn name(&self) -> &'static str {
        "afm-fused-analog-dac-grad-in-place"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, l: &Layout) -> Result<()> {
        let g = &self.blocks;
        let guards = [
            self.x.storage_and_layout(),
            self.ranges.storage_and_layout(),
        ];
        let (x, ranges) = match held_f32s(&guards, &["x", "the ranges"])?[..] {
            [x, r] => (x, r),
            _ => unreachable!("two tensors held"),
        };
        let tokens = l.dims()[0];
        if l.dims() != [tokens, g.n_in] || x.len() != tokens * g.n_in || ranges.len() != g.nb {
            candle_core::bail!(
                "fused analog op: x's gradient of dims {:?} with x of {} values and {} ranges, \
                 expected ({tokens}, {}), as many values and {} ranges",
                l.dims(),
                x.len(),
                ranges.len(),
                g.n_in,
                g.nb
            );
        }
        let gx = crate::tile::op::cpu_f32s_mut("fused analog op", dst, l, "x's gradient")?;
        let decay = (self.decay, self.min_inside);
        let gr = cpu::dac_grad_in_place(gx, x, ranges, g, tokens, self.used, decay);
        let dev = candle_core::Device::Cpu;
        self.ranges_grad.put(Tensor::from_vec(gr, g.nb, &dev)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dst: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        cuda::dac_grad_in_place(self, dst, l)
    }
}

/// The f32 values of the tensors an in-place op holds, from their storage guards (which the
/// caller keeps alive), named for the errors.
fn held_f32s<'a>(
    guards: &'a [(StorageRef<'_>, &Layout)],
    names: &[&str],
) -> Result<Vec<&'a [f32]>> {
    guards
        .iter()
        .zip(names)
        .map(|((s, l), name)| match &**s {
            candle_core::Storage::Cpu(c) => f32s(c, l, name),
            _ => candle_core::bail!("fused analog op: {name} is not on the CPU"),
        })
        .collect()
}

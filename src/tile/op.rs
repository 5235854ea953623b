//! The analog MVM as a candle custom op, so it composes with tensors of any leading shape.
//!
//! On the CPU the op is the fused [`analog_mvm`]; on a GPU the layer runs one row block at a
//! time ([`AnalogLayer::forward_blocked`]: cuBLAS products and the `cuda` feature's kernels).
//! The device is chosen at run time from where the input tensor lives.

use super::mvm::analog_mvm;
use super::program::AnalogLayer;
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// The contiguous f32 values of a custom op's CPU input `what`, or an error naming `op`.
pub(crate) fn cpu_f32s<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: {what} must be f32 on the CPU, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// Mutable twin of [`cpu_f32s`], for in-place ops.
pub(crate) fn cpu_f32s_mut<'a>(
    op: &str,
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: {what} must be f32 on the CPU, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// One analog MVM of a programmed layer with static input ranges; `call` numbers the MVM.
pub struct AnalogMvm<'a> {
    /// The programmed layer.
    pub layer: &'a AnalogLayer,
    /// Input range per row block.
    pub ranges: &'a [f32],
    /// Index of this MVM in the layer's sequence (names its noise streams).
    pub call: u64,
}

impl CustomOp1 for AnalogMvm<'_> {
    fn name(&self) -> &'static str {
        "analog-mvm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32s("analog-mvm", storage, layout, "input")?;
        let dims = layout.dims();
        let Some((&n_in, lead)) = dims.split_last() else {
            candle_core::bail!("analog-mvm: input must have at least one dimension")
        };
        if n_in != self.layer.in_features() {
            candle_core::bail!(
                "analog-mvm: input has {n_in} features, the layer expects {}",
                self.layer.in_features()
            )
        }
        let tokens: usize = lead.iter().product();
        let y = analog_mvm(self.layer, x, tokens, self.ranges, self.call)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut out = lead.to_vec();
        out.push(self.layer.out_features());
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Whether CPU MVMs take the blocked path too (`afm eval --blocked-mvm`): the GPU's algorithm
/// on the CPU, to tell what the GPU's other summation order does to a result from a GPU bug.
static BLOCKED_ON_CPU: AtomicBool = AtomicBool::new(false);

/// Makes every CPU MVM of this process take the blocked path (`true`) or the fused op.
pub fn set_blocked_on_cpu(on: bool) {
    BLOCKED_ON_CPU.store(on, Ordering::Relaxed);
}

impl AnalogLayer {
    /// Runs the analog MVM on `x` (..., in) and returns (..., out), without bias: the fused op
    /// on the CPU, the blocked path on other devices (or everywhere after
    /// [`set_blocked_on_cpu`]).
    pub fn forward(&self, x: &Tensor, ranges: &[f32], call: u64) -> Result<Tensor> {
        if !x.device().is_cpu() || BLOCKED_ON_CPU.load(Ordering::Relaxed) {
            return self.forward_blocked(x, ranges);
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(x.apply_op1_no_bwd(&AnalogMvm {
            layer: self,
            ranges,
            call,
        })?)
    }
}

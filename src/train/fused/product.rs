//! The forward's blocked product: yb[s] = xb[s] wb[s]^T for every row block s, each block's
//! partial sums a plane of their own (nb, T, out) for the ADC to read back. The product has a
//! short inner dimension (r = 512 rows at most) and writes nb times the outputs of a plain
//! layer, so the storing of the planes, not the multiplying, sets its pace: on an H100 the
//! cuBLAS default for it (256 x 128 tiles) took 1.17-1.23x the plain product of the same size,
//! and cuBLASLt's algorithms with smaller tiles (more waves of thread blocks) 0.87-0.92 of that
//! default, with the same bits (`benches/gpu/blocked_gemm_algos.cu`, benches/RESULTS.md,
//! session 44). On the GPU this op takes that algorithm (`lt.rs`), and the layer takes this op
//! for bf16 and f16 (f32 keeps candle's matmul until measured); on the CPU the layer keeps
//! candle's matmul, and this op's CPU path is the slow, obvious sum the tests hold it to.

use super::{f32s, out};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// (xb (nb, T, r), wb (nb, out, r)) -> yb (nb, T, out), yb[s, t, c] = sum over j of xb[s, t, j]
/// wb[s, c, j], in the inputs' dtype (f32 accumulation on the GPU).
#[derive(Debug, Clone, Copy)]
pub struct BlockedProduct;

impl BlockedProduct {
    /// (nb, tokens, outputs, r) once the two operands are checked against each other.
    pub fn dims(xb: &Layout, wb: &Layout) -> Result<(usize, usize, usize, usize)> {
        match (xb.dims(), wb.dims()) {
            (&[nb, t, r], &[nbw, o, rw]) if nb == nbw && r == rw => Ok((nb, t, o, r)),
            (x, w) => candle_core::bail!(
                "fused analog op: blocked product of xb {x:?} and wb {w:?}, expected (nb, \
                 tokens, r) and (nb, outputs, r)"
            ),
        }
    }
}

impl CustomOp2 for BlockedProduct {
    fn name(&self) -> &'static str {
        "afm-fused-analog-blocked-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (nb, tokens, n_out, r) = Self::dims(l1, l2)?;
        let (x, w) = (f32s(s1, l1, "xb")?, f32s(s2, l2, "wb")?);
        let mut y = vec![0f32; nb * tokens * n_out];
        for (st, yr) in y.chunks_mut(n_out).enumerate() {
            let s = st / tokens;
            let xr = &x[st * r..][..r];
            for (c, v) in yr.iter_mut().enumerate() {
                let wr = &w[(s * n_out + c) * r..][..r];
                *v = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            }
        }
        out(y, (nb, tokens, n_out))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (nb, tokens, n_out, _) = Self::dims(l1, l2)?;
        let y = super::lt::blocked_product((s1, l1), (s2, l2))?;
        Ok((y, Shape::from((nb, tokens, n_out))))
    }
}

/// The layer's blocked product: [`BlockedProduct`] on the GPU for bf16 and f16 (their
/// reduced-precision switches off, as by default), candle's matmul otherwise.
pub fn blocked_product(xb: &Tensor, wb: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if xb.device().is_cuda() && super::lt::applies(xb.dtype()) {
        return xb
            .contiguous()?
            .apply_op2_no_bwd(&wb.contiguous()?, &BlockedProduct);
    }
    xb.matmul(&wb.transpose(1, 2)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::normal_tensor;

    #[test]
    fn the_sum_equals_candles_batched_matmul_and_refuses_mismatched_blocks() {
        for (i, &(nb, tokens, n_out, r)) in [(1, 1, 1, 1), (3, 17, 9, 64), (2, 5, 33, 288)]
            .iter()
            .enumerate()
        {
            let xb = normal_tensor(2 * i as u64, &[nb, tokens, r]);
            let wb = normal_tensor(2 * i as u64 + 1, &[nb, n_out, r]);
            let got = xb.apply_op2_no_bwd(&wb, &BlockedProduct).unwrap();
            let want = blocked_product(&xb, &wb).unwrap();
            assert_eq!(got.dims(), [nb, tokens, n_out]);
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4 * r as f32);
        }
        let (xb, wb) = (normal_tensor(9, &[2, 4, 8]), normal_tensor(10, &[3, 4, 8]));
        let e = xb.apply_op2_no_bwd(&wb, &BlockedProduct).unwrap_err();
        assert!(e.to_string().contains("expected (nb, tokens, r)"), "{e}");
    }
}

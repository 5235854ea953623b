//! Attention of a few query rows over a long key/value cache on the CPU: decoding's attention.
//!
//! A decode step asks 1 to a few queries per head against every cached key. As batched
//! matmuls, candle copies the cache's strided view into contiguous memory and gemm then packs
//! it again, for a 3 x 64 by 64 x s product per key/value head: the cache crossed memory three
//! times a step. Here each query row reads the keys and values in place, once: scores, softmax
//! and the weighted sum of values per (batch row, key/value head), in parallel over those.

use crate::error::Result;
use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

/// Most query rows per head for which [`attend`] takes this path.
pub const MAX_QUERIES: usize = 16;

/// Softmax attention of queries `q` (b, heads, t, hd) over keys and values `k`, `v` (b, kv
/// heads, s, hd; rows contiguous, any other strides) under an additive `mask` of (t, s) or (b,
/// 1, t, s); heads are grouped by key/value head as in grouped-query attention. Returns (b,
/// heads, t, hd), or `None` where this path does not apply (not the CPU, not f32, more than
/// [`MAX_QUERIES`] queries, a tracked tensor, strided rows or a mask of another shape): the
/// caller then composes the ops.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
    let (b, nh, t, hd) = q.dims4()?;
    let (kb, nkv, s, khd) = k.dims4()?;
    let f32_cpu = |x: &Tensor| x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op();
    let fits = [q, k, v].into_iter().all(f32_cpu)
        && t <= MAX_QUERIES
        && (kb, khd) == (b, hd)
        && v.dims() == k.dims()
        && nkv > 0
        && nh % nkv == 0
        && s > 0
        && k.stride()[3] == 1
        && v.stride()[3] == 1;
    if !fits {
        return Ok(None);
    }
    // The mask as values with the distance between batch rows (0: one mask for all rows).
    let mask = match mask.map(|m| (m, m.dims())) {
        None => None,
        Some((m, d)) if d == [t, s] || d == [b, 1, t, s] => {
            let per_row = if d.len() == 4 { t * s } else { 0 };
            Some((
                m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                per_row,
            ))
        }
        Some(_) => return Ok(None),
    };
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
        return Ok(None);
    };
    let (kd, vd) = (ks.as_slice::<f32>()?, vs.as_slice::<f32>()?);
    let (kst, vst) = (kl.stride(), vl.stride());
    let (k0, v0) = (kl.start_offset(), vl.start_offset());
    let rep = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; b * nh * t * hd];
    out.par_chunks_mut(rep * t * hd)
        .enumerate()
        .for_each(|(item, out)| {
            let (bi, g) = (item / nkv, item % nkv);
            let key = |j: usize| &kd[k0 + bi * kst[0] + g * kst[1] + j * kst[2]..][..hd];
            let value = |j: usize| &vd[v0 + bi * vst[0] + g * vst[1] + j * vst[2]..][..hd];
            let mut p = vec![0f32; s];
            for (row, o) in out.chunks_exact_mut(hd).enumerate() {
                let (h, ti) = (g * rep + row / t, row % t);
                let qr = &q[((bi * nh + h) * t + ti) * hd..][..hd];
                let mrow = mask
                    .as_ref()
                    .map(|(m, per_row)| &m[bi * per_row + ti * s..][..s]);
                let mut top = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    *pj = dot(qr, key(j)) * scale + mrow.map_or(0.0, |m| m[j]);
                    top = top.max(*pj);
                }
                let mut sum = 0f32;
                for pj in p.iter_mut() {
                    *pj = (*pj - top).exp();
                    sum += *pj;
                }
                for (j, &pj) in p.iter().enumerate() {
                    let w = pj / sum;
                    for (ov, &vv) in o.iter_mut().zip(value(j)) {
                        *ov += w * vv;
                    }
                }
            }
        });
    Ok(Some(Tensor::from_vec(
        out,
        (b, nh, t, hd),
        &candle_core::Device::Cpu,
    )?))
}

/// Dot product in 8 lanes (so that it vectorizes), the lanes summed pairwise. Not
/// `few_rows`' fused dot: outside a function compiled for FMA, `mul_add` is a library call.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let body = a.len() / 8 * 8;
    let mut l = [0f32; 8];
    for (ac, bc) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for i in 0..8 {
            l[i] += ac[i] * bc[i];
        }
    }
    let mut s = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for (x, y) in a[body..].iter().zip(&b[body..]) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::normal_tensor;
    use candle_core::{Device, D};

    /// The generic composition (the decoder's, with the key/value heads repeated).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, nh, t, hd) = q.dims4().unwrap();
        let (nkv, s) = (k.dims()[1], k.dims()[2]);
        let q = q.reshape((b, nkv, nh / nkv * t, hd)).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt())).unwrap();
        let mut att = att.reshape((b, nh, t, s)).unwrap();
        if let Some(m) = mask {
            att = att.broadcast_add(m).unwrap();
        }
        candle_nn::ops::softmax(&att, D::Minus1)
            .unwrap()
            .reshape((b, nkv, nh / nkv * t, s))
            .unwrap()
            .matmul(&v.contiguous().unwrap())
            .unwrap()
            .reshape((b, nh, t, hd))
            .unwrap()
    }

    #[test]
    fn few_queries_match_the_composed_attention() {
        // (b, heads, kv heads, t, s, hd, cache capacity): grouped heads, a head size that is
        // not a multiple of 8, the cache a strided view of a larger buffer.
        for (i, &(b, nh, nkv, t, s, hd, cap)) in [
            (1, 2, 2, 1, 1, 8, 1),
            (2, 9, 3, 1, 37, 64, 50),
            (3, 4, 2, 5, 20, 20, 33),
            (1, 6, 1, 16, 70, 16, 70),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let q = normal_tensor(seed, &[b, nh, t, hd]);
            let kbuf = normal_tensor(seed + 1, &[b, nkv, cap, hd]);
            let vbuf = normal_tensor(seed + 2, &[b, nkv, cap, hd]);
            let (k, v) = (kbuf.narrow(2, 0, s).unwrap(), vbuf.narrow(2, 0, s).unwrap());
            // No mask, the decoder's causal (t, s) mask (none for one query) and a per-row (b,
            // 1, t, s) mask with -inf entries.
            let per_row: Vec<f32> = (0..b * t * s)
                .map(|e| {
                    if e % 3 == 1 && e % s != 0 {
                        f32::NEG_INFINITY
                    } else {
                        0.1
                    }
                })
                .collect();
            let masks = [
                None,
                super::super::decoder::causal_mask(t, s - t, &Device::Cpu, DType::F32).unwrap(),
                Some(Tensor::from_vec(per_row, (b, 1, t, s), &Device::Cpu).unwrap()),
            ];
            for (j, m) in masks.iter().enumerate() {
                let got = attend(&q, &k, &v, m.as_ref()).unwrap().expect("applies");
                let want = reference(&q, &k, &v, m.as_ref());
                let diff = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-5, "case {i} mask {j}: max difference {diff}");
            }
        }
        // Too many queries, or another dtype: the caller composes the ops.
        let q = normal_tensor(1, &[1, 2, MAX_QUERIES + 1, 8]);
        let k = normal_tensor(2, &[1, 2, 4, 8]);
        assert!(attend(&q, &k, &k, None).unwrap().is_none());
        let q16 = normal_tensor(1, &[1, 2, 1, 8])
            .to_dtype(DType::F16)
            .unwrap();
        assert!(attend(&q16, &k, &k, None).unwrap().is_none());
    }
}

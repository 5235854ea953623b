//! Choosing the next token: greedy, or temperature with top-k and top-p, from a seeded stream.

use crate::rng::Rng;
use candle_core::{DType, Tensor, D};

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set with this much probability (1: all).
    pub top_p: f32,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };

    /// Picks a token from one row of logits.
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                    if v > b.1 {
                        (i, v)
                    } else {
                        b
                    }
                })
                .0 as u32
        };
        if self.temperature <= 0.0 {
            return argmax();
        }
        let mut idx: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        if idx.is_empty() {
            return argmax();
        }
        // Most likely first, ties by index: a total order, so selecting the top k first and
        // sorting only them gives the same list as sorting everything.
        let order = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        if self.top_k > 0 && self.top_k < idx.len() {
            idx.select_nth_unstable_by(self.top_k - 1, order);
            idx.truncate(self.top_k);
        }
        idx.sort_by(order);
        let top = logits[idx[0]];
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| f64::from((logits[i] - top) / self.temperature).exp())
            .collect();
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = p
                .iter()
                .position(|x| {
                    acc += x;
                    acc >= f64::from(self.top_p)
                })
                .map_or(p.len(), |k| k + 1);
            p.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = p.iter().sum();
        let mut u = f64::from(rng.uniform()) * total;
        for (k, x) in p.iter().enumerate() {
            u -= x;
            if u < 0.0 {
                return idx[k] as u32;
            }
        }
        idx[p.len() - 1] as u32
    }
}

/// Picks one token per row of `logits` (rows, vocab) where they live, without copying them to the
/// host: temperature and top-k as [`Sampling::pick`] (top-p is not supported here), drawn with
/// the Gumbel-max trick (argmax of logits / T + Gumbel noise over the kept tokens samples their
/// softmax) from the device's own generator. For GPUs, where copying a 49152-wide row per token
/// costs more than the model step; the CPU path keeps the per-row seeded streams.
/// Returns the tokens (rows,) as u32 and the number of rows holding a NaN.
pub fn pick_on_device(logits: &Tensor, s: &Sampling) -> candle_core::Result<(Tensor, Tensor)> {
    let l = logits.to_dtype(DType::F32)?;
    let nan_rows = l
        .ne(&l)?
        .max_keepdim(D::Minus1)?
        .to_dtype(DType::F32)?
        .sum_all()?;
    if s.temperature <= 0.0 {
        return Ok((l.argmax(D::Minus1)?, nan_rows));
    }
    let l = (l / f64::from(s.temperature))?;
    let vocab = l.dim(D::Minus1)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, l.shape(), l.device())?;
    let kept = if s.top_k > 0 && s.top_k < vocab {
        let kth = kth_largest(&l, s.top_k)?;
        l.broadcast_ge(&kth)?.where_cond(&l, &neg_inf)?
    } else {
        l
    };
    let u = Tensor::rand(1e-20f32, 1f32, kept.shape(), kept.device())?;
    let gumbel = u.log()?.neg()?.log()?.neg()?;
    Ok(((kept + gumbel)?.argmax(D::Minus1)?, nan_rows))
}

/// The `k`-th largest value (1-based, ties counted) of each row of a (rows, cols) f32 tensor, as
/// (rows, 1): values `>=` it are the row's top k (more only where values tie with it). On CUDA
/// one radix-selection kernel (`kernels/sampling.cu`); on the CPU a partial sort per row, the
/// reference the kernel is tested against.
pub fn kth_largest(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (_, cols) = x.dims2()?;
    if k == 0 || k > cols {
        candle_core::bail!("kth_largest: k = {k} for rows of {cols}");
    }
    x.to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&KthLargest { k })
}

struct KthLargest {
    k: usize,
}

impl candle_core::CustomOp1 for KthLargest {
    fn name(&self) -> &'static str {
        "kth-largest"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("kth_largest: input must be contiguous")
        };
        let v = &s.as_slice::<f32>()?[a..b];
        let out: Vec<f32> = v
            .chunks_exact(cols)
            .map(|row| {
                let mut r = row.to_vec();
                *r.select_nth_unstable_by(self.k - 1, |x, y| y.total_cmp(x))
                    .1
            })
            .collect();
        Ok((candle_core::CpuStorage::F32(out), (rows, 1).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sampling.ptx"));
        let (rows, cols) = l.shape().dims2()?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("kth_largest: input must be contiguous")
        };
        let dev = s.device();
        let x = s.as_cuda_slice::<f32>()?.slice(a..b);
        // SAFETY: the kernel writes every row's value.
        let out = unsafe { dev.alloc::<f32>(rows)? };
        let func = dev.get_or_load_custom_func("row_kth_largest_f32", "afm_sampling", PTX)?;
        let (cols_i, k_i) = (cols as i32, self.k as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = func.builder();
        launch.arg(&x).arg(&out).arg(&cols_i).arg(&k_i);
        // SAFETY: arguments match the kernel's signature; one block per row.
        unsafe { launch.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            (rows, 1).into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Effect, StreamKey};

    fn rng() -> Rng {
        StreamKey::new(1, 2, 3, Effect::Data).rng(0)
    }

    #[test]
    fn greedy_and_degenerate_filters_pick_the_argmax() {
        let l = [0.1, 2.0, -1.0, 1.9];
        assert_eq!(Sampling::GREEDY.pick(&l, &mut rng()), 1);
        let top1 = Sampling {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        };
        let tiny_p = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1e-6,
        };
        let mut r = rng();
        for _ in 0..100 {
            assert_eq!(top1.pick(&l, &mut r), 1);
            assert_eq!(tiny_p.pick(&l, &mut r), 1);
        }
    }

    #[test]
    fn temperature_sampling_follows_softmax_and_filters() {
        let l = [0.0f32, 1.0, 2.0, -10.0];
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let mut counts = [0usize; 4];
        let mut r = rng();
        let n = 200_000;
        for _ in 0..n {
            counts[s.pick(&l, &mut r) as usize] += 1;
        }
        let z: f64 = l.iter().map(|&v| f64::from(v).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = f64::from(l[i]).exp() / z;
            assert!(
                (c as f64 / n as f64 - p).abs() < 0.005,
                "token {i}: {c} vs p {p}"
            );
        }
        // top-k 2 never picks the third most likely token.
        let k2 = Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
        };
        assert!((0..2000).all(|_| k2.pick(&l, &mut r) != 0));
        // top-p 0.7 keeps {2} (p = 0.66) plus {1} (0.24): never 0.
        let p7 = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
        };
        assert!((0..2000).all(|_| p7.pick(&l, &mut r) != 0));
    }
}

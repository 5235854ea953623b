//! The analog MVM composed from tensor ops, one row block at a time: the DAC op, one matmul with
//! the block's programmed weights, and the ADC op that digitizes the partial product and adds it
//! to the output with the tile's drift gain.
//!
//! This is the path a GPU takes (the matmuls are cuBLAS products, the two ops small kernels of
//! `kernels/analog_eval.cu`). Its arithmetic per element is the fused CPU path's
//! ([`super::mvm`]); only the order in which each product sums differs, so an output near an ADC
//! level can land one step away. Per-MVM read and output noise need the CPU's counter-based
//! streams per token and are refused here.

use super::mvm::{adc, quantize, steps};
use super::program::AnalogLayer;
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Tensor};

/// One row block's programmed weights and column constants, on a device.
#[derive(Debug, Clone)]
pub struct DeviceBlock {
    /// Effective weights, out x len.
    pub w: Tensor,
    /// (2, out): w_max per column, then the drift-compensation gain per column.
    pub consts: Tensor,
}

/// DAC of row block (`start`, `len`) of x (tokens, in) with static range `range`.
struct Dac {
    start: usize,
    len: usize,
    range: f32,
    bits: u32,
}

/// out = acc + alpha * ADC(part), per (token, column); consts = (w_max, alpha) per column.
struct AdcAcc {
    lambda: f32,
    beta: f32,
    bits: u32,
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    super::op::cpu_f32s("analog block op", s, l, what)
}

impl Dac {
    fn shape(&self, l: &Layout) -> candle_core::Result<(usize, usize)> {
        let (tokens, n_in) = l.shape().dims2()?;
        if self.start + self.len > n_in {
            candle_core::bail!(
                "analog DAC: block {}..{} outside {n_in} inputs",
                self.start,
                self.start + self.len
            )
        }
        Ok((tokens, n_in))
    }
}

impl CustomOp1 for Dac {
    fn name(&self) -> &'static str {
        "analog-block-dac"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, n_in) = self.shape(l)?;
        let x = f32s(s, l, "input")?;
        let mut q = Vec::with_capacity(tokens * self.len);
        for row in x.chunks(n_in.max(1)).take(tokens) {
            q.extend(
                row[self.start..self.start + self.len]
                    .iter()
                    .map(|&v| quantize(v, self.range, self.bits)),
            );
        }
        Ok((CpuStorage::F32(q), Shape::from((tokens, self.len))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (tokens, n_in) = self.shape(l)?;
        let shape = Shape::from((tokens, self.len));
        let args = super::blocked_cuda::DacArgs {
            tokens,
            n_in,
            start: self.start,
            len: self.len,
            range: self.range,
            steps: steps(self.bits.max(1)),
            bits: self.bits,
        };
        Ok((super::blocked_cuda::dac(s, l, &args)?, shape))
    }
}

impl AdcAcc {
    fn shape(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<(usize, usize)> {
        let (tokens, out) = l1.shape().dims2()?;
        if l2.dims() != [tokens, out] || l3.dims() != [2, out] {
            candle_core::bail!(
                "analog ADC: partial {:?}, accumulator {:?}, constants {:?} do not match",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        Ok((tokens, out))
    }
}

impl CustomOp3 for AdcAcc {
    fn name(&self) -> &'static str {
        "analog-block-adc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, out) = self.shape(l1, l2, l3)?;
        let (part, acc, consts) = (
            f32s(s1, l1, "partial")?,
            f32s(s2, l2, "accumulator")?,
            f32s(s3, l3, "constants")?,
        );
        let (w_max, alpha) = consts.split_at(out);
        let n = steps(self.bits.max(1));
        let half = n / 2.0;
        let mut y = acc.to_vec();
        for (yr, pr) in y.chunks_mut(out.max(1)).zip(part.chunks(out.max(1))) {
            for c in 0..out {
                let q = if self.bits > 0 {
                    let bound = self.lambda * w_max[c] * self.beta;
                    adc(pr[c], bound, (2.0 * bound) / n, half)
                } else {
                    pr[c]
                };
                yr[c] += alpha[c] * q;
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((tokens, out))))
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (tokens, out) = self.shape(l1, l2, l3)?;
        let args = super::blocked_cuda::AdcArgs {
            tokens,
            out,
            lambda: self.lambda,
            beta: self.beta,
            steps: steps(self.bits.max(1)),
            bits: self.bits,
        };
        let y = super::blocked_cuda::adc_acc([(s1, l1), (s2, l2), (s3, l3)], &args)?;
        Ok((y, Shape::from((tokens, out))))
    }
}

impl AnalogLayer {
    /// The layer's row blocks on `dev`: the copy made on the first call for a GPU (programmed
    /// weights do not change), a fresh one for any other device.
    fn device_blocks(&self, dev: &Device) -> Result<Vec<DeviceBlock>> {
        if let Some(b) = self.device_copy.get() {
            if b.first().is_none_or(|d| d.w.device().same_device(dev)) {
                return Ok(b.clone());
            }
        }
        let out = self.out_features();
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                let consts = b.w_max.iter().chain(&b.alpha).copied();
                Ok(DeviceBlock {
                    w: Tensor::from_slice(&b.w, (out, b.len), dev)?,
                    consts: Tensor::from_iter(consts, dev)?.reshape((2, out))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !dev.is_cpu() {
            let _ = self.device_copy.set(blocks.clone());
        }
        Ok(blocks)
    }

    /// The analog MVM of x (..., in) with static input ranges `ranges`, one row block at a
    /// time on x's device (see the module docs); returns (..., out) without bias. An error for
    /// presets with per-MVM read or output noise.
    pub fn forward_blocked(&self, x: &Tensor, ranges: &[f32]) -> Result<Tensor> {
        let cfg = self.cfg;
        if cfg.read_rel > 0.0 || cfg.read_abs > 0.0 || cfg.output_gamma > 0.0 {
            return Err(Error::Value(format!(
                "per-MVM read noise (noise.read_rel {}, noise.read_abs {}) and output noise \
                 (noise.output_gamma {}) are simulated on the CPU only: evaluate this preset \
                 with --device cpu",
                cfg.read_rel, cfg.read_abs, cfg.output_gamma
            )));
        }
        super::mvm::check_ranges(self, ranges)?;
        let dims = x.dims().to_vec();
        let n_in = self.in_features();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(Error::Shape("analog MVM input has no dimensions".into()));
        };
        if last != n_in {
            return Err(Error::Shape(format!(
                "analog MVM input has {last} features, the layer expects {n_in}"
            )));
        }
        let tokens: usize = lead.iter().product();
        let n_out = self.out_features();
        let dev = x.device();
        let x = x
            .to_dtype(DType::F32)?
            .reshape((tokens, n_in))?
            .contiguous()?;
        let mut y = Tensor::zeros((tokens, n_out), DType::F32, dev)?;
        for ((b, d), &beta) in self.blocks.iter().zip(self.device_blocks(dev)?).zip(ranges) {
            let dac = Dac {
                start: b.start,
                len: b.len,
                range: beta,
                bits: cfg.dac_bits,
            };
            let part = x.apply_op1_no_bwd(&dac)?.matmul(&d.w.t()?)?;
            let adc = AdcAcc {
                lambda: cfg.lambda,
                beta,
                bits: cfg.adc_bits,
            };
            y = part.apply_op3_no_bwd(&y, &d.consts, &adc)?;
        }
        let mut shape = lead.to_vec();
        shape.push(n_out);
        Ok(y.reshape(shape)?)
    }
}

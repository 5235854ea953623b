//! Launches of `kernels/analog_eval.cu` (compiled to PTX by `build.rs` under the `cuda`
//! feature) for the blocked analog MVM's DAC and ADC ops.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/analog_eval.ptx"));
const MODULE: &str = "afm_analog_eval";

/// Grid-stride launch over `n` elements.
fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle_core::bail!("analog block op: {what} must be contiguous"),
    }
}

fn i(v: usize) -> i32 {
    v as i32
}

/// The DAC op's sizes and converter.
pub(super) struct DacArgs {
    pub tokens: usize,
    pub n_in: usize,
    pub start: usize,
    pub len: usize,
    pub range: f32,
    pub steps: f32,
    pub bits: u32,
}

/// xq (tokens, len) = DAC of x's row block.
pub(super) fn dac(s: &CudaStorage, l: &Layout, a: &DacArgs) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let x = f32_view(s, l, "input")?;
    let n = a.tokens * a.len;
    let y = unsafe { dev.alloc::<f32>(n)? };
    let func = dev.get_or_load_custom_func("eval_dac", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&x).arg(&y);
    let (t, n_in, start, len, bits) = (i(a.tokens), i(a.n_in), i(a.start), i(a.len), a.bits as i32);
    candle_core::builder_arg!(b, t, n_in, start, len, a.range, a.steps, bits);
    unsafe { b.launch(grid(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// The ADC op's sizes and converter.
pub(super) struct AdcArgs {
    pub tokens: usize,
    pub out: usize,
    pub lambda: f32,
    pub beta: f32,
    pub steps: f32,
    pub bits: u32,
}

/// acc + alpha * ADC(part) for (part, acc, consts).
pub(super) fn adc_acc(args: [(&CudaStorage, &Layout); 3], a: &AdcArgs) -> Result<CudaStorage> {
    let dev = args[0].0.device().clone();
    let part = f32_view(args[0].0, args[0].1, "partial")?;
    let acc = f32_view(args[1].0, args[1].1, "accumulator")?;
    let consts = f32_view(args[2].0, args[2].1, "constants")?;
    let n = a.tokens * a.out;
    let y = unsafe { dev.alloc::<f32>(n)? };
    let func = dev.get_or_load_custom_func("eval_adc_acc", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&part).arg(&acc).arg(&consts).arg(&y);
    let (t, out, bits) = (i(a.tokens), i(a.out), a.bits as i32);
    candle_core::builder_arg!(b, t, out, a.lambda, a.beta, a.steps, bits);
    unsafe { b.launch(grid(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

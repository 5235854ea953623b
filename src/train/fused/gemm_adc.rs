//! Launch of the forward product with the ADC inside ([`super::Stage::Adc`] with `product`):
//! `kernels/gemm_adc.py`, compiled by Triton to `kernels/gemm_adc_sm90_{bf16,f16}.ptx` (committed
//! with the script; the build needs no Triton). A thread block keeps a tile of outputs' partial
//! sums of one row block in registers, levels and clamps them there at the block's end and adds
//! them to a second accumulator, so the (nb, T, out) block planes that the blocked product
//! writes and `adc_sum` reads never reach memory.

use super::PRODUCT_ADC;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};

const PTX_BF16: &str = include_str!("../../../kernels/gemm_adc_sm90_bf16.ptx");
const PTX_F16: &str = include_str!("../../../kernels/gemm_adc_sm90_f16.ptx");

/// Whether `dev` is a Hopper GPU (compute capability 9.0), the one the PTX is for.
pub fn hopper(dev: &CudaDevice) -> bool {
    matches!(dev.cuda_stream().context().compute_capability(), Ok((9, 0)))
}

/// The kernel for the compute dtype's suffix ("bf16" or "f16"), allowed its shared memory.
fn function(dev: &CudaDevice, suf: &str) -> Result<CudaFunction> {
    let ptx = match suf {
        "bf16" => PTX_BF16,
        "f16" => PTX_F16,
        _ => candle_core::bail!("fused analog op: the product with the ADC takes bf16 or f16"),
    };
    let name = format!("gemm_adc_{suf}");
    let func = dev.get_or_load_custom_func(&name, &format!("afm_{name}"), ptx)?;
    func.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        PRODUCT_ADC.shared_bytes as i32,
    )
    .w()?;
    Ok(func.into_cuda_function())
}

/// One launch's operands: xb (nb, T, r) and wb (nb, out, r), and the ADC's bounds and 1 / res
/// (nb, out) from `adc_prep`.
pub struct Operands<'a, T> {
    /// Blocked inputs.
    pub xb: CudaView<'a, T>,
    /// Noisy weight blocks.
    pub wb: CudaView<'a, T>,
    /// The bounds.
    pub bound: &'a CudaSlice<f32>,
    /// Their reciprocal steps.
    pub inv_res: &'a CudaSlice<f32>,
}

/// Launches `gemm_adc_{suf}` for (nb, tokens, out): y (T, out), the clamp flags (zeroed by
/// `adc_prep`) and the clamp mask (u8 (nb, T, out / 8), zeroed here first: the kernel sets
/// only the bits of outputs that clamp). `inv_states` is the ADC's 1 / (2^bits - 2).
pub fn launch<T: DeviceRepr>(
    dev: &CudaDevice,
    suf: &str,
    ops: Operands<'_, T>,
    (y, flags, mask): (
        &mut CudaViewMut<'_, T>,
        &mut CudaViewMut<'_, T>,
        &mut CudaSlice<u8>,
    ),
    (nb, tokens, out): (usize, usize, usize),
    inv_states: f32,
) -> Result<()> {
    let stream = dev.cuda_stream();
    stream.memset_zeros(mask).w()?;
    let func = function(dev, suf)?;
    let i = |v: usize| v as i32;
    let (ft, fo) = (
        i(tokens.div_ceil(super::FLAG_TILE)),
        i(out.div_ceil(super::FLAG_TILE)),
    );
    // The CUDA kernels' adc_window and 2 / (2^bits - 2), as adc_sum takes them.
    let win = 0.5f32 - 4.8e-7f32 * (0.5f32 / inv_states + 3.0f32);
    let two_inv = 2.0f32 * inv_states;
    let (tk, o, n) = (i(tokens), i(out), i(nb));
    // Triton's two scratch pointers (the kernel uses neither: null).
    let (scratch, profile) = (0u64, 0u64);
    let mut b = stream.launch_builder(&func);
    b.arg(&ops.xb)
        .arg(&ops.wb)
        .arg(ops.bound)
        .arg(ops.inv_res)
        .arg(y)
        .arg(flags)
        .arg(mask);
    candle_core::builder_arg!(b, tk, o, n, two_inv, win, ft, fo, scratch, profile);
    let tiles = tokens.div_ceil(PRODUCT_ADC.tile_tokens) * (out / PRODUCT_ADC.tile_out);
    let cfg = LaunchConfig {
        grid_dim: (tiles as u32, 1, 1),
        block_dim: (PRODUCT_ADC.threads, 1, 1),
        shared_mem_bytes: PRODUCT_ADC.shared_bytes,
    };
    // SAFETY: the arguments match the kernel's parameters in order and type; the operands and
    // outputs hold what (nb, tokens, out) and the kernel's rows say (checked by the caller).
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

//! Launches of `kernels/analog_train.cu` (compiled to PTX by `build.rs` under the `cuda`
//! feature) for the fused stages; no host synchronization anywhere.

use super::{Blocks, ClampFix, ClampFixPair, DacGradInPlace, FixTarget, FusedOp, Stage, FLAG_TILE};
use crate::rng::{layer_key, Effect};
use crate::train::layer::NoiseShape;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys as cublas_sys;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, StorageRef, Tensor,
};
use std::collections::hash_map::{Entry, HashMap};
use std::sync::{Mutex, OnceLock};

/// `f::<T>(args.., suffix)` for a dtype the kernels take (f32, bf16, f16), the kernels' name
/// suffix last; other dtypes are refused.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($a:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($a,)* "f32"),
            DType::BF16 => $f::<half::bf16>($($a,)* "bf16"),
            DType::F16 => $f::<half::f16>($($a,)* "f16"),
            d => candle_core::bail!("fused analog op: {d:?} is not supported (f32, bf16, f16)"),
        }
    };
}

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/analog_train.ptx"));
const MODULE: &str = "afm_analog_train";

/// Threads per block of every kernel (the range reduction's shared arrays hold 256).
const THREADS: u32 = 256;

/// Numbers of row blocks for which the ADC of bf16 and f16 outputs runs `adc_sum_staged`
/// (every block's outputs copied into shared memory before they are summed): faster there,
/// not at 2 or 8 and more blocks (`kernels/adc_sum.cuh`; at most `ADC_STAGED_MAX`).
const ADC_STAGED_BLOCKS: std::ops::RangeInclusive<usize> = 3..=4;

/// Thread blocks `dac_grad` aims for (tokens split into chunks per row block): a few per SM,
/// since each holds only r / 8 threads.
const PARTIAL_BLOCKS: usize = 2048;

/// Channels per thread block of `noisy_wblocks` (NOISE_ROWS in the kernel): one per warp of
/// [`THREADS`].
const NOISE_ROWS: usize = THREADS as usize / 32;

/// Token rows per thread of `dac_fwd` (DAC_ROWS in the kernel), their loads in flight together.
const DAC_ROWS: usize = 4;

/// Slots of the grid scratch that `dac_fwd` uses: the clipped count and the blocks done.
const SYNC_SLOTS_DAC: usize = 2;

/// Runs `launch` with this device's grid scratch (at least `slots` u64, zero): the kernels
/// that finish a sum over their grid in its last block (`grid_last` in the kernels) count
/// there and leave it zero, so no launch needs a memset or a kernel to finish its sum. One
/// buffer per device, since its stream runs those kernels one after another; the lock is held
/// only while the launch is queued.
fn with_grid_sync<R>(
    dev: &CudaDevice,
    slots: usize,
    launch: impl FnOnce(&mut CudaSlice<u64>) -> Result<R>,
) -> Result<R> {
    type Scratch = Mutex<HashMap<DeviceId, CudaSlice<u64>>>;
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    let mut map = SCRATCH
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("fused analog op: grid scratch poisoned".into()))?;
    let buf = match map.entry(dev.id()) {
        Entry::Occupied(e) if e.get().len() >= slots => e.into_mut(),
        e => {
            let fresh = dev.alloc_zeros::<u64>(slots.next_power_of_two().max(64))?;
            match e {
                Entry::Occupied(mut o) => {
                    o.insert(fresh);
                    o.into_mut()
                }
                Entry::Vacant(v) => v.insert(fresh),
            }
        }
    };
    launch(buf)
}

/// Pushes `a` as the next kernel argument, or a null pointer (the kernels' "not asked for")
/// where it is None.
fn arg_or_null<'a, A>(b: &mut LaunchArgs<'a>, a: Option<A>, null: &'a u64)
where
    LaunchArgs<'a>: PushKernelArg<A> + PushKernelArg<&'a u64>,
{
    match a {
        Some(a) => b.arg(a),
        None => b.arg(null),
    };
}

/// A grid of (x, y) blocks of [`THREADS`] threads.
fn rows(x: usize, y: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid of (x, y) blocks whose threads take eight of `n` row elements each: whole warps, at
/// most [`THREADS`] (short rows leave no thread idle).
fn rows8(x: usize, y: usize, n: usize) -> LaunchConfig {
    let threads = n
        .div_ceil(8)
        .next_multiple_of(32)
        .clamp(32, THREADS as usize);
    LaunchConfig {
        block_dim: (threads as u32, 1, 1),
        ..rows(x, y)
    }
}

/// [`rows8`] for `x` rows of `n` elements in each of `y` groups, with as many rows stacked in
/// a block (`blockDim.y`) as fit in [`THREADS`]: short rows do not make small blocks.
fn rows8_stacked(x: usize, y: usize, n: usize) -> LaunchConfig {
    let cfg = rows8(x, y, n);
    let stack = THREADS / cfg.block_dim.0;
    LaunchConfig {
        grid_dim: (x.div_ceil(stack as usize) as u32, y as u32, 1),
        block_dim: (cfg.block_dim.0, stack, 1),
        ..cfg
    }
}

/// Enough blocks for `n` threads.
fn grid(n: usize) -> LaunchConfig {
    rows(n.div_ceil(THREADS as usize).clamp(1, 65_535 * 16), 1)
}

pub(super) fn slice<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("fused analog op: inputs must be contiguous"),
    }
}

fn i(v: usize) -> i32 {
    v as i32
}

/// Runs `op` on `args` (storage, layout) and returns its output of `shape`.
pub fn run(op: &FusedOp, args: &[(&CudaStorage, &Layout)], shape: &Shape) -> Result<CudaStorage> {
    let dev = args[0].0.device().clone();
    // The data tensors (first argument first) share one dtype; ranges, w_max and bounds are f32.
    // The weight noise writes its compute dtype from f32 or compute-dtype weights.
    let dtype = match &op.stage {
        Stage::NoisyWeights { compute, .. } => *compute,
        _ => args[0].0.dtype(),
    };
    by_dtype!(dtype, run_t(op, args, shape, &dev))
}

fn run_t<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
    op: &FusedOp,
    args: &[(&CudaStorage, &Layout)],
    shape: &Shape,
    dev: &CudaDevice,
    suf: &str,
) -> Result<CudaStorage> {
    let g = &op.blocks;
    let f = |name: &str| dev.get_or_load_custom_func(&format!("{name}_{suf}"), MODULE, PTX);
    let n = shape.elem_count();
    let (base, extra, nb, r, n_in) = (i(g.base), i(g.extra), i(g.nb), i(g.r), i(g.n_in));
    let head = i(g.head);
    let t = |k: usize| slice::<T>(args[k].0, args[k].1);
    let f32_arg = |k: usize| slice::<f32>(args[k].0, args[k].1);
    let alloc_t = |n: usize| unsafe { dev.alloc::<T>(n) };
    let wrap_t = |y: CudaSlice<T>| CudaStorage::wrap_cuda_slice(y, dev.clone());
    match &op.stage {
        Stage::Dac {
            used,
            inv_states,
            clips,
            mask,
        } => {
            let (x, ranges) = (t(0)?, f32_arg(1)?);
            let tokens = args[0].1.dims()[0];
            let y = alloc_t(n)?;
            let mask_dims = (g.nb, tokens, g.r.div_ceil(8));
            // Every byte is written (one per thread's eight inputs).
            let bits = match mask {
                Some(_) => Some(unsafe { dev.alloc::<u8>(g.nb * tokens * mask_dims.2)? }),
                None => None,
            };
            let func = f("dac_fwd")?;
            let null = 0u64;
            let prev = match clips.as_ref().and_then(|c| c.prev.as_ref()) {
                Some(p) => Some(Held::new(&[p])?),
                None => None,
            };
            let prev_view = prev.as_ref().map(|h| h.view::<f32>(0)).transpose()?;
            let total = match clips {
                Some(_) => Some(unsafe { dev.alloc::<f32>(1)? }),
                None => None,
            };
            let (inv, dac) = (inv_states.unwrap_or(0.0), i32::from(inv_states.is_some()));
            let (tk, used) = (i(tokens), i32::from(*used));
            with_grid_sync(dev, SYNC_SLOTS_DAC, |sync| {
                let mut b = func.builder();
                b.arg(&x).arg(&ranges).arg(&y);
                arg_or_null(&mut b, total.as_ref().map(|_| sync), &null);
                arg_or_null(&mut b, prev_view.as_ref(), &null);
                arg_or_null(&mut b, total.as_ref(), &null);
                arg_or_null(&mut b, bits.as_ref(), &null);
                candle_core::builder_arg!(b, tk, n_in, base, extra, head, r, inv, used, dac);
                unsafe { b.launch(rows8_stacked(tokens.div_ceil(DAC_ROWS), g.nb, g.r)) }.w()?;
                Ok(())
            })?;
            if let (Some(c), Some(total)) = (clips, total) {
                c.total.put(device_tensor(total, (), dev))?;
            }
            if let (Some(side), Some(bits)) = (mask, bits) {
                side.put(device_tensor(bits, mask_dims, dev))?;
            }
            Ok(wrap_t(y))
        }
        Stage::DacGrad {
            used,
            decay,
            min_inside,
            ranges_grad,
        } => {
            let (gxb, x, ranges) = (t(0)?, t(1)?, f32_arg(2)?);
            let tokens = args[1].1.dims()[0];
            let chunks = token_chunks(tokens, g.nb);
            let part = unsafe { dev.alloc::<f32>(g.nb * chunks * 2)? };
            let gx = alloc_t(n)?;
            let func = f("dac_grad")?;
            let (tk, ch, used) = (i(tokens), i(chunks), i32::from(*used));
            // The shared-memory reduction halves the threads: a power of two.
            let threads =
                g.r.div_ceil(8)
                    .next_power_of_two()
                    .clamp(32, THREADS as usize);
            let cfg = LaunchConfig {
                block_dim: (threads as u32, 1, 1),
                ..rows(chunks, g.nb)
            };
            let gr = unsafe { dev.alloc::<f32>(g.nb)? };
            with_grid_sync(dev, g.nb, |done| {
                let mut b = func.builder();
                b.arg(&gxb).arg(&x).arg(&ranges).arg(&part).arg(&gx);
                candle_core::builder_arg!(b, tk, n_in, base, extra, head, r, ch, used);
                b.arg(&gr).arg(done);
                candle_core::builder_arg!(b, *decay, *min_inside);
                unsafe { b.launch(cfg) }.w()?;
                Ok(())
            })?;
            ranges_grad.put(device_tensor(gr, g.nb, dev))?;
            Ok(wrap_t(gx))
        }
        Stage::NoisyWeights {
            gamma,
            shape: noise,
            seed,
            layer,
            call,
            wmax,
            ..
        } => {
            let out = args[0].1.dims()[0];
            let m = unsafe { dev.alloc::<f32>(g.nb * out)? };
            let y = alloc_t(n)?;
            // f32 master weights go in as they are (the kernel rounds them to T).
            let f32_in = args[0].0.dtype() == DType::F32 && suf != "f32";
            let func = f(if f32_in {
                "noisy_wblocks_f32w"
            } else {
                "noisy_wblocks"
            })?;
            let mut b = func.builder();
            let (w_t, w_f) = if f32_in {
                (None, Some(f32_arg(0)?))
            } else {
                (Some(t(0)?), None)
            };
            match (&w_t, &w_f) {
                (Some(w), _) => b.arg(w),
                (_, Some(w)) => b.arg(w),
                _ => unreachable!("one of the two is set"),
            };
            b.arg(&m).arg(&y);
            let (lk, tag, o) = (layer_key(*seed, *layer), Effect::WeightNoise.tag(), i(out));
            let pcm = i32::from(*noise == NoiseShape::Pcm);
            candle_core::builder_arg!(
                b, lk, tag, *call, o, n_in, base, extra, head, r, *gamma, pcm
            );
            unsafe { b.launch(rows(out.div_ceil(NOISE_ROWS), g.nb)) }.w()?;
            wmax.put(device_tensor(m, (g.nb, out), dev))?;
            Ok(wrap_t(y))
        }
        Stage::Unblock => {
            let gwb = t(0)?;
            let out = args[0].1.dims()[1];
            let y = alloc_t(n)?;
            let func = f("unblock_w")?;
            let mut b = func.builder();
            b.arg(&gwb).arg(&y);
            let o = i(out);
            candle_core::builder_arg!(b, o, n_in, base, extra, head, nb, r);
            unsafe { b.launch(rows8(out, 1, g.r)) }.w()?;
            Ok(wrap_t(y))
        }
        Stage::Adc {
            inv_states,
            lambda,
            bound,
            clamps,
        } => {
            let (yb, wmax, ranges) = (t(0)?, f32_arg(1)?, f32_arg(2)?);
            let d = args[0].1.dims();
            let (nbk, tokens, out) = (i(d[0]), i(d[1]), i(d[2]));
            let (ft, fo) = (i(d[1].div_ceil(FLAG_TILE)), i(d[2].div_ceil(FLAG_TILE)));
            let mut packed = alloc_t(n)?;
            let (mut y, mut flags) = packed.split_at_mut(d[1] * d[2]);
            let nbo = d[0] * d[2];
            let bd = unsafe { dev.alloc::<f32>(nbo)? };
            let inv_res = unsafe { dev.alloc::<f32>(nbo)? };
            let func = f("adc_prep")?;
            let mut b = func.builder();
            b.arg(&wmax)
                .arg(&ranges)
                .arg(&bd)
                .arg(&inv_res)
                .arg(&mut flags);
            let nflags = n - d[1] * d[2];
            let (nbo_i, nfl, inv) = (i(nbo), i(nflags), inv_states.unwrap_or(0.0));
            candle_core::builder_arg!(b, nbo_i, out, nfl, *lambda, inv);
            unsafe { b.launch(grid(nbo.max(nflags))) }.w()?;
            // Every byte is written (one per thread's eight outputs and block).
            let mask_dims = super::clamp_mask_dims(d[0], d[1], d[2]);
            let mask = unsafe { dev.alloc::<u8>(mask_dims.0 * mask_dims.1 * mask_dims.2)? };
            let mut cfg = rows8(d[1], 1, d[2]);
            let staged =
                std::mem::size_of::<T>() == 2 && ADC_STAGED_BLOCKS.contains(&d[0]) && d[2] % 8 == 0;
            if staged {
                cfg.shared_mem_bytes = (d[0] * 16) as u32 * cfg.block_dim.0;
            }
            let func = f(if staged { "adc_sum_staged" } else { "adc_sum" })?;
            let mut b = func.builder();
            b.arg(&yb)
                .arg(&bd)
                .arg(&inv_res)
                .arg(&mut y)
                .arg(&mut flags)
                .arg(&mask);
            let adc = i32::from(inv_states.is_some());
            candle_core::builder_arg!(b, tokens, out, nbk, inv, adc, ft, fo);
            unsafe { b.launch(cfg) }.w()?;
            bound.put(device_tensor(bd, (d[0], d[2]), dev))?;
            clamps.put(device_tensor(mask, mask_dims, dev))?;
            Ok(wrap_t(packed))
        }
    }
}

/// A tensor (no gradient) of `shape` on the GPU from `v`.
fn device_tensor<T: CudaDType>(
    v: CudaSlice<T>,
    shape: impl Into<Shape>,
    dev: &CudaDevice,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(v, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// The GPU storages of the tensors an in-place op holds, borrowed while it runs.
struct Held<'a>(Vec<(StorageRef<'a>, &'a Layout)>);

impl<'a> Held<'a> {
    fn new(ts: &[&'a Tensor]) -> Result<Self> {
        let refs = ts.iter().map(|t| {
            let (s, l) = t.storage_and_layout();
            match &*s {
                Storage::Cuda(_) => Ok((s, l)),
                _ => candle_core::bail!(
                    "fused analog op: a tensor of the backward is not on the GPU"
                ),
            }
        });
        Ok(Held(refs.collect::<Result<_>>()?))
    }

    /// The k-th tensor's elements as `U`.
    fn view<U: CudaDType>(&self, k: usize) -> Result<CudaView<'_, U>> {
        match &*self.0[k].0 {
            Storage::Cuda(c) => slice::<U>(c, self.0[k].1),
            _ => unreachable!("checked by Held::new"),
        }
    }
}

/// Runs `fix` in place on `dst` (gxb or gwb).
pub fn clamp_fix(fix: &ClampFix, dst: &mut CudaStorage, dst_l: &Layout) -> Result<()> {
    by_dtype!(dst.dtype(), clamp_fix_t(fix, dst, dst_l))
}

/// Runs `pair` in place on `dst` (gxb or gx) and on its `gw`, one grid for both.
pub fn clamp_fix_pair(pair: &ClampFixPair, dst: &mut CudaStorage, dst_l: &Layout) -> Result<()> {
    by_dtype!(dst.dtype(), clamp_fix_pair_t(pair, dst, dst_l))
}

/// (element stride of a block, of a row) of a gradient `fix` corrects, of dims `dims`: element
/// (s, row, k) at s * bs + row * rs + k, blocked (nb, rows, r) or, for blocks of equal length,
/// gx (T, n_in) or gw (out, n_in) as DirectGrad wrote it (blocks side by side).
fn fix_strides(fix: &ClampFix, dims: &[usize]) -> Result<(i64, i64)> {
    let (tokens, out) = fix.dims()?;
    let (nb, r) = (fix.blocks.nb, fix.blocks.r);
    let rows = match fix.target {
        FixTarget::X => tokens,
        FixTarget::W => out,
    };
    let (bs, rs) = match *dims {
        [_, rows, _] => (rows * r, r),
        [m, n_in] if m == rows && fix.blocks.uniform() && n_in == nb * r => (r, n_in),
        _ => candle_core::bail!(
            "fused analog op: clamp correction of a {:?} gradient of dims {dims:?}: expected \
             (blocks, {rows}, {r}) or, with blocks of equal length, ({rows}, {})",
            fix.target,
            nb * r
        ),
    };
    Ok((bs as i64, rs as i64))
}

/// `dst`'s elements as a mutable slice (the gradient a correction writes).
fn target_slice<'a, T: CudaDType>(
    dst: &'a mut CudaStorage,
    dst_l: &Layout,
) -> Result<CudaViewMut<'a, T>> {
    let (a, b) = dst_l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("fused analog op: gradient not contiguous".into())
    })?;
    Ok(dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b))
}

fn clamp_fix_t<T: CudaDType + DeviceRepr>(
    fix: &ClampFix,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    suf: &str,
) -> Result<()> {
    let dev = dst.device().clone();
    let held = Held::new(&[&fix.g, &fix.clamps, &fix.flags, &fix.other])?;
    let (g, clamps, flags, other) = (
        held.view::<T>(0)?,
        held.view::<u8>(1)?,
        held.view::<T>(2)?,
        held.view::<T>(3)?,
    );
    let (tokens, out) = fix.dims()?;
    let (ft, fo) = (tokens.div_ceil(FLAG_TILE), out.div_ceil(FLAG_TILE));
    let (bs, rs) = fix_strides(fix, dst_l.dims())?;
    let mut target = target_slice::<T>(dst, dst_l)?;
    let (name, tiles) = match fix.target {
        FixTarget::X => ("clamp_fix_gx", ft),
        FixTarget::W => ("clamp_fix_gw", fo),
    };
    let func = dev.get_or_load_custom_func(&format!("{name}_{suf}"), MODULE, PTX)?;
    let mut bl = func.builder();
    bl.arg(&mut target)
        .arg(&g)
        .arg(&clamps)
        .arg(&flags)
        .arg(&other);
    let (tk, o, rr, ft, fo) = (i(tokens), i(out), i(fix.blocks.r), i(ft), i(fo));
    candle_core::builder_arg!(bl, tk, o, rr, ft, fo, bs, rs);
    unsafe { bl.launch(rows(tiles, fix.blocks.nb)) }.w()?;
    Ok(())
}

fn clamp_fix_pair_t<T: CudaDType + DeviceRepr>(
    pair: &ClampFixPair,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    suf: &str,
) -> Result<()> {
    let dev = dst.device().clone();
    let (fx, fw) = (&pair.x, pair.w());
    if fx.target != FixTarget::X {
        candle_core::bail!("fused analog op: the paired clamp correction's x part has target W");
    }
    let held = Held::new(&[&fx.g, &fx.clamps, &fx.flags, &fx.other, &pair.xb, &pair.gw])?;
    let (g, clamps, flags, wb, xb) = (
        held.view::<T>(0)?,
        held.view::<u8>(1)?,
        held.view::<T>(2)?,
        held.view::<T>(3)?,
        held.view::<T>(4)?,
    );
    // Written by the kernel through the shared guard: gw is the pair's own (see ClampFixPair).
    let gw = held.view::<T>(5)?;
    let (tokens, out) = fx.dims()?;
    let (ft, fo) = (tokens.div_ceil(FLAG_TILE), out.div_ceil(FLAG_TILE));
    let (bsx, rsx) = fix_strides(fx, dst_l.dims())?;
    let (bsw, rsw) = fix_strides(&fw, pair.gw.dims())?;
    let mut gx = target_slice::<T>(dst, dst_l)?;
    let func = dev.get_or_load_custom_func(&format!("clamp_fix_pair_{suf}"), MODULE, PTX)?;
    let mut bl = func.builder();
    bl.arg(&mut gx)
        .arg(&gw)
        .arg(&g)
        .arg(&clamps)
        .arg(&flags)
        .arg(&wb)
        .arg(&xb);
    let (tk, o, rr, fti, foi) = (i(tokens), i(out), i(fx.blocks.r), i(ft), i(fo));
    candle_core::builder_arg!(bl, tk, o, rr, fti, foi, bsx, rsx, bsw, rsw);
    unsafe { bl.launch(rows(ft + fo, fx.blocks.nb)) }.w()?;
    Ok(())
}

/// gx (T, n_in) or gw (out, n_in) for blocks of equal length (`Blocks::uniform`): block s's
/// product (g wb[s], T x r, or g^T xb[s], out x r) written by one strided-batched cuBLAS call
/// straight into columns s * r .. (row stride n_in, batch stride r), so no blocked gradient is
/// unblocked.
pub fn direct_grad(
    blocks: &Blocks,
    target: FixTarget,
    g: (&CudaStorage, &Layout),
    other: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    use cublas_sys::cudaDataType_t as Ty;
    match g.0.dtype() {
        DType::F32 => direct_grad_t::<f32>(blocks, target, g, other, Ty::CUDA_R_32F),
        DType::BF16 => direct_grad_t::<half::bf16>(blocks, target, g, other, Ty::CUDA_R_16BF),
        DType::F16 => direct_grad_t::<half::f16>(blocks, target, g, other, Ty::CUDA_R_16F),
        d => candle_core::bail!("fused analog op: {d:?} is not supported (f32, bf16, f16)"),
    }
}

fn direct_grad_t<T: CudaDType + DeviceRepr>(
    blocks: &Blocks,
    target: FixTarget,
    (gs, gl): (&CudaStorage, &Layout),
    (os, ol): (&CudaStorage, &Layout),
    ty: cublas_sys::cudaDataType_t,
) -> Result<CudaStorage> {
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
    use cublas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let dev = gs.device().clone();
    let (g, other) = (slice::<T>(gs, gl)?, slice::<T>(os, ol)?);
    // DirectGrad checked the other operand's dims against g's.
    let (tokens, out) = (gl.dims()[0], gl.dims()[1]);
    let (nb, r, n_in) = (blocks.nb, blocks.r, blocks.n_in);
    if !blocks.uniform() {
        candle_core::bail!(
            "fused analog op: the direct gradients on the GPU need row blocks of equal length \
             (got {blocks:?})"
        );
    }
    // Column-major, as cuBLAS sees row-major buffers, per block (ld n_in, batch stride r):
    // gx^T (r x T) = wb[s]^T (r x out, ld r) times g^T (out x T, ld out); gw^T (r x out) =
    // xb[s]^T (r x T, ld r) times g (T x out: g^T's buffer, ld out, transposed). g is shared by
    // all blocks (batch stride 0). f32 takes TF32 where candle's own products do.
    let (rows, opb, k, stride) = match target {
        FixTarget::X => (tokens, CUBLAS_OP_N, out, out * r),
        FixTarget::W => (out, CUBLAS_OP_T, tokens, tokens * r),
    };
    let mut d = unsafe { dev.alloc::<T>(rows * n_in)? };
    let stream = dev.cuda_stream();
    // The guards record the product on the buffers' streams when they drop, after the launch.
    let (op, o_sync) = other.device_ptr(&stream);
    let (gp, g_sync) = g.device_ptr(&stream);
    let (cp, c_sync) = d.device_ptr_mut(&stream);
    gemm_batched(
        &dev,
        ty,
        (CUBLAS_OP_N, opb),
        (r, rows, k, nb),
        [(op, r, stride), (gp, out, 0), (cp, n_in, r)],
    )
    .map_err(|e| {
        candle_core::Error::Msg(format!(
            "fused analog op: {target:?} gradient product: {e:?}"
        ))
    })?;
    drop((o_sync, g_sync, c_sync));
    Ok(CudaStorage::wrap_cuda_slice(d, dev))
}

/// A device buffer's address, its leading dimension and its batch stride (elements).
pub(super) type Operand = (u64, usize, usize);

/// C = op_a(A) op_b(B) for `batch` (m x n) matrices in cuBLAS's column-major terms (as it sees
/// our row-major buffers), [A, B, C] given as [`Operand`]s, by cuBLAS's default algorithm with
/// f32 accumulation; f32 operands take TF32 where candle's own products do. The caller holds
/// the buffers' stream guards across the call.
pub(super) fn gemm_batched(
    dev: &CudaDevice,
    ty: cublas_sys::cudaDataType_t,
    (op_a, op_b): (cublas_sys::cublasOperation_t, cublas_sys::cublasOperation_t),
    (m, n, k, batch): (usize, usize, usize, usize),
    [a, b, c]: [Operand; 3],
) -> std::result::Result<(), candle_core::cuda_backend::cudarc::cublas::result::CublasError> {
    let compute = if ty == cublas_sys::cudaDataType_t::CUDA_R_32F
        && candle_core::cuda_backend::gemm_reduced_precision_f32()
    {
        cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let (alpha, beta) = (1f32, 0f32);
    let blas = dev.cublas_handle();
    let i = |v: usize| v as std::ffi::c_int;
    unsafe {
        candle_core::cuda_backend::cudarc::cublas::result::gemm_strided_batched_ex(
            *blas.handle(),
            op_a,
            op_b,
            i(m),
            i(n),
            i(k),
            (&alpha as *const f32).cast(),
            a.0 as *const _,
            ty,
            i(a.1),
            a.2 as i64,
            b.0 as *const _,
            ty,
            i(b.1),
            b.2 as i64,
            (&beta as *const f32).cast(),
            c.0 as *mut _,
            ty,
            i(c.1),
            c.2 as i64,
            i(batch),
            compute,
            cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
}

/// Runs `op` in place on gx (T, n_in): `dac_grad_sparse` over the clip mask's set bits, and
/// the ranges' gradient in the same kernel.
pub fn dac_grad_in_place(op: &DacGradInPlace, dst: &mut CudaStorage, l: &Layout) -> Result<()> {
    by_dtype!(dst.dtype(), dac_grad_in_place_t(op, dst, l))
}

fn dac_grad_in_place_t<T: CudaDType + DeviceRepr>(
    op: &DacGradInPlace,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    suf: &str,
) -> Result<()> {
    let dev = dst.device().clone();
    let g = &op.blocks;
    let Some(mask) = &op.mask else {
        candle_core::bail!("fused analog op: the DAC's backward in place needs the clip mask")
    };
    let tokens = dst_l.dims()[0];
    let rb = g.r.div_ceil(8);
    if !g.uniform()
        || dst_l.dims() != [tokens, g.n_in]
        || op.x.dims() != [tokens, g.n_in]
        || mask.dims() != [g.nb, tokens, rb]
    {
        candle_core::bail!(
            "fused analog op: the DAC's backward in place takes gx and x ({tokens}, {}) and a \
             mask ({}, {tokens}, {rb}) over blocks of equal length; got gx {:?}, x {:?}, mask \
             {:?}, blocks {g:?}",
            g.n_in,
            g.nb,
            dst_l.dims(),
            op.x.dims(),
            mask.dims()
        );
    }
    let held = Held::new(&[&op.x, &op.ranges, mask])?;
    let (x, ranges, bits) = (
        held.view::<T>(0)?,
        held.view::<f32>(1)?,
        held.view::<u8>(2)?,
    );
    let (a, b) = dst_l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("fused analog op: x's gradient not contiguous".into())
    })?;
    let mut gx = dst.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
    let chunks = token_chunks(tokens, g.nb);
    let part = unsafe { dev.alloc::<f32>(g.nb * chunks * 2)? };
    let func = dev.get_or_load_custom_func(&format!("dac_grad_sparse_{suf}"), MODULE, PTX)?;
    let (tk, n_in, r, ch, used) = (i(tokens), i(g.n_in), i(g.r), i(chunks), i32::from(op.used));
    let gr = unsafe { dev.alloc::<f32>(g.nb)? };
    with_grid_sync(&dev, g.nb, |done| {
        let mut bl = func.builder();
        bl.arg(&mut gx).arg(&x).arg(&bits).arg(&ranges).arg(&part);
        candle_core::builder_arg!(bl, tk, n_in, r, ch, used);
        bl.arg(&gr).arg(done);
        candle_core::builder_arg!(bl, op.decay, op.min_inside);
        unsafe { bl.launch(rows(chunks, g.nb)) }.w()?;
        Ok(())
    })?;
    op.ranges_grad.put(device_tensor(gr, g.nb, &dev))
}

/// Chunks of tokens per row block of the DAC's backward: enough thread blocks to fill the GPU
/// (`dac_grad`'s are short: r / 8 threads).
fn token_chunks(tokens: usize, nb: usize) -> usize {
    tokens.clamp(1, (PARTIAL_BLOCKS / nb).max(128))
}

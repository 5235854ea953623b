//! Launches of `kernels/train_ops.cu` (compiled to PTX by `build.rs` under the `cuda` feature);
//! no host synchronization.

use super::cpu::AdamConsts;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/train_ops.ptx"));
const MODULE: &str = "afm_train_ops";

fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle_core::bail!("fused step op: inputs must be contiguous"),
    }
}

/// `n` blocks of `threads` threads.
fn blocks(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, eight rows per block.
fn warp_rows(rows: usize) -> LaunchConfig {
    blocks(rows.div_ceil(8), 256)
}

/// A grid-stride launch over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    blocks(n.div_ceil(256).min(65_535 * 8), 256)
}

pub fn causal_softmax(
    x: &CudaStorage,
    l: &Layout,
    rows: usize,
    t: usize,
    s: usize,
    scale: f32,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let xv = view(x, l)?;
    let y = unsafe { dev.alloc::<f32>(rows * s) }?;
    let f = dev.get_or_load_custom_func("causal_softmax_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv).arg(&y);
    candle_core::builder_arg!(b, rows as i64, t as i32, s as i32, (s - t) as i32, scale);
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

pub fn causal_softmax_grad(
    y: &CudaStorage,
    ly: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    rows: usize,
    s: usize,
    scale: f32,
) -> Result<CudaStorage> {
    let dev = y.device().clone();
    let (yv, gv) = (view(y, ly)?, view(g, lg)?);
    let dx = unsafe { dev.alloc::<f32>(rows * s) }?;
    let f = dev.get_or_load_custom_func("causal_softmax_grad_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&yv).arg(&gv).arg(&dx);
    candle_core::builder_arg!(b, rows as i64, s as i32, scale);
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

pub fn kl_rows(
    t: &CudaStorage,
    lt: &Layout,
    s: &CudaStorage,
    ls: &Layout,
    rows: usize,
    v: usize,
    inv_t: f32,
) -> Result<CudaStorage> {
    let dev = t.device().clone();
    let (tv, sv) = (view(t, lt)?, view(s, ls)?);
    let kl = unsafe { dev.alloc::<f32>(rows) }?;
    let f = dev.get_or_load_custom_func("kl_rows_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&tv).arg(&sv).arg(&kl);
    candle_core::builder_arg!(b, v as i32, inv_t);
    unsafe { b.launch(blocks(rows, 1024)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(kl, dev))
}

pub fn kl_grad(
    args: [(&CudaStorage, &Layout); 3],
    rows: usize,
    v: usize,
    inv_t: f32,
) -> Result<CudaStorage> {
    let dev = args[0].0.device().clone();
    let (tv, sv, gv) = (
        view(args[0].0, args[0].1)?,
        view(args[1].0, args[1].1)?,
        view(args[2].0, args[2].1)?,
    );
    let ds = unsafe { dev.alloc::<f32>(rows * v) }?;
    let f = dev.get_or_load_custom_func("kl_grad_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&tv).arg(&sv).arg(&gv).arg(&ds);
    candle_core::builder_arg!(b, v as i32, inv_t);
    unsafe { b.launch(blocks(rows, 1024)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(ds, dev))
}

/// The destination of an in-place op as a mutable view.
fn view_mut<'a>(
    s: &'a mut CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaViewMut<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b)),
        None => candle_core::bail!("fused AdamW: tensors must be contiguous"),
    }
}

pub fn adam_moment(
    m: &mut CudaStorage,
    lm: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    (b, one_b, scale): (f32, f32, f32),
    square: bool,
) -> Result<()> {
    let dev = m.device().clone();
    let n = lm.shape().elem_count();
    let gv = view(g, lg)?;
    let mut mv = view_mut(m, lm)?;
    let f = dev.get_or_load_custom_func(
        if square { "adam_v_f32" } else { "adam_m_f32" },
        MODULE,
        PTX,
    )?;
    let mut bld = f.builder();
    bld.arg(&mut mv).arg(&gv);
    candle_core::builder_arg!(bld, n as i64, b, one_b, scale);
    unsafe { bld.launch(elementwise(n)) }.w()?;
    Ok(())
}

pub fn adam_weights(
    mv: [(&CudaStorage, &Layout); 2],
    w: &mut CudaStorage,
    lw: &Layout,
    k: &AdamConsts,
) -> Result<()> {
    let dev = w.device().clone();
    let n = lw.shape().elem_count();
    let (m, v) = (view(mv[0].0, mv[0].1)?, view(mv[1].0, mv[1].1)?);
    let mut wv = view_mut(w, lw)?;
    let f = dev.get_or_load_custom_func("adam_w_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&mut wv).arg(&m).arg(&v);
    candle_core::builder_arg!(b, n as i64, k.keep, k.ic1, k.ic2, k.eps, k.lr);
    unsafe { b.launch(elementwise(n)) }.w()?;
    Ok(())
}

pub fn rms_norm(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    rows: usize,
    n: usize,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let (xv, wv) = (view(x.0, x.1)?, view(w.0, w.1)?);
    let y = unsafe { dev.alloc::<f32>(rows * n) }?;
    let f = dev.get_or_load_custom_func("rms_norm_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv).arg(&wv).arg(&y);
    candle_core::builder_arg!(b, rows as i64, n as i32, eps);
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

pub fn rms_norm_grad(
    args: [(&CudaStorage, &Layout); 3],
    rows: usize,
    n: usize,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = args[0].0.device().clone();
    let (xv, wv, gv) = (
        view(args[0].0, args[0].1)?,
        view(args[1].0, args[1].1)?,
        view(args[2].0, args[2].1)?,
    );
    let out = unsafe { dev.alloc::<f32>(2 * rows * n) }?;
    let f = dev.get_or_load_custom_func("rms_norm_grad_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv).arg(&wv).arg(&gv).arg(&out);
    candle_core::builder_arg!(b, rows as i64, n as i32, eps);
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub fn clip_rows(w: &mut CudaStorage, l: &Layout, rows: usize, n: usize, alpha: f32) -> Result<()> {
    let dev = w.device().clone();
    let mut wv = view_mut(w, l)?;
    let f = dev.get_or_load_custom_func("clip_rows_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&mut wv);
    candle_core::builder_arg!(b, rows as i64, n as i32, alpha);
    unsafe { b.launch(warp_rows(rows)) }.w()?;
    Ok(())
}

/// One launch of an element-wise kernel over `n` outputs (`per` f32 outputs per element) whose
/// arguments are `ins`, then `n` as i64.
fn elementwise_op(
    name: &str,
    ins: &[(&CudaStorage, &Layout)],
    n: usize,
    per: usize,
) -> Result<CudaStorage> {
    let dev = ins[0].0.device().clone();
    let views = ins
        .iter()
        .map(|(s, l)| view(s, l))
        .collect::<Result<Vec<_>>>()?;
    let out = unsafe { dev.alloc::<f32>(per * n) }?;
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let mut b = f.builder();
    for v in &views {
        b.arg(v);
    }
    b.arg(&out);
    candle_core::builder_arg!(b, n as i64);
    unsafe { b.launch(elementwise(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub fn swiglu(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    n: usize,
) -> Result<CudaStorage> {
    elementwise_op("swiglu_f32", &[a, b], n, 1)
}

pub fn swiglu_grad(args: [(&CudaStorage, &Layout); 3], n: usize) -> Result<CudaStorage> {
    elementwise_op("swiglu_grad_f32", &args, n, 2)
}

pub fn rope(
    args: [(&CudaStorage, &Layout); 3],
    rows: usize,
    t: usize,
    h: usize,
    inverse: bool,
) -> Result<CudaStorage> {
    let dev = args[0].0.device().clone();
    let (x, c, s) = (
        view(args[0].0, args[0].1)?,
        view(args[1].0, args[1].1)?,
        view(args[2].0, args[2].1)?,
    );
    let y = unsafe { dev.alloc::<f32>(rows * 2 * h) }?;
    let f = dev.get_or_load_custom_func("rope_f32", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&x).arg(&c).arg(&s).arg(&y);
    candle_core::builder_arg!(b, rows as i64, t as i32, h as i32, i32::from(inverse));
    unsafe { b.launch(elementwise(rows * h)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

//! The forward's blocked product ([`super::product::BlockedProduct`]) through cuBLASLt. For
//! each shape and dtype, the first call asks cuBLASLt's heuristic for its candidate algorithms
//! and keeps, among those that sum each output in one pass (no split of the inner dimension, so
//! every candidate gives the bits the default gives), the one with the most waves of thread
//! blocks: the smaller tiles that store the planes faster (0.87-0.92 of cuBLAS's default time
//! on an H100 at the release shapes, session 44). The choice depends on the shape and the
//! cuBLAS build only, never on a timing, so it is the same in every run; no host
//! synchronization. Where cuBLASLt offers no such algorithm, cuBLAS's default runs as in
//! candle's matmul.

use super::product::BlockedProduct;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys as cublas_sys;
use candle_core::cuda_backend::cudarc::cublaslt::sys;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// Most candidates asked of the heuristic (it offered 8 at each release shape).
const CANDIDATES: usize = 16;

/// Workspace a candidate may ask for: the one-pass algorithms asked for 4 bytes.
const MAX_WORKSPACE: usize = 1 << 20;

/// Whether the layer takes this op for `dtype`: bf16 and f16 with f32 accumulation (their
/// reduced-precision switches off, as candle's default), where the choice was measured. f32
/// (the SmolLM2 recipe's TF32 products, at shapes of 2-3 blocks) keeps candle's matmul until
/// the choice is measured there; the op itself computes f32 too, as the tests check.
pub fn applies(dtype: DType) -> bool {
    use candle_core::cuda_backend as cb;
    match dtype {
        DType::BF16 => !cb::gemm_reduced_precision_bf16(),
        DType::F16 => !cb::gemm_reduced_precision_f16(),
        _ => false,
    }
}

/// One shape's descriptors and chosen algorithm, kept for the process (a few per layer shape).
struct Plan {
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    /// None: no one-pass algorithm offered; cuBLAS's default runs instead.
    algo: Option<(sys::cublasLtMatmulAlgo_t, usize)>,
}

// The descriptors are plain host structs that cuBLASLt only reads once built; each plan is
// used under the cache's lock.
unsafe impl Send for Plan {}

/// (device ordinal, dtype, TF32 on, nb, tokens, outputs, r).
type Key = (usize, DType, bool, usize, usize, usize, usize);

fn plans() -> &'static Mutex<HashMap<Key, Plan>> {
    static PLANS: OnceLock<Mutex<HashMap<Key, Plan>>> = OnceLock::new();
    PLANS.get_or_init(Default::default)
}

fn ok(s: sys::cublasStatus_t, what: &str) -> Result<()> {
    match s {
        sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        s => candle_core::bail!("fused analog op: cuBLASLt {what}: {s:?}"),
    }
}

/// A column-major matrix of rows x cols (leading dimension rows), `batch` of them `stride`
/// elements apart.
fn layout(
    ty: sys::cudaDataType,
    (rows, cols, batch, stride): (usize, usize, usize, usize),
) -> Result<sys::cublasLtMatrixLayout_t> {
    let mut l = std::ptr::null_mut();
    let (batch, stride) = (batch as i32, stride as i64);
    unsafe {
        ok(
            sys::cublasLtMatrixLayoutCreate(&mut l, ty, rows as u64, cols as u64, rows as i64),
            "layout",
        )?;
        let attr = sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT;
        ok(
            sys::cublasLtMatrixLayoutSetAttribute(l, attr, ptr(&batch), 4),
            "batch count",
        )?;
        let attr =
            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET;
        ok(
            sys::cublasLtMatrixLayoutSetAttribute(l, attr, ptr(&stride), 8),
            "batch stride",
        )?;
    }
    Ok(l)
}

fn ptr<T>(v: &T) -> *const c_void {
    (v as *const T).cast()
}

fn algo_attr(
    a: &sys::cublasLtMatmulAlgo_t,
    what: sys::cublasLtMatmulAlgoConfigAttributes_t,
) -> i32 {
    let (mut v, mut n) = (0i32, 0usize);
    let s = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(a, what, (&mut v as *mut i32).cast(), 4, &mut n)
    };
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        v
    } else {
        -1
    }
}

impl Plan {
    /// The descriptors in cuBLAS's column-major terms, one strided batch of nb: D = A^T B with
    /// A = wb[s]'s buffer seen as (r x out), B = xb[s]'s as (r x T) and D = yb[s]'s as (out x
    /// T), which is yb[s] (T x out) row-major.
    fn new(
        ty: sys::cudaDataType,
        tf32: bool,
        (nb, tokens, n_out, r): (usize, usize, usize, usize),
    ) -> Result<Self> {
        use sys::cublasComputeType_t::{CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32};
        let mut handle = std::ptr::null_mut();
        ok(unsafe { sys::cublasLtCreate(&mut handle) }, "handle")?;
        let mut desc = std::ptr::null_mut();
        let compute = if tf32 {
            CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            CUBLAS_COMPUTE_32F
        };
        let scale = sys::cudaDataType::CUDA_R_32F;
        let (t, n) = (
            cublas_sys::cublasOperation_t::CUBLAS_OP_T as i32,
            cublas_sys::cublasOperation_t::CUBLAS_OP_N as i32,
        );
        unsafe {
            ok(
                sys::cublasLtMatmulDescCreate(&mut desc, compute, scale),
                "descriptor",
            )?;
            let ta = sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA;
            let tb = sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB;
            ok(
                sys::cublasLtMatmulDescSetAttribute(desc, ta, ptr(&t), 4),
                "transa",
            )?;
            ok(
                sys::cublasLtMatmulDescSetAttribute(desc, tb, ptr(&n), 4),
                "transb",
            )?;
        }
        let a = layout(ty, (r, n_out, nb, n_out * r))?;
        let b = layout(ty, (r, tokens, nb, tokens * r))?;
        let d = layout(ty, (n_out, tokens, nb, tokens * n_out))?;
        let mut plan = Plan {
            handle,
            desc,
            a,
            b,
            d,
            algo: None,
        };
        plan.algo = plan.choose()?;
        Ok(plan)
    }

    /// The one-pass candidate with the most waves (the first of equals).
    fn choose(&self) -> Result<Option<(sys::cublasLtMatmulAlgo_t, usize)>> {
        use sys::cublasLtMatmulAlgoConfigAttributes_t::{
            CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
        };
        let mut pref = std::ptr::null_mut();
        let mut found = 0i32;
        let mut res: [sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] =
            unsafe { std::mem::zeroed() };
        unsafe {
            ok(sys::cublasLtMatmulPreferenceCreate(&mut pref), "preference")?;
            let attr =
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
            let s = sys::cublasLtMatmulPreferenceSetAttribute(pref, attr, ptr(&MAX_WORKSPACE), 8);
            let h = if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    self.desc,
                    self.a,
                    self.b,
                    self.d,
                    self.d,
                    pref,
                    CANDIDATES as i32,
                    res.as_mut_ptr(),
                    &mut found,
                )
            } else {
                s
            };
            sys::cublasLtMatmulPreferenceDestroy(pref);
            // No algorithm for this shape is not an error: cuBLAS's default takes it.
            if h != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Ok(None);
            }
        }
        let one_pass = |c: &&sys::cublasLtMatmulHeuristicResult_t| {
            c.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && algo_attr(&c.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) <= 1
                && algo_attr(&c.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME) == 0
        };
        Ok(res[..found.max(0) as usize]
            .iter()
            .filter(one_pass)
            .fold(
                None::<&sys::cublasLtMatmulHeuristicResult_t>,
                |best, c| match best {
                    Some(b) if b.wavesCount >= c.wavesCount => Some(b),
                    _ => Some(c),
                },
            )
            .map(|c| (c.algo, c.workspaceSize)))
    }
}

/// yb (nb, T, out) = xb (nb, T, r) times each block's wb (nb, out, r) transposed.
pub fn blocked_product(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    use cublas_sys::cudaDataType_t as Ty;
    match x.0.dtype() {
        DType::F32 => product_t::<f32>(x, w, Ty::CUDA_R_32F, sys::cudaDataType::CUDA_R_32F),
        DType::BF16 => {
            product_t::<half::bf16>(x, w, Ty::CUDA_R_16BF, sys::cudaDataType::CUDA_R_16BF)
        }
        DType::F16 => product_t::<half::f16>(x, w, Ty::CUDA_R_16F, sys::cudaDataType::CUDA_R_16F),
        d => candle_core::bail!("fused analog op: {d:?} is not supported (f32, bf16, f16)"),
    }
}

fn product_t<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    ty: cublas_sys::cudaDataType_t,
    lt_ty: sys::cudaDataType,
) -> Result<CudaStorage> {
    let dims = BlockedProduct::dims(xl, wl)?;
    let (nb, tokens, n_out, r) = dims;
    let dev = xs.device().clone();
    let (x, w) = (
        super::cuda::slice::<T>(xs, xl)?,
        super::cuda::slice::<T>(ws, wl)?,
    );
    let dtype = xs.dtype();
    let tf32 = dtype == DType::F32 && candle_core::cuda_backend::gemm_reduced_precision_f32();
    let mut y = unsafe { dev.alloc::<T>(nb * tokens * n_out)? };
    let stream = dev.cuda_stream();
    let key = (
        stream.context().ordinal(),
        dtype,
        tf32,
        nb,
        tokens,
        n_out,
        r,
    );
    let mut cache = plans()
        .lock()
        .map_err(|_| candle_core::Error::Msg("fused analog op: cuBLASLt plans poisoned".into()))?;
    let plan = match cache.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(Plan::new(lt_ty, tf32, dims)?),
    };
    let (alpha, beta) = (1f32, 0f32);
    // The guards record the product on the buffers' streams when they drop, after the launch.
    let (xp, x_sync) = x.device_ptr(&stream);
    let (wp, w_sync) = w.device_ptr(&stream);
    let (yp, y_sync) = y.device_ptr_mut(&stream);
    match plan.algo {
        Some((algo, ws_bytes)) => {
            let mut ws_buf = unsafe { dev.alloc::<u8>(ws_bytes.max(1))? };
            let (wsp, ws_sync) = ws_buf.device_ptr_mut(&stream);
            let s = unsafe {
                sys::cublasLtMatmul(
                    plan.handle,
                    plan.desc,
                    ptr(&alpha),
                    wp as *const c_void,
                    plan.a,
                    xp as *const c_void,
                    plan.b,
                    ptr(&beta),
                    yp as *const c_void,
                    plan.d,
                    yp as *mut c_void,
                    plan.d,
                    &algo,
                    wsp as *mut c_void,
                    ws_bytes,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            };
            drop(ws_sync);
            ok(s, "blocked product")?;
        }
        None => {
            use cublas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
            super::cuda::gemm_batched(
                &dev,
                ty,
                (CUBLAS_OP_T, CUBLAS_OP_N),
                (n_out, tokens, r, nb),
                [
                    (wp, r, n_out * r),
                    (xp, r, tokens * r),
                    (yp, n_out, tokens * n_out),
                ],
            )
            .map_err(|e| {
                candle_core::Error::Msg(format!("fused analog op: blocked product: {e:?}"))
            })?;
        }
    }
    drop((x_sync, w_sync, y_sync));
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

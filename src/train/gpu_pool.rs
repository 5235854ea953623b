//! The GPU's stream-ordered memory pool during training.
//!
//! cudarc allocates with `cuMemAllocAsync` from the device's default pool. By default the pool
//! hands every freed byte back to the device at each synchronization, so the next allocations
//! map memory again; [`retain`] keeps it instead (PyTorch's caching allocator does the same):
//! one analog layer step at d = 8192 x 16384 tokens took 0.85 of the time (benches/RESULTS.md,
//! issue 9). Kept memory must be bounded, though: over a training step of SmolLM2-135M
//! (thousands of allocations of many sizes) the pool grew by about 0.5 GB a step on an H200
//! until the device ran out of memory near step 55 (session 24). So after each step the trainer
//! waits for the stream and [`trim`]s the pool back to the most memory the step had in use
//! (`run.trim_gpu_pool`): what the next step needs stays mapped, the growth goes.

use crate::error::Result;
use candle_core::Device;

/// Waits for `dev`'s stream and returns the default pool's unused memory to the device, down
/// to the most memory in use since the last trim (then starts that count again); a no-op on
/// the CPU.
pub fn trim(dev: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cu) = dev {
        use candle_core::cuda_backend::WrapErr;
        use cuda::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        cu.cuda_stream().synchronize().w()?;
        let pool = cuda::default_pool(cu)?;
        let high = cuda::get(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        // SAFETY: `pool` is the live device's; trimming only releases memory that no
        // allocation holds.
        unsafe { cuda::sys::cuMemPoolTrimTo(pool, high as usize) }
            .result()
            .w()?;
        // Setting the mark to 0 resets it.
        cuda::set(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = dev;
    Ok(())
}

/// Lets `dev`'s default pool keep up to `bytes` of freed memory across synchronizations (its
/// release threshold; the driver's default is 0). A no-op on the CPU.
pub fn retain(dev: &Device, bytes: u64) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cu) = dev {
        use cuda::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        cuda::set(
            cuda::default_pool(cu)?,
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            bytes,
        )?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (dev, bytes);
    Ok(())
}

#[cfg(feature = "cuda")]
mod cuda {
    pub use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::CudaDevice;
    use sys::CUmemPool_attribute as Attr;

    /// The device's default memory pool, the one cudarc's `cuMemAllocAsync` draws from.
    pub fn default_pool(cu: &CudaDevice) -> candle_core::Result<sys::CUmemoryPool> {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from the live
        // context.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, cu.cuda_stream().context().cu_device())
        }
        .result()
        .w()?;
        Ok(pool)
    }

    /// A u64 attribute of `pool` (the byte counts and the release threshold are u64).
    pub fn get(pool: sys::CUmemoryPool, attr: Attr) -> candle_core::Result<u64> {
        let mut v = 0u64;
        // SAFETY: `attr` is a u64 attribute and `v` outlives the call.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) }
            .result()
            .w()?;
        Ok(v)
    }

    /// Sets a u64 attribute of `pool`.
    pub fn set(pool: sys::CUmemoryPool, attr: Attr, value: u64) -> candle_core::Result<()> {
        let mut v = value;
        // SAFETY: `attr` is a u64 attribute and `v` outlives the call.
        unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut v as *mut u64).cast()) }
            .result()
            .w()?;
        Ok(())
    }
}

//! Where a training step's time goes (`[run] profile`).
//!
//! On a GPU the host only queues work, so a host clock read between two phases measures the
//! queueing, not the work. With profiling on, each phase ends by waiting for the device, which
//! makes the phases add up to the step's wall time at the cost of losing the overlap of host
//! and device (so a profiled step runs slower than an unprofiled one). Off, nothing waits.

use crate::error::Result;
use candle_core::Device;
use std::collections::BTreeMap;
use std::time::Instant;

/// The wall time of each named phase of one step, in milliseconds.
pub struct StepPhases {
    dev: Option<Device>,
    last: Instant,
    ms: BTreeMap<String, f64>,
}

impl StepPhases {
    /// Starts the clock of a step; `on = false` makes every call a no-op.
    pub fn new(dev: &Device, on: bool) -> Self {
        StepPhases {
            dev: on.then(|| dev.clone()),
            last: Instant::now(),
            ms: BTreeMap::new(),
        }
    }

    /// Ends `phase` (time since the previous mark, after the device has finished what was
    /// queued); a phase marked again (gradient accumulation) adds up.
    pub fn mark(&mut self, phase: &str) -> Result<()> {
        if let Some(dev) = &self.dev {
            dev.synchronize()?;
            let now = Instant::now();
            *self.ms.entry(phase.to_string()).or_default() += (now - self.last).as_secs_f64() * 1e3;
            self.last = now;
        }
        Ok(())
    }

    /// The phases' times, or `None` when profiling is off.
    pub fn finish(self) -> Option<BTreeMap<String, f64>> {
        self.dev.map(|_| self.ms)
    }
}

/// Starts (`on`) or stops the CUDA profiler's collection (`cuProfilerStart` / `Stop`), after
/// waiting for the device so that the bracket holds exactly the work queued inside it; a
/// no-op on the CPU.
pub fn cuda_profiler(dev: &Device, on: bool) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cu) = dev {
        use candle_core::cuda_backend::cudarc::driver::sys;
        use candle_core::cuda_backend::WrapErr;
        let stream = cu.cuda_stream();
        stream.synchronize().w()?;
        stream.context().bind_to_thread().w()?;
        // SAFETY: plain driver calls on the current context; they only toggle collection.
        unsafe {
            if on {
                sys::cuProfilerStart().result().w()?;
            } else {
                sys::cuProfilerStop().result().w()?;
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (dev, on);
    Ok(())
}

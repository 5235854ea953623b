//! Data-parallel training: N ranks each run the whole student on their share of every batch
//! and, before each optimizer step, sum their gradients through a [`Collective`] so that every
//! rank applies the same averaged update and the weights stay identical everywhere.
//!
//! Two collectives: [`HostGroup`] (in-process ranks that add their tensors in host memory, in
//! rank order, so the result is the same on every rank and in every run; it is how the CPU
//! checks the data-parallel arithmetic) and, with the `nccl` feature, [`NcclGroup`] (one rank
//! per GPU, NCCL all-reduce on the device's own stream, no host copy).

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::sync::{Arc, Condvar, Mutex};

/// A group of ranks that can add tensors element-wise.
pub trait Collective {
    /// This rank (0-based).
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// The element-wise sum over ranks of `t` (f32, the same shape on every rank), on `t`'s
    /// device; every rank must call it in the same order.
    fn sum(&self, t: &Tensor) -> Result<Tensor>;
}

/// One rank alone: sums are the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// The mean over ranks of each tensor (f32 results): one collective call for all of them,
/// over their concatenation.
pub fn average(group: &dyn Collective, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    if group.world() == 1 || tensors.is_empty() {
        return tensors
            .iter()
            .map(|t| Ok(t.to_dtype(DType::F32)?))
            .collect();
    }
    let flat = tensors
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total = (group.sum(&Tensor::cat(&flat, 0)?)? / group.world() as f64)?;
    let mut at = 0;
    tensors
        .iter()
        .map(|t| {
            let n = t.elem_count();
            let part = total.narrow(0, at, n)?.reshape(t.shape())?;
            at += n;
            Ok(part)
        })
        .collect()
}

struct Exchange {
    /// Each rank's contribution to the sum in progress.
    slots: Vec<Option<Vec<f32>>>,
    /// Ranks that have read the finished sum (the slots are reused once all have).
    taken: usize,
    /// Completed sums (wakes the waiters).
    round: u64,
    /// A rank gave up: every waiting or later call fails instead of waiting for it.
    failed: Option<usize>,
}

/// In-process ranks that exchange tensors through host memory (any device).
#[derive(Clone)]
pub struct HostGroup {
    rank: usize,
    world: usize,
    shared: Arc<(Mutex<Exchange>, Condvar)>,
}

impl HostGroup {
    /// `world` connected ranks, to be handed one to each thread.
    pub fn new(world: usize) -> Vec<HostGroup> {
        let shared = Arc::new((
            Mutex::new(Exchange {
                slots: vec![None; world],
                taken: 0,
                round: 0,
                failed: None,
            }),
            Condvar::new(),
        ));
        (0..world)
            .map(|rank| HostGroup {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Marks this rank as failed so that the others stop waiting for it (their next or
    /// current [`Collective::sum`] returns an error).
    pub fn abandon(&self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut ex) = lock.lock() {
            ex.failed.get_or_insert(self.rank);
        }
        cv.notify_all();
    }

    fn wait_err(&self, failed: usize) -> Error {
        Error::Value(format!(
            "data-parallel rank {failed} stopped; rank {} stops too",
            self.rank
        ))
    }
}

impl Collective for HostGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }

    fn sum(&self, t: &Tensor) -> Result<Tensor> {
        let mine = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (lock, cv) = &*self.shared;
        let poisoned = || Error::Value("data-parallel exchange lock poisoned".into());
        let mut ex = lock.lock().map_err(|_| poisoned())?;
        // Wait until the previous sum has been read by every rank before writing a new slot.
        while ex.slots[self.rank].is_some() || ex.taken > 0 {
            if let Some(f) = ex.failed {
                return Err(self.wait_err(f));
            }
            ex = cv.wait(ex).map_err(|_| poisoned())?;
        }
        if let Some(f) = ex.failed {
            return Err(self.wait_err(f));
        }
        if ex.slots.iter().flatten().any(|s| s.len() != mine.len()) {
            ex.failed.get_or_insert(self.rank);
            cv.notify_all();
            return Err(Error::Value(format!(
                "data-parallel rank {}: {} values to sum, other ranks sent another count",
                self.rank,
                mine.len()
            )));
        }
        ex.slots[self.rank] = Some(mine);
        let round = ex.round;
        if ex.slots.iter().all(Option::is_some) {
            ex.round += 1;
            cv.notify_all();
        }
        while ex.round == round {
            if let Some(f) = ex.failed {
                return Err(self.wait_err(f));
            }
            ex = cv.wait(ex).map_err(|_| poisoned())?;
        }
        // Rank order, the same on every rank: every rank gets the same bits.
        let mut acc = vec![0f32; ex.slots[0].as_ref().map_or(0, Vec::len)];
        for s in ex.slots.iter().flatten() {
            for (a, v) in acc.iter_mut().zip(s) {
                *a += v;
            }
        }
        ex.taken += 1;
        if ex.taken == self.world {
            ex.slots.iter_mut().for_each(|s| *s = None);
            ex.taken = 0;
            cv.notify_all();
        }
        drop(ex);
        Ok(Tensor::from_vec(acc, t.shape(), t.device())?)
    }
}

#[cfg(feature = "nccl")]
pub use nccl::{NcclGroup, NcclId};

#[cfg(feature = "nccl")]
mod nccl {
    use super::Collective;
    use crate::error::{Error, Result};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

    /// The group's rendezvous token: made once, handed to every rank.
    #[derive(Debug, Clone, Copy)]
    pub struct NcclId(Id);

    impl NcclId {
        /// A fresh token.
        pub fn new() -> Result<Self> {
            Id::new()
                .map(NcclId)
                .map_err(|e| Error::Value(format!("NCCL: cannot make a group id: {e:?}")))
        }
    }

    /// One rank of an NCCL group, one GPU per rank, summing on the device's stream.
    pub struct NcclGroup {
        comm: Comm,
    }

    impl NcclGroup {
        /// Joins the group as `rank` of `world` on CUDA device `dev`; blocks until every rank
        /// has joined (so each rank calls this from its own thread).
        pub fn join(dev: &Device, rank: usize, world: usize, id: NcclId) -> Result<Self> {
            let stream = dev.as_cuda_device()?.cuda_stream();
            let comm = Comm::from_rank(stream, rank, world, id.0).map_err(|e| {
                Error::Value(format!("NCCL: rank {rank} of {world} cannot join: {e:?}"))
            })?;
            Ok(NcclGroup { comm })
        }
    }

    struct AllSum<'a>(&'a Comm);

    impl CustomOp1 for AllSum<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-sum"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL sums CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("NCCL sum of a non-contiguous tensor")
            };
            let src = s.as_cuda_slice::<f32>()?.slice(a..b);
            let dev = s.device();
            // SAFETY: the all-reduce writes every element before anything reads it.
            let mut dst = unsafe { dev.alloc::<f32>(b - a)? };
            self.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((
                CudaStorage::wrap_cuda_slice(dst, dev.clone()),
                l.shape().clone(),
            ))
        }
    }

    impl Collective for NcclGroup {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world(&self) -> usize {
            self.comm.world_size()
        }
        fn sum(&self, t: &Tensor) -> Result<Tensor> {
            let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
            Ok(t.apply_op1_no_bwd(&AllSum(&self.comm))?)
        }
    }
}

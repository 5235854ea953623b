//! Running many points at once: the work units are (point, chip seed) pairs, each computed on
//! one thread of its own (a one-thread rayon pool, so the tensor engine's and the tile MVM's
//! inner parallelism run serially). A unit's numbers so never depend on how many run beside
//! it: `--jobs 1` and `--jobs N` write the same bytes. One level of parallelism only: units
//! are many (points x seeds) and alike in size, so N workers keep N cores busy without the
//! synchronisation of splitting every matrix product.

use super::run::{failed, run_point, run_seed, seeds, store, stored, Context, PointResult};
use super::spec::{apply, Point};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Which share of a sweep's points one process runs: `index` of `count` (1-based, as in
/// `--shard 2/4`); point p belongs to shard (p mod count) + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based shard number.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole sweep.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Parses `i/n` with 1 <= i <= n.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = |why: &str| {
            Error::Value(format!(
                "--shard `{text}`: {why} (expected i/n with 1 <= i <= n, e.g. 2/4)"
            ))
        };
        let (i, n) = text.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad("not a number"));
        let (index, count) = (num(i)?, num(n)?);
        if count == 0 || index == 0 || index > count {
            return Err(bad("out of range"));
        }
        Ok(Shard { index, count })
    }

    /// Whether point `id` belongs to this shard.
    pub fn has(&self, id: usize) -> bool {
        id % self.count == self.index - 1
    }
}

/// Runs (or loads) `points` with `jobs` workers; `done` sees each point's result as it is
/// stored (in completion order), with whether it was computed now (false: found on disk). Returns the results in the order of `points`. Errors are
/// the output folder's (a point's own failure is recorded in its result).
pub fn run_points(
    cx: &Context,
    points: &[Point],
    out: &Path,
    jobs: usize,
    done: &(dyn Fn(&PointResult, bool) + Sync),
) -> Result<Vec<PointResult>> {
    let seeds = seeds(cx.sweep);
    let results: Mutex<Vec<Option<PointResult>>> = Mutex::new(vec![None; points.len()]);
    let put = |i: usize, r: PointResult, fresh: bool| {
        done(&r, fresh);
        if let Ok(mut v) = results.lock() {
            v[i] = Some(r);
        }
    };
    // Points already stored or failing on their values need no units.
    let mut units = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if let Some(r) = stored(out, p) {
            put(i, r, false);
        } else if let Err(e) = apply(&cx.base, p) {
            let r = failed(p, e.to_string());
            store(out, &r)?;
            put(i, r, true);
        } else {
            units.extend(seeds.iter().map(|&s| (i, s)));
        }
    }
    let left: Vec<AtomicUsize> = points
        .iter()
        .map(|_| AtomicUsize::new(seeds.len()))
        .collect();
    let errors: Vec<Mutex<Option<String>>> = points.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let worker = || -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| Error::Value(format!("cannot start a worker thread: {e}")))?;
        while !stop.load(Ordering::Relaxed) {
            let Some(&(i, seed)) = units.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let p = &points[i];
            if let Err(e) = pool.install(|| run_seed(cx, p, seed, out)) {
                if let Ok(mut slot) = errors[i].lock() {
                    slot.get_or_insert(e.to_string());
                }
            }
            // The last seed of a point to finish completes the point: summary from the stored
            // cells, the chip model, results/NNNN.json.
            if left[i].fetch_sub(1, Ordering::AcqRel) == 1 {
                let error = errors[i].lock().ok().and_then(|mut e| e.take());
                let r = match error {
                    Some(e) => {
                        let r = failed(p, e);
                        store(out, &r)?;
                        r
                    }
                    None => pool.install(|| run_point(cx, p, out))?,
                };
                put(i, r, true);
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                if let Err(e) = worker() {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut f) = fatal.lock() {
                        f.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = fatal.into_inner().ok().flatten() {
        return Err(e);
    }
    results
        .into_inner()
        .map_err(|_| Error::Value("a sweep worker panicked".into()))?
        .into_iter()
        .zip(points)
        .map(|(r, p)| r.ok_or_else(|| Error::Value(format!("point {} was not run", p.id))))
        .collect()
}

//! Sweeps for hardware architects: a base tile preset, a model, tasks and seeds, and a grid (or
//! list) of values for any preset field by its dotted path. Every point is written out before
//! anything runs (`points.jsonl`), so a sweep can be inspected, split and resumed.

pub mod parallel;
pub mod run;
pub mod spec;

pub use parallel::{run_points, Shard};
pub use spec::{Point, SweepFile};

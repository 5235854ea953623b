//! `afm`: analog foundation models on simulated analog in-memory-computing hardware.
//!
//! The crate follows the hardware pipeline: [`device`] models turn target weights into programmed
//! conductances, [`tile`] maps weights onto crossbars and runs the noisy, quantized MVM (and
//! costs it in time and energy), [`chip`] places a whole model on tiles and simulates prefill
//! and decode cycle by cycle, and the later stages (executor, training, evaluation, sweeps)
//! build on these. All randomness comes from the named, seeded streams of [`rng`].

pub mod alloc;
pub mod chip;
pub mod device;
pub mod error;
pub mod eval;
pub mod executor;
pub mod paths;
pub mod quant;
pub mod report;
pub mod rng;
pub mod sweep;
pub mod tile;
pub mod train;

pub use error::{Error, Result};

//! The one integration-test binary: one module per pipeline stage.

/// Same allocator as the binary: large tensors reuse their pages instead of faulting anew.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod chip;
mod common;
#[cfg(feature = "cuda")]
mod cuda;
mod determinism;
mod device;
mod eval;
mod eval_run;
mod eval_samples;
mod executor;
mod gguf;
mod golden;
mod golden_executor;
mod kills;
mod models;
mod parallel;
mod parsers;
mod presets;
mod quant;
mod reliability;
mod rotate;
mod step_ops;
mod sweep;
mod tile;
mod train;
mod train_golden;
mod train_log;

//! The one integration-test binary: one module per pipeline stage.

mod common;
mod device;
mod executor;
mod golden;
mod models;
mod presets;
mod tile;

//! The transformer executor: model manifests, architectures and the layers they map to tiles.
//!
//! Manifests in `models/` give shapes (enough for `afm model info` without weights); `config`,
//! `weights` and `llama` load HF checkpoints into the shared `decoder`, whose projections are
//! digital or analog (`linear`).

pub mod chat;
pub mod config;
pub mod decoder;
pub mod fetch;
pub mod few_queries;
pub mod few_rows;
pub mod gguf;
pub mod gguf_check;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod load;
pub mod manifest;
pub mod rope;
pub mod sampling;
pub mod save;
pub mod tree;
pub mod weights;

pub use manifest::{resolve_model_path, Architecture, LinearShape, Manifest, ModelConfig};

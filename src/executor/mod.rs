//! The transformer executor: model manifests, architectures and the layers they map to tiles.
//!
//! So far: manifests in `models/` and the shapes of every linear layer of the Llama family and
//! Phi-3, enough to map a model onto tiles (`afm model info`) without its weights.

pub mod manifest;

pub use manifest::{resolve_model_path, Architecture, LinearShape, Manifest, ModelConfig};

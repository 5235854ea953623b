//! Evaluation of (analog) models: perplexity now; benchmarks under noise follow.

pub mod perplexity;

pub use perplexity::{perplexity, Perplexity};

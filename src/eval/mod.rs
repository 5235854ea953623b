//! Evaluation of (analog) models: perplexity and lm-eval style multiple-choice scoring.

pub mod multiple_choice;
pub mod perplexity;

pub use perplexity::{perplexity, Perplexity};

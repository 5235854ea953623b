//! Evaluation of (analog) models as lm-evaluation-harness does it: multiple-choice and
//! continuation log-likelihoods, generation with exact match, and perplexity, over seeds
//! (programmed chips) and drift times, resumable, with a paper-style table.

pub mod generation;
pub mod harness;
pub mod hellaswag;
pub mod loglik;
pub mod multiple_choice;
pub mod perplexity;
pub mod report;
pub mod run;
pub mod tasks;

pub use perplexity::{perplexity, Perplexity};

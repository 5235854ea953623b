//! Perplexity over non-overlapping windows (stride = window), as lm-eval's rolling
//! log-likelihood without overlap: each window is scored on its own, without a BOS token, on
//! its positions 1.. (the first token of a window has no context).

use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, KvCache};
use candle_core::{DType, Tensor, D};

/// The result of a perplexity run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// Mean negative log-likelihood per predicted token (nats).
    pub mean_nll: f64,
    /// exp(mean_nll).
    pub ppl: f64,
    /// Tokens predicted.
    pub predicted: usize,
}

/// Perplexity of `ids` in windows of `window` tokens; `progress` is called after each window.
pub fn perplexity(
    model: &Decoder,
    ids: &[u32],
    window: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if window < 2 {
        return Err(Error::Value(format!(
            "perplexity window must be >= 2, got {window}"
        )));
    }
    let (mut nll, mut n) = (0f64, 0usize);
    let chunks: Vec<&[u32]> = ids.chunks(window).filter(|c| c.len() >= 2).collect();
    for (k, chunk) in chunks.iter().enumerate() {
        let x = Tensor::from_slice(chunk, (1, chunk.len()), model.device())?;
        let logits = model
            .forward(&x, &mut KvCache::default())?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let targets = Tensor::from_slice(&chunk[1..], (chunk.len() - 1, 1), logits.device())?;
        let picked = lp
            .narrow(0, 0, chunk.len() - 1)?
            .gather(&targets, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if picked.iter().any(|v| v.is_nan()) {
            return Err(Error::Value(format!("NaN log-likelihood in window {k}")));
        }
        nll -= picked.iter().map(|&v| f64::from(v)).sum::<f64>();
        n += picked.len();
        progress(k + 1, chunks.len());
    }
    if n == 0 {
        return Err(Error::Value("text too short for perplexity".into()));
    }
    let mean_nll = nll / n as f64;
    Ok(Perplexity {
        mean_nll,
        ppl: mean_nll.exp(),
        predicted: n,
    })
}

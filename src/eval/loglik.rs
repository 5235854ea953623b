//! Batched log-likelihood of continuations, the one primitive behind multiple-choice,
//! LAMBADA-style and few-shot scoring.
//!
//! Requests that share a context run that context once and continue its KV cache for all
//! continuations in one right-padded batch; requests with different contexts run as one padded
//! batch of full sequences. Right padding is safe because attention is causal: a valid position
//! never sees a pad. The language-model head runs only on the positions that predict a
//! continuation token, which saves most of its cost on long contexts.

use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, KvCache};
use candle_core::{DType, Device, IndexOp, Tensor, D};

/// Log-likelihood of one continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loglik {
    /// Sum of the continuation tokens' log-probabilities.
    pub sum: f64,
    /// Whether every continuation token is the argmax of its prediction (lm-eval's `is_greedy`).
    pub greedy: bool,
    /// Continuation tokens scored.
    pub tokens: usize,
}

/// Picks the targets' log-probabilities from logit rows (n, vocab); returns the sums and greedy
/// flags of consecutive groups of `lens` rows.
fn pick(logits: &Tensor, targets: &[u32], lens: &[usize]) -> Result<Vec<Loglik>> {
    let logits = logits.to_dtype(DType::F32)?;
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let idx = Tensor::from_slice(targets, (targets.len(), 1), &Device::Cpu)?;
    let picked = lp.gather(&idx, 1)?.flatten_all()?.to_vec1::<f32>()?;
    let best = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    if picked.iter().any(|v| v.is_nan()) {
        return Err(Error::Value("the model produced NaN logits".into()));
    }
    let mut out = Vec::with_capacity(lens.len());
    let mut at = 0;
    for &n in lens {
        let r = at..at + n;
        out.push(Loglik {
            sum: picked[r.clone()].iter().map(|&v| f64::from(v)).sum(),
            greedy: best[r.clone()].iter().zip(&targets[r]).all(|(a, b)| a == b),
            tokens: n,
        });
        at += n;
    }
    Ok(out)
}

fn ids_tensor(rows: &[Vec<u32>]) -> Result<Tensor> {
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0, t - r.len())))
        .collect();
    Ok(Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu)?)
}

/// Hidden rows (batch b, position p) gathered from (batch, tokens, hidden) in the given order.
fn gather_rows(hidden: &Tensor, rows: &[(usize, usize)]) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    let flat = hidden.reshape((b * t, h))?;
    let idx: Vec<u32> = rows.iter().map(|&(i, p)| (i * t + p) as u32).collect();
    let idx = Tensor::from_vec(idx, rows.len(), &Device::Cpu)?;
    Ok(flat.index_select(&idx, 0)?)
}

/// Log-likelihoods of `conts` after one shared, non-empty context `ctx`.
pub fn shared_context(model: &Decoder, ctx: &[u32], conts: &[Vec<u32>]) -> Result<Vec<Loglik>> {
    if ctx.is_empty() {
        return Err(Error::Value(
            "empty context: lm-eval would prepend an end-of-text token".into(),
        ));
    }
    let mut cache = KvCache::default();
    let h = model.forward_hidden(&ids_tensor(&[ctx.to_vec()])?, &mut cache)?;
    let last = h.i((0, ctx.len() - 1))?.unsqueeze(0)?;
    // Row 0 predicts every continuation's first token; the batch rows predict the rest.
    let rest: Vec<Vec<u32>> = conts
        .iter()
        .map(|c| c[..c.len().saturating_sub(1)].to_vec())
        .collect();
    let mut rows = vec![last];
    let mut order: Vec<(usize, usize)> = Vec::new();
    if rest.iter().any(|r| !r.is_empty()) {
        let mut cache = cache.repeat(conts.len())?;
        let hb = model.forward_hidden(&ids_tensor(&rest)?, &mut cache)?;
        for (i, r) in rest.iter().enumerate() {
            order.extend((0..r.len()).map(|p| (i, p)));
        }
        rows.push(gather_rows(&hb, &order)?);
    }
    let logits = model.logits(&Tensor::cat(&rows, 0)?)?;
    // Row order: [last, cont0 pos0.., cont1 pos0.., ...]; rebuild per-continuation groups.
    let (mut targets, mut lens, mut sel) = (Vec::new(), Vec::new(), Vec::new());
    let mut base = 1u32;
    for (i, c) in conts.iter().enumerate() {
        if c.is_empty() {
            lens.push(0);
            continue;
        }
        sel.push(0u32);
        sel.extend((0..c.len() - 1).map(|p| base + p as u32));
        base += rest[i].len() as u32;
        targets.extend_from_slice(c);
        lens.push(c.len());
    }
    if targets.is_empty() {
        return Ok(conts
            .iter()
            .map(|_| Loglik {
                sum: 0.0,
                greedy: true,
                tokens: 0,
            })
            .collect());
    }
    let sel = Tensor::from_vec(sel, targets.len(), &Device::Cpu)?;
    pick(&logits.index_select(&sel, 0)?, &targets, &lens)
}

/// Log-likelihoods of independent (context, continuation) requests in one padded batch.
pub fn batch(model: &Decoder, reqs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Loglik>> {
    if reqs.iter().any(|(c, _)| c.is_empty()) {
        return Err(Error::Value(
            "empty context: lm-eval would prepend an end-of-text token".into(),
        ));
    }
    let seqs: Vec<Vec<u32>> = reqs
        .iter()
        .map(|(c, k)| {
            let mut s = c.clone();
            s.extend_from_slice(k);
            s.truncate(s.len().saturating_sub(1).max(c.len()));
            s
        })
        .collect();
    let h = model.forward_hidden(&ids_tensor(&seqs)?, &mut KvCache::default())?;
    let mut order = Vec::new();
    let (mut targets, mut lens) = (Vec::new(), Vec::new());
    for (i, (c, k)) in reqs.iter().enumerate() {
        order.extend((0..k.len()).map(|p| (i, c.len() - 1 + p)));
        targets.extend_from_slice(k);
        lens.push(k.len());
    }
    if targets.is_empty() {
        return Ok(reqs
            .iter()
            .map(|_| Loglik {
                sum: 0.0,
                greedy: true,
                tokens: 0,
            })
            .collect());
    }
    let logits = model.logits(&gather_rows(&h, &order)?)?;
    pick(&logits, &targets, &lens)
}

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
use candle_core::{DType, Device, Tensor, D};

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
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
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

/// (batch, max length) ids: right-padded, or left-padded (returning the pad per row).
fn ids_tensor(rows: &[Vec<u32>], left: bool, dev: &Device) -> Result<(Tensor, Vec<usize>)> {
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len() * t);
    let mut pads = Vec::with_capacity(rows.len());
    for r in rows {
        let pad = std::iter::repeat_n(0u32, t - r.len());
        if left {
            flat.extend(pad.chain(r.iter().copied()));
        } else {
            flat.extend(r.iter().copied().chain(pad));
        }
        pads.push(t - r.len());
    }
    Ok((Tensor::from_vec(flat, (rows.len(), t), dev)?, pads))
}

/// Hidden rows (batch b, position p) gathered from (batch, tokens, hidden) in the given order.
fn gather_rows(hidden: &Tensor, rows: &[(usize, usize)]) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    let flat = hidden.reshape((b * t, h))?;
    let idx: Vec<u32> = rows.iter().map(|&(i, p)| (i * t + p) as u32).collect();
    let idx = Tensor::from_vec(idx, rows.len(), hidden.device())?;
    Ok(flat.index_select(&idx, 0)?)
}

/// A context and the continuations scored after it.
pub type Group = (Vec<u32>, Vec<Vec<u32>>);

/// Log-likelihoods of every continuation of every group, in two batched passes: the contexts
/// (left-padded, so that each ends at the same position), then all continuations (right-padded)
/// on copies of their context's cache. Each context is run once however many continuations
/// follow it; the head runs only on rows that predict a continuation token.
pub fn grouped(model: &Decoder, groups: &[Group]) -> Result<Vec<Vec<Loglik>>> {
    if groups.iter().any(|(c, _)| c.is_empty()) {
        return Err(Error::Value(
            "empty context: lm-eval would prepend an end-of-text token".into(),
        ));
    }
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let ctxs: Vec<Vec<u32>> = groups.iter().map(|g| g.0.clone()).collect();
    let (x, pads) = ids_tensor(&ctxs, true, model.device())?;
    let t = x.dims()[1];
    let mut cache = KvCache::default();
    let h = model.forward_hidden_padded(&x, &mut cache, &pads)?;
    // Rows of the head's input: each context's last position, then the continuation positions
    // that predict a following continuation token.
    let last: Vec<(usize, usize)> = (0..groups.len()).map(|g| (g, t - 1)).collect();
    let mut rows = vec![gather_rows(&h, &last)?];
    let (mut owner, mut rest, mut row_pads) = (Vec::new(), Vec::new(), Vec::new());
    for (g, (_, conts)) in groups.iter().enumerate() {
        for c in conts {
            owner.push(g as u32);
            rest.push(c[..c.len().saturating_sub(1)].to_vec());
            row_pads.push(pads[g]);
        }
    }
    let mut order = Vec::new();
    if rest.iter().any(|r| !r.is_empty()) {
        let mut cache = cache.select(&owner)?;
        let (xb, _) = ids_tensor(&rest, false, model.device())?;
        let hb = model.forward_hidden_padded(&xb, &mut cache, &row_pads)?;
        for (i, r) in rest.iter().enumerate() {
            order.extend((0..r.len()).map(|p| (i, p)));
        }
        rows.push(gather_rows(&hb, &order)?);
    }
    // Head input rows: [last of group 0.., then continuation rows in `order`].
    let (mut sel, mut targets, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    let mut base = groups.len() as u32;
    let mut k = 0;
    for (g, (_, conts)) in groups.iter().enumerate() {
        for c in conts {
            if !c.is_empty() {
                sel.push(g as u32);
                sel.extend((0..c.len() - 1).map(|p| base + p as u32));
                targets.extend_from_slice(c);
            }
            base += rest[k].len() as u32;
            lens.push(c.len());
            k += 1;
        }
    }
    let flat = if targets.is_empty() {
        lens.iter()
            .map(|_| Loglik {
                sum: 0.0,
                greedy: true,
                tokens: 0,
            })
            .collect()
    } else {
        let logits = model.logits(&Tensor::cat(&rows, 0)?)?;
        let sel = Tensor::from_vec(sel, targets.len(), logits.device())?;
        pick(&logits.index_select(&sel, 0)?, &targets, &lens)?
    };
    let mut it = flat.into_iter();
    Ok(groups
        .iter()
        .map(|(_, conts)| it.by_ref().take(conts.len()).collect())
        .collect())
}

/// Log-likelihoods of `conts` after one shared, non-empty context `ctx`.
pub fn shared_context(model: &Decoder, ctx: &[u32], conts: &[Vec<u32>]) -> Result<Vec<Loglik>> {
    let mut out = grouped(model, &[(ctx.to_vec(), conts.to_vec())])?;
    Ok(out.pop().unwrap_or_default())
}

/// Log-likelihoods of independent (context, continuation) requests in one batch.
pub fn batch(model: &Decoder, reqs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Loglik>> {
    let groups: Vec<Group> = reqs
        .iter()
        .map(|(c, k)| (c.clone(), vec![k.clone()]))
        .collect();
    Ok(grouped(model, &groups)?.into_iter().flatten().collect())
}

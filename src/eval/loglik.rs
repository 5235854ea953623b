//! Batched log-likelihood of continuations, the one primitive behind multiple-choice,
//! LAMBADA-style and few-shot scoring.
//!
//! A batch of requests runs as one tree batch (`executor::tree`): each distinct context once,
//! every continuation after it, packed without padding, so the projections see only real
//! tokens however ragged the lengths. The language-model head runs only on the positions that
//! predict a continuation token, which saves most of its cost on long contexts.

use crate::error::{Error, Result};
use crate::executor::decoder::Decoder;
use crate::executor::tree::TreeBatch;
use candle_core::{DType, Tensor, D};

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

/// A context and the continuations scored after it.
pub type Group = (Vec<u32>, Vec<Vec<u32>>);

/// Log-likelihoods of every continuation of every group in one forward pass over a tree batch
/// (`executor::tree`): each context once, each continuation after it, and no padding in the
/// projections. The head runs only on the rows that predict a continuation token.
pub fn grouped(model: &Decoder, groups: &[Group]) -> Result<Vec<Vec<Loglik>>> {
    if groups.iter().any(|(c, _)| c.is_empty()) {
        return Err(Error::Value(
            "empty context: lm-eval would prepend an end-of-text token".into(),
        ));
    }
    // A continuation's last token is only a target: its branch ends one token before it.
    let trees: Vec<(&[u32], Vec<&[u32]>)> = groups
        .iter()
        .map(|(ctx, conts)| {
            let branches = conts
                .iter()
                .map(|c| &c[..c.len().saturating_sub(1)])
                .collect();
            (ctx.as_slice(), branches)
        })
        .collect();
    let tb = TreeBatch::new(&trees)?;
    // Head rows: the context's last row predicts a continuation's first token, the
    // continuation's own rows the rest.
    let (mut sel, mut targets, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    for (g, (ctx, conts)) in groups.iter().enumerate() {
        for (k, c) in conts.iter().enumerate() {
            if !c.is_empty() {
                sel.push(tb.prefix_row(g, ctx.len() - 1) as u32);
                sel.extend((0..c.len() - 1).map(|j| tb.branch_row(g, k, j) as u32));
                targets.extend_from_slice(c);
            }
            lens.push(c.len());
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
        let h = model.forward_trees(&tb)?;
        let sel = Tensor::from_vec(sel, targets.len(), h.device())?;
        pick(&model.logits(&h.index_select(&sel, 0)?)?, &targets, &lens)?
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

//! Multiple-choice scoring as lm-evaluation-harness does it.
//!
//! Each choice is a (context, continuation) request; its score is the sum of the continuation
//! tokens' log-probabilities. `acc` takes the argmax of the sums, `acc_norm` the argmax of the
//! sums divided by the choice's length in characters (lm-eval's `acc_norm`); ties go to the first.
//! Tokenization follows lm-eval: the whole string is encoded and the continuation is what follows
//! the context's own encoding, with trailing spaces of the context moved to the continuation.

use super::loglik;
use crate::error::{Error, Result};
use crate::executor::decoder::Decoder;
use serde::Deserialize;
use std::path::Path;
use tokenizers::Tokenizer;

/// One multiple-choice item: a context per choice (shared, or one each for partial scoring),
/// the continuations, the choice texts whose lengths normalize, and the gold index.
#[derive(Debug, Clone, PartialEq)]
pub struct McItem {
    /// Context of each choice.
    pub contexts: Vec<String>,
    /// Continuation of each choice (scored).
    pub continuations: Vec<String>,
    /// Text whose character count normalizes each choice for `acc_norm`.
    pub norm_texts: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Choices {
        query: String,
        choices: Vec<String>,
        gold: usize,
    },
    Partial {
        context_options: Vec<String>,
        continuation: String,
        gold: usize,
    },
}

/// Lines of a task file that were skipped: (1-based line number, what was wrong).
pub type BadLines = Vec<(usize, String)>;

/// Loads lm-eval style JSONL: `{query, choices, gold}` (the continuation is " " + choice) or
/// `{context_options, continuation, gold}` (partial scoring). A malformed line is reported as
/// `(line number, message)` and skipped; the items that parse are returned.
pub fn load_jsonl(path: &Path) -> Result<(Vec<McItem>, BadLines)> {
    let text = crate::paths::read_text(path)?;
    parse_jsonl(&text, path)
}

/// [`load_jsonl`] over text already read; `path` names it in errors.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<(Vec<McItem>, BadLines)> {
    let (mut items, mut bad) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item = match serde_json::from_str::<Line>(line) {
            Ok(Line::Choices {
                query,
                choices,
                gold,
            }) => McItem {
                contexts: vec![query; choices.len()],
                continuations: choices.iter().map(|c| format!(" {c}")).collect(),
                norm_texts: choices,
                gold,
            },
            Ok(Line::Partial {
                context_options,
                continuation,
                gold,
            }) => McItem {
                continuations: vec![format!(" {continuation}"); context_options.len()],
                norm_texts: vec![continuation; context_options.len()],
                contexts: context_options,
                gold,
            },
            Err(e) => {
                bad.push((n + 1, format!("not a multiple-choice item: {e}")));
                continue;
            }
        };
        if item.gold >= item.continuations.len() || item.continuations.len() < 2 {
            bad.push((
                n + 1,
                format!(
                    "gold {} with {} choices",
                    item.gold,
                    item.continuations.len()
                ),
            ));
            continue;
        }
        items.push(item);
    }
    if items.is_empty() && !bad.is_empty() {
        return Err(Error::Parse {
            file: path.to_path_buf(),
            msg: format!("no valid item; line {}: {}", bad[0].0, bad[0].1),
        });
    }
    Ok((items, bad))
}

/// lm-eval's acc and acc_norm of one item from the choices' summed log-likelihoods.
pub fn score(loglik: &[f64], norm_texts: &[String], gold: usize) -> (bool, bool) {
    let first_max = |v: &mut dyn Iterator<Item = f64>| {
        v.enumerate()
            .fold((0usize, f64::NEG_INFINITY), |b, (i, x)| {
                if x > b.1 {
                    (i, x)
                } else {
                    b
                }
            })
            .0
    };
    let acc = first_max(&mut loglik.iter().copied());
    let acc_norm = first_max(
        &mut loglik
            .iter()
            .zip(norm_texts)
            .map(|(l, t)| l / (t.chars().count().max(1) as f64)),
    );
    (acc == gold, acc_norm == gold)
}

/// (context tokens, continuation tokens) as lm-eval splits them.
pub fn split_tokens(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let cont = format!("{moved}{continuation}");
    let enc = |s: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| Error::Value(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let whole = enc(&format!("{trimmed}{cont}"))?;
    let ctx = enc(trimmed)?;
    let n = ctx.len().min(whole.len());
    Ok((whole[..n].to_vec(), whole[n..].to_vec()))
}

/// The log-likelihood groups of an item: one context with all its continuations when the
/// choices share it, else one group per choice (partial scoring).
pub fn item_groups(tok: &Tokenizer, item: &McItem) -> Result<Vec<loglik::Group>> {
    let split = item
        .contexts
        .iter()
        .zip(&item.continuations)
        .map(|(c, k)| split_tokens(tok, c, k))
        .collect::<Result<Vec<_>>>()?;
    if split.windows(2).all(|w| w[0].0 == w[1].0) {
        let ctx = split[0].0.clone();
        Ok(vec![(ctx, split.into_iter().map(|s| s.1).collect())])
    } else {
        Ok(split.into_iter().map(|(c, k)| (c, vec![k])).collect())
    }
}

/// Summed log-likelihoods of every choice of every item, all items in one batched pass.
pub fn items_logliks(model: &Decoder, tok: &Tokenizer, items: &[McItem]) -> Result<Vec<Vec<f64>>> {
    let per_item = items
        .iter()
        .map(|it| item_groups(tok, it))
        .collect::<Result<Vec<_>>>()?;
    let flat: Vec<loglik::Group> = per_item.iter().flatten().cloned().collect();
    let mut scores = loglik::grouped(model, &flat)?.into_iter().flatten();
    Ok(items
        .iter()
        .map(|it| {
            scores
                .by_ref()
                .take(it.continuations.len())
                .map(|l| l.sum)
                .collect()
        })
        .collect())
}

/// Summed log-likelihoods of every choice of one item.
pub fn item_logliks(model: &Decoder, tok: &Tokenizer, item: &McItem) -> Result<Vec<f64>> {
    Ok(items_logliks(model, tok, std::slice::from_ref(item))?
        .pop()
        .unwrap_or_default())
}

//! Runs one loaded task on one model and returns its metrics, the way lm-eval defines them:
//! multiple choice gives `acc` and `acc_norm`; continuations give `acc` (every token greedy)
//! and `ppl` (exp of minus the mean per-item log-likelihood); generation gives `exact_match`;
//! a text gives token perplexity `ppl` and `nll`.

use super::generation::{
    encode, final_answer, generate_prompts, majority, reference_answer, Decode, SharedPrefix,
};
use super::loglik;
use super::multiple_choice::{items_logliks, score, split_tokens};
use super::perplexity::perplexity;
use super::tasks::{Task, TaskData};
use crate::error::{Error, Result};
use crate::executor::decoder::Decoder;
use crate::executor::sampling::Sampling;
use crate::rng::{Effect, StreamKey};
use std::collections::BTreeMap;
use tokenizers::Tokenizer;

/// How texts and generations are bounded.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HarnessOptions {
    /// Tokens of a perplexity text that are scored (from its start).
    pub text_tokens: usize,
    /// Perplexity window (= stride) in tokens.
    pub window: usize,
    /// New tokens per generation at most.
    pub max_new_tokens: usize,
    /// Items per batched pass (multiple choice and continuation tasks); completions decoded
    /// side by side (generation tasks: items x samples, at least one item).
    pub batch: usize,
    /// Sampled completions per generation item (1: one greedy completion).
    pub samples: usize,
    /// Sampling temperature when `samples` > 1.
    pub temperature: f32,
    /// How the samples of an item become its score.
    pub select: Select,
}

/// How several sampled completions of a generation item are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// Majority vote over the final answers (self-consistency).
    Majority,
    /// Correct when any sample is (an oracle verifier: the ceiling of best-of-N selection).
    BestOfN,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        HarnessOptions {
            text_tokens: 4096,
            window: 2048,
            max_new_tokens: 256,
            batch: 8,
            samples: 1,
            temperature: 0.7,
            select: Select::Majority,
        }
    }
}

/// Metric name -> value.
pub type Metrics = BTreeMap<String, f64>;

/// Work units of a task for progress reports (items, or perplexity windows).
pub fn units(task: &Task, opt: &HarnessOptions) -> usize {
    match &task.data {
        TaskData::MultipleChoice(v) => v.len(),
        TaskData::Continuation(v) => v.len(),
        TaskData::Generation(v, _) => v.len(),
        TaskData::Text(_) => opt.text_tokens.div_ceil(opt.window.max(1)),
    }
}

fn tokenize(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| Error::Value(format!("tokenizer: {e}")))?
        .get_ids()
        .to_vec())
}

/// Evaluates `task` on `model`; `progress(units done)` is called as work finishes.
pub fn evaluate(
    task: &Task,
    model: &Decoder,
    tok: &Tokenizer,
    opt: &HarnessOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Metrics> {
    let mut m = Metrics::new();
    match &task.data {
        TaskData::MultipleChoice(items) => {
            let (mut acc, mut acc_norm) = (0usize, 0usize);
            for chunk in items.chunks(opt.batch.max(1)) {
                for (item, ll) in chunk.iter().zip(items_logliks(model, tok, chunk)?) {
                    let (a, b) = score(&ll, &item.norm_texts, item.gold);
                    acc += usize::from(a);
                    acc_norm += usize::from(b);
                }
                progress(chunk.len());
            }
            let n = items.len().max(1) as f64;
            m.insert("acc".into(), acc as f64 / n);
            m.insert("acc_norm".into(), acc_norm as f64 / n);
            m.insert("items".into(), items.len() as f64);
        }
        TaskData::Continuation(items) => {
            let (mut correct, mut ll_sum) = (0usize, 0f64);
            for chunk in items.chunks(opt.batch.max(1)) {
                let reqs = chunk
                    .iter()
                    .map(|(c, k)| split_tokens(tok, c, k))
                    .collect::<Result<Vec<_>>>()?;
                for l in loglik::batch(model, &reqs)? {
                    correct += usize::from(l.greedy);
                    ll_sum += l.sum;
                }
                progress(chunk.len());
            }
            let n = items.len().max(1) as f64;
            m.insert("acc".into(), correct as f64 / n);
            m.insert("ppl".into(), (-ll_sum / n).exp());
            m.insert("items".into(), items.len() as f64);
        }
        TaskData::Generation(items, style) => {
            let stops = ["Question:", "Problem:", "\n\n\n", "<|im_end|>"];
            let n = opt.samples.max(1);
            let sampling = if n == 1 {
                Sampling::GREEDY
            } else {
                Sampling {
                    temperature: opt.temperature,
                    top_k: 0,
                    top_p: 1.0,
                }
            };
            // Answers per item, in sample order; each (item, sample) has its own stream, so
            // the samples do not depend on what ran before them or beside them. The items'
            // shared few-shot prefix runs once; `batch` rows (items x samples) decode together.
            let prompts = items
                .iter()
                .map(|it| encode(tok, &it.prompt))
                .collect::<Result<Vec<_>>>()?;
            let prefix = SharedPrefix::new(model, &prompts)?;
            let spec = Decode {
                max_new: opt.max_new_tokens,
                stops: &stops,
                sampling,
            };
            let per = (opt.batch / n).max(1);
            let mut answers: Vec<Vec<Option<String>>> = Vec::with_capacity(items.len());
            for (c, chunk) in prompts.chunks(per).enumerate() {
                let mut rngs: Vec<_> = (0..chunk.len() * n)
                    .map(|r| {
                        let i = (c * per + r / n) as u64;
                        StreamKey::new(0, i, (r % n) as u64, Effect::Data).rng(0)
                    })
                    .collect();
                let outs = generate_prompts(model, tok, chunk, prefix.as_ref(), &spec, &mut rngs)?;
                for o in outs.chunks(n) {
                    answers.push(o.iter().map(|x| final_answer(*style, x)).collect());
                }
                progress(chunk.len());
            }
            let refs: Vec<String> = items
                .iter()
                .map(|it| reference_answer(*style, &it.answer))
                .collect();
            let count = items.len().max(1) as f64;
            // Share of items that the first k samples get right under `select`.
            let score = |k: usize, select: Select| {
                let right = |(a, r): &(&Vec<Option<String>>, &String)| {
                    let a = &a[..k];
                    match select {
                        Select::Majority => majority(a) == Some(r.as_str()),
                        Select::BestOfN => a.iter().any(|x| x.as_deref() == Some(r.as_str())),
                    }
                };
                answers.iter().zip(&refs).filter(right).count() as f64 / count
            };
            let m_n = score(n, opt.select);
            m.insert("exact_match".into(), m_n);
            if n > 1 {
                // Accuracy against the number of samples: the first k samples of each item.
                let mut ks: Vec<usize> = (0..).map(|e| 1 << e).take_while(|&k| k < n).collect();
                ks.push(n);
                for k in ks {
                    m.insert(format!("maj@{k}"), score(k, Select::Majority));
                    m.insert(format!("pass@{k}"), score(k, Select::BestOfN));
                }
                m.insert("samples".into(), n as f64);
            }
            m.insert("items".into(), items.len() as f64);
        }
        TaskData::Text(text) => {
            let ids = tokenize(tok, text)?;
            let ids = &ids[..ids.len().min(opt.text_tokens)];
            let mut done = 0;
            let p = perplexity(model, ids, opt.window, |k, _| {
                progress(k - done);
                done = k;
            })?;
            m.insert("ppl".into(), p.ppl);
            m.insert("nll".into(), p.mean_nll);
            m.insert("tokens".into(), p.predicted as f64);
        }
    }
    Ok(m)
}

/// The headline metric of a task for the summary table, and whether higher is better.
pub fn headline(task: &Task) -> (&'static str, bool) {
    match (&task.data, task.name.as_str()) {
        (TaskData::MultipleChoice(_), "hellaswag" | "arc_easy" | "arc_challenge" | "piqa") => {
            ("acc_norm", true)
        }
        (TaskData::MultipleChoice(_) | TaskData::Continuation(_), _) => ("acc", true),
        (TaskData::Generation(..), _) => ("exact_match", true),
        (TaskData::Text(_), _) => ("ppl", false),
    }
}

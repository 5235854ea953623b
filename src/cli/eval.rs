//! `afm eval`: evaluate a digital or analog model (perplexity on a text file so far).

use afm::eval::perplexity;
use anyhow::Context;
use clap::Args;
use std::time::Instant;

/// Options of `afm eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: super::model_args::ModelArgs,
    /// Text file scored by perplexity (e.g. ../shared/data/text/wikitext2_raw_test.txt).
    #[arg(long, required_unless_present = "task")]
    text: Option<String>,
    /// Multiple-choice task in lm-eval JSONL ({query, choices, gold} or
    /// {context_options, continuation, gold}), e.g. ../shared/data/bench/arc_easy.jsonl.
    #[arg(long, conflicts_with = "text")]
    task: Option<String>,
    /// Score only the first K items of the task.
    #[arg(long)]
    limit: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long, default_value_t = 32768)]
    limit_tokens: usize,
    /// Window (= stride) in tokens.
    #[arg(long, default_value_t = 2048)]
    window: usize,
}

/// Runs `afm eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let (m, tok) = a.model.open()?;
    if let Some(task) = &a.task {
        return run_task(&a, task, &m.decoder, &tok);
    }
    let text_path = a.text.clone().unwrap_or_default();
    let text =
        std::fs::read_to_string(&text_path).with_context(|| format!("reading {text_path}"))?;
    let enc = tok
        .encode(text.as_str(), false)
        .map_err(anyhow::Error::msg)?;
    let total = enc.get_ids().len();
    let ids = &enc.get_ids()[..total.min(a.limit_tokens)];
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    let p = perplexity(&m.decoder, ids, a.window, |done, all| {
        bar.set_length(all as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "model": a.model.model, "text": text_path, "text_tokens": total, "scored_tokens": ids.len(),
        "window": a.window, "tiles": a.model.tiles, "seed": a.model.seed, "dtype": format!("{:?}", a.model.dtype),
        "mean_nll": p.mean_nll, "perplexity": p.ppl, "predicted": p.predicted,
        "seconds": secs, "tokens_per_s": ids.len() as f64 / secs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn run_task(
    a: &EvalArgs,
    task: &str,
    model: &afm::executor::decoder::Decoder,
    tok: &tokenizers::Tokenizer,
) -> anyhow::Result<()> {
    use afm::eval::multiple_choice::{item_logliks, load_jsonl, score};
    let (mut items, bad) = load_jsonl(std::path::Path::new(task))?;
    for (line, msg) in &bad {
        eprintln!("warning: {task}:{line}: {msg} (skipped)");
    }
    items.truncate(a.limit.unwrap_or(items.len()));
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    let (mut acc, mut acc_norm) = (0usize, 0usize);
    for item in &items {
        let ll = item_logliks(model, tok, item)?;
        let (x, y) = score(&ll, &item.norm_texts, item.gold);
        acc += usize::from(x);
        acc_norm += usize::from(y);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = items.len().max(1) as f64;
    let secs = t0.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "model": a.model.model, "task": task, "items": items.len(), "skipped_lines": bad.len(),
        "tiles": a.model.tiles, "seed": a.model.seed, "dtype": format!("{:?}", a.model.dtype),
        "acc": acc as f64 / n, "acc_norm": acc_norm as f64 / n,
        "seconds": secs, "items_per_s": items.len() as f64 / secs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

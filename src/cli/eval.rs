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
    #[arg(long)]
    text: String,
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
    let text = std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text))?;
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
        "model": a.model.model, "text": a.text, "text_tokens": total, "scored_tokens": ids.len(),
        "window": a.window, "tiles": a.model.tiles, "seed": a.model.seed, "dtype": format!("{:?}", a.model.dtype),
        "mean_nll": p.mean_nll, "perplexity": p.ppl, "predicted": p.predicted,
        "seconds": secs, "tokens_per_s": ids.len() as f64 / secs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

//! `afm eval`: evaluate a digital or analog model (perplexity on a text file so far).

use afm::eval::perplexity;
use afm::executor::load::{load_model, map_to_tiles};
use afm::tile::{resolve_preset_path, TilePreset};
use anyhow::{bail, Context};
use candle_core::DType;
use clap::Args;
use std::time::Instant;

/// Options of `afm eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model: manifest name in `models/`, a .gguf file or an HF folder.
    #[arg(long)]
    model: String,
    /// Text file scored by perplexity (e.g. ../shared/data/text/wikitext2_raw_test.txt).
    #[arg(long)]
    text: String,
    /// Score only the first N tokens of the text.
    #[arg(long, default_value_t = 32768)]
    limit_tokens: usize,
    /// Window (= stride) in tokens.
    #[arg(long, default_value_t = 2048)]
    window: usize,
    /// Tile preset: evaluate on simulated tiles.
    #[arg(long)]
    tiles: Option<String>,
    /// Keep lm_head digital when mapping onto tiles.
    #[arg(long)]
    digital_lm_head: bool,
    /// Compute dtype of the digital parts: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = super::parse_dtype)]
    dtype: DType,
    /// Chip seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `afm eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let mut m = load_model(&a.model, a.dtype)?;
    let Some(tok) = m.tokenizer.take() else {
        bail!("{} has no tokenizer", m.path.display());
    };
    if let Some(t) = &a.tiles {
        let preset = TilePreset::load(&resolve_preset_path(t))?;
        map_to_tiles(&mut m.decoder, &preset, a.seed, a.digital_lm_head)?;
    }
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
        "model": a.model, "text": a.text, "text_tokens": total, "scored_tokens": ids.len(),
        "window": a.window, "tiles": a.tiles, "seed": a.seed,
        "mean_nll": p.mean_nll, "perplexity": p.ppl, "predicted": p.predicted,
        "seconds": secs, "tokens_per_s": ids.len() as f64 / secs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

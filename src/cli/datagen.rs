//! `afm datagen`: synthetic training data sampled from the teacher, in resumable shards.

use afm::train::datagen::{datagen, DatagenConfig};
use anyhow::bail;
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

/// Options of `afm datagen`.
#[derive(Debug, Args)]
pub struct DatagenArgs {
    /// Teacher: manifest name in `models/`, a .gguf file or an HF folder.
    #[arg(long)]
    model: String,
    /// Tokens to generate in all (rounded up to whole rows); with --text, the most to take.
    #[arg(long, required_unless_present = "text")]
    tokens: Option<usize>,
    /// Cut the rows from this text file (tokenized by the model's tokenizer) instead of sampling.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens per row, BOS included (the paper: 4096).
    #[arg(long, default_value_t = 4096)]
    seq_len: usize,
    /// Output folder (index.json + u32 shards); re-running resumes.
    #[arg(long)]
    out: PathBuf,
    /// Top-k (0: off; the paper: 50 for Llama models, off for Phi-3).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Sampling temperature (the paper: 1).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the per-row sampling streams.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows generated together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Rows per shard file (default: about 1M tokens, whole batches; a kill loses at most one).
    #[arg(long)]
    rows_per_shard: Option<usize>,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = super::parse_dtype)]
    dtype: DType,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `afm datagen`.
pub fn run(a: DatagenArgs) -> anyhow::Result<()> {
    if a.tokens == Some(0) || a.seq_len < 2 {
        bail!("--tokens must be > 0 and --seq-len >= 2");
    }
    if let Some(text) = &a.text {
        return from_text(&a, text);
    }
    let tokens = a.tokens.unwrap_or_default();
    let rows = tokens.div_ceil(a.seq_len);
    let per_shard = a
        .rows_per_shard
        .unwrap_or_else(|| ((1 << 20) / a.seq_len).max(1).div_ceil(a.batch) * a.batch);
    let cfg = DatagenConfig {
        model: a.model.clone(),
        seq_len: a.seq_len,
        rows,
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        batch: a.batch,
        rows_per_shard: per_shard,
        val_every: 100,
    };
    let m = afm::executor::load::load_model_on(&a.model, a.dtype, &super::open_device(&a.device)?)?;
    let bar = indicatif::ProgressBar::new((rows * a.seq_len) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} tokens  {per_sec}  ETA {eta_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if let Ok(old) = afm::train::shards::DataIndex::load(&a.out) {
        let (t, v) = old.rows();
        bar.set_position(((t + v) * a.seq_len) as u64);
        bar.reset_eta();
    }
    let t0 = std::time::Instant::now();
    let before = bar.position();
    // Without a terminal (batch jobs, logs) the bar is hidden: a line per batch instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let index = datagen(&m.decoder, &cfg, &a.out, &mut |n| {
        bar.inc(n as u64);
        if plain {
            eprintln!(
                "datagen: {}/{} tokens, {:.0} tokens/s",
                bar.position(),
                rows * a.seq_len,
                (bar.position() - before) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    })?;
    bar.finish_and_clear();
    let (train, val) = index.rows();
    let made = bar.position() - before;
    eprintln!(
        "{}: {train} train + {val} held-out rows of {} tokens; {made} tokens this run at {:.1} tokens/s",
        a.out.display(),
        a.seq_len,
        made as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `afm datagen --text FILE`: rows cut from a tokenized text file.
fn from_text(a: &DatagenArgs, text: &std::path::Path) -> anyhow::Result<()> {
    let m = afm::executor::load::load_model(&a.model, DType::F32)?;
    let Some(tok) = &m.tokenizer else {
        bail!(
            "{} has no tokenizer to cut {} with",
            m.path.display(),
            text.display()
        );
    };
    let Some(bos) = m.decoder.cfg.bos_token_id else {
        bail!(
            "{}: the config has no bos_token_id to start rows with",
            m.path.display()
        );
    };
    let body = afm::paths::read_text(text)?;
    let mut ids = tok
        .encode(body.as_str(), false)
        .map_err(|e| anyhow::anyhow!("{}: tokenizing failed: {e}", text.display()))?
        .get_ids()
        .to_vec();
    if let Some(t) = a.tokens {
        let rows = t.div_ceil(a.seq_len);
        ids.truncate(rows * (a.seq_len - 1));
    }
    let index = afm::train::datagen::write_text_data(
        &ids,
        bos,
        a.seq_len,
        m.decoder.cfg.vocab_size,
        100,
        &format!("text:{}", text.display()),
        &a.out,
    )?;
    let (train, val) = index.rows();
    eprintln!(
        "{}: {train} train + {val} held-out rows of {} tokens from {}",
        a.out.display(),
        a.seq_len,
        text.display()
    );
    Ok(())
}

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
    /// Tokens to generate in all (rounded up to whole rows).
    #[arg(long)]
    tokens: usize,
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
    if a.tokens == 0 || a.seq_len < 2 {
        bail!("--tokens must be > 0 and --seq-len >= 2");
    }
    let rows = a.tokens.div_ceil(a.seq_len);
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

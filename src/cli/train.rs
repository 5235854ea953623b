//! `afm train`: hardware-aware distillation of a teacher into an analog foundation model.

use afm::tile::{resolve_preset_path, TilePreset};
use afm::train::trainer::{train, TrainConfig};
use anyhow::bail;
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

/// Options of `afm train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Teacher (and the student's starting weights): manifest name, .gguf file or HF folder.
    #[arg(long)]
    teacher: String,
    /// Data folder written by `afm datagen`.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: checkpoints, log.jsonl and the final model in `final/`.
    #[arg(long)]
    out: PathBuf,
    /// Training configuration (TOML: [run], [optim], [analog]; defaults are the release values).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Tile preset whose tile rows, DAC bits, ADC bits and lambda the analog layers take.
    #[arg(long)]
    tiles: Option<String>,
    /// Continue from the last checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Override [run] steps.
    #[arg(long)]
    steps: Option<usize>,
    /// What the student trains for: `analog` (the AFM recipe of [analog]) or `qat-w4a8`
    /// (LLM-QAT-style baseline for a digital W4A8 chip: int4 fake-quantized weights per channel
    /// and 8-bit static inputs with the learned ranges; no ADC, noise or clipping). Quantize
    /// the result with `afm quantize --inputs static8`.
    #[arg(long, default_value = "analog", value_parser = ["analog", "qat-w4a8"])]
    mode: String,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `afm train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::load(p)?,
        None => TrainConfig::default(),
    };
    if let Some(s) = a.steps {
        if s == 0 {
            bail!("--steps must be >= 1");
        }
        cfg.run.steps = s;
    }
    if let Some(t) = &a.tiles {
        let p = TilePreset::load(&resolve_preset_path(t))?;
        cfg.analog.tile_rows = p.rows();
        cfg.analog.dac_bits = p.dac.bits as u32;
        cfg.analog.adc_bits = p.adc.bits as u32;
        cfg.analog.out_bound = if p.adc.bits > 0 { p.adc.lambda } else { 0.0 };
    }
    if a.mode == "qat-w4a8" {
        if a.tiles.is_some() {
            bail!("--tiles sets analog hardware; --mode qat-w4a8 trains for a digital W4A8 chip");
        }
        let g = &mut cfg.analog;
        (g.dac_bits, g.weight_bits, g.adc_bits, g.out_bound) = (8, 4, 0, 0.0);
        (
            g.weight_noise,
            g.out_noise,
            g.clip_alpha,
            g.clip_alpha_start,
        ) = (0.0, 0.0, 0.0, 0.0);
    }
    let m = afm::executor::load::load_model_on(
        &a.teacher,
        DType::F32,
        &super::open_device(&a.device)?,
    )?;
    let bar = indicatif::ProgressBar::new(cfg.run.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} step {pos}/{len}  {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let student = train(
        &m.decoder,
        m.tokenizer.as_ref(),
        &a.data,
        &a.out,
        &cfg,
        a.resume,
        &mut |l| {
            bar.set_position(l.step as u64);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  clip {:.3}%  {:.0} tok/s{}",
                l.loss,
                l.lr,
                100.0 * l.clip_frac,
                l.tokens_per_s,
                if l.skipped { "  (skipped)" } else { "" }
            ));
        },
    )?;
    bar.finish_and_clear();
    drop(student);
    eprintln!(
        "{}: final model in {}/final (log: log.jsonl)",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

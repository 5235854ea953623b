//! `afm train`: hardware-aware distillation of a teacher into an analog foundation model.

use afm::tile::{resolve_preset_path, TilePreset};
use afm::train::parallel::{Collective, HostGroup};
use afm::train::trainer::{train, train_rank, LogLine, TrainConfig};
use anyhow::bail;
use candle_core::DType;
use clap::Args;
use std::collections::BTreeMap;
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
    /// Data-parallel ranks, each on its share of every batch ([run] batch_size is the global
    /// batch). On CUDA one rank per GPU from --device's ordinal up, gradients summed with NCCL
    /// (a build with --features nccl); on the CPU in-process ranks that sum in host memory (the
    /// same arithmetic, for checks; no speed-up).
    #[arg(long, default_value_t = 1)]
    ranks: usize,
    /// Time each phase of every step (sets [run] profile: the device is waited for after each
    /// phase, so steps run a little slower); logged as `phase_ms` and summed up at the end.
    #[arg(long)]
    profile: bool,
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
    cfg.run.profile |= a.profile;
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
    if a.ranks == 0 {
        bail!("--ranks must be >= 1");
    }
    if a.ranks > 1 {
        return run_ranks(&a, &cfg);
    }
    let m = afm::executor::load::load_model_on(
        &a.teacher,
        DType::F32,
        &super::open_device(&a.device)?,
    )?;
    let bar = progress_bar(cfg.run.steps);
    let mut phases = Vec::new();
    let student = train(
        &m.decoder,
        m.tokenizer.as_ref(),
        &a.data,
        &a.out,
        &cfg,
        a.resume,
        &mut |l| {
            show(&bar, l);
            phases.extend(l.phase_ms.clone());
        },
    )?;
    bar.finish_and_clear();
    drop(student);
    if !phases.is_empty() {
        eprint!("{}", phase_table(&phases));
    }
    eprintln!(
        "{}: final model in {}/final (log: log.jsonl)",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

/// Median time of each phase over the profiled steps, the first left out when there are more
/// (it holds one-time work: the ranges' data initialization, the first allocations), largest
/// first, with its share of the summed medians.
fn phase_table(steps: &[BTreeMap<String, f64>]) -> String {
    let steps = if steps.len() > 1 { &steps[1..] } else { steps };
    let mut names: Vec<&String> = steps.iter().flat_map(|s| s.keys()).collect();
    names.sort();
    names.dedup();
    let mut rows: Vec<(&String, f64)> = names
        .into_iter()
        .map(|n| {
            let mut v: Vec<f64> = steps.iter().map(|s| *s.get(n).unwrap_or(&0.0)).collect();
            v.sort_by(f64::total_cmp);
            (n, v[v.len() / 2])
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let mut out = format!("step phases, median of {} steps:\n", steps.len());
    for (n, ms) in rows {
        let share = 100.0 * ms / total.max(f64::MIN_POSITIVE);
        out += &format!("  {n:<16} {ms:>10.2} ms  {share:>5.1}%\n");
    }
    out
}

fn progress_bar(steps: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} step {pos}/{len}  {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn show(bar: &indicatif::ProgressBar, l: &LogLine) {
    bar.set_position(l.step as u64);
    bar.set_message(format!(
        "loss {:.4}  lr {:.2e}  clip {:.3}%  {:.0} tok/s{}",
        l.loss,
        l.lr,
        100.0 * l.clip_frac,
        l.tokens_per_s,
        if l.skipped { "  (skipped)" } else { "" }
    ));
}

/// The devices of `--ranks` ranks: the CPU for each, or consecutive GPUs.
fn rank_devices(a: &TrainArgs) -> anyhow::Result<Vec<candle_core::Device>> {
    let first = super::open_device(&a.device)?;
    let Some(base) = (match first.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
        _ => None,
    }) else {
        return Ok(vec![candle_core::Device::Cpu; a.ranks]);
    };
    if !cfg!(feature = "nccl") {
        bail!(
            "--ranks {} on CUDA needs a build with --features nccl",
            a.ranks
        );
    }
    std::iter::once(Ok(first))
        .chain((base + 1..base + a.ranks).map(|g| super::open_device(&format!("cuda:{g}"))))
        .collect()
}

/// The group of rank `rank`: NCCL on CUDA, host memory on the CPU.
fn join(
    dev: &candle_core::Device,
    rank: usize,
    host: &[HostGroup],
    #[cfg(feature = "nccl")] id: afm::train::parallel::NcclId,
) -> anyhow::Result<Box<dyn Collective>> {
    #[cfg(feature = "nccl")]
    if dev.is_cuda() {
        let g = afm::train::parallel::NcclGroup::join(dev, rank, host.len(), id)?;
        return Ok(Box::new(g));
    }
    let _ = dev;
    Ok(Box::new(host[rank].clone()))
}

/// `--ranks N`: one thread per rank, each with its own copy of the teacher on its device.
/// The first rank to fail ends the command (NCCL peers cannot be released from a collective).
fn run_ranks(a: &TrainArgs, cfg: &TrainConfig) -> anyhow::Result<()> {
    let devices = rank_devices(a)?;
    let host = HostGroup::new(a.ranks);
    #[cfg(feature = "nccl")]
    let id = afm::train::parallel::NcclId::new()?;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, anyhow::Result<()>)>();
    let started = std::time::Instant::now();
    let bar = &progress_bar(cfg.run.steps);
    std::thread::scope(|scope| {
        for (rank, dev) in devices.iter().enumerate() {
            let (tx, host) = (tx.clone(), &host);
            scope.spawn(move || {
                let result = (|| -> anyhow::Result<()> {
                    let group = join(
                        dev,
                        rank,
                        host,
                        #[cfg(feature = "nccl")]
                        id,
                    )?;
                    let m = afm::executor::load::load_model_on(&a.teacher, DType::F32, dev)?;
                    train_rank(
                        &m.decoder,
                        m.tokenizer.as_ref(),
                        &a.data,
                        &a.out,
                        cfg,
                        a.resume,
                        &mut |l| show(bar, l),
                        group.as_ref(),
                    )?;
                    Ok(())
                })();
                if result.is_err() {
                    host[rank].abandon();
                }
                let _ = tx.send((rank, result));
            });
        }
        drop(tx);
        for (rank, result) in rx {
            if let Err(e) = result {
                bar.abandon();
                eprintln!("error: rank {rank}: {e:#}");
                std::process::exit(1);
            }
        }
    });
    bar.finish_and_clear();
    eprintln!(
        "{}: {} ranks, {:.1} s; final model in {}/final (log: log.jsonl)",
        a.out.display(),
        a.ranks,
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::phase_table;
    use std::collections::BTreeMap;

    /// The first step is left out, each phase gets its median, the largest comes first.
    #[test]
    fn phase_table_takes_medians_after_the_first_step() {
        let step = |fwd: f64, bwd: f64| {
            BTreeMap::from([("forward".to_string(), fwd), ("backward".to_string(), bwd)])
        };
        let t = phase_table(&[
            step(900.0, 900.0),
            step(1.0, 4.0),
            step(3.0, 6.0),
            step(2.0, 5.0),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "step phases, median of 3 steps:");
        assert!(
            lines[1].contains("backward") && lines[1].contains("5.00 ms"),
            "{t}"
        );
        assert!(lines[1].contains("71.4%"), "{t}");
        assert!(
            lines[2].contains("forward") && lines[2].contains("2.00 ms"),
            "{t}"
        );
    }
}

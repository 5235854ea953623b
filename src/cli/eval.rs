//! `afm eval`: benchmark tasks on the digital model and on programmed chips over seeds and
//! drift times; resumable with `--out`, results as JSON and a Markdown table.

use afm::eval::harness::{HarnessOptions, Select};
use afm::eval::run::{self, Plan, Progress, Row};
use afm::eval::{report, tasks};
use afm::tile::{resolve_preset_path, TilePreset, WeightClip};
use afm::train::outliers::Isolate;
use anyhow::bail;
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

/// Options of `afm eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model: manifest name in `models/`, a .gguf file or an HF folder.
    #[arg(long)]
    model: String,
    /// Tasks, comma-separated: built-in names (hellaswag, arc_easy, arc_challenge, piqa,
    /// winogrande, boolq, lambada_openai, gsm8k, math500, wikitext2, ptb) or files (.jsonl
    /// tasks, any other file is a text scored by perplexity).
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Tile presets (comma-separated or repeated): each is a row of the table, per seed.
    #[arg(long, value_delimiter = ',')]
    tiles: Vec<String>,
    /// Chips to program per preset (seeds --seed, --seed+1, ...).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// First chip seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Drift times (e.g. 1s,1h,1d,1y or seconds); the same chips are read at each time.
    /// Default: each preset's own drift_time_s.
    #[arg(long, value_delimiter = ',', value_parser = parse_time)]
    drift_times: Vec<f64>,
    /// Global drift compensation on or off (default: the preset's own setting).
    #[arg(long, value_parser = parse_on_off)]
    drift_compensation: Option<bool>,
    /// Score only the first K items of every task.
    #[arg(long)]
    limit: Option<usize>,
    /// Few-shot examples (from the task's own training file where one exists; default: the
    /// task's default, 8 for gsm8k, else 0).
    #[arg(long)]
    shots: Option<usize>,
    /// Results folder: cells, results.json and results.md; re-running resumes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the digital (FP) baseline row.
    #[arg(long)]
    no_baseline: bool,
    /// Keep lm_head digital on the chip.
    #[arg(long)]
    digital_lm_head: bool,
    /// Text whose first --calib-tokens tokens set the static input ranges of each chip
    /// (abs-max per row block, --calib-kappa or --calib-mse); default: the first batch of each
    /// task.
    #[arg(long)]
    calib_text: Option<PathBuf>,
    /// Calibrate each static input range to K times the std of its row block's inputs (the AFM
    /// recipe's range initialization, kappa 18) instead of their abs-max.
    #[arg(long, value_name = "K")]
    calib_kappa: Option<f64>,
    /// Calibrate each static input range to the one, among its row block's abs-max divided by
    /// 2^(k/2) for k = 0..12, whose digitized output is closest (squared error) to the block's
    /// exact product on the calibration batch.
    #[arg(long, conflicts_with = "calib_kappa")]
    calib_mse: bool,
    /// Rotate the residual stream and each head's values by an orthogonal matrix from SEED
    /// (default 0) before the model goes on tiles: exact up to rounding, folded into the
    /// weights with the norm gains, and it spreads the stream's outlier channels over all
    /// inputs (`train::rotate`). Applied before --isolate-outliers.
    #[arg(long, value_name = "SEED", num_args = 0..=1, default_missing_value = "0")]
    rotate: Option<u64>,
    /// Put down_proj's K inputs with the largest |value| on the calibration text (--calib-text)
    /// in a row block of their own: the MLP's intermediate channels are permuted (exact) so
    /// that they come first, and that block gets its own range and ADC bound.
    #[arg(long, value_name = "K", requires = "calib_text")]
    isolate_outliers: Option<usize>,
    /// With --isolate-outliers K as the cap: each layer isolates the fewest of its largest
    /// inputs that leave none above kappa (--calib-kappa, else 18) x the rms of the rest.
    #[arg(long, requires = "isolate_outliers")]
    isolate_auto: bool,
    /// Put the K residual-stream channels with the largest inputs (relative to their
    /// projection's input rms, on --calib-text) first, in a row block of their own in every
    /// projection that reads the stream (q/k/v, gate/up, lm_head): the whole stream is permuted
    /// (exact up to float rounding).
    #[arg(long, value_name = "K", requires = "calib_text")]
    isolate_residual: Option<usize>,
    /// Smooth the inputs of the projections named by --smooth-layers with SmoothQuant's factor
    /// s_i = max|x_i|^ALPHA / max|w_i|^(1 - ALPHA) on the calibration text (--calib-text):
    /// input column i divided by s_i, weight column i multiplied by it, folded into what writes
    /// the column (exact; `train::smooth`). ALPHA 0 gives every weight row the same largest |w|.
    /// Applied after --rotate, before --isolate-outliers.
    #[arg(long, value_name = "ALPHA", requires = "calib_text")]
    smooth: Option<f64>,
    /// Projections that --smooth transforms, comma-separated name endings as --digital-layers
    /// (`down_proj`, `lm_head`); default: every projection but lm_head.
    #[arg(long, value_delimiter = ',', requires = "smooth")]
    smooth_layers: Vec<String>,
    /// How each column's full scale is chosen on the tiles: `off` (its largest |w|, the
    /// paper's mapping) or `least-error` (clips the largest weights where that lowers the
    /// expected weight error under the preset's programming noise: `tile::clip`).
    #[arg(long, default_value = "off", value_parser = parse_weight_clip)]
    weight_clip: WeightClip,
    /// Copies of each isolated head block's weights in the rest of its tile's rows (`R` x the
    /// isolated inputs must fit a tile): the column sums the copies, so their programming
    /// noise averages, and the output is divided by R after the ADC (`tile::program`).
    #[arg(long, default_value_t = 1, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
    head_copies: u32,
    /// Tokens of --calib-text used for calibration.
    #[arg(long, default_value_t = 512)]
    calib_tokens: usize,
    /// Tokens of a perplexity text scored (from its start).
    #[arg(long, default_value_t = 4096)]
    text_tokens: usize,
    /// Perplexity window (= stride) in tokens.
    #[arg(long, default_value_t = 2048)]
    window: usize,
    /// New tokens per generation at most (gsm8k, math500).
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampled completions per generation problem (1: one greedy completion). With N > 1
    /// the JSON has maj@k and pass@k for k = 1, 2, 4, ..., N and --out gets samples.svg.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    samples: u16,
    /// How N samples score a problem: majority (vote over final answers) or best-of-n (correct
    /// when any sample is: an oracle verifier's ceiling).
    #[arg(long, default_value = "majority", value_parser = parse_select)]
    select: Select,
    /// Sampling temperature with --samples > 1.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Folder of the built-in tasks' files (default: $AFM_DATA or ../shared/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Compute dtype of the digital parts: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = super::parse_dtype)]
    dtype: DType,
    /// Device: cpu, cuda or cuda:N. On a GPU the analog layers run one row block at a time
    /// (cuBLAS products); presets with per-MVM read or output noise need the CPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Projections kept digital on the chip, comma-separated name endings (`down_proj`,
    /// `self_attn.q_proj`, `layers.0.mlp.up_proj`): what one layer type's analog conversion
    /// costs, measured by taking it out.
    #[arg(long, value_delimiter = ',')]
    digital_layers: Vec<String>,
    /// On the CPU, run the analog layers as the GPU does (one row block at a time, plain
    /// products) instead of the fused op: shows what another summation order alone changes.
    #[arg(long)]
    blocked_mvm: bool,
    /// Items per batched pass of the multiple-choice and continuation tasks, and completions
    /// (items x --samples) decoded side by side in generation tasks (a GPU wants 64 or more).
    /// Scores do not depend on it beyond float rounding, except that analog rows without
    /// --calib-text or learned ranges calibrate on each task's first batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    batch: u16,
}

fn parse_weight_clip(s: &str) -> Result<WeightClip, String> {
    WeightClip::parse(s).ok_or_else(|| format!("`{s}`: expected off or least-error"))
}

fn parse_select(s: &str) -> Result<Select, String> {
    match s {
        "majority" => Ok(Select::Majority),
        "best-of-n" => Ok(Select::BestOfN),
        _ => Err(format!("`{s}`: expected majority or best-of-n")),
    }
}

/// Parses a duration: plain seconds or a number with s, m, h, d or y (365 days).
fn parse_time(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "y" => 365.0 * 86400.0,
        u => {
            return Err(format!(
                "unknown time unit `{u}` in `{s}` (use s, m, h, d or y)"
            ))
        }
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * scale),
        _ => Err(format!("`{s}` is not a time >= 0 (e.g. 3600, 1h, 1d, 1y)")),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

/// A drift time as people say it.
fn time_label(t: f64) -> String {
    for (unit, secs) in [("y", 365.0 * 86400.0), ("d", 86400.0), ("h", 3600.0)] {
        if t >= secs && (t / secs).fract() == 0.0 {
            return format!("{}{unit}", t / secs);
        }
    }
    format!("{t}s")
}

fn git_commit() -> String {
    env!("AFM_GIT_COMMIT").to_string()
}

/// The version of a locked dependency, from the Cargo.lock the binary was built with.
fn locked_version(name: &str) -> String {
    let lock = include_str!("../../Cargo.lock");
    let key = format!("name = \"{name}\"\nversion = \"");
    lock.find(&key)
        .and_then(|i| lock[i + key.len()..].split('"').next())
        .unwrap_or("unknown")
        .to_string()
}

/// Removes a folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `afm eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if let Some(k) = a.calib_kappa {
        if !(k.is_finite() && k > 0.0) {
            bail!("--calib-kappa: expected a finite number > 0, got {k}");
        }
    }
    if a.samples > 1 && !(a.temperature > 0.0 && a.temperature.is_finite()) {
        bail!(
            "--temperature {} with --samples {}: sampling needs a temperature > 0",
            a.temperature,
            a.samples
        );
    }
    let data_dir = a.data_dir.clone().unwrap_or_else(tasks::default_data_dir);
    let tasks = a
        .tasks
        .iter()
        .map(|t| tasks::load(t, &data_dir, a.shots, a.limit))
        .collect::<Result<Vec<_>, _>>()?;
    for t in &tasks {
        for (line, msg) in &t.skipped {
            eprintln!("warning: {}:{line}: {msg} (skipped)", t.path.display());
        }
        if a.shots.is_some_and(|k| k > 0) && t.shots == 0 {
            eprintln!(
                "note: {} has no training file beside it; evaluated 0-shot",
                t.name
            );
        }
    }
    let mut rows = Vec::new();
    let mut preset_info = Vec::new();
    if !a.no_baseline {
        rows.push(Row {
            label: "FP (digital)".into(),
            preset: None,
        });
    }
    for name in &a.tiles {
        let path = resolve_preset_path(name);
        let mut preset = TilePreset::load(&path)?;
        let isolating = [
            ("--isolate-outliers", a.isolate_outliers),
            ("--isolate-residual", a.isolate_residual),
        ];
        if let Some((flag, Some(k))) = isolating
            .into_iter()
            .find(|(_, k)| k.is_some_and(|k| k > preset.rows()))
        {
            bail!(
                "{flag} {k}: the isolated inputs sit on one tile, and {} has {} rows",
                path.display(),
                preset.rows()
            );
        }
        if let Some(c) = a.drift_compensation {
            preset.drift_compensation = c;
        }
        let times = if a.drift_times.is_empty() {
            vec![None]
        } else {
            a.drift_times.iter().map(|&t| Some(t)).collect()
        };
        for t in times {
            let mut p = preset.clone();
            let mut label = p.name.clone();
            if let Some(t) = t {
                p.drift_time_s = t;
                let comp = if p.drift_compensation {
                    ""
                } else {
                    ", no comp."
                };
                label = format!("{label} @ t={}{comp}", time_label(t));
            }
            preset_info.push(serde_json::json!({
                "label": label, "file": path, "preset": toml::from_str::<toml::Value>(&p.to_toml()).ok(),
            }));
            rows.push(Row {
                label,
                preset: Some(p),
            });
        }
    }
    if rows.is_empty() {
        bail!("nothing to evaluate: give --tiles or drop --no-baseline");
    }
    let dev = super::open_device(&a.device)?;
    afm::tile::op::set_blocked_on_cpu(a.blocked_mvm);
    let (mut m, tok) = super::model_args::open_digital_on(&a.model, a.dtype, &dev)?;
    let learned = if m.path.is_dir() {
        afm::train::student::load_meta(&m.path)?
    } else {
        None
    };
    if learned.is_some() {
        eprintln!(
            "note: {} is an analog model: its learned input ranges are used on the chips",
            m.path.display()
        );
    }
    let calibration = match &a.calib_text {
        Some(p) => Some(super::model_args::calibration_ids(&tok, p, a.calib_tokens)?),
        None => None,
    };
    let isolate = a.isolate_outliers.is_some() || a.isolate_residual.is_some();
    if (isolate || a.rotate.is_some() || a.smooth.is_some()) && learned.is_some() {
        bail!(
            "--rotate / --smooth / --isolate-outliers / --isolate-residual: {} is an analog \
             model; its mapping and ranges come from its analog.json",
            m.path.display()
        );
    }
    // What changes the model before it goes on tiles, in order: part of each cell's identity.
    let mut transforms = Vec::new();
    let calib_batch = match &calibration {
        Some(ids) => Some(candle_core::Tensor::from_slice(
            ids,
            (1, ids.len()),
            m.decoder.device(),
        )?),
        None => None,
    };
    if let Some(seed) = a.rotate {
        m.decoder = afm::train::rotate::rotate(&m.decoder, seed)?;
        transforms.push(format!("rotate {seed}"));
    }
    if let (Some(alpha), Some(x)) = (a.smooth, &calib_batch) {
        if !(0.0..=1.0).contains(&alpha) {
            bail!("--smooth {alpha}: ALPHA must lie in 0..=1");
        }
        let stats = afm::train::smooth::input_abs_max(&m.decoder, std::slice::from_ref(x))?;
        let layers = &a.smooth_layers;
        let pick = |name: &str| {
            if layers.is_empty() {
                name != "lm_head"
            } else {
                afm::executor::load::layer_named(name, layers)
            }
        };
        let head = pick("lm_head") && !a.digital_lm_head;
        m.decoder = afm::train::smooth::smooth_only(&m.decoder, &stats, alpha, head, &pick)?;
        transforms.push(format!("smooth {alpha} {layers:?}"));
    }
    if let (true, Some(x)) = (isolate, &calib_batch) {
        let stats = afm::train::smooth::input_stats(&m.decoder, std::slice::from_ref(x))?;
        let kappa = a.calib_kappa.unwrap_or(18.0);
        let mlp = a
            .isolate_outliers
            .map(|k| Isolate::new(k, a.isolate_auto, kappa));
        let residual = a.isolate_residual.unwrap_or(0);
        m.decoder = afm::train::outliers::isolate_outliers(&m.decoder, &stats, residual, mlp)?;
    }
    m.decoder.weight_clip = a.weight_clip;
    if a.head_copies > 1 && m.decoder.isolated.is_empty() {
        bail!(
            "--head-copies {}: {} has no isolated head blocks to copy (--isolate-outliers K, or \
             an analog model trained with isolated inputs)",
            a.head_copies,
            m.path.display()
        );
    }
    m.decoder.head_copies = a.head_copies as usize;
    let plan = Plan {
        model: a.model.clone(),
        dtype: format!("{:?}", a.dtype).to_lowercase(),
        device: match (dev.is_cpu(), a.blocked_mvm) {
            (false, _) => "cuda",
            (true, true) => "cpu-blocked",
            (true, false) => "cpu",
        }
        .into(),
        rows,
        seeds: (a.seed..a.seed + a.seeds.max(1)).collect(),
        tasks,
        options: HarnessOptions {
            text_tokens: a.text_tokens,
            window: a.window,
            max_new_tokens: a.max_new_tokens,
            samples: a.samples as usize,
            temperature: a.temperature,
            select: a.select,
            batch: a.batch as usize,
        },
        digital_lm_head: a.digital_lm_head,
        digital_layers: a.digital_layers.clone(),
        calibration,
        calib_kappa: a.calib_kappa,
        calib_mse: a.calib_mse,
        learned_ranges: learned.as_ref().map(|m| m.input_ranges.clone()),
        isolated: m.decoder.isolated.clone(),
        weight_clip: a.weight_clip,
        head_copies: m.decoder.head_copies,
        transforms,
    };
    let (out, temporary) = match &a.out {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("afm-eval-{}", std::process::id())),
            true,
        ),
    };
    // A run without --out keeps its cells in a temporary folder, gone however the run ends.
    let _cleanup = temporary.then(|| RemoveOnDrop(out.clone()));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} items  {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t0 = std::time::Instant::now();
    let cells = run::run(&plan, &m.decoder, &tok, &out, &mut |p| match p {
        Progress::Total(n) => bar.set_length(n as u64),
        Progress::Advance(n) => bar.inc(n as u64),
        Progress::Cell(s) => bar.set_message(s),
    })?;
    bar.finish_and_clear();
    let summary = run::summarize(&plan, &cells);
    let table = report::markdown_table(&plan, &summary);
    let curves = report::samples_curves(&plan, &cells);
    let results = serde_json::json!({
        "config": {
            "model": a.model, "model_path": m.path, "dtype": plan.dtype, "device": plan.device,
            "rows": preset_info, "baseline": !a.no_baseline,
            "seeds": plan.seeds, "drift_times_s": a.drift_times,
            "drift_compensation": a.drift_compensation,
            "tasks": plan.tasks.iter().map(|t| serde_json::json!({
                "name": t.name, "file": t.path, "shots": t.shots, "items": t.data_len(),
                "skipped_lines": t.skipped.len(),
            })).collect::<Vec<_>>(),
            "limit": a.limit, "options": plan.options, "digital_lm_head": a.digital_lm_head,
            "digital_layers": a.digital_layers,
            "learned_ranges": plan.learned_ranges.is_some(),
            "calibration": a.calib_text.as_ref().map(|p| serde_json::json!({
                "file": p, "tokens": plan.calibration.as_ref().map(Vec::len),
            })),
            "calib_kappa": a.calib_kappa,
            "calib_mse": a.calib_mse,
            "rotate": a.rotate,
            "smooth": a.smooth,
            "smooth_layers": a.smooth_layers,
            "isolate_outliers": a.isolate_outliers,
            "isolate_auto": a.isolate_auto,
            "isolate_residual": a.isolate_residual,
            "isolated": plan.isolated,
            "weight_clip": a.weight_clip.name(),
            "head_copies": a.head_copies,
        },
        "versions": {
            "afm": env!("CARGO_PKG_VERSION"), "git_commit": git_commit(),
            "candle": locked_version("candle-core"), "tokenizers": locked_version("tokenizers"),
        },
        "summary": summary,
        "samples_curves": curves,
        "cells": cells,
        "seconds_this_run": t0.elapsed().as_secs_f64(),
    });
    println!("{table}");
    if temporary {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        afm::paths::write_atomic(
            &out.join("results.json"),
            serde_json::to_string_pretty(&results)?.as_bytes(),
        )?;
        afm::paths::write_atomic(&out.join("results.md"), table.as_bytes())?;
        if let Some(chart) = report::samples_chart(&curves) {
            let svg = afm::report::plot::render(&chart);
            afm::paths::write_atomic(&out.join("samples.svg"), svg.as_bytes())?;
        }
        eprintln!("wrote {}/results.json and results.md", out.display());
    }
    Ok(())
}

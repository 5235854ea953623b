//! Running a sweep: each point is evaluated on its own programmed chips (the evaluation's
//! resumable cells, under `points/NNNN/`) and simulated on the chip model, and its result is
//! written atomically to `results/NNNN.json`. A point that fails (a bad value, a NaN) is
//! recorded with its error and the sweep goes on; a re-run skips the points already written.

use super::spec::{apply, Point, SweepFile};
use crate::chip::{simulate, RunSpec};
use crate::error::{Error, Result};
use crate::eval::harness::HarnessOptions;
use crate::eval::run::{self, Plan, Row, Summary};
use crate::eval::tasks::Task;
use crate::executor::decoder::Decoder;
use crate::executor::ModelConfig;
use crate::tile::TilePreset;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// What the chip model says of one point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChipMetrics {
    /// Time to first token.
    pub ttft_ns: u64,
    /// Mean decode step.
    pub decode_per_token_ns: f64,
    /// Generated tokens per second.
    pub decode_tokens_per_s: f64,
    /// Energy per generated token, all components.
    pub energy_per_token_pj: f64,
    /// Silicon area.
    pub area_mm2: f64,
    /// Tiles used.
    pub tiles: usize,
    /// Chips needed.
    pub chips: usize,
}

/// The result of one point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    /// The point.
    pub point: Point,
    /// Accuracy or perplexity per task (and the average), mean and std over the chips.
    pub metrics: Vec<Summary>,
    /// The chip model's numbers (None when the preset has no cost sections).
    pub chip: Option<ChipMetrics>,
    /// Why the point failed, if it did.
    pub error: Option<String>,
    /// Compute time of the point: its cells' wall times (on one thread each under
    /// [`super::parallel::run_points`]) and the chip simulation. Left out of `results.json`
    /// (None), which so has the same bytes whatever the thread count, sharding or resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// What every point shares: the model, its tokenizer, the loaded tasks and the calibration.
pub struct Context<'a> {
    /// The sweep.
    pub sweep: &'a SweepFile,
    /// The base preset.
    pub base: TilePreset,
    /// Where the base preset was read from (cost sections are checked against it).
    pub base_file: PathBuf,
    /// The digital model.
    pub model: &'a Decoder,
    /// Its tokenizer.
    pub tok: &'a Tokenizer,
    /// Loaded tasks.
    pub tasks: Vec<Task>,
    /// Calibration token ids (None: the first batch of each task).
    pub calibration: Option<Vec<u32>>,
}

fn point_dir(out: &Path, id: usize) -> PathBuf {
    out.join("points").join(format!("{id:04}"))
}

fn result_path(out: &Path, id: usize) -> PathBuf {
    out.join("results").join(format!("{id:04}.json"))
}

/// Writes `points.jsonl` (every point, before anything runs).
pub fn write_points(out: &Path, points: &[Point]) -> Result<()> {
    let mut text = String::new();
    for p in points {
        text.push_str(&serde_json::to_string(p).map_err(|e| Error::Value(e.to_string()))?);
        text.push('\n');
    }
    crate::paths::write_atomic(&out.join("points.jsonl"), text.as_bytes())
}

/// The result of `point` stored in `out`, if it was run with the same values.
pub fn stored(out: &Path, point: &Point) -> Option<PointResult> {
    let text = std::fs::read_to_string(result_path(out, point.id)).ok()?;
    let r: PointResult = serde_json::from_str(&text).ok()?;
    (r.point == *point).then_some(r)
}

fn plan(cx: &Context, preset: TilePreset, point: &Point, seeds: Vec<u64>) -> Plan {
    Plan {
        model: cx.sweep.model.clone(),
        dtype: "f32".into(),
        device: "cpu".into(),
        rows: vec![Row {
            label: point.label(),
            preset: Some(preset),
        }],
        seeds,
        tasks: cx.tasks.clone(),
        options: HarnessOptions {
            text_tokens: cx.sweep.text_tokens,
            ..HarnessOptions::default()
        },
        digital_lm_head: false,
        digital_layers: Vec::new(),
        calibration: cx.calibration.clone(),
        calib_kappa: cx.sweep.calib_kappa,
        calib_mse: cx.sweep.calib_mse,
        learned_ranges: None,
        isolated: Default::default(),
        weight_clip: Default::default(),
        head_copies: 1,
        transforms: Vec::new(),
    }
}

/// The chip seeds of every point.
pub fn seeds(sweep: &SweepFile) -> Vec<u64> {
    (sweep.seed..sweep.seed + sweep.seeds as u64).collect()
}

/// Evaluates `point` on the chip of one `seed` (all tasks), storing its cells; a later
/// [`run_point`] finds them on disk. Cells are named by seed, so seeds may run in any order.
pub fn run_seed(cx: &Context, point: &Point, seed: u64, out: &Path) -> Result<()> {
    let preset = apply(&cx.base, point)?;
    let plan = plan(cx, preset, point, vec![seed]);
    run::run(
        &plan,
        cx.model,
        cx.tok,
        &point_dir(out, point.id),
        &mut |_| {},
    )?;
    Ok(())
}

fn eval_point(
    cx: &Context,
    preset: TilePreset,
    point: &Point,
    out: &Path,
) -> Result<(Vec<Summary>, f64)> {
    let plan = plan(cx, preset, point, seeds(cx.sweep));
    let cells = run::run(
        &plan,
        cx.model,
        cx.tok,
        &point_dir(out, point.id),
        &mut |_| {},
    )?;
    // The average over accuracy tasks is undefined when the sweep has none.
    let summary: Vec<Summary> = run::summarize(&plan, &cells)
        .into_iter()
        .filter(|s| s.task != "average" || s.mean.is_finite())
        .collect();
    if let Some(s) = summary.iter().find(|s| !s.mean.is_finite()) {
        return Err(Error::Value(format!(
            "{} is not finite ({}) on some chip",
            s.task, s.metric
        )));
    }
    Ok((summary, cells.iter().map(|c| c.seconds).sum()))
}

fn chip_point(cx: &Context, preset: &TilePreset) -> Result<Option<ChipMetrics>> {
    if preset.cost_sections(&cx.base_file).is_err() {
        return Ok(None);
    }
    let spec = RunSpec {
        model: cx.sweep.model.clone(),
        prompt_len: cx.sweep.prompt_len,
        gen_len: cx.sweep.gen_len,
        digital_lm_head: false,
        heads: crate::tile::mapping::HeadBlocks {
            isolated: cx.model.isolated.clone(),
            copies: cx.model.head_copies,
        },
    };
    let cfg = ModelConfig::from_hf(&cx.model.cfg);
    let (r, _) = simulate(&cfg, preset, &cx.base_file, &spec, &mut |_, _| {})?;
    Ok(Some(ChipMetrics {
        ttft_ns: r.ttft_ns,
        decode_per_token_ns: r.decode_per_token_ns,
        decode_tokens_per_s: r.decode_tokens_per_s,
        energy_per_token_pj: r.decode_energy_per_token.iter().map(|p| p.pj).sum(),
        area_mm2: r.area_mm2,
        tiles: r.tiles,
        chips: r.chips,
    }))
}

/// Runs (or loads) one point and stores its result.
pub fn run_point(cx: &Context, point: &Point, out: &Path) -> Result<PointResult> {
    if let Some(r) = stored(out, point) {
        return Ok(r);
    }
    let attempt = || -> Result<(Vec<Summary>, Option<ChipMetrics>, f64)> {
        let preset = apply(&cx.base, point)?;
        let t0 = std::time::Instant::now();
        let chip = chip_point(cx, &preset)?;
        let chip_s = t0.elapsed().as_secs_f64();
        let (summary, cells_s) = eval_point(cx, preset, point, out)?;
        Ok((summary, chip, chip_s + cells_s))
    };
    let r = match attempt() {
        Ok((metrics, chip, s)) => PointResult {
            point: point.clone(),
            metrics,
            chip,
            error: None,
            seconds: Some(s),
        },
        Err(e) => failed(point, e.to_string()),
    };
    store(out, &r)?;
    Ok(r)
}

/// A failed point's result.
pub fn failed(point: &Point, error: String) -> PointResult {
    PointResult {
        point: point.clone(),
        metrics: Vec::new(),
        chip: None,
        error: Some(error),
        seconds: None,
    }
}

/// Writes `r` atomically to `results/NNNN.json`.
pub fn store(out: &Path, r: &PointResult) -> Result<()> {
    let text = serde_json::to_string_pretty(&r).map_err(|e| Error::Value(e.to_string()))?;
    crate::paths::write_atomic(&result_path(out, r.point.id), text.as_bytes())
}

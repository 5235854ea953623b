//! A resumable evaluation run: tasks x rows (the digital baseline, then each preset at each
//! drift time) x seeds (each seed a newly programmed chip).
//!
//! Every finished (task, row, seed) cell is written atomically to `OUT/cells/` with a
//! fingerprint of everything that determines its numbers; a re-run with the same `--out` skips
//! the cells whose fingerprint matches, so a killed run loses at most the cell in flight.
//! Before each task the chip's run state is reset, so a cell's numbers do not depend on which
//! cells ran before it on the same chip.

use super::harness::{evaluate, headline, units, HarnessOptions, Metrics};
use super::tasks::Task;
use crate::error::{Error, Result};
use crate::executor::decoder::{Decoder, KvCache};
use crate::executor::linear::Calibration;
use crate::executor::load::program_chip_except;
use crate::tile::TilePreset;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// One row of the result table: the digital model or a preset at one drift time.
#[derive(Debug, Clone)]
pub struct Row {
    /// Label in tables ("FP (digital)", "afm-paper @ t=1h").
    pub label: String,
    /// The hardware (None: digital).
    pub preset: Option<TilePreset>,
}

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Model name or path as given.
    pub model: String,
    /// Compute dtype name.
    pub dtype: String,
    /// Device name: "cpu", "cuda", "cuda:N" (a GPU sums the products in another order).
    pub device: String,
    /// Rows, the digital baseline first when present.
    pub rows: Vec<Row>,
    /// Chip seeds.
    pub seeds: Vec<u64>,
    /// Loaded tasks.
    pub tasks: Vec<Task>,
    /// Text and generation bounds.
    pub options: HarnessOptions,
    /// lm_head stays digital on the chip.
    pub digital_lm_head: bool,
    /// More projections kept digital on the chip: those whose name ends with one of these.
    pub digital_layers: Vec<String>,
    /// Token ids whose forward sets each analog layer's static input ranges once per chip (by
    /// `calib_kappa`'s rule); None: the first batch of each task sets them.
    pub calibration: Option<Vec<u32>>,
    /// Calibration rule: Some(kappa) sets each range to kappa * std of its block's inputs, None
    /// to their abs-max.
    pub calib_kappa: Option<f64>,
    /// Calibration rule: each range minimizes its block's squared output error instead
    /// (`tile::calibrate`; excludes `calib_kappa`).
    pub calib_mse: bool,
    /// Learned input ranges by projection (an analog model's `analog.json`): they replace
    /// calibration where present.
    pub learned_ranges: Option<std::collections::BTreeMap<String, Vec<f32>>>,
    /// The model's isolated outlier inputs per projection ([`Decoder::isolated`]), for the
    /// cells' identity: the same name with another mapping is another run.
    pub isolated: std::collections::BTreeMap<String, usize>,
    /// The model's weight clipping on tiles ([`Decoder::weight_clip`]), for the cells' identity.
    pub weight_clip: crate::tile::WeightClip,
    /// Copies of each isolated head block on its tile ([`Decoder::head_copies`]), for the
    /// cells' identity.
    pub head_copies: usize,
    /// What transformed the model before it went on tiles (`rotate 0`, `smooth 0.5 ...`), in
    /// order, for the cells' identity.
    pub transforms: Vec<String>,
}

/// The result of one (task, row, seed) cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    /// Task name.
    pub task: String,
    /// Row label.
    pub row: String,
    /// Chip seed (None for the digital row).
    pub seed: Option<u64>,
    /// The metrics.
    pub metrics: Metrics,
    /// Wall time of the cell.
    pub seconds: f64,
    /// Hash of what determines the numbers.
    pub fingerprint: String,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Work units still to do (cells found on disk excluded).
    Total(usize),
    /// Units finished.
    Advance(usize),
    /// A cell starts.
    Cell(String),
}

fn fingerprint(plan: &Plan, row: &Row, task: &Task, seed: Option<u64>) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update(s.as_bytes());
        h.update([0u8]);
    };
    put(&plan.model);
    put(&plan.dtype);
    // Hashed only off the CPU, so CPU cells keep their identity.
    if plan.device != "cpu" {
        put(&format!("device {}", plan.device));
    }
    put(&row
        .preset
        .as_ref()
        .map(TilePreset::to_toml)
        .unwrap_or_default());
    put(&format!("{:?}", seed));
    put(&task.name);
    put(&task.path.to_string_lossy());
    put(&format!(
        "{} {:?} {:?}",
        task.shots,
        task.data_len(),
        plan.options
    ));
    put(&format!("{} {:?}", plan.digital_lm_head, plan.calibration));
    if !plan.digital_layers.is_empty() {
        put(&format!("digital {:?}", plan.digital_layers));
    }
    // Hashed only when set, so abs-max cells keep their identity.
    if let Some(k) = plan.calib_kappa {
        put(&format!("calib kappa {k}"));
    }
    if plan.calib_mse {
        put("calib mse");
    }
    // Hashed only when present, so cells of runs without learned ranges keep their identity.
    if let Some(r) = &plan.learned_ranges {
        put(&format!("{r:?}"));
    }
    if !plan.isolated.is_empty() {
        put(&format!("isolated {:?}", plan.isolated));
    }
    if !plan.transforms.is_empty() {
        put(&format!("transforms {:?}", plan.transforms));
    }
    if plan.weight_clip != crate::tile::WeightClip::Off {
        put(&format!("weight clip {}", plan.weight_clip.name()));
    }
    if plan.head_copies > 1 {
        put(&format!("head copies {}", plan.head_copies));
    }
    format!("{:x}", h.finalize())
}

/// `cells/TASK__ROW__SEED.json`, named by labels (not positions) so that runs over other
/// subsets of rows or seeds share their cells.
fn cell_path(out: &Path, task: &str, row: &str, seed: Option<u64>) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let s = seed.map_or("fp".to_string(), |s| format!("seed{s}"));
    out.join("cells")
        .join(format!("{}__{}__{s}.json", clean(task), clean(row)))
}

fn load_cell(path: &Path, fp: &str) -> Option<Cell> {
    let text = std::fs::read_to_string(path).ok()?;
    let c: Cell = serde_json::from_str(&text).ok()?;
    (c.fingerprint == fp).then_some(c)
}

/// Sets static input ranges of every analog layer from one forward pass over `ids`.
fn calibrate(chip: &Decoder, ids: &[u32]) -> Result<()> {
    chip.reset_analog(true);
    let x = Tensor::from_slice(ids, (1, ids.len()), chip.device())?;
    // The whole forward, lm_head included: a head left uncalibrated here would take its
    // ranges from the first batch of whichever task runs first on the chip, and a cell's value
    // would depend on the tasks run before it.
    chip.forward(&x, &mut KvCache::default())?;
    Ok(())
}

/// Runs (or resumes) `plan` with the digital `model`, writing cells under `out`; returns every
/// cell in plan order.
pub fn run(
    plan: &Plan,
    model: &Decoder,
    tok: &Tokenizer,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Cell>> {
    let cells_dir = out.join("cells");
    std::fs::create_dir_all(&cells_dir).map_err(|source| Error::Io {
        path: cells_dir.clone(),
        source,
    })?;
    // (row, seed, task) in run order, with what is already on disk.
    let mut jobs = Vec::new();
    for (ri, row) in plan.rows.iter().enumerate() {
        let seeds: Vec<Option<u64>> = match row.preset {
            None => vec![None],
            Some(_) => plan.seeds.iter().map(|&s| Some(s)).collect(),
        };
        for seed in seeds {
            for (ti, task) in plan.tasks.iter().enumerate() {
                let fp = fingerprint(plan, row, task, seed);
                let path = cell_path(out, &task.name, &row.label, seed);
                let done = load_cell(&path, &fp);
                jobs.push((ri, seed, ti, fp, path, done));
            }
        }
    }
    let todo: usize = jobs
        .iter()
        .filter(|j| j.5.is_none())
        .map(|j| units(&plan.tasks[j.2], &plan.options))
        .sum();
    progress(Progress::Total(todo));
    let mut cells = Vec::with_capacity(jobs.len());
    let mut chip: Option<((usize, Option<u64>), Decoder)> = None;
    for (ri, seed, ti, fp, path, done) in jobs {
        if let Some(c) = done {
            cells.push(c);
            continue;
        }
        let row = &plan.rows[ri];
        let task = &plan.tasks[ti];
        progress(Progress::Cell(format!(
            "{} | {} | {}",
            task.name,
            row.label,
            seed.map_or("-".into(), |s| format!("seed {s}"))
        )));
        let t0 = std::time::Instant::now();
        let metrics = match (&row.preset, seed) {
            (Some(preset), Some(s)) => {
                if chip.as_ref().map(|c| c.0) != Some((ri, Some(s))) {
                    drop(chip.take());
                    let digital = |name: &str| {
                        (plan.digital_lm_head && name == "lm_head")
                            || crate::executor::load::layer_named(name, &plan.digital_layers)
                    };
                    let mut dec = program_chip_except(model, preset, s, &digital)?;
                    dec.set_calibration(match (plan.calib_mse, plan.calib_kappa) {
                        (true, _) => Calibration::Mse,
                        (false, Some(k)) => Calibration::Kappa(k as f32),
                        (false, None) => Calibration::AbsMax,
                    });
                    if let Some(ids) = &plan.calibration {
                        calibrate(&dec, ids)?;
                    }
                    if let Some(r) = &plan.learned_ranges {
                        crate::executor::load::apply_ranges(&mut dec, r)?;
                    }
                    chip = Some(((ri, Some(s)), dec));
                }
                let dec = &chip
                    .as_ref()
                    .map(|c| &c.1)
                    .ok_or_else(|| Error::Value("internal: no programmed chip".into()))?;
                dec.reset_analog(plan.calibration.is_none() && plan.learned_ranges.is_none());
                evaluate(task, dec, tok, &plan.options, &mut |n| {
                    progress(Progress::Advance(n))
                })?
            }
            _ => evaluate(task, model, tok, &plan.options, &mut |n| {
                progress(Progress::Advance(n))
            })?,
        };
        let cell = Cell {
            task: task.name.clone(),
            row: row.label.clone(),
            seed,
            metrics,
            seconds: t0.elapsed().as_secs_f64(),
            fingerprint: fp,
        };
        let json = serde_json::to_vec_pretty(&cell)
            .map_err(|e| Error::Value(format!("serializing a cell: {e}")))?;
        crate::paths::write_atomic(&path, &json)?;
        cells.push(cell);
    }
    Ok(cells)
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One summary entry: a row's headline metric on a task over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Row label.
    pub row: String,
    /// Task name ("average" for the mean over the accuracy tasks).
    pub task: String,
    /// Metric name.
    pub metric: String,
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds.
    pub std: f64,
    /// Per-seed values.
    pub values: Vec<f64>,
}

/// Headline metric per (row, task) and the per-seed average over accuracy tasks.
pub fn summarize(plan: &Plan, cells: &[Cell]) -> Vec<Summary> {
    let mut out = Vec::new();
    for row in &plan.rows {
        let mut seeds: Vec<Option<u64>> = cells
            .iter()
            .filter(|c| c.row == row.label)
            .map(|c| c.seed)
            .collect();
        seeds.dedup();
        let mut avg = vec![Vec::new(); seeds.len()];
        for task in &plan.tasks {
            let (metric, higher) = headline(task);
            let values: Vec<f64> = seeds
                .iter()
                .filter_map(|s| {
                    cells
                        .iter()
                        .find(|c| c.row == row.label && c.task == task.name && c.seed == *s)
                        .and_then(|c| c.metrics.get(metric).copied())
                })
                .collect();
            if higher && values.len() == seeds.len() {
                avg.iter_mut().zip(&values).for_each(|(a, v)| a.push(*v));
            }
            let (mean, std) = mean_std(&values);
            out.push(Summary {
                row: row.label.clone(),
                task: task.name.clone(),
                metric: metric.into(),
                mean,
                std,
                values,
            });
        }
        let per_seed: Vec<f64> = avg
            .iter()
            .filter(|a| !a.is_empty())
            .map(|a| a.iter().sum::<f64>() / a.len() as f64)
            .collect();
        let (mean, std) = mean_std(&per_seed);
        out.push(Summary {
            row: row.label.clone(),
            task: "average".into(),
            metric: "acc".into(),
            mean,
            std,
            values: per_seed,
        });
    }
    out
}

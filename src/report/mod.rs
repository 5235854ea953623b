//! `afm report`: a sweep's results as a Markdown report (the results table, the Pareto front of
//! quality vs energy per token, failed and missing points) with SVG plots. Several output
//! folders of one sweep (the shards of `afm sweep --shard i/n`) are merged by point number;
//! folders of different sweeps, or with different results for one point, are refused.

pub mod markdown;
pub mod plot;

use crate::error::{Error, Result};
use crate::sweep::run::PointResult;
use crate::sweep::{Point, SweepFile};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `sweep.json`, written by `afm sweep` next to `points.jsonl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    sweep: SweepFile,
    shard: String,
}

/// A sweep's points and the results found for them in one or more output folders.
#[derive(Debug, Clone)]
pub struct SweepData {
    /// The sweep as written in its file.
    pub sweep: SweepFile,
    /// The folders read, in the order given.
    pub dirs: Vec<PathBuf>,
    /// Every point of the sweep.
    pub points: Vec<Point>,
    /// Results by point number, compute seconds left out (absent: run in none of the folders).
    pub results: BTreeMap<usize, PointResult>,
    /// Result files skipped because their point differs from `points.jsonl` (left from an
    /// earlier version of the sweep file).
    pub stale: usize,
}

fn json_error(file: &Path, e: serde_json::Error) -> Error {
    Error::Parse {
        file: file.to_path_buf(),
        msg: e.to_string(),
    }
}

fn read_points(file: &Path) -> Result<Vec<Point>> {
    crate::paths::read_text(file)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| json_error(file, e)))
        .collect()
}

/// Reads sweep output folders and merges their results by point number.
pub fn load(dirs: &[PathBuf]) -> Result<SweepData> {
    let mut data: Option<SweepData> = None;
    let mut from: BTreeMap<usize, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let meta_file = dir.join("sweep.json");
        if !meta_file.is_file() {
            return Err(Error::Value(format!(
                "{}: no sweep.json, so not an `afm sweep` output folder (an older one gets it \
                 when `afm sweep` is run on it again)",
                dir.display()
            )));
        }
        let meta: Meta = serde_json::from_str(&crate::paths::read_text(&meta_file)?)
            .map_err(|e| json_error(&meta_file, e))?;
        let points = read_points(&dir.join("points.jsonl"))?;
        let d = data.get_or_insert_with(|| SweepData {
            sweep: meta.sweep.clone(),
            dirs: Vec::new(),
            points: points.clone(),
            results: BTreeMap::new(),
            stale: 0,
        });
        if let Some(first) = d.dirs.first() {
            if meta.sweep != d.sweep || points != d.points {
                return Err(Error::Value(format!(
                    "{} (sweep `{}`, shard {}) and {} (sweep `{}`) hold different sweeps \
                     (sweep.json or points.jsonl differ): report them separately",
                    dir.display(),
                    meta.sweep.name,
                    meta.shard,
                    first.display(),
                    d.sweep.name
                )));
            }
        }
        d.dirs.push(dir.clone());
        let rdir = dir.join("results");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&rdir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        for f in files {
            let mut r: PointResult = serde_json::from_str(&crate::paths::read_text(&f)?)
                .map_err(|e| json_error(&f, e))?;
            r.seconds = None;
            let id = r.point.id;
            if d.points.get(id) != Some(&r.point) {
                d.stale += 1;
                continue;
            }
            if let Some(prev) = d.results.get(&id) {
                if *prev != r {
                    return Err(Error::Value(format!(
                        "point {id} ({}) has different results in {} and {}: these folders \
                         did not run the same sweep",
                        r.point.label(),
                        from[&id].display(),
                        dir.display()
                    )));
                }
            } else {
                from.insert(id, dir.clone());
                d.results.insert(id, r);
            }
        }
    }
    data.ok_or_else(|| Error::Value("name at least one sweep output folder".into()))
}

/// What the report ranks points by: one task's headline metric (the average accuracy when the
/// sweep has accuracy tasks).
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// Task name ("average" for the mean over the accuracy tasks).
    pub task: String,
    /// Metric name (`ppl`, `acc`, `acc_norm`, `exact_match`).
    pub metric: String,
    /// Larger is better (accuracies); false for perplexity.
    pub higher_is_better: bool,
}

impl Objective {
    /// The objective of a set of results: the average accuracy if there is one, else the
    /// first task's metric. None when no point has metrics.
    pub fn of<'a>(results: impl IntoIterator<Item = &'a PointResult>) -> Option<Self> {
        let all: Vec<_> = results.into_iter().flat_map(|r| r.metrics.iter()).collect();
        let pick = all
            .iter()
            .find(|s| s.task == "average")
            .or_else(|| all.first())?;
        Some(Objective {
            task: pick.task.clone(),
            metric: pick.metric.clone(),
            higher_is_better: pick.metric != "ppl",
        })
    }

    /// Mean and std of the objective at one point (None: failed or not measured).
    pub fn value(&self, r: &PointResult) -> Option<(f64, f64)> {
        r.metrics
            .iter()
            .find(|s| s.task == self.task && s.metric == self.metric)
            .filter(|s| s.mean.is_finite())
            .map(|s| (s.mean, s.std))
    }

    /// A name for axes and headings, e.g. `wikitext2 ppl (lower is better)`.
    pub fn label(&self) -> String {
        let what = if self.task == "average" {
            format!("average {}", self.metric)
        } else {
            format!("{} {}", self.task, self.metric)
        };
        let dir = if self.higher_is_better {
            "higher"
        } else {
            "lower"
        };
        format!("{what} ({dir} is better)")
    }
}

/// The points on the Pareto front of the objective vs energy per token, by rising energy: no
/// other point has less or equal energy and a better or equal objective with one of them
/// strictly better. Points without chip numbers or objective are left out.
pub fn pareto<'a>(
    results: impl IntoIterator<Item = &'a PointResult>,
    obj: &Objective,
) -> Vec<&'a PointResult> {
    let sign = if obj.higher_is_better { 1.0 } else { -1.0 };
    let mut c: Vec<(f64, f64, &PointResult)> = results
        .into_iter()
        .filter_map(|r| {
            let e = r.chip.as_ref()?.energy_per_token_pj;
            let (q, _) = obj.value(r)?;
            e.is_finite().then_some((e, sign * q, r))
        })
        .collect();
    // Ties in energy: the best objective first, so the others are dominated by it.
    c.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut best = f64::NEG_INFINITY;
    let mut front = Vec::new();
    for (_, g, r) in c {
        if g > best {
            best = g;
            front.push(r);
        }
    }
    front
}

/// `results.csv`: one row per point: its values, then per task mean and std, then the chip
/// numbers and the error.
pub fn results_csv(results: &[PointResult]) -> String {
    let keys: Vec<String> = results
        .iter()
        .flat_map(|r| r.point.values.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let tasks: Vec<(String, String)> = results
        .iter()
        .flat_map(|r| r.metrics.iter().map(|m| (m.task.clone(), m.metric.clone())))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut head: Vec<String> = vec!["point".into()];
    head.extend(keys.iter().cloned());
    for (t, m) in &tasks {
        head.push(format!("{t}_{m}_mean"));
        head.push(format!("{t}_{m}_std"));
    }
    head.extend(
        [
            "ttft_ns",
            "decode_tokens_per_s",
            "energy_per_token_pj",
            "area_mm2",
            "tiles",
            "chips",
            "error",
        ]
        .map(String::from),
    );
    let mut out = head.join(",") + "\n";
    for r in results {
        let mut row = vec![r.point.id.to_string()];
        row.extend(keys.iter().map(|k| {
            r.point
                .values
                .get(k)
                .map_or(String::new(), |v| v.to_string())
        }));
        for (t, m) in &tasks {
            match r.metrics.iter().find(|s| &s.task == t && &s.metric == m) {
                Some(s) => row.extend([s.mean.to_string(), s.std.to_string()]),
                None => row.extend([String::new(), String::new()]),
            }
        }
        match &r.chip {
            Some(c) => row.extend([
                c.ttft_ns.to_string(),
                c.decode_tokens_per_s.to_string(),
                c.energy_per_token_pj.to_string(),
                c.area_mm2.to_string(),
                c.tiles.to_string(),
                c.chips.to_string(),
            ]),
            None => row.extend(std::iter::repeat_n(String::new(), 6)),
        }
        row.push(
            r.error
                .as_deref()
                .map_or(String::new(), |e| format!("\"{}\"", e.replace('"', "'"))),
        );
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// `results.json`: the results in point order, without compute seconds.
pub fn results_json(results: &[PointResult]) -> Result<String> {
    let plain: Vec<PointResult> = results
        .iter()
        .map(|r| PointResult {
            seconds: None,
            ..r.clone()
        })
        .collect();
    serde_json::to_string_pretty(&plain).map_err(|e| Error::Value(e.to_string()))
}

/// Writes `report.md`, its plots, `results.csv` and `results.json` (all points found, merged)
/// into `out`; `preamble` (Markdown) goes under the title. Returns the files written.
pub fn write(data: &SweepData, out: &Path, preamble: Option<&str>) -> Result<Vec<PathBuf>> {
    let results: Vec<PointResult> = data.results.values().cloned().collect();
    let mut files = Vec::new();
    let mut put = |name: &str, text: &str| -> Result<()> {
        let p = out.join(name);
        crate::paths::write_atomic(&p, text.as_bytes())?;
        files.push(p);
        Ok(())
    };
    let plots = plot::plots(data);
    for (name, svg, _) in &plots {
        put(name, svg)?;
    }
    put("report.md", &markdown::render(data, &plots, preamble))?;
    put("results.csv", &results_csv(&results))?;
    put("results.json", &results_json(&results)?)?;
    Ok(files)
}

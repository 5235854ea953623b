//! The sweep file (TOML) and its expansion into explicit points.
//!
//! A point sets preset fields by dotted path (`adc.bits`, `tile.rows`, `device.noise_scale`,
//! `drift_time_s`) on the base preset's resolved TOML and parses the result as a preset again,
//! so a bad value fails that point with the preset's own error while the others go on.

use crate::error::{Error, Result};
use crate::tile::TilePreset;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A sweep, as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Name of the sweep (reports).
    pub name: String,
    /// Base tile preset: a name in `tiles/` or a path (relative to the sweep file's folder).
    pub base: String,
    /// Model: manifest name, .gguf or HF folder.
    pub model: String,
    /// Tasks (built-in names or files); a text file gives perplexity.
    pub tasks: Vec<String>,
    /// Chips (seeds) per point [3].
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// First chip seed [0].
    #[serde(default)]
    pub seed: u64,
    /// Items per task (None: all).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Tokens of a perplexity text [4096].
    #[serde(default = "default_text_tokens")]
    pub text_tokens: usize,
    /// Text whose abs-max calibrates the static input ranges of each chip, relative to the
    /// sweep file's folder (None: the first batch of each task).
    #[serde(default)]
    pub calib_text: Option<PathBuf>,
    /// Calibrate each range to kappa * std of its block's inputs instead of their abs-max
    /// (None: abs-max), as `afm eval --calib-kappa`.
    #[serde(default)]
    pub calib_kappa: Option<f64>,
    /// Calibrate each range for the least squared output error of its block instead, as
    /// `afm eval --calib-mse` [false].
    #[serde(default)]
    pub calib_mse: bool,
    /// Prompt tokens of the chip simulation [512].
    #[serde(default = "default_prompt_len")]
    pub prompt_len: usize,
    /// Generated tokens of the chip simulation [128].
    #[serde(default = "default_gen_len")]
    pub gen_len: usize,
    /// Every combination of these values (dotted path -> values).
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Or (and) these points, each a table of dotted path -> value.
    #[serde(default)]
    pub points: Vec<BTreeMap<String, toml::Value>>,
}

/// The most points one sweep file may expand to (grid combinations plus listed points).
pub const MAX_POINTS: usize = 100_000;

fn default_seeds() -> usize {
    3
}
fn default_text_tokens() -> usize {
    4096
}
fn default_prompt_len() -> usize {
    512
}
fn default_gen_len() -> usize {
    128
}

/// One point of a sweep: its number and the values it sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// 0-based number in the sweep's order.
    pub id: usize,
    /// Dotted path -> value (JSON, for `points.jsonl`).
    pub values: BTreeMap<String, serde_json::Value>,
}

impl Point {
    /// A short label such as `adc.bits=6 tile.rows=256`.
    pub fn label(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl SweepFile {
    /// Reads and checks a sweep file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::paths::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses and checks sweep-file text; `file` names it in errors. A sweep whose grid and
    /// points make more than [`MAX_POINTS`] points is refused before anything is expanded.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let path = file;
        let s: SweepFile = crate::paths::parse_toml(text, path)?;
        let bad = |field: &str, msg: &str| Error::Config {
            file: path.to_path_buf(),
            field: field.into(),
            msg: msg.into(),
        };
        if s.tasks.is_empty() {
            return Err(bad("tasks", "name at least one task or text file"));
        }
        if s.seeds == 0 {
            return Err(bad("seeds", "must be >= 1"));
        }
        if s.calib_kappa.is_some_and(|k| !(k.is_finite() && k > 0.0)) {
            return Err(bad("calib_kappa", "must be a finite number > 0"));
        }
        if s.calib_mse && s.calib_kappa.is_some() {
            return Err(bad(
                "calib_mse",
                "choose one rule: calib_kappa or calib_mse",
            ));
        }
        if s.grid.is_empty() && s.points.is_empty() {
            return Err(bad("grid", "give a [grid] or [[points]] to sweep over"));
        }
        if let Some((k, _)) = s.grid.iter().find(|(_, v)| v.is_empty()) {
            return Err(bad(&format!("grid.{k}"), "needs at least one value"));
        }
        let grid = match s.grid.is_empty() {
            true => Some(0),
            false => s
                .grid
                .values()
                .try_fold(1usize, |n, v| n.checked_mul(v.len())),
        };
        let total = grid.and_then(|g| g.checked_add(s.points.len()));
        if total.is_none_or(|n| n > MAX_POINTS) {
            return Err(bad(
                "grid",
                &format!("the grid and points make more than {MAX_POINTS} points; split the sweep"),
            ));
        }
        Ok(s)
    }

    /// Every point: the grid's combinations (last key fastest, keys in sorted order), then the
    /// listed points.
    pub fn expand(&self) -> Vec<Point> {
        let mut combos: Vec<BTreeMap<String, serde_json::Value>> = vec![BTreeMap::new()];
        if !self.grid.is_empty() {
            for (k, vals) in &self.grid {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        vals.iter().map(move |v| {
                            let mut c = c.clone();
                            c.insert(k.clone(), to_json(v));
                            c
                        })
                    })
                    .collect();
            }
        } else {
            combos.clear();
        }
        combos.extend(
            self.points
                .iter()
                .map(|p| p.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        );
        combos
            .into_iter()
            .enumerate()
            .map(|(id, values)| Point { id, values })
            .collect()
    }
}

fn to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The preset of `point`: `base` with the point's values set by dotted path and named
/// `{base}#{id}`; an unknown path or a value the preset rejects is an error naming both.
pub fn apply(base: &TilePreset, point: &Point) -> Result<TilePreset> {
    let mut doc: toml::Value = toml::from_str(&base.to_toml())
        .map_err(|e| Error::Value(format!("base preset does not render: {e}")))?;
    for (path, value) in &point.values {
        let keys: Vec<&str> = path.split('.').collect();
        let (last, parents) = keys
            .split_last()
            .ok_or_else(|| Error::Value("empty field path".into()))?;
        let mut table = doc
            .as_table_mut()
            .ok_or_else(|| Error::Value("preset is not a table".into()))?;
        for k in parents {
            table = table
                .get_mut(*k)
                .and_then(toml::Value::as_table_mut)
                .ok_or_else(|| {
                    Error::Value(format!(
                        "point {}: `{path}`: the preset has no section `{k}`",
                        point.id
                    ))
                })?;
        }
        let v: toml::Value = serde_json::from_value(value.clone())
            .map_err(|e| Error::Value(format!("point {}: `{path}` = {value}: {e}", point.id)))?;
        table.insert((*last).to_string(), v);
    }
    if let Some(t) = doc.as_table_mut() {
        t.insert(
            "name".into(),
            toml::Value::String(format!("{}#{}", base.name, point.id)),
        );
    }
    let text = toml::to_string(&doc).map_err(|e| Error::Value(e.to_string()))?;
    TilePreset::parse(
        &text,
        Path::new(&format!("sweep point {} ({})", point.id, point.label())),
    )
}

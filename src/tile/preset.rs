//! Tile presets: typed TOML files in `tiles/` describing one crossbar tile and its device.
//!
//! Every field carries its unit in its name and is validated on load: a bad value gives one
//! error line naming the file, the dotted field and the allowed range.

use super::cost::{TileCostModel, TileEnergy, Timing};
use crate::chip::ChipConfig;
use crate::device::DeviceConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A tile preset (one file in `tiles/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TilePreset {
    /// Short name of the preset.
    pub name: String,
    /// What the preset models and where its numbers come from.
    #[serde(default)]
    pub description: String,
    /// Seconds between programming (first read at t0) and inference.
    #[serde(default)]
    pub drift_time_s: f64,
    /// Global drift compensation: one digital scale per tile, measured at t0 and at t.
    #[serde(default = "yes")]
    pub drift_compensation: bool,
    /// Crossbar geometry.
    pub tile: Geometry,
    /// Input converter.
    pub dac: Dac,
    /// Output converter.
    pub adc: Adc,
    /// Per-MVM noise sources.
    #[serde(default)]
    pub noise: MvmNoise,
    /// Device model.
    pub device: DeviceConfig,
    /// Phase durations of one MVM (cycle-level model); optional, the functional path does not
    /// need it. Without it the chip simulator refuses the preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Action energies of one MVM; optional like `timing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<TileEnergy>,
    /// Chip: tiles per chip, area, digital units, network; optional like `timing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip: Option<ChipConfig>,
}

fn yes() -> bool {
    true
}

/// `[tile]`: the crossbar size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    /// Word lines = inputs per tile (the split of a layer's input dimension).
    pub rows: i64,
    /// Bit lines = outputs per tile.
    pub cols: i64,
}

/// `[dac]`: the input digital-to-analog converter with a static range per row block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dac {
    /// Resolution in bits, sign included (8: levels -127..127); 0 turns quantization off.
    pub bits: i64,
}

/// `[adc]`: the output analog-to-digital converter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adc {
    /// Resolution in bits, sign included; 0 turns quantization and clipping off.
    pub bits: i64,
    /// Global bound factor: column c of row block s clips at lambda * beta_s * w_max[c].
    pub lambda: f64,
}

/// `[noise]`: noise added at every MVM (beyond the static device model).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MvmNoise {
    /// Output noise std relative to beta_s * w_max[c] / sqrt(row blocks) (gamma_out).
    #[serde(default)]
    pub output_gamma: f64,
    /// Read noise std of each device relative to its own conductance.
    #[serde(default)]
    pub read_rel: f64,
    /// Read noise std of each device relative to g_max (independent of its state).
    #[serde(default)]
    pub read_abs: f64,
}

impl TilePreset {
    /// Loads and validates a preset file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::paths::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates preset text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let preset: TilePreset = crate::paths::parse_toml(text, file)?;
        preset.validate(file)?;
        Ok(preset)
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Error::Config {
            file: file.to_path_buf(),
            field: field.to_string(),
            msg,
        };
        for (field, v) in [("tile.rows", self.tile.rows), ("tile.cols", self.tile.cols)] {
            if !(1..=1 << 20).contains(&v) {
                return Err(bad(field, format!("must be in 1..=1048576, got {v}")));
            }
        }
        for (field, v) in [("dac.bits", self.dac.bits), ("adc.bits", self.adc.bits)] {
            if !(v == 0 || (2..=16).contains(&v)) {
                return Err(bad(field, format!("must be 0 (off) or in 2..=16, got {v}")));
            }
        }
        let finite_nonneg = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(bad(field, format!("must be a finite number >= 0, got {v}")))
            }
        };
        if !(self.adc.lambda.is_finite() && self.adc.lambda > 0.0) {
            return Err(bad(
                "adc.lambda",
                format!("must be a finite number > 0, got {}", self.adc.lambda),
            ));
        }
        finite_nonneg("drift_time_s", self.drift_time_s)?;
        finite_nonneg("noise.output_gamma", self.noise.output_gamma)?;
        finite_nonneg("noise.read_rel", self.noise.read_rel)?;
        finite_nonneg("noise.read_abs", self.noise.read_abs)?;
        self.device.check().map_err(|(f, m)| bad(&f, m))?;
        let in_section = |section: &'static str| {
            move |(f, m): (String, String)| bad(&format!("{section}.{f}"), m)
        };
        if let Some(t) = &self.timing {
            t.check().map_err(in_section("timing"))?;
            if !(2..=16).contains(&self.dac.bits) {
                return Err(bad(
                    "dac.bits",
                    format!(
                        "must be in 2..=16 with a [timing] section (it sets the pulse lengths), got {}",
                        self.dac.bits
                    ),
                ));
            }
        }
        if let Some(e) = &self.energy {
            e.check().map_err(in_section("energy"))?;
        }
        if let Some(c) = &self.chip {
            c.check().map_err(in_section("chip"))?;
        }
        Ok(())
    }

    /// The cycle-level sections, or an error naming the first one missing.
    pub fn cost_sections(&self, file: &Path) -> Result<(TileCostModel, &ChipConfig)> {
        let missing = |section: &str| {
            Error::Config {
            file: file.to_path_buf(),
            field: section.to_string(),
            msg: format!(
                "the chip simulator needs the sections [timing], [energy] and [chip]; preset `{}` has no [{section}] (see tiles/hermes.toml)",
                self.name
            ),
        }
        };
        let timing = self.timing.ok_or_else(|| missing("timing"))?;
        if !(2..=16).contains(&self.dac.bits) {
            return Err(Error::Config {
                file: file.to_path_buf(),
                field: "dac.bits".into(),
                msg: format!(
                    "must be in 2..=16 for the chip simulator (it sets the pulse lengths), got {}",
                    self.dac.bits
                ),
            });
        }
        let energy = self.energy.clone().ok_or_else(|| missing("energy"))?;
        let chip = self.chip.as_ref().ok_or_else(|| missing("chip"))?;
        Ok((
            TileCostModel {
                timing,
                energy,
                dac_bits: self.dac.bits as u32,
                adc_bits: self.adc.bits as u32,
            },
            chip,
        ))
    }

    /// Rows per tile as a size.
    pub fn rows(&self) -> usize {
        self.tile.rows as usize
    }

    /// Columns per tile as a size.
    pub fn cols(&self) -> usize {
        self.tile.cols as usize
    }

    /// The preset as TOML text (the resolved configuration, defaults filled in).
    pub fn to_toml(&self) -> String {
        let mut resolved = self.clone();
        resolved.device = self.device.resolved();
        toml::to_string_pretty(&resolved).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Resolves a preset argument: an existing path, or a name looked up in `tiles/`.
pub fn resolve_preset_path(arg: &str) -> PathBuf {
    crate::paths::resolve_named(arg, "tiles")
}

//! The chip: a whole model on tiles, and the cycle-level simulation of prefill and decode.
//!
//! Timing is computed apart from values: the model's shapes fix how many tiles each projection
//! needs ([`mapping`]), the tile preset fixes what each MVM phase, digital operation and transfer
//! costs ([`crate::tile::cost`], [`digital`], [`network`]), and an event-driven scheduler walks
//! the per-token operation graph ([`graph`]) over resources with queues ([`schedule`]), so
//! pipelining and contention show in the latency. No weight is ever touched.

pub mod config;
pub mod digital;
pub mod graph;
pub mod mapping;
pub mod network;
pub mod report;
pub mod schedule;
pub mod svg;

pub use config::{ChipConfig, DigitalUnit, NetworkConfig};
pub use mapping::ChipMap;
pub use report::ChipReport;

use crate::error::{Error, Result};
use crate::executor::ModelConfig;
use crate::tile::TilePreset;
use std::path::Path;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Model name (for the report).
    pub model: String,
    /// Prompt tokens (prefill), at least 1.
    pub prompt_len: usize,
    /// Decode steps after the first token.
    pub gen_len: usize,
    /// Keep lm_head digital (on the attention units) instead of on tiles.
    pub digital_lm_head: bool,
    /// Projections (HF name) whose first inputs sit in a row block of their own, and how many
    /// (an analog model's isolated outliers; `Decoder::isolated`), with the copies of each
    /// head's weights on its tiles (`afm eval --head-copies`).
    pub heads: crate::tile::mapping::HeadBlocks,
}

/// Most tokens one run may simulate (the operation graph grows linearly with them).
pub const MAX_TOKENS: usize = 1 << 16;

/// Places `config` on chips built from `preset` (read from `file`), simulates prefill and decode
/// and returns the report with the timeline of its last token. `progress(done, total)` follows
/// the scheduler.
pub fn simulate(
    config: &ModelConfig,
    preset: &TilePreset,
    file: &Path,
    spec: &RunSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ChipReport, svg::Timeline)> {
    let (cost, chip) = preset.cost_sections(file)?;
    spec.heads.check(preset.rows(), file)?;
    let map = ChipMap::new(
        config,
        &cost,
        chip,
        preset.rows(),
        preset.cols(),
        spec.digital_lm_head,
        &spec.heads,
    );
    simulate_mapped(config, preset, file, &map, spec, progress)
}

/// As [`simulate`] on a placement made (and possibly adjusted, e.g. with
/// [`ChipMap::set_array_energy`]) by the caller with the same preset and `spec`.
pub fn simulate_mapped(
    config: &ModelConfig,
    preset: &TilePreset,
    file: &Path,
    map: &ChipMap,
    spec: &RunSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ChipReport, svg::Timeline)> {
    let (cost, chip) = preset.cost_sections(file)?;
    if spec.prompt_len == 0 || spec.prompt_len + spec.gen_len > MAX_TOKENS {
        return Err(Error::Value(format!(
            "prompt length {} and generation length {}: need a prompt of at least 1 token and at most {MAX_TOKENS} tokens in all",
            spec.prompt_len, spec.gen_len
        )));
    }
    let g = graph::build(config, &cost, chip, map, spec.prompt_len, spec.gen_len);
    let s = schedule::simulate(&g, progress);
    let inputs = report::Inputs {
        config,
        preset,
        cost: &cost,
        chip,
        map,
        graph: &g,
        schedule: &s,
    };
    let report = report::summarize(&inputs, spec);
    let timeline = svg::Timeline::of(&g, &s, &report);
    Ok((report, timeline))
}

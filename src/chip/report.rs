//! The chip report: latency, throughput, energy per token, utilization, tiles, chips and area.
//!
//! Latencies come from the schedule: prefill ends when the last prompt token has left the last
//! layer, the first token when its sample is taken, and a decode step lasts from one sample to
//! the next. Energies come from the graph (per component, phase and layer), utilizations from
//! the busy time of each resource over the phase's wall time. Everything is a plain number, so
//! the JSON and Markdown renderings are the same bytes on every run.

use super::config::ChipConfig;
use super::digital::Unit;
use super::graph::{Graph, ResKind, COMPONENTS, NONE};
use super::mapping::ChipMap;
use super::schedule::Schedule;
use super::RunSpec;
use crate::executor::ModelConfig;
use crate::tile::{MvmCost, TileCostModel, TilePreset};
use serde::Serialize;
use std::fmt::Write;

/// One energy component.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// Component name.
    pub component: &'static str,
    /// Energy in pJ.
    pub pj: f64,
}

/// Resource utilization over one phase (busy time / (resources x wall time)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Utilization {
    /// Crossbars of all tiles.
    pub tiles: f64,
    /// ADCs of all tiles (converting).
    pub adcs: f64,
    /// Tile-local digital units.
    pub tile_digital: f64,
    /// Digital unit pools, per kind, over all chips.
    pub digital: Vec<(&'static str, f64)>,
    /// Digital clusters' mesh ports (in and out).
    pub ports: f64,
    /// Chip-to-chip links.
    pub chip_links: f64,
}

/// One row of the per-layer table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRow {
    /// `layer N` or `embed + head` (embedding, final norm, lm_head, sample).
    pub name: String,
    /// Tiles of the layer.
    pub tiles: usize,
    /// Mean time of a prompt token through the layer, queueing included.
    pub prefill_ns: f64,
    /// Mean time of a decode token through the layer.
    pub decode_ns: f64,
    /// Prefill energy per prompt token.
    pub prefill_pj_per_token: f64,
    /// Decode energy per generated token.
    pub decode_pj_per_token: f64,
}

/// One full tile MVM of the preset (all rows and columns in use, average inputs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileSummary {
    /// Rows per tile.
    pub rows: usize,
    /// Columns per tile.
    pub cols: usize,
    /// Phases and energies.
    pub mvm: MvmCost,
    /// Landing to post-processed output.
    pub core_ns: f64,
    /// Drive, array, conversion and post-processing energy.
    pub core_pj: f64,
    /// Throughput of one chip's tiles.
    pub chip_tops: f64,
    /// Energy efficiency of the core MVM.
    pub tops_per_w: f64,
    /// Source of the ADC energy per conversion.
    pub adc_energy_source: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChipReport {
    /// Model name.
    pub model: String,
    /// Preset name.
    pub preset: String,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Decode steps.
    pub gen_len: usize,
    /// lm_head on the digital units instead of tiles.
    pub digital_lm_head: bool,
    /// One tile.
    pub tile: TileSummary,
    /// Tiles used.
    pub tiles: usize,
    /// Chips needed.
    pub chips: usize,
    /// Tiles per chip.
    pub tiles_per_chip: usize,
    /// Analog weights.
    pub analog_weights: usize,
    /// Cells holding a weight / cells of the used tiles.
    pub array_utilization: f64,
    /// Silicon area.
    pub area_mm2: f64,
    /// KV cache at the longest context, all layers.
    pub kv_cache_bytes: u64,
    /// All prompt tokens through all layers.
    pub prefill_ns: u64,
    /// Time to first token: prefill, final norm, lm_head and sample of the last prompt token.
    pub ttft_ns: u64,
    /// Mean decode step.
    pub decode_per_token_ns: f64,
    /// End of the run.
    pub total_ns: u64,
    /// Prompt tokens per second in prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second in decode.
    pub decode_tokens_per_s: f64,
    /// Prefill energy per prompt token, by component.
    pub prefill_energy_per_token: Vec<Part>,
    /// Decode energy per generated token, by component.
    pub decode_energy_per_token: Vec<Part>,
    /// Energy of the whole run.
    pub total_energy_pj: f64,
    /// Utilization during prefill (until the first token).
    pub prefill_utilization: Utilization,
    /// Utilization during decode.
    pub decode_utilization: Utilization,
    /// Per layer.
    pub layers: Vec<LayerRow>,
    /// Operations simulated.
    pub operations: usize,
    /// Events processed.
    pub events: u64,
}

/// What [`summarize`] reads.
pub struct Inputs<'a> {
    /// Model shapes.
    pub config: &'a ModelConfig,
    /// The preset.
    pub preset: &'a TilePreset,
    /// Its tile cost model.
    pub cost: &'a TileCostModel,
    /// Its chip section.
    pub chip: &'a ChipConfig,
    /// The placement.
    pub map: &'a ChipMap,
    /// The operation graph.
    pub graph: &'a Graph,
    /// Its schedule.
    pub schedule: &'a Schedule,
}

fn parts(e: &[f64; 10], per: f64) -> Vec<Part> {
    COMPONENTS
        .iter()
        .zip(e)
        .map(|(&component, &pj)| Part {
            component,
            pj: if per > 0.0 { pj / per } else { 0.0 },
        })
        .collect()
}

fn utilization(x: &Inputs, decode: bool, window: u64) -> Utilization {
    let g = x.graph;
    let mut busy = vec![0f64; g.resources.len()];
    let mut adc_busy = 0f64;
    for i in 0..g.len() {
        if (g.token[i] as usize >= g.prompt_len) != decode {
            continue;
        }
        let r = g.resource[i] as usize;
        busy[r] += f64::from(g.busy_ns[i]);
        let res = &g.resources[r];
        if let (ResKind::Adc, Some(gi)) = (res.kind, res.group) {
            adc_busy += x.map.groups[gi].cost.adc_busy_ns() * res.tiles as f64;
        }
    }
    let w = window.max(1) as f64;
    let chips = x.map.chips as f64;
    let tiles = x.map.tiles.max(1) as f64;
    let sum = |k: ResKind, weighted: bool| -> f64 {
        g.resources
            .iter()
            .zip(&busy)
            .filter(|(r, _)| r.kind == k)
            .map(|(r, b)| if weighted { b * r.tiles as f64 } else { *b })
            .sum()
    };
    let links = x.map.chips.saturating_sub(1).max(1) as f64;
    Utilization {
        tiles: sum(ResKind::Xbar, true) / (tiles * w),
        adcs: adc_busy / (tiles * w),
        tile_digital: sum(ResKind::TilePost, true) / (tiles * w),
        digital: Unit::ALL
            .iter()
            .map(|&u| (u.name(), sum(ResKind::Digital(u), false) / (chips * w)))
            .collect(),
        ports: (sum(ResKind::PortIn, false) + sum(ResKind::PortOut, false)) / (2.0 * chips * w),
        chip_links: sum(ResKind::ChipLink, false) / (links * w),
    }
}

/// Mean over `tokens` of the time from `from(t)` to `to(t)`.
fn mean_span(
    s: &Schedule,
    tokens: std::ops::Range<usize>,
    from: impl Fn(usize) -> u32,
    to: impl Fn(usize) -> u32,
) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for t in tokens {
        let (a, b) = (from(t), to(t));
        if a != NONE && b != NONE {
            sum += (s.done[b as usize] - s.done[a as usize]) as f64;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Builds the report of a simulated run.
pub fn summarize(x: &Inputs, spec: &RunSpec) -> ChipReport {
    let (g, s, map) = (x.graph, x.schedule, x.map);
    let (p, d, n) = (g.prompt_len, g.gen_len, g.layers);
    let prefill_ns = (0..p)
        .map(|t| s.done[g.out_of(t, n - 1) as usize])
        .max()
        .unwrap_or(0);
    let ttft_ns = s.done[g.out_of(p - 1, n) as usize];
    let total_ns = s.end();
    let last_sample = s.done[g.out_of(p + d - 1, n) as usize];
    let decode_per_token_ns = if d > 0 {
        (last_sample - ttft_ns) as f64 / d as f64
    } else {
        0.0
    };
    let per_phase = |phase: usize| {
        let mut e = [0f64; 10];
        for l in 0..=n {
            for (a, b) in e.iter_mut().zip(&g.energy[phase * (n + 1) + l]) {
                *a += b;
            }
        }
        e
    };
    let (e_pre, e_dec) = (per_phase(0), per_phase(1));
    let total_energy_pj = e_pre.iter().chain(&e_dec).sum();
    let layer_in = |t: usize, l: usize| {
        if l == 0 {
            g.embed[t]
        } else {
            g.out_of(t, l - 1)
        }
    };
    let layers = (0..=n)
        .map(|l| {
            let e_of = |phase: usize| g.energy[phase * (n + 1) + l].iter().sum::<f64>();
            LayerRow {
                name: if l == n {
                    "embed + head".into()
                } else {
                    format!("layer {l}")
                },
                tiles: map.layer_tiles(l),
                prefill_ns: mean_span(s, 0..p, |t| layer_in(t, l), |t| g.out_of(t, l)),
                decode_ns: mean_span(s, p..p + d, |t| layer_in(t, l), |t| g.out_of(t, l)),
                prefill_pj_per_token: e_of(0) / p as f64,
                decode_pj_per_token: if d > 0 { e_of(1) / d as f64 } else { 0.0 },
            }
        })
        .collect();
    let full = x.cost.mvm(
        x.preset.rows(),
        x.preset.cols(),
        1,
        x.chip.activation_bits as u32,
    );
    let shapes = super::digital::Shapes::new(x.config, x.chip.activation_bits);
    ChipReport {
        model: spec.model.clone(),
        preset: x.preset.name.clone(),
        prompt_len: p,
        gen_len: d,
        digital_lm_head: spec.digital_lm_head,
        tile: TileSummary {
            rows: x.preset.rows(),
            cols: x.preset.cols(),
            core_ns: full.core_ns(),
            core_pj: full.core_pj(),
            chip_tops: full.tops(map.tiles_per_chip),
            tops_per_w: full.tops_per_w(),
            adc_energy_source: x.cost.energy.e_conv_source.clone(),
            mvm: full,
        },
        tiles: map.tiles,
        chips: map.chips,
        tiles_per_chip: map.tiles_per_chip,
        analog_weights: map.weights,
        array_utilization: map.array_utilization,
        area_mm2: map.area_mm2,
        kv_cache_bytes: shapes.kv_read_bytes((p + d) as u64) * n as u64,
        prefill_ns,
        ttft_ns,
        decode_per_token_ns,
        total_ns,
        prefill_tokens_per_s: p as f64 / prefill_ns.max(1) as f64 * 1e9,
        decode_tokens_per_s: if d > 0 {
            1e9 / decode_per_token_ns.max(1.0)
        } else {
            0.0
        },
        prefill_energy_per_token: parts(&e_pre, p as f64),
        decode_energy_per_token: parts(&e_dec, d as f64),
        total_energy_pj,
        prefill_utilization: utilization(x, false, ttft_ns),
        decode_utilization: utilization(x, true, total_ns - ttft_ns),
        layers,
        operations: g.len(),
        events: s.events,
    }
}

/// A time in ns with a readable unit.
pub fn fmt_ns(ns: f64) -> String {
    match ns {
        v if v >= 1e9 => format!("{:.3} s", v / 1e9),
        v if v >= 1e6 => format!("{:.3} ms", v / 1e6),
        v if v >= 1e3 => format!("{:.3} us", v / 1e3),
        v => format!("{v:.1} ns"),
    }
}

/// An energy in pJ with a readable unit.
pub fn fmt_pj(pj: f64) -> String {
    match pj {
        v if v >= 1e12 => format!("{:.3} J", v / 1e12),
        v if v >= 1e9 => format!("{:.3} mJ", v / 1e9),
        v if v >= 1e6 => format!("{:.3} uJ", v / 1e6),
        v if v >= 1e3 => format!("{:.3} nJ", v / 1e3),
        v => format!("{v:.2} pJ"),
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

impl ChipReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let t = &self.tile;
        let _ = writeln!(m, "# Chip report: {} on {}\n", self.model, self.preset);
        let _ = writeln!(
            m,
            "Prompt {} tokens, {} decode steps; lm_head {}.\n",
            self.prompt_len,
            self.gen_len,
            if self.digital_lm_head {
                "digital"
            } else {
                "on tiles"
            }
        );
        let _ = writeln!(m, "## Hardware\n\n| | |\n|---|---:|");
        let _ = writeln!(m, "| tile | {} x {} |", t.rows, t.cols);
        let _ = writeln!(
            m,
            "| tile MVM (full use) | {}, {} |",
            fmt_ns(t.core_ns),
            fmt_pj(t.core_pj)
        );
        let _ = writeln!(
            m,
            "| chip peak | {:.2} TOPS, {:.2} TOPS/W |",
            t.chip_tops, t.tops_per_w
        );
        let _ = writeln!(m, "| ADC energy model | {} |", t.adc_energy_source);
        let _ = writeln!(m, "| tiles | {} |", self.tiles);
        let _ = writeln!(
            m,
            "| chips | {} ({} tiles each) |",
            self.chips, self.tiles_per_chip
        );
        let _ = writeln!(
            m,
            "| analog weights | {:.2} M |",
            self.analog_weights as f64 / 1e6
        );
        let _ = writeln!(m, "| array utilization | {} |", pct(self.array_utilization));
        let _ = writeln!(m, "| area | {:.1} mm2 |", self.area_mm2);
        let _ = writeln!(
            m,
            "| KV cache at {} tokens | {:.2} MB |\n",
            self.prompt_len + self.gen_len,
            self.kv_cache_bytes as f64 / 1e6
        );
        let _ = writeln!(m, "## Latency and throughput\n\n| | |\n|---|---:|");
        let _ = writeln!(m, "| prefill | {} |", fmt_ns(self.prefill_ns as f64));
        let _ = writeln!(
            m,
            "| time to first token | {} |",
            fmt_ns(self.ttft_ns as f64)
        );
        let _ = writeln!(
            m,
            "| per decode token | {} |",
            fmt_ns(self.decode_per_token_ns)
        );
        let _ = writeln!(m, "| total | {} |", fmt_ns(self.total_ns as f64));
        let _ = writeln!(
            m,
            "| prefill throughput | {:.1} tokens/s |",
            self.prefill_tokens_per_s
        );
        let _ = writeln!(
            m,
            "| decode throughput | {:.1} tokens/s |\n",
            self.decode_tokens_per_s
        );
        let _ = writeln!(
            m,
            "## Energy per token\n\n| component | prefill | decode |\n|---|---:|---:|"
        );
        let (mut sp, mut sd) = (0f64, 0f64);
        for (a, b) in self
            .prefill_energy_per_token
            .iter()
            .zip(&self.decode_energy_per_token)
        {
            sp += a.pj;
            sd += b.pj;
            let _ = writeln!(
                m,
                "| {} | {} | {} |",
                a.component,
                fmt_pj(a.pj),
                fmt_pj(b.pj)
            );
        }
        let _ = writeln!(m, "| **total** | **{}** | **{}** |", fmt_pj(sp), fmt_pj(sd));
        let _ = writeln!(m, "\nWhole run: {}.\n", fmt_pj(self.total_energy_pj));
        let _ = writeln!(
            m,
            "## Utilization\n\n| resource | prefill | decode |\n|---|---:|---:|"
        );
        let (a, b) = (&self.prefill_utilization, &self.decode_utilization);
        for (name, x, y) in [
            ("tile crossbars", a.tiles, b.tiles),
            ("tile ADCs", a.adcs, b.adcs),
            ("tile digital", a.tile_digital, b.tile_digital),
        ] {
            let _ = writeln!(m, "| {name} | {} | {} |", pct(x), pct(y));
        }
        for ((name, x), (_, y)) in a.digital.iter().zip(&b.digital) {
            let _ = writeln!(m, "| digital: {name} | {} | {} |", pct(*x), pct(*y));
        }
        let _ = writeln!(m, "| mesh ports | {} | {} |", pct(a.ports), pct(b.ports));
        let _ = writeln!(
            m,
            "| chip links | {} | {} |\n",
            pct(a.chip_links),
            pct(b.chip_links)
        );
        let _ = writeln!(
            m,
            "## Per layer\n\n| layer | tiles | prefill / token (queueing included) | decode / token | prefill energy / token | decode energy / token |\n|---|---:|---:|---:|---:|---:|"
        );
        for l in &self.layers {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                l.name,
                l.tiles,
                fmt_ns(l.prefill_ns),
                fmt_ns(l.decode_ns),
                fmt_pj(l.prefill_pj_per_token),
                fmt_pj(l.decode_pj_per_token)
            );
        }
        let _ = writeln!(
            m,
            "\nSimulated {} operations, {} events.",
            self.operations, self.events
        );
        m
    }
}

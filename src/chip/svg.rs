//! The report's chart, written by hand as SVG text: one decode step as a timeline per layer,
//! the prefill pipeline (when each layer was busy with prompt tokens), and the energy per token
//! by component.
//!
//! The timeline shows where a token's time goes (analog MVMs, network, attention, KV cache, the
//! rest); the pipeline shows how prompt tokens overlap across layers; the bars show which
//! component dominates the energy. Numbers are printed with fixed precision, so the same run
//! gives the same bytes.

use super::graph::{Graph, ResKind, COMPONENTS};
use super::report::{fmt_ns, fmt_pj, ChipReport, Part};
use super::schedule::Schedule;
use crate::chip::digital::Unit;
use std::fmt::Write;

/// What an operation is, for coloring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Crossbar, ADC and tile-local digital work.
    Analog,
    /// Mesh ports and chip links.
    Network,
    /// Attention products and softmax.
    Attention,
    /// KV cache reads and writes.
    KvCache,
    /// Norms and element-wise work.
    Other,
}

const CATEGORIES: [(Category, &str, &str); 5] = [
    (Category::Analog, "analog MVM", "#1f77b4"),
    (Category::Network, "network", "#7f7f7f"),
    (Category::Attention, "attention + softmax", "#d62728"),
    (Category::KvCache, "KV cache", "#9467bd"),
    (Category::Other, "norm + element-wise", "#2ca02c"),
];

const PALETTE: [&str; 10] = [
    "#aec7e8", "#1f77b4", "#ff7f0e", "#ffbb78", "#d62728", "#ff9896", "#2ca02c", "#9467bd",
    "#98df8a", "#7f7f7f",
];

fn category(kind: ResKind) -> Category {
    match kind {
        ResKind::Xbar | ResKind::Adc | ResKind::TilePost => Category::Analog,
        ResKind::PortIn | ResKind::PortOut | ResKind::ChipLink => Category::Network,
        ResKind::Digital(Unit::Attention | Unit::Softmax) => Category::Attention,
        ResKind::Digital(Unit::KvCache) => Category::KvCache,
        ResKind::Digital(_) => Category::Other,
    }
}

/// One operation of the drawn token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    /// Layer (the number of layers: head).
    pub layer: usize,
    /// What it is.
    pub category: Category,
    /// Start on its resource.
    pub start: u64,
    /// Completion.
    pub end: u64,
}

/// The data of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The token drawn (the last one).
    pub token: usize,
    /// Start of its step (the previous sample, or its first operation).
    pub t0: u64,
    /// Its operations.
    pub spans: Vec<Span>,
    /// Per layer: first start and last completion of prompt-token work.
    pub prefill: Vec<(u64, u64)>,
    /// Decoder layers.
    pub layers: usize,
    /// Time to first token.
    pub ttft_ns: u64,
}

impl Timeline {
    /// Extracts the chart data from a simulated run.
    pub fn of(g: &Graph, s: &Schedule, r: &ChipReport) -> Self {
        let token = g.prompt_len + g.gen_len - 1;
        let n = g.layers;
        let mut spans = Vec::new();
        let mut prefill = vec![(u64::MAX, 0u64); n + 1];
        for i in 0..g.len() {
            let (t, l) = (g.token[i] as usize, g.layer[i] as usize);
            if t < g.prompt_len {
                let p = &mut prefill[l];
                *p = (p.0.min(s.start[i]), p.1.max(s.done[i]));
            }
            if t == token {
                spans.push(Span {
                    layer: l,
                    category: category(g.resources[g.resource[i] as usize].kind),
                    start: s.start[i],
                    end: s.done[i],
                });
            }
        }
        for p in &mut prefill {
            if p.0 == u64::MAX {
                *p = (0, 0);
            }
        }
        let t0 = if token >= g.prompt_len && token > 0 {
            s.done[g.out_of(token - 1, n) as usize]
        } else {
            spans.iter().map(|x| x.start).min().unwrap_or(0)
        };
        Timeline {
            token,
            t0,
            spans,
            prefill,
            layers: n,
            ttft_ns: r.ttft_ns,
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step near range / 6.
fn tick_step(range: f64) -> f64 {
    let raw = (range / 6.0).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&v| v >= raw)
        .unwrap_or(10.0 * mag)
}

/// A tick label in the unit of the axis range, without trailing zeros.
fn fmt_tick(v: f64, range: f64) -> String {
    let (scale, unit) = match range {
        r if r >= 1e9 => (1e9, "s"),
        r if r >= 1e6 => (1e6, "ms"),
        r if r >= 1e3 => (1e3, "us"),
        _ => (1.0, "ns"),
    };
    let text = format!("{:.3}", v / scale);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}")
}

const W: f64 = 1000.0;
const LEFT: f64 = 80.0;
const PLOT_W: f64 = W - LEFT - 20.0;

/// Rows of layers with bars: `bars(layer)` gives (x0, x1, color) in data units over
/// [0, range]; returns the panel's height.
fn layer_panel(
    out: &mut String,
    y0: f64,
    title: &str,
    layers: usize,
    range: f64,
    bars: &[(usize, f64, f64, &str)],
) -> f64 {
    let rows = layers + 1;
    let row_h = (320.0 / rows as f64).clamp(2.0, 14.0);
    let h = rows as f64 * row_h;
    let top = y0 + 24.0;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        y0 + 14.0,
        esc(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{PLOT_W}" height="{h:.1}" fill="#fafafa" stroke="#ccc"/>"##
    );
    let label_every = (rows / 16).max(1);
    for l in 0..rows {
        if l % label_every == 0 || l == rows - 1 {
            let name = if l == layers {
                "embed + head".to_string()
            } else {
                format!("layer {l}")
            };
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end">{name}</text>"#,
                LEFT - 4.0,
                top + (l as f64 + 0.8) * row_h
            );
        }
    }
    let range = range.max(1.0);
    for &(l, a, b, color) in bars {
        let x = LEFT + a / range * PLOT_W;
        let w = ((b - a) / range * PLOT_W).max(0.5);
        let _ = writeln!(
            out,
            r#"<rect x="{x:.2}" y="{:.2}" width="{w:.2}" height="{:.2}" fill="{color}"/>"#,
            top + l as f64 * row_h + 0.5,
            (row_h - 1.0).max(1.0)
        );
    }
    let step = tick_step(range);
    let mut v = 0.0;
    while v <= range + 1e-9 {
        let x = LEFT + v / range * PLOT_W;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"##,
            top + h,
            top + h + 4.0,
            top + h + 14.0,
            fmt_tick(v, range)
        );
        v += step;
    }
    h + 44.0
}

fn energy_bars(out: &mut String, y0: f64, rows: [(&str, &[Part]); 2]) -> f64 {
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="14" font-weight="bold">Energy per token by component</text>"#,
        y0 + 14.0
    );
    let max = rows
        .iter()
        .map(|(_, p)| p.iter().map(|x| x.pj).sum::<f64>())
        .fold(0.0, f64::max)
        .max(1e-9);
    for (i, (name, parts)) in rows.iter().enumerate() {
        let y = y0 + 26.0 + i as f64 * 26.0;
        let total: f64 = parts.iter().map(|x| x.pj).sum();
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{name}</text>"#,
            LEFT - 4.0,
            y + 13.0
        );
        let mut x = LEFT;
        for (j, p) in parts.iter().enumerate() {
            let w = p.pj / max * (PLOT_W - 90.0);
            let _ = writeln!(
                out,
                r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="18" fill="{}"><title>{}: {}</title></rect>"#,
                PALETTE[j],
                p.component,
                fmt_pj(p.pj)
            );
            x += w;
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            x + 4.0,
            y + 13.0,
            fmt_pj(total)
        );
    }
    let ly = y0 + 84.0;
    for (j, c) in COMPONENTS.iter().enumerate() {
        let x = LEFT + (j % 5) as f64 * 170.0;
        let y = ly + (j / 5) as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="10">{c}</text>"#,
            PALETTE[j],
            x + 14.0,
            y + 9.0
        );
    }
    120.0
}

/// Renders the chart of `report` with its `timeline`.
pub fn render(report: &ChipReport, tl: &Timeline) -> String {
    let mut body = String::new();
    let mut y = 48.0;
    let step_end = tl.spans.iter().map(|s| s.end).max().unwrap_or(tl.t0);
    let bars: Vec<_> = tl
        .spans
        .iter()
        .map(|s| {
            let color = CATEGORIES
                .iter()
                .find(|c| c.0 == s.category)
                .map_or("#000", |c| c.2);
            let a = s.start.saturating_sub(tl.t0) as f64;
            (s.layer, a, s.end.saturating_sub(tl.t0) as f64, color)
        })
        .collect();
    let what = if tl.token >= report.prompt_len {
        "decode step"
    } else {
        "last prompt token"
    };
    y += layer_panel(
        &mut body,
        y,
        &format!(
            "Timeline of token {} ({what}, {})",
            tl.token,
            fmt_ns(step_end.saturating_sub(tl.t0) as f64)
        ),
        tl.layers,
        step_end.saturating_sub(tl.t0) as f64,
        &bars,
    );
    for (i, (_, name, color)) in CATEGORIES.iter().enumerate() {
        let x = LEFT + i as f64 * 170.0;
        let _ = writeln!(
            body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="10">{name}</text>"#,
            x + 14.0,
            y + 9.0
        );
    }
    y += 26.0;
    let pre: Vec<_> = tl
        .prefill
        .iter()
        .enumerate()
        .map(|(l, &(a, b))| (l, a as f64, b as f64, "#1f77b4"))
        .collect();
    y += layer_panel(
        &mut body,
        y,
        &format!(
            "Prefill of {} tokens: busy span of each layer (first token {})",
            report.prompt_len,
            fmt_ns(tl.ttft_ns as f64)
        ),
        tl.layers,
        tl.ttft_ns as f64,
        &pre,
    );
    y += energy_bars(
        &mut body,
        y,
        [
            ("prefill", &report.prefill_energy_per_token),
            ("decode", &report.decode_energy_per_token),
        ],
    );
    let h = y + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="16" font-weight="bold">{} on {}</text>"#,
        esc(&report.model),
        esc(&report.preset)
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="38" font-size="12">{} tiles, {} chips, {:.1} mm2; prompt {}, TTFT {}; {} per decode token</text>"#,
        report.tiles,
        report.chips,
        report.area_mm2,
        report.prompt_len,
        fmt_ns(report.ttft_ns as f64),
        fmt_ns(report.decode_per_token_ns)
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

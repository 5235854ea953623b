//! The report's plots, written by hand as SVG text: the objective (accuracy or perplexity) vs
//! each swept field with error bars, one line per value of the other swept fields, and the
//! objective vs energy per token with the Pareto front. Perplexity and wide ranges get log
//! axes; numbers are printed with fixed precision, so the same results give the same bytes.

use super::{pareto, Objective, SweepData};
use crate::sweep::run::PointResult;
use std::fmt::Write;

/// Series colors, in order (matplotlib's tab10).
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 86.0;
const RIGHT: f64 = W - 210.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = H - 62.0;
const LEGEND_ROWS: usize = 18;

/// One plotted value: position, error bar (+- err) and an optional text beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Horizontal value.
    pub x: f64,
    /// Vertical value.
    pub y: f64,
    /// Half length of the error bar (0: none).
    pub err: f64,
    /// Text written next to the marker.
    pub label: Option<String>,
}

/// A set of marks drawn alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Stroke and fill color.
    pub color: String,
    /// The marks, drawn in this order (lines join them in this order).
    pub marks: Vec<Mark>,
    /// Join the marks with a line.
    pub line: bool,
    /// Filled markers (false: hollow).
    pub filled: bool,
}

/// One axis: its title, scale and (optionally) fixed ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Title.
    pub label: String,
    /// Logarithmic scale (all values must be > 0).
    pub log: bool,
    /// Ticks at these values with these texts (None: chosen from the range).
    pub ticks: Option<Vec<(f64, String)>>,
}

/// A chart: title, axes and series.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Horizontal axis.
    pub x: Axis,
    /// Vertical axis.
    pub y: Axis,
    /// The series, drawn in order.
    pub series: Vec<Series>,
    /// Shift the series sideways by a few pixels each so error bars at one x stay apart.
    pub dodge: bool,
}

struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    p0: f64,
    p1: f64,
}

impl Scale {
    fn new(values: &[f64], log: bool, p0: f64, p1: f64) -> Self {
        let t: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite() && (!log || **v > 0.0))
            .map(|&v| if log { v.log10() } else { v })
            .collect();
        let (mut lo, mut hi) = t
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let span = hi - lo;
        let pad = if span > 0.0 {
            0.07 * span
        } else if log {
            0.5
        } else {
            (lo.abs() * 0.1).max(1.0)
        };
        Scale {
            lo: lo - pad,
            hi: hi + pad,
            log,
            p0,
            p1,
        }
    }

    fn at(&self, v: f64) -> f64 {
        let t = if self.log { v.max(1e-300).log10() } else { v };
        let t = ((t - self.lo) / (self.hi - self.lo)).clamp(-0.02, 1.02);
        self.p0 + t * (self.p1 - self.p0)
    }

    fn contains(&self, v: f64) -> bool {
        let t = if self.log { v.log10() } else { v };
        t >= self.lo - 1e-9 && t <= self.hi + 1e-9
    }

    /// Ticks chosen from the range: 1-2-5 steps, or decades (with 2 and 5 when few). A tick
    /// with an empty text is a grid line only.
    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            let (a, b) = (self.lo.floor() as i32, self.hi.ceil() as i32);
            let stride = (b - a) / 12 + 1;
            let mults: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            let mut out = Vec::new();
            for e in a..=b {
                for m in mults {
                    let v = m * 10f64.powi(e);
                    if self.contains(v) {
                        let text = if (e - a) % stride == 0 {
                            fmt_log_tick(v)
                        } else {
                            String::new()
                        };
                        out.push((v, text));
                    }
                }
            }
            return out;
        }
        let step = nice_step((self.hi - self.lo) / 6.0);
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        let mut v = (self.lo / step).ceil() * step;
        let mut out = Vec::new();
        while v <= self.hi + 1e-9 * step {
            out.push((
                v,
                format!("{:.*}", decimals, if v.abs() < 1e-12 { 0.0 } else { v }),
            ));
            v += step;
        }
        out
    }
}

fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_log_tick(v: f64) -> String {
    let e = v.log10().floor() as i32;
    if (-3..=4).contains(&e) {
        let decimals = (-e).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        let m = v / 10f64.powi(e);
        if (m - 1.0).abs() < 1e-9 {
            format!("1e{e}")
        } else {
            format!("{m:.0}e{e}")
        }
    }
}

/// Escapes text for SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `c` as an SVG document.
pub fn render(c: &Chart) -> String {
    let marks = || c.series.iter().flat_map(|s| s.marks.iter());
    let xs: Vec<f64> = marks().map(|m| m.x).collect();
    let mut ys: Vec<f64> = Vec::new();
    for m in marks() {
        ys.push(m.y + m.err);
        // A log axis cannot show y - err <= 0: that bar runs to the bottom edge instead.
        if !c.y.log || m.y - m.err > 0.0 {
            ys.push(m.y - m.err);
        }
        ys.push(m.y);
    }
    let mut xvals = xs.clone();
    if let Some(t) = &c.x.ticks {
        xvals.extend(t.iter().map(|t| t.0));
    }
    let sx = Scale::new(&xvals, c.x.log, LEFT, RIGHT);
    let sy = Scale::new(&ys, c.y.log, BOTTOM, TOP);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="26" font-size="15" font-weight="bold">{}</text>"#,
        esc(&c.title)
    );
    for (v, t) in sy.ticks() {
        let y = sy.at(v);
        if t.is_empty() {
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#f0f0f0"/>"##
            );
            continue;
        }
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            esc(&t)
        );
    }
    let xt =
        c.x.ticks
            .clone()
            .unwrap_or_else(|| sx.ticks())
            .into_iter()
            .filter(|t| sx.contains(t.0));
    for (v, t) in xt {
        let x = sx.at(v);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{BOTTOM}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            BOTTOM + 5.0,
            BOTTOM + 19.0,
            esc(&t)
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0,
        esc(&c.x.label)
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0,
        esc(&c.y.label)
    );
    let n = c.series.len();
    let gap = (40.0 / n as f64).min(7.0);
    for (i, s) in c.series.iter().enumerate() {
        let dx = if c.dodge {
            (i as f64 - (n as f64 - 1.0) / 2.0) * gap
        } else {
            0.0
        };
        let pts: Vec<(f64, f64)> = s
            .marks
            .iter()
            .map(|m| (sx.at(m.x) + dx, sy.at(m.y)))
            .collect();
        if s.line && pts.len() > 1 {
            let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6"/>"#,
                d.join(" "),
                s.color
            );
        }
        for (m, &(x, y)) in s.marks.iter().zip(&pts) {
            if m.err > 0.0 {
                let top = sy.at(m.y + m.err);
                // Below zero on a log axis: cut at the bottom edge and dashed to say so.
                let cut = c.y.log && m.y - m.err <= 0.0;
                let bot = if cut { BOTTOM } else { sy.at(m.y - m.err) };
                let _ = writeln!(
                    o,
                    r#"<path d="M{x:.1},{top:.1}V{y:.1}M{:.1},{top:.1}h6" stroke="{}" fill="none"/>"#,
                    x - 3.0,
                    s.color
                );
                let (dash, cap) = if cut {
                    (r#" stroke-dasharray="3,3""#, String::new())
                } else {
                    ("", format!("M{:.1},{bot:.1}h6", x - 3.0))
                };
                let _ = writeln!(
                    o,
                    r#"<path d="M{x:.1},{y:.1}V{bot:.1}{cap}" stroke="{}" fill="none"{dash}/>"#,
                    s.color
                );
            }
            let fill = if s.filled { s.color.as_str() } else { "white" };
            let _ = writeln!(
                o,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{fill}" stroke="{}" stroke-width="1.5"/>"#,
                s.color
            );
            if let Some(l) = &m.label {
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{}">{}</text>"#,
                    x + 7.0,
                    y - 6.0,
                    s.color,
                    esc(l)
                );
            }
        }
    }
    for (i, s) in c.series.iter().take(LEGEND_ROWS).enumerate() {
        let y = TOP + 8.0 + i as f64 * 18.0;
        let x = RIGHT + 14.0;
        let fill = if s.filled { s.color.as_str() } else { "white" };
        let text = if i + 1 == LEGEND_ROWS && n > LEGEND_ROWS {
            format!("... and {} more", n - i)
        } else {
            s.name.clone()
        };
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="{}"/><circle cx="{:.1}" cy="{y:.1}" r="4" fill="{fill}" stroke="{}" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            x + 20.0,
            s.color,
            if s.line { 1.6 } else { 0.0 },
            x + 10.0,
            s.color,
            x + 26.0,
            y + 4.0,
            esc(&text)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// A swept field's value as a number (booleans and text are not).
fn num(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The swept fields in order: those of the grid, then any only in listed points.
pub fn swept_keys(data: &SweepData) -> Vec<String> {
    let mut keys: Vec<String> = data.sweep.grid.keys().cloned().collect();
    for p in &data.points {
        for k in p.values.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

/// File name of the plot over `key`.
pub fn file_name(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("plot-{clean}.svg")
}

fn y_axis(obj: &Objective, ys: &[f64]) -> Axis {
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    Axis {
        label: obj.label(),
        log: !obj.higher_is_better && lo > 0.0 && hi / lo >= 2.0,
        ticks: None,
    }
}

fn ok<'a>(data: &'a SweepData, obj: &Objective) -> Vec<(&'a PointResult, f64, f64)> {
    data.results
        .values()
        .filter(|r| r.error.is_none())
        .filter_map(|r| obj.value(r).map(|(m, s)| (r, m, s)))
        .collect()
}

/// The objective vs `key`, one series per combination of the other swept fields.
pub fn param_chart(data: &SweepData, obj: &Objective, key: &str) -> Option<Chart> {
    let pts: Vec<_> = ok(data, obj)
        .into_iter()
        .filter(|(r, ..)| r.point.values.contains_key(key))
        .collect();
    if pts.is_empty() {
        return None;
    }
    let values: Vec<&serde_json::Value> = pts.iter().map(|(r, ..)| &r.point.values[key]).collect();
    let numeric = values.iter().all(|v| num(v).is_some());
    let mut distinct: Vec<&serde_json::Value> = Vec::new();
    for v in &values {
        if !distinct.contains(v) {
            distinct.push(v);
        }
    }
    if numeric {
        distinct.sort_by(|a, b| num(a).unwrap_or(0.0).total_cmp(&num(b).unwrap_or(0.0)));
    }
    let xpos = |v: &serde_json::Value| -> f64 {
        match num(v) {
            Some(x) if numeric => x,
            _ => distinct.iter().position(|d| *d == v).unwrap_or(0) as f64,
        }
    };
    let xs: Vec<f64> = distinct.iter().map(|v| xpos(v)).collect();
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let x_log = numeric && lo > 0.0 && hi / lo >= 100.0;
    let ticks = (distinct.len() <= 12 || !numeric)
        .then(|| distinct.iter().map(|v| (xpos(v), show(v))).collect());
    // In the order the sweep lists the values (points come in point order).
    let mut groups: Vec<(String, Vec<Mark>)> = Vec::new();
    for (r, m, s) in &pts {
        let others: Vec<String> = r
            .point
            .values
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| format!("{k}={}", show(v)))
            .collect();
        let name = if others.is_empty() {
            "all chips".to_string()
        } else {
            others.join(" ")
        };
        let mark = Mark {
            x: xpos(&r.point.values[key]),
            y: *m,
            err: *s,
            label: None,
        };
        match groups.iter_mut().find(|g| g.0 == name) {
            Some(g) => g.1.push(mark),
            None => groups.push((name, vec![mark])),
        }
    }
    let series: Vec<Series> = groups
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut marks))| {
            marks.sort_by(|a, b| a.x.total_cmp(&b.x));
            Series {
                name,
                color: PALETTE[i % PALETTE.len()].into(),
                marks,
                line: true,
                filled: true,
            }
        })
        .collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    Some(Chart {
        title: format!(
            "{} vs {key} (mean ± std over {} chips)",
            obj.label(),
            data.sweep.seeds
        ),
        x: Axis {
            label: key.to_string(),
            log: x_log,
            ticks,
        },
        y: y_axis(obj, &ys),
        series,
        dodge: true,
    })
}

/// The objective vs energy per token (uJ), the Pareto front drawn as a line and labelled
/// with point numbers.
pub fn energy_chart(data: &SweepData, obj: &Objective) -> Option<Chart> {
    let pts: Vec<_> = ok(data, obj)
        .into_iter()
        .filter(|(r, ..)| r.chip.is_some())
        .collect();
    if pts.is_empty() {
        return None;
    }
    let uj = |r: &PointResult| {
        r.chip
            .as_ref()
            .map_or(0.0, |c| c.energy_per_token_pj * 1e-6)
    };
    let front = pareto(pts.iter().map(|p| p.0), obj);
    let on_front = |r: &PointResult| front.iter().any(|f| f.point.id == r.point.id);
    let mark = |r: &PointResult, m: f64, s: f64, label: bool| Mark {
        x: uj(r),
        y: m,
        err: s,
        label: label.then(|| format!("#{}", r.point.id)),
    };
    let others: Vec<Mark> = pts
        .iter()
        .filter(|p| !on_front(p.0))
        .map(|p| mark(p.0, p.1, p.2, true))
        .collect();
    let front_marks: Vec<Mark> = front
        .iter()
        .filter_map(|r| obj.value(r).map(|(m, s)| mark(r, m, s, true)))
        .collect();
    let es: Vec<f64> = pts.iter().map(|p| uj(p.0)).collect();
    let (lo, hi) = es
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    Some(Chart {
        title: format!("{} vs energy per token", obj.label()),
        x: Axis {
            label: format!(
                "energy per generated token (uJ; decode, {} prompt + {} generated tokens)",
                data.sweep.prompt_len, data.sweep.gen_len
            ),
            log: lo > 0.0 && hi / lo >= 20.0,
            ticks: None,
        },
        y: y_axis(obj, &ys),
        series: [
            Series {
                name: "dominated point".into(),
                color: "#7f7f7f".into(),
                marks: others,
                line: false,
                filled: false,
            },
            Series {
                name: "Pareto front".into(),
                color: "#d62728".into(),
                marks: front_marks,
                line: true,
                filled: true,
            },
        ]
        .into_iter()
        .filter(|s| !s.marks.is_empty())
        .collect(),
        dodge: false,
    })
}

/// Every plot of the report: (file name, SVG, caption).
pub fn plots(data: &SweepData) -> Vec<(String, String, String)> {
    let Some(obj) = Objective::of(data.results.values()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(c) = energy_chart(data, &obj) {
        out.push(("plot-energy.svg".to_string(), render(&c), c.title.clone()));
    }
    for k in swept_keys(data) {
        if let Some(c) = param_chart(data, &obj, &k) {
            out.push((file_name(&k), render(&c), c.title.clone()));
        }
    }
    out
}

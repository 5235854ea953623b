//! `report.md`: the sweep's settings, the results table, the Pareto front, the plots, and the
//! failed and missing points.

use super::{pareto, Objective, SweepData};
use crate::sweep::run::PointResult;
use std::fmt::Write;

/// A number with 3 significant digits (scientific outside 1e-3 ..< 1e5).
pub fn sig(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let e = x.abs().log10().floor() as i32;
    if !(-3..5).contains(&e) {
        return format!("{x:.2e}");
    }
    let decimals = (2 - e).max(0) as usize;
    format!("{x:.decimals$}")
}

fn values(r: &PointResult, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            r.point.values.get(k).map_or(String::new(), |v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
        .collect()
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// Metric columns: (task, metric) in the order first seen.
fn metric_columns(data: &SweepData) -> Vec<(String, String)> {
    let mut cols: Vec<(String, String)> = Vec::new();
    for r in data.results.values() {
        for s in &r.metrics {
            let c = (s.task.clone(), s.metric.clone());
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
    }
    cols
}

fn table(data: &SweepData, keys: &[String], front: &[usize]) -> String {
    let metrics = metric_columns(data);
    let mut head: Vec<String> = vec!["point".into()];
    head.extend(keys.iter().map(|k| format!("`{k}`")));
    head.extend(metrics.iter().map(|(t, m)| format!("{t} {m}")));
    head.extend(
        [
            "TTFT (us)",
            "decode latency (us/token)",
            "tokens/s",
            "energy/token (uJ)",
            "area (mm2)",
            "chips",
        ]
        .map(String::from),
    );
    let mut o = row(&head);
    o += &row(&vec!["---".to_string(); head.len()]);
    for r in data.results.values() {
        let id = if front.contains(&r.point.id) {
            format!("**{}**", r.point.id)
        } else {
            r.point.id.to_string()
        };
        let mut cells = vec![id];
        cells.extend(values(r, keys));
        if let Some(e) = &r.error {
            cells.push(format!("failed: {}", e.replace('|', "/")));
            cells.extend(std::iter::repeat_n(String::new(), metrics.len() + 5));
            o += &row(&cells);
            continue;
        }
        for (t, m) in &metrics {
            cells.push(
                r.metrics
                    .iter()
                    .find(|s| &s.task == t && &s.metric == m)
                    .map_or(String::new(), |s| {
                        format!("{} ± {}", sig(s.mean), sig(s.std))
                    }),
            );
        }
        match &r.chip {
            Some(c) => cells.extend([
                sig(c.ttft_ns as f64 * 1e-3),
                sig(c.decode_per_token_ns * 1e-3),
                sig(c.decode_tokens_per_s),
                sig(c.energy_per_token_pj * 1e-6),
                sig(c.area_mm2),
                c.chips.to_string(),
            ]),
            None => cells.extend(std::iter::repeat_n("-".to_string(), 6)),
        }
        o += &row(&cells);
    }
    o
}

/// The report's Markdown; `plots` are (file name, SVG, caption).
pub fn render(
    data: &SweepData,
    plots: &[(String, String, String)],
    preamble: Option<&str>,
) -> String {
    let s = &data.sweep;
    let keys = super::plot::swept_keys(data);
    let obj = Objective::of(data.results.values());
    let front: Vec<&PointResult> = obj
        .as_ref()
        .map(|o| pareto(data.results.values().filter(|r| r.error.is_none()), o))
        .unwrap_or_default();
    let front_ids: Vec<usize> = front.iter().map(|r| r.point.id).collect();
    let failed: Vec<&PointResult> = data
        .results
        .values()
        .filter(|r| r.error.is_some())
        .collect();
    let missing: Vec<usize> = data
        .points
        .iter()
        .map(|p| p.id)
        .filter(|id| !data.results.contains_key(id))
        .collect();
    let mut o = String::new();
    let _ = writeln!(o, "# Sweep `{}`\n", s.name);
    if let Some(p) = preamble {
        let _ = writeln!(o, "{}\n", p.trim_end());
    }
    let _ = writeln!(
        o,
        "Base preset `{}`, model `{}`, tasks {} ({} tokens of text for perplexity{}), {} chips \
         per point (seeds {}..={}); chip model over {} prompt + {} generated tokens.\n",
        s.base,
        s.model,
        s.tasks.join(", "),
        s.text_tokens,
        s.limit
            .map_or(String::new(), |l| format!(", {l} items per task")),
        s.seeds,
        s.seed,
        s.seed + s.seeds as u64 - 1,
        s.prompt_len,
        s.gen_len
    );
    let _ = writeln!(
        o,
        "{} points: {} done, {} failed, {} not run yet.\n",
        data.points.len(),
        data.results.len() - failed.len(),
        failed.len(),
        missing.len()
    );
    let dirs: Vec<String> = data
        .dirs
        .iter()
        .map(|d| format!("`{}`", d.display()))
        .collect();
    let _ = writeln!(o, "Folders: {}\n", dirs.join(", "));
    let _ = writeln!(o, "## Results\n");
    o += &table(data, &keys, &front_ids);
    let _ = writeln!(
        o,
        "\nTask metrics: mean ± sample std over the chips. Chip numbers from the cycle-level \
         model: time to first token, mean decode step, generated tokens/s, energy per generated \
         token (all components), silicon area. Bold point numbers: the Pareto front.\n"
    );
    if let Some(obj) = &obj {
        let _ = writeln!(o, "## Pareto front: {} vs energy per token\n", obj.label());
        let _ = writeln!(
            o,
            "No other point has a lower or equal energy per token and an equal or better {} {}.\n",
            obj.task, obj.metric
        );
        o += &row(&[
            "point".into(),
            "values".into(),
            format!("{} {}", obj.task, obj.metric),
            "energy/token (uJ)".into(),
        ]);
        o += &row(&vec!["---".to_string(); 4]);
        for r in &front {
            let (m, sd) = obj.value(r).unwrap_or((f64::NAN, f64::NAN));
            let e = r.chip.as_ref().map_or(f64::NAN, |c| c.energy_per_token_pj);
            o += &row(&[
                r.point.id.to_string(),
                format!("`{}`", r.point.label()),
                format!("{} ± {}", sig(m), sig(sd)),
                sig(e * 1e-6),
            ]);
        }
        o.push('\n');
    }
    if !plots.is_empty() {
        let _ = writeln!(
            o,
            "## Plots\n\nError bars: ± one sample std over the chips; on a log axis a bar that \
             reaches zero or below is cut at the bottom edge and dashed.\n"
        );
        for (file, _, caption) in plots {
            let _ = writeln!(o, "![{caption}]({file})\n");
        }
    }
    if !failed.is_empty() {
        let _ = writeln!(o, "## Failed points\n");
        for r in &failed {
            let _ = writeln!(
                o,
                "- point {} (`{}`): {}",
                r.point.id,
                r.point.label(),
                r.error.as_deref().unwrap_or("")
            );
        }
        o.push('\n');
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(
            o,
            "## Not run yet\n\nPoints {} have no result in these folders (run `afm sweep` on \
             them, or add the missing shards).\n",
            list.join(", ")
        );
    }
    if data.stale > 0 {
        let _ = writeln!(
            o,
            "{} result files left from another version of the sweep were skipped.\n",
            data.stale
        );
    }
    o
}

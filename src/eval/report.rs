//! The Markdown table of a run, laid out like Table 1 of the AFM paper: one row per model
//! configuration, one column per task (its headline metric) and the average accuracy.

use super::run::{Plan, Summary};

fn fmt(metric: &str, mean: f64, std: f64, n: usize) -> String {
    if mean.is_nan() {
        return "–".into();
    }
    let (m, s) = if metric == "ppl" {
        (format!("{mean:.2}"), format!("{std:.2}"))
    } else {
        (
            format!("{:.1}", 100.0 * mean),
            format!("{:.1}", 100.0 * std),
        )
    };
    if n > 1 {
        format!("{m} ± {s}")
    } else {
        m
    }
}

/// The table (accuracies in percent; mean ± sample std over seeds where there are several).
pub fn markdown_table(plan: &Plan, summary: &[Summary]) -> String {
    let mut s = String::from("| model / hardware | seeds |");
    let mut rule = String::from("|---|---|");
    for t in &plan.tasks {
        let metric = summary
            .iter()
            .find(|x| x.task == t.name)
            .map_or("", |x| x.metric.as_str());
        s.push_str(&format!(" {} ({metric}) |", t.name));
        rule.push_str("---|");
    }
    s.push_str(" average (acc) |\n");
    s.push_str(&rule);
    s.push_str("---|\n");
    for row in &plan.rows {
        let entries: Vec<&Summary> = summary.iter().filter(|x| x.row == row.label).collect();
        let n = entries.first().map_or(0, |e| e.values.len());
        s.push_str(&format!("| {} | {n} |", row.label));
        for e in &entries {
            s.push_str(&format!(
                " {} |",
                fmt(&e.metric, e.mean, e.std, e.values.len())
            ));
        }
        s.push('\n');
    }
    s
}

/// Accuracy of one row on one generation task as a function of the samples per item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SamplesCurve {
    /// Row label.
    pub row: String,
    /// Task name.
    pub task: String,
    /// `maj` (majority vote over the first k samples) or `pass` (any of them correct).
    pub select: String,
    /// (k, mean over seeds, sample std over seeds).
    pub points: Vec<(usize, f64, f64)>,
}

/// The `maj@k` and `pass@k` curves of every (row, task) whose cells have them.
pub fn samples_curves(plan: &Plan, cells: &[super::run::Cell]) -> Vec<SamplesCurve> {
    let mut out = Vec::new();
    for row in &plan.rows {
        for t in &plan.tasks {
            let mine: Vec<_> = cells
                .iter()
                .filter(|c| c.row == row.label && c.task == t.name)
                .collect();
            for select in ["maj", "pass"] {
                let mut ks: Vec<usize> = mine
                    .iter()
                    .flat_map(|c| c.metrics.keys())
                    .filter_map(|k| k.strip_prefix(select)?.strip_prefix('@')?.parse().ok())
                    .collect();
                ks.sort_unstable();
                ks.dedup();
                let points: Vec<(usize, f64, f64)> = ks
                    .into_iter()
                    .map(|k| {
                        let v: Vec<f64> = mine
                            .iter()
                            .filter_map(|c| c.metrics.get(&format!("{select}@{k}")).copied())
                            .collect();
                        let (m, s) = crate::eval::run::mean_std(&v);
                        (k, m, s)
                    })
                    .collect();
                if !points.is_empty() {
                    out.push(SamplesCurve {
                        row: row.label.clone(),
                        task: t.name.clone(),
                        select: select.into(),
                        points,
                    });
                }
            }
        }
    }
    out
}

/// Majority-vote accuracy (%) against samples per item, one line per (row, task), error bars
/// over seeds; none without curves.
pub fn samples_chart(curves: &[SamplesCurve]) -> Option<crate::report::plot::Chart> {
    use crate::report::plot::{Axis, Chart, Mark, Series, PALETTE};
    let maj: Vec<&SamplesCurve> = curves.iter().filter(|c| c.select == "maj").collect();
    let ks: Vec<usize> = maj
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .collect();
    if ks.is_empty() {
        return None;
    }
    let mut ticks: Vec<usize> = ks.clone();
    ticks.sort_unstable();
    ticks.dedup();
    let series = maj
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            name: format!("{} / {}", c.row, c.task),
            color: PALETTE[i % PALETTE.len()].into(),
            marks: c
                .points
                .iter()
                .map(|&(k, m, s)| Mark {
                    x: k as f64,
                    y: 100.0 * m,
                    err: 100.0 * s,
                    label: None,
                })
                .collect(),
            line: true,
            filled: true,
        })
        .collect();
    Some(Chart {
        title: "Majority-vote accuracy vs samples per problem".into(),
        x: Axis {
            label: "samples per problem (N)".into(),
            log: true,
            ticks: Some(ticks.iter().map(|&k| (k as f64, k.to_string())).collect()),
        },
        y: Axis {
            label: "exact match (%), mean ± std over chips".into(),
            log: false,
            ticks: None,
        },
        series,
        dodge: true,
    })
}

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

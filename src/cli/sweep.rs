//! `afm sweep`: accuracy and chip cost over a grid of preset values.

use afm::sweep::run::{run_point, write_points, Context, PointResult};
use afm::sweep::SweepFile;
use afm::tile::{resolve_preset_path, TilePreset};
use clap::Args;
use std::path::PathBuf;

/// Options of `afm sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep file (TOML; see tiles/sweeps/).
    file: PathBuf,
    /// Output folder: points.jsonl, results/, points/ (evaluation cells), results.csv and
    /// results.json. Re-running resumes.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `afm sweep`.
pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    let s = SweepFile::load(&a.file)?;
    let here = a.file.parent().unwrap_or(std::path::Path::new("."));
    let base_file = {
        let p = here.join(&s.base);
        if p.is_file() {
            p
        } else {
            resolve_preset_path(&s.base)
        }
    };
    let base = TilePreset::load(&base_file)?;
    let (m, tok) = super::model_args::open_digital(&s.model, candle_core::DType::F32)?;
    let data = afm::eval::tasks::default_data_dir();
    let tasks = s
        .tasks
        .iter()
        .map(|t| afm::eval::tasks::load(t, &data, None, s.limit))
        .collect::<Result<Vec<_>, _>>()?;
    // 512 tokens: `afm eval`'s default --calib-tokens.
    let calibration = match &s.calib_text {
        Some(p) => Some(super::model_args::calibration_ids(
            &tok,
            &here.join(p),
            512,
        )?),
        None => None,
    };
    let cx = Context {
        sweep: &s,
        base,
        base_file,
        model: &m.decoder,
        tok: &tok,
        tasks,
        calibration,
    };
    let points = s.expand();
    write_points(&a.out, &points)?;
    let bar = indicatif::ProgressBar::new(points.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} point {pos}/{len}  {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results: Vec<PointResult> = Vec::new();
    for p in &points {
        bar.set_message(p.label());
        results.push(run_point(&cx, p, &a.out)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&results)?;
    afm::paths::write_atomic(&a.out.join("results.json"), json.as_bytes())?;
    afm::paths::write_atomic(&a.out.join("results.csv"), csv(&results).as_bytes())?;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    eprintln!(
        "{}: {} points ({failed} failed); results.csv and results.json",
        a.out.display(),
        results.len()
    );
    Ok(())
}

/// One row per point: its values, then per task mean and std, then the chip numbers.
fn csv(results: &[PointResult]) -> String {
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

//! `afm sweep`: accuracy and chip cost over a grid of preset values.

use afm::sweep::run::{write_points, Context};
use afm::sweep::{run_points, Shard, SweepFile};
use afm::tile::{resolve_preset_path, TilePreset};
use clap::Args;
use std::path::PathBuf;

/// Options of `afm sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep file (TOML; see tiles/sweeps/).
    file: PathBuf,
    /// Output folder: sweep.json, points.jsonl, results/, points/ (evaluation cells),
    /// results.csv and results.json. Re-running resumes.
    #[arg(long)]
    out: PathBuf,
    /// Work units (point, chip seed) computed at once, each on one thread [all cores]. The
    /// results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Run only shard i of n: the points whose number p has p mod n = i - 1 (a cluster job
    /// array runs 1/n ... n/n into their own folders; `afm report` merges them).
    #[arg(long, value_parser = parse_shard)]
    shard: Option<Shard>,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s).map_err(|e| e.to_string())
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
    let all = s.expand();
    write_points(&a.out, &all)?;
    let shard = a.shard.unwrap_or(Shard::ALL);
    let meta = serde_json::json!({
        "sweep": &s,
        "shard": format!("{}/{}", shard.index, shard.count),
    });
    afm::paths::write_atomic(
        &a.out.join("sweep.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    let points: Vec<_> = all.into_iter().filter(|p| shard.has(p.id)).collect();
    let jobs = a.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let bar = indicatif::ProgressBar::new(points.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} point {pos}/{len}  {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{jobs} jobs"));
    let results = run_points(&cx, &points, &a.out, jobs, &|r, fresh| {
        bar.inc(1);
        // Points found on disk say nothing about the rate ahead.
        if !fresh {
            bar.reset_eta();
        }
        bar.set_message(r.point.label());
    })?;
    bar.finish_and_clear();
    // Without the compute seconds: same bytes whatever --jobs, --shard or resumes.
    let json = afm::report::results_json(&results)?;
    afm::paths::write_atomic(&a.out.join("results.json"), json.as_bytes())?;
    let csv = afm::report::results_csv(&results);
    afm::paths::write_atomic(&a.out.join("results.csv"), csv.as_bytes())?;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    eprintln!(
        "{}: {} points ({failed} failed); results.csv and results.json",
        a.out.display(),
        results.len()
    );
    Ok(())
}

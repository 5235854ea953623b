//! `afm report`: the Markdown report and SVG plots of one sweep, merged from its output folders.

use clap::Args;
use std::path::PathBuf;

/// Options of `afm report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output folders of one `afm sweep` (several: its shards, merged by point number).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where report.md, the plots (plot-*.svg) and the merged results.csv and results.json go
    /// [the first folder].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A Markdown file whose text goes under the report's title (how it was run, remarks).
    #[arg(long)]
    preamble: Option<PathBuf>,
}

/// Runs `afm report`.
pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let data = afm::report::load(&a.dirs)?;
    let preamble = a
        .preamble
        .as_deref()
        .map(afm::paths::read_text)
        .transpose()?;
    let out = a.out.unwrap_or_else(|| a.dirs[0].clone());
    let files = afm::report::write(&data, &out, preamble.as_deref())?;
    let failed = data.results.values().filter(|r| r.error.is_some()).count();
    eprintln!(
        "{}: {} of {} points ({failed} failed); {} files",
        out.join("report.md").display(),
        data.results.len(),
        data.points.len(),
        files.len()
    );
    Ok(())
}

//! `afm chip ...`: the cycle-level simulation of a model on chips built from a tile preset.

use afm::chip::{simulate, svg, RunSpec};
use afm::tile::mapping::HeadBlocks;
use afm::tile::{resolve_preset_path, TilePreset};
use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// Chip subcommands.
#[derive(Debug, Subcommand)]
pub enum ChipCommand {
    /// Latency, throughput, energy per token, utilization, tiles, chips and area of a model run
    /// (prefill of the prompt, then decode) on chips built from a tile preset.
    Report {
        /// Model: manifest name in `models/` (e.g. smollm2-135m-instruct), an HF folder or a
        /// .gguf file; only its shapes are used.
        #[arg(long)]
        model: String,
        /// Tile preset with [timing], [energy] and [chip] sections (e.g. hermes).
        #[arg(long)]
        tiles: String,
        /// Prompt tokens (prefill).
        #[arg(long, default_value_t = 512)]
        prompt_len: usize,
        /// Decode steps after the first token.
        #[arg(long, default_value_t = 128)]
        gen_len: usize,
        /// Keep lm_head digital (on the attention units) instead of on tiles.
        #[arg(long)]
        digital_lm_head: bool,
        /// Copies of each isolated head block's weights on its tiles, as `afm eval
        /// --head-copies` (their rows draw array and DAC energy).
        #[arg(long, default_value_t = 1, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
        head_copies: u32,
        /// Folder for report.md, report.json and report.svg.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs a chip subcommand.
pub fn run(cmd: ChipCommand) -> anyhow::Result<()> {
    let ChipCommand::Report {
        model,
        tiles,
        prompt_len,
        gen_len,
        digital_lm_head,
        head_copies,
        out,
    } = cmd;
    let (name, config) = super::model::model_config(&model)?;
    let file = resolve_preset_path(&tiles);
    let preset = TilePreset::load(&file)?;
    let spec = RunSpec {
        model: name,
        prompt_len,
        gen_len,
        digital_lm_head,
        heads: HeadBlocks {
            isolated: super::model::isolated_of(&model)?,
            copies: head_copies as usize,
        },
    };
    if head_copies > 1 && spec.heads.isolated.is_empty() {
        anyhow::bail!(
            "--head-copies {head_copies}: `{model}` has no isolated head blocks to copy (an \
             analog model folder trained with isolated inputs has them in its analog.json)"
        );
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("simulating {bar:40} {pos}/{len} operations ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let (report, timeline) = simulate(&config, &preset, &file, &spec, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    let wall = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let md = report.to_markdown();
    print!("{md}");
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = [
            ("report.md", md.clone()),
            ("report.json", report.to_json() + "\n"),
            ("report.svg", svg::render(&report, &timeline)),
        ];
        for (f, text) in files {
            let path = dir.join(f);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "\nWrote report.md, report.json and report.svg to {}.",
            dir.display()
        );
    }
    // Kept out of the files so that they are the same bytes on every run.
    println!(
        "Simulation wall time: {wall:.3} s ({} operations, {} events).",
        report.operations, report.events
    );
    Ok(())
}

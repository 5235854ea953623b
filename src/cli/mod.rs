//! Command-line definitions (clap derive) and dispatch.

mod chip;
mod datagen;
mod eval;
mod generate;
mod model;
mod model_args;
mod quantize;
mod report;
mod sweep;
mod tile;
mod train;

use clap::{Parser, Subcommand};

/// Simulate analog in-memory-computing hardware for large language models.
#[derive(Debug, Parser)]
#[command(name = "afm", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The pipeline stages.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect tile presets and run analog MVMs on one layer.
    #[command(subcommand)]
    Tile(tile::TileCommand),
    /// Sample synthetic training data from a teacher model.
    Datagen(datagen::DatagenArgs),
    /// Train an analog foundation model by hardware-aware distillation.
    Train(train::TrainArgs),
    /// Evaluate a digital or analog model.
    Eval(Box<eval::EvalArgs>),
    /// Sweep tile parameters: accuracy and chip cost per point (resumable).
    Sweep(sweep::SweepArgs),
    /// Report of a sweep (or its shards): table, Pareto front, SVG plots.
    Report(report::ReportArgs),
    /// Quantize a model for a digital chip: int4 weights, static 8-bit inputs.
    Quantize(quantize::QuantizeArgs),
    /// Generate text with a digital or analog model.
    Generate(generate::GenerateArgs),
    /// Inspect model manifests and their mapping onto tiles.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Cycle-level chip simulation: latency, throughput, energy and area of a model.
    #[command(subcommand)]
    Chip(chip::ChipCommand),
}

/// Parses a `--dtype` value.
pub fn parse_dtype(s: &str) -> Result<candle_core::DType, String> {
    match s {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        "f16" => Ok(candle_core::DType::F16),
        other => Err(format!(
            "unknown dtype `{other}` (expected f32, bf16 or f16)"
        )),
    }
}

/// Opens a `--device` value: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
pub fn open_device(s: &str) -> anyhow::Result<candle_core::Device> {
    let ordinal = match s {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => anyhow::bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        anyhow::bail!("device `{s}`: this afm was built without CUDA (build with --features cuda)");
    }
    Ok(candle_core::Device::new_cuda(ordinal)?)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Tile(c) => tile::run(c),
        Command::Datagen(a) => datagen::run(a),
        Command::Eval(a) => eval::run(*a),
        Command::Sweep(a) => sweep::run(a),
        Command::Report(a) => report::run(a),
        Command::Train(a) => train::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Model(c) => model::run(c),
        Command::Chip(c) => chip::run(c),
    }
}

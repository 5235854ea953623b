//! `afm quantize`: round-to-nearest int4 weights and static 8-bit inputs for a digital chip.

use afm::quant::export::{quantize_model, RangeSource};
use afm::quant::rtn::Grouping;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;

/// Options of `afm quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model: manifest name, .gguf file or HF folder (an analog model's folder brings its
    /// learned input ranges).
    #[arg(long)]
    model: String,
    /// Weight format: int4 (also int2, int3); symmetric levels, round to nearest.
    #[arg(long, default_value = "int4", value_parser = parse_int)]
    weights: u32,
    /// One scale per G consecutive inputs of a channel [default: one per channel].
    #[arg(long, conflicts_with = "per_channel")]
    group_size: Option<usize>,
    /// One scale per output channel (the default).
    #[arg(long)]
    per_channel: bool,
    /// Quantize the inputs too: static8 (8-bit, one static range per row block). Without it
    /// the inputs stay in floating point.
    #[arg(long, value_parser = parse_static)]
    inputs: Option<u32>,
    /// Calibration text for a model without learned ranges: the abs-max of each row block over
    /// its first --calib-tokens tokens sets the range.
    #[arg(long)]
    calib_text: Option<PathBuf>,
    /// Tokens of --calib-text.
    #[arg(long, default_value_t = 512)]
    calib_tokens: usize,
    /// Row-block size of calibrated ranges (an analog model's own tile rows are used for its
    /// learned ranges).
    #[arg(long, default_value_t = 512)]
    block_rows: usize,
    /// Output folder (HF layout + quantization.json), loadable with --model.
    #[arg(long)]
    out: PathBuf,
}

fn parse_int(s: &str) -> Result<u32, String> {
    match s.strip_prefix("int").and_then(|b| b.parse::<u32>().ok()) {
        Some(b @ 2..=4) => Ok(b),
        _ => Err(format!("`{s}`: expected int2, int3 or int4")),
    }
}

fn parse_static(s: &str) -> Result<u32, String> {
    match s.strip_prefix("static").and_then(|b| b.parse::<u32>().ok()) {
        Some(b @ 2..=16) => Ok(b),
        _ => Err(format!("`{s}`: expected static8 (or staticN, N in 2..=16)")),
    }
}

/// Runs `afm quantize`.
pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    let grouping = match a.group_size {
        Some(0) => bail!("--group-size must be at least 1"),
        Some(size) => Grouping::Group { size },
        None => Grouping::PerChannel,
    };
    if a.block_rows == 0 {
        bail!("--block-rows must be at least 1");
    }
    // The tokenizer is needed only to read a calibration text; it is saved when present.
    let m = afm::executor::load::load_model(&a.model, candle_core::DType::F32)?;
    let tok = m.tokenizer.as_ref();
    let meta = if m.path.is_dir() {
        afm::train::student::load_meta(&m.path)?
    } else {
        None
    };
    let inputs = match (a.inputs, meta, &a.calib_text) {
        (None, ..) => None,
        (Some(bits), _, Some(text)) => Some((
            bits,
            RangeSource::Calibrate {
                block_rows: a.block_rows,
                ids: match tok {
                    Some(t) => super::model_args::calibration_ids(t, text, a.calib_tokens)?,
                    None => bail!("--calib-text: {} has no tokenizer", m.path.display()),
                },
                label: text.display().to_string(),
            },
        )),
        (Some(_), Some(meta), None) if !meta.isolated.is_empty() => bail!(
            "--inputs: {} maps isolated outlier inputs onto row blocks of their own, which a \
             digital chip's static input blocks do not model; give --calib-text FILE",
            m.path.display()
        ),
        (Some(bits), Some(meta), None) => Some((
            bits,
            RangeSource::Learned {
                block_rows: meta.analog.tile_rows,
                ranges: meta.input_ranges,
            },
        )),
        (Some(_), None, None) => bail!(
            "--inputs: {} has no learned input ranges (analog.json); give --calib-text FILE",
            m.path.display()
        ),
    };
    let q = quantize_model(&m.decoder, &a.model, a.weights, grouping, inputs)?;
    q.save(&a.out, tok)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let ranges = q.config.inputs.as_ref().map_or_else(
        || "inputs in floating point".to_string(),
        |i| format!("{}-bit inputs ({})", i.bits, i.source),
    );
    eprintln!(
        "wrote {}: {} projections as int{} ({:?}), {ranges}",
        a.out.display(),
        q.config.projections.len(),
        a.weights,
        grouping
    );
    Ok(())
}

//! The model options shared by `afm generate` and `afm eval`, and opening the model they name.

use afm::executor::load::{map_to_tiles, LoadedModel};
use afm::tile::{resolve_preset_path, TilePreset};
use anyhow::{bail, Context};
use candle_core::DType;
use clap::Args;
use tokenizers::Tokenizer;

/// Which model, on which tiles, in which dtype.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: manifest name in `models/`, a .gguf file or an HF folder.
    #[arg(long)]
    pub model: String,
    /// Tile preset: put every projection on simulated tiles.
    #[arg(long)]
    pub tiles: Option<String>,
    /// Keep lm_head digital when mapping onto tiles.
    #[arg(long)]
    pub digital_lm_head: bool,
    /// Compute dtype of the digital parts: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = super::parse_dtype)]
    pub dtype: DType,
    /// Chip seed (programming noise; also seeds sampling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ModelArgs {
    /// Loads the model, programs it onto tiles when asked, and takes out its tokenizer.
    pub fn open(&self) -> anyhow::Result<(LoadedModel, Tokenizer)> {
        let (mut m, tok) = open_digital(&self.model, self.dtype)?;
        if let Some(t) = &self.tiles {
            let preset = TilePreset::load(&resolve_preset_path(t))?;
            map_to_tiles(&mut m.decoder, &preset, self.seed, self.digital_lm_head)?;
            if m.path.is_dir() {
                if let Some(meta) = afm::train::student::load_meta(&m.path)? {
                    afm::executor::load::apply_ranges(&mut m.decoder, &meta.input_ranges)?;
                }
            }
        }
        Ok((m, tok))
    }
}

/// Loads a digital model and takes out its tokenizer (an error if it has none).
pub fn open_digital(model: &str, dtype: DType) -> anyhow::Result<(LoadedModel, Tokenizer)> {
    open_digital_on(model, dtype, &candle_core::Device::Cpu)
}

/// [`open_digital`] with the model's tensors on `dev`.
pub fn open_digital_on(
    model: &str,
    dtype: DType,
    dev: &candle_core::Device,
) -> anyhow::Result<(LoadedModel, Tokenizer)> {
    let mut m = afm::executor::load::load_model_on(model, dtype, dev)?;
    let Some(tok) = m.tokenizer.take() else {
        bail!("{} has no tokenizer", m.path.display());
    };
    // A trained model with isolated outliers keeps its mapping on any chip it is put on.
    if m.path.is_dir() {
        if let Some(meta) = afm::train::student::load_meta(&m.path)? {
            m.decoder.isolated = meta.isolated;
        }
    }
    Ok((m, tok))
}

/// The first `max` token ids of a calibration text (its abs-max sets static input ranges).
pub fn calibration_ids(
    tok: &Tokenizer,
    path: &std::path::Path,
    max: usize,
) -> anyhow::Result<Vec<u32>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ids = tok
        .encode(text.as_str(), false)
        .map_err(anyhow::Error::msg)?;
    let ids = ids.get_ids();
    if ids.is_empty() {
        bail!("{}: calibration text has no tokens", path.display());
    }
    Ok(ids[..ids.len().min(max)].to_vec())
}

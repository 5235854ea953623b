//! Opening a model from what the user names: a manifest name, a GGUF file or an HF folder.

use super::config::HfConfig;
use super::decoder::Decoder;
use super::fetch::{cached_file, fetch};
use super::gguf::GgufModel;
use super::llama;
use super::manifest::{resolve_model_path, Manifest};
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::tile::mapping::isolated_head;
use crate::tile::program::Placement;
use crate::tile::TilePreset;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A model ready to run.
pub struct LoadedModel {
    /// The network.
    pub decoder: Decoder,
    /// Its tokenizer (absent for bare weight folders without tokenizer.json).
    pub tokenizer: Option<Tokenizer>,
    /// Jinja chat template, when the model has one.
    pub chat_template: Option<String>,
    /// Where it was loaded from.
    pub path: PathBuf,
}

/// Resolves `arg` to a weights file or folder, fetching a manifest's file when `fetch_missing`.
pub fn resolve_weights(arg: &str, fetch_missing: bool) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.is_dir() || p.extension().is_some_and(|e| e == "gguf") {
        return Ok(p);
    }
    let manifest_path = resolve_model_path(arg);
    let m = Manifest::load(&manifest_path)?;
    let cached = cached_file(&m).ok_or_else(|| {
        Error::Value(format!(
            "model `{}` has no [source]: it ships shapes only",
            m.name
        ))
    })?;
    if cached.exists() {
        return Ok(cached);
    }
    if fetch_missing {
        return fetch(&m);
    }
    Err(Error::Value(format!(
        "model `{}` is not in the cache ({}); run `afm model fetch {}`",
        m.name,
        cached.display(),
        m.name
    )))
}

fn read_chat_template(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("chat_template")?.as_str().map(str::to_string)
}

/// Loads a model (GGUF or HF folder) in `dtype` on the CPU.
pub fn load_model(arg: &str, dtype: DType) -> Result<LoadedModel> {
    load_model_on(arg, dtype, &Device::Cpu)
}

/// Loads a model (GGUF or HF folder) in `dtype` on `dev` (a GGUF is dequantized on the CPU).
pub fn load_model_on(arg: &str, dtype: DType, dev: &Device) -> Result<LoadedModel> {
    let path = resolve_weights(arg, true)?;
    if path.is_dir() {
        let cfg = HfConfig::load(&path.join("config.json"))?;
        let mut w = Weights::from_hf_dir(&path, dtype, dev)?;
        let quant = crate::quant::export::load_config(&path)?;
        if let Some(q) = &quant {
            q.dequantize_into(&mut w)?;
        }
        let tok_path = path.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(Tokenizer::from_file(&tok_path).map_err(|e| Error::Parse {
                file: tok_path.clone(),
                msg: e.to_string(),
            })?)
        } else {
            None
        };
        let mut decoder = llama::build(cfg, &w)?;
        if let Some(q) = &quant {
            decoder = q.wrap(&decoder)?;
        }
        return Ok(LoadedModel {
            decoder,
            tokenizer,
            chat_template: read_chat_template(&path),
            path,
        });
    }
    let g = GgufModel::load(&path, dtype)?;
    Ok(LoadedModel {
        decoder: llama::build(g.config, &g.weights.to_device(dev)?)?,
        tokenizer: Some(g.tokenizer),
        chat_template: g.chat_template,
        path,
    })
}

/// A copy of the digital decoder `dec` with every projection (lm_head too unless
/// `digital_lm_head`) programmed onto tiles of `preset` as chip `seed`.
pub fn program_chip(
    dec: &Decoder,
    preset: &TilePreset,
    seed: u64,
    digital_lm_head: bool,
) -> Result<Decoder> {
    program_chip_except(dec, preset, seed, &|name| {
        digital_lm_head && name == "lm_head"
    })
}

/// Whether projection `name` is one of `endings` (`lm_head`, `mlp.down_proj`,
/// `layers.0.self_attn.q_proj`: matched at the end of the name), as `afm eval --digital-layers`
/// and `[run] frozen` name layers.
pub fn layer_named(name: &str, endings: &[String]) -> bool {
    endings.iter().any(|e| name.ends_with(e.as_str()))
}

/// [`program_chip`] keeping digital every projection for which `digital(name)` holds.
pub fn program_chip_except(
    dec: &Decoder,
    preset: &TilePreset,
    seed: u64,
    digital: &dyn Fn(&str) -> bool,
) -> Result<Decoder> {
    dec.map_projections(|name, p| {
        if digital(name) {
            p.clone_digital(name)
        } else {
            p.to_analog(preset, seed, name, placement(dec, name))
        }
    })
}

/// Puts every projection (lm_head too unless `digital_lm_head`) on tiles of `preset`, as chip `seed`.
pub fn map_to_tiles(
    dec: &mut Decoder,
    preset: &TilePreset,
    seed: u64,
    digital_lm_head: bool,
) -> Result<()> {
    let (isolated, clip, copies) = (dec.isolated.clone(), dec.weight_clip, dec.head_copies);
    for (name, p) in dec.projections_mut() {
        if digital_lm_head && name == "lm_head" {
            continue;
        }
        let place = Placement {
            head: isolated_head(&isolated, &name),
            clip,
            head_copies: copies,
        };
        *p = p.to_analog(preset, seed, &name, place)?;
    }
    Ok(())
}

/// Where projection `name` goes on tiles: its isolated head block (the decoder's `isolated`),
/// the head's copies and the decoder's weight clipping.
fn placement(dec: &Decoder, name: &str) -> Placement {
    Placement {
        head: isolated_head(&dec.isolated, name),
        clip: dec.weight_clip,
        head_copies: dec.head_copies,
    }
}

/// Sets the static input ranges of the analog projections from learned values (an analog
/// model's `analog.json`), so that calibration does not replace them. A projection without an
/// entry keeps calibrating; a count that does not match its row blocks is an error.
pub fn apply_ranges(
    dec: &mut Decoder,
    ranges: &std::collections::BTreeMap<String, Vec<f32>>,
) -> Result<usize> {
    let mut set = 0;
    for (name, p) in dec.projections_mut() {
        if let (crate::executor::linear::Projection::Analog(a), Some(r)) = (&*p, ranges.get(&name))
        {
            if r.len() != a.layer.blocks.len() {
                return Err(Error::Value(format!(
                    "`{name}`: {} learned input ranges for {} row blocks (the model was trained \
                     with other tile rows than this preset's)",
                    r.len(),
                    a.layer.blocks.len()
                )));
            }
            if let Ok(mut w) = a.ranges.write() {
                *w = r.clone();
            }
            set += 1;
        }
    }
    Ok(set)
}

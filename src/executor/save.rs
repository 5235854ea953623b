//! Writing a decoder back as an HF folder (config.json, model.safetensors, tokenizer.json), for
//! the trained analog model and the quantized export alike.

use super::decoder::Decoder;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A tensor as contiguous f32, the dtype every saved weight has.
pub fn f32_tensor(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F32)?.contiguous()?)
}

/// The weights that are no projection: token embeddings and norms, by HF name.
pub fn frozen_tensors(model: &Decoder) -> Result<HashMap<String, Tensor>> {
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        f32_tensor(&model.embed)?,
    );
    t.insert("model.norm.weight".into(), f32_tensor(&model.norm)?);
    for (i, b) in model.blocks.iter().enumerate() {
        t.insert(
            format!("model.layers.{i}.input_layernorm.weight"),
            f32_tensor(&b.input_norm)?,
        );
        t.insert(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            f32_tensor(&b.post_norm)?,
        );
    }
    Ok(t)
}

/// Writes `tensors` as `DIR/model.safetensors`, `cfg_json` as `DIR/config.json` and the
/// tokenizer when given, each atomically (temp file + rename).
pub fn write_hf_folder(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    cfg_json: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = dir.join("model.safetensors.tmp");
    // A failed write (a full disk) leaves no temporary file behind and names the file.
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(|source| Error::Io {
        path: dir.join("model.safetensors"),
        source,
    })?;
    crate::paths::write_atomic(&dir.join("config.json"), pretty(cfg_json).as_bytes())?;
    if let Some(tok) = tokenizer {
        let tmp = dir.join("tokenizer.json.tmp");
        tok.save(&tmp, false).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::Value(format!("saving the tokenizer to {}: {e}", tmp.display()))
        })?;
        std::fs::rename(&tmp, dir.join("tokenizer.json")).map_err(|source| Error::Io {
            path: dir.join("tokenizer.json"),
            source,
        })?;
    }
    Ok(())
}

/// Pretty JSON text of `v`.
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

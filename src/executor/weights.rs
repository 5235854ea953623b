//! Named weights from HF safetensors (single file or sharded index) with checked look-ups.
//!
//! A missing tensor or a wrong shape is one error naming the file and the tensor.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors by HF name, with the file they came from for error messages.
#[derive(Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    origin: PathBuf,
    dtype: DType,
}

impl Weights {
    /// Wraps tensors loaded from `origin`, converted to `dtype` on use.
    pub fn new(tensors: HashMap<String, Tensor>, origin: PathBuf, dtype: DType) -> Self {
        Weights {
            tensors,
            origin,
            dtype,
        }
    }

    /// The same weights on `dev` (a no-op when they are there already).
    pub fn to_device(self, dev: &Device) -> Result<Self> {
        let tensors = self
            .tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(dev)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Weights { tensors, ..self })
    }

    /// Loads every `*.safetensors` of an HF model folder (via the shard index when present).
    pub fn from_hf_dir(dir: &Path, dtype: DType, dev: &Device) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = crate::paths::read_text(&index)?;
            parse_shard_index(&text, &index)?
                .into_iter()
                .map(|n| dir.join(n))
                .collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for f in &files {
            let io = |source| Error::Io {
                path: f.clone(),
                source,
            };
            let file = std::fs::File::open(f).map_err(io)?;
            // SAFETY: the map is read-only and dropped before this function returns; a file
            // changed under it by another process could only give wrong bytes, which the
            // parser checks like any other bytes.
            let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            tensors.extend(parse_safetensors(&bytes, f, dev)?);
        }
        Ok(Weights::new(tensors, dir.to_path_buf(), dtype))
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: String, t: Tensor) {
        self.tensors.insert(name, t);
    }

    /// The tensor `name` as stored (dtype unconverted), for formats beyond plain weights.
    pub fn raw(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Config {
            file: self.origin.clone(),
            field: name.to_string(),
            msg: "tensor is missing".into(),
        })
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name` with the expected `shape`, in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::Config {
            file: self.origin.clone(),
            field: name.to_string(),
            msg: format!("tensor is missing (expected shape {shape:?})"),
        })?;
        if t.dims() != shape {
            return Err(Error::Config {
                file: self.origin.clone(),
                field: name.to_string(),
                msg: format!("tensor has shape {:?}, expected {shape:?}", t.dims()),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }
}

/// Parses the bytes of a safetensors file (header and data) into tensors on `dev`; `file`
/// names it in errors. The header's offsets and shapes are checked against the bytes given, so
/// nothing larger than the file is allocated.
pub fn parse_safetensors(
    bytes: &[u8],
    file: &Path,
    dev: &Device,
) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, dev).map_err(|e| Error::Parse {
        file: file.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })
}

/// The shard files named by `model.safetensors.index.json` text (its `weight_map` values),
/// sorted and without repeats; `file` names it in errors. Each must be a plain file name in the
/// model folder: a path with a separator, `..` or nothing is refused.
pub fn parse_shard_index(text: &str, file: &Path) -> Result<Vec<String>> {
    let bad = |msg: String| Error::Parse {
        file: file.to_path_buf(),
        msg,
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut names = Vec::new();
    for (tensor, f) in map {
        let name = f
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name")))?;
        if name.is_empty() || name == ".." || name == "." || name.contains(['/', '\\', '\0']) {
            return Err(bad(format!(
                "`weight_map.{tensor}` = {name:?} is not a file name in the model folder"
            )));
        }
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

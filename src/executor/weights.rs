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
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Parse {
                file: index.clone(),
                msg: e.to_string(),
            })?;
            let mut names: Vec<String> = v["weight_map"]
                .as_object()
                .ok_or_else(|| Error::Parse {
                    file: index.clone(),
                    msg: "no `weight_map` object".into(),
                })?
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for f in &files {
            if !f.exists() {
                return Err(Error::Io {
                    path: f.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "weights file not found",
                    ),
                });
            }
            let t = candle_core::safetensors::load(f, dev).map_err(|e| Error::Parse {
                file: f.clone(),
                msg: format!("not a valid safetensors file: {e}"),
            })?;
            tensors.extend(t);
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

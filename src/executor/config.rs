//! The executor's view of an HF `config.json` (Llama family and Phi-3).
//!
//! Only the fields that change the computation are read; unknown fields are ignored because real
//! config.json files carry many. Missing required fields or inconsistent sizes are one error
//! naming the file and the field.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Llama 3.x: low frequencies divided by `factor`, a smooth ramp in between.
    Llama3 {
        /// Division of the low frequencies.
        factor: f64,
        /// Wavelength ratio below which frequencies are scaled fully.
        low_freq_factor: f64,
        /// Wavelength ratio above which frequencies are kept.
        high_freq_factor: f64,
        /// Context the model was pretrained with.
        original_max_position_embeddings: f64,
    },
    /// Phi-3 LongRoPE: per-frequency factors, short or long by sequence length.
    LongRope {
        /// Factors for sequences up to the original context.
        short_factor: Vec<f64>,
        /// Factors beyond it.
        long_factor: Vec<f64>,
        /// Context the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// The computation-relevant part of a config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// `llama` or `phi3`.
    pub model_type: String,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest supported context.
    pub max_position_embeddings: usize,
    /// Whether lm_head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    original_max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl HfConfig {
    /// Reads and checks a config.json.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::paths::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses config.json text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| Error::Parse {
            file: file.to_path_buf(),
            msg: e.to_string(),
        })?;
        let bad = |field: &str, msg: &str| Error::Config {
            file: file.to_path_buf(),
            field: field.to_string(),
            msg: msg.to_string(),
        };
        let need = |v: Option<usize>, field: &str| match v {
            Some(x) if x > 0 => Ok(x),
            Some(_) => Err(bad(field, "must be > 0")),
            None => Err(bad(field, "is missing")),
        };
        let arch = raw.architectures.as_ref().and_then(|a| a.first()).cloned();
        let model_type = match (raw.model_type.as_deref(), arch.as_deref()) {
            (Some("llama"), _) | (_, Some("LlamaForCausalLM")) => "llama",
            (Some("phi3"), _) | (_, Some("Phi3ForCausalLM")) => "phi3",
            (m, a) => {
                return Err(bad(
                    "model_type",
                    &format!(
                        "unsupported architecture {:?} / {:?}; supported: llama (LlamaForCausalLM), phi3 (Phi3ForCausalLM)",
                        m.unwrap_or("?"),
                        a.unwrap_or("?")
                    ),
                ))
            }
        }
        .to_string();
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let kv = raw.num_key_value_heads.unwrap_or(heads);
        if kv == 0 || heads % kv != 0 {
            return Err(bad(
                "num_key_value_heads",
                &format!("must divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = raw.head_dim.unwrap_or(hidden_size / heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad("head_dim", "must be even and > 0"));
        }
        let scaling = raw.rope_scaling.as_ref().or(raw.rope_parameters.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                scaling
                    .and_then(|s| s.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0);
        let max_pos = raw.max_position_embeddings.unwrap_or(4096);
        let rope_scaling = Self::scaling(scaling, raw.original_max_position_embeddings, head_dim)
            .map_err(|m| bad("rope_scaling", &m))?;
        Ok(HfConfig {
            model_type,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: max_pos,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
        })
    }

    /// The configuration as an HF config.json (what [`HfConfig::parse`] reads back), so that a
    /// trained model saved as a folder loads like any HF checkpoint.
    pub fn to_json(&self) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "phi3" => "Phi3ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let scaling = match &self.rope_scaling {
            RopeScaling::None => serde_json::Value::Null,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "type": "longrope", "short_factor": short_factor, "long_factor": long_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        serde_json::json!({
            "architectures": [arch], "model_type": self.model_type,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "vocab_size": self.vocab_size, "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta, "rope_scaling": scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_ids,
        })
    }

    fn scaling(
        v: Option<&serde_json::Value>,
        original: Option<usize>,
        head_dim: usize,
    ) -> std::result::Result<RopeScaling, String> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(RopeScaling::None);
        };
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|k| k.as_str())
            .unwrap_or("default");
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let list = |k: &str| -> std::result::Result<Vec<f64>, String> {
            let l: Vec<f64> = v
                .get(k)
                .and_then(|x| x.as_array())
                .ok_or(format!("`{k}` is missing"))?
                .iter()
                .filter_map(|x| x.as_f64())
                .collect();
            if l.len() != head_dim / 2 {
                return Err(format!(
                    "`{k}` has {} values, expected head_dim / 2 = {}",
                    l.len(),
                    head_dim / 2
                ));
            }
            Ok(l)
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor").ok_or("llama3 scaling needs `factor`")?,
                low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
                original_max_position_embeddings: num("original_max_position_embeddings")
                    .unwrap_or(8192.0),
            }),
            "longrope" | "su" => Ok(RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")
                    .or(original.map(|o| o as f64))
                    .ok_or("longrope needs original_max_position_embeddings")?,
            }),
            other => Err(format!(
                "unsupported rope type `{other}` (supported: default, llama3, longrope)"
            )),
        }
    }
}

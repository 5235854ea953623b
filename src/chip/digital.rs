//! The digital work of one token: what is not a static-weight MVM.
//!
//! Per decoder layer a token needs two RMSNorms, RoPE on q and k, a KV cache write of its own
//! key and value, a read of the whole cache so far, the score products q.k and p.v over the
//! context, a softmax per head, the SiLU(gate) x up product and two residual adds. The sizes
//! follow from the model's shapes and the context length alone; each is carried out by one pool
//! of units at its throughput and energy per operation.

use super::config::{ChipConfig, DigitalUnit};
use crate::executor::ModelConfig;
use serde::Serialize;

/// The kinds of digital unit pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// q.k and p.v products (multiply-accumulates).
    Attention,
    /// Softmax (elements).
    Softmax,
    /// RMSNorm (elements).
    Norm,
    /// KV cache reads and writes (bytes).
    KvCache,
    /// Element-wise rest (elements).
    Other,
}

impl Unit {
    /// Every kind, in report order.
    pub const ALL: [Unit; 5] = [
        Unit::Attention,
        Unit::Softmax,
        Unit::Norm,
        Unit::KvCache,
        Unit::Other,
    ];

    /// Its section name in `[chip]`.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Attention => "attention",
            Unit::Softmax => "softmax",
            Unit::Norm => "norm",
            Unit::KvCache => "kv_cache",
            Unit::Other => "other",
        }
    }

    /// Its configuration.
    pub fn config(self, chip: &ChipConfig) -> &DigitalUnit {
        match self {
            Unit::Attention => &chip.attention,
            Unit::Softmax => &chip.softmax,
            Unit::Norm => &chip.norm,
            Unit::KvCache => &chip.kv_cache,
            Unit::Other => &chip.other,
        }
    }
}

/// The shapes the digital work depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shapes {
    /// Hidden size.
    pub hidden: u64,
    /// Key (= value) width: KV heads x head dim.
    pub kv: u64,
    /// Query heads.
    pub heads: u64,
    /// Head dim.
    pub head_dim: u64,
    /// MLP width.
    pub inter: u64,
    /// Vocabulary.
    pub vocab: u64,
    /// Bytes of one KV cache entry element.
    pub kv_bytes: u64,
}

impl Shapes {
    /// Shapes of `config` with KV entries of `activation_bits`.
    pub fn new(config: &ModelConfig, activation_bits: i64) -> Self {
        let head_dim = config.head_dim() as u64;
        Shapes {
            hidden: config.hidden_size as u64,
            kv: config.num_key_value_heads as u64 * head_dim,
            heads: config.num_attention_heads as u64,
            head_dim,
            inter: config.intermediate_size as u64,
            vocab: config.vocab_size as u64,
            kv_bytes: (activation_bits as u64).div_ceil(8),
        }
    }

    /// RoPE rotates q and k.
    pub fn rope(&self) -> u64 {
        self.hidden + self.kv
    }

    /// Bytes written to the cache per token and layer (its key and value).
    pub fn kv_write_bytes(&self) -> u64 {
        2 * self.kv * self.kv_bytes
    }

    /// Bytes read from the cache for a context of `len` positions.
    pub fn kv_read_bytes(&self, len: u64) -> u64 {
        2 * self.kv * len * self.kv_bytes
    }

    /// Multiply-accumulates of q.k (and likewise of p.v) over `len` positions.
    pub fn score_macs(&self, len: u64) -> u64 {
        self.heads * self.head_dim * len
    }

    /// Softmax elements over `len` positions.
    pub fn softmax(&self, len: u64) -> u64 {
        self.heads * len
    }
}

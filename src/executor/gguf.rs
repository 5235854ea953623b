//! GGUF checkpoints (llama.cpp): metadata to [`HfConfig`], tensors dequantized and renamed to
//! HF names, and the tokenizer built from the embedded vocabulary and merges.
//!
//! llama.cpp stores q_proj and k_proj with the rows of each head interleaved for its rotary
//! layout; they are permuted back here so the HF decoder (rotate-half RoPE) applies unchanged.

use super::config::{HfConfig, RopeScaling};
use super::weights::Weights;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

/// A loaded GGUF: its config, its weights under HF names, its tokenizer and chat template.
pub struct GgufModel {
    /// Architecture and sizes from the metadata.
    pub config: HfConfig,
    /// Dequantized tensors under HF names.
    pub weights: Weights,
    /// Tokenizer rebuilt from the metadata.
    pub tokenizer: Tokenizer,
    /// Jinja chat template, when the file has one.
    pub chat_template: Option<String>,
}

fn parse_err(path: &Path, msg: String) -> Error {
    Error::Parse {
        file: path.to_path_buf(),
        msg,
    }
}

fn meta_u(c: &Content, path: &Path, key: &str) -> Result<usize> {
    let v = c
        .metadata
        .get(key)
        .ok_or_else(|| parse_err(path, format!("metadata key `{key}` is missing")))?;
    let n = match v {
        Value::U8(x) => u64::from(*x),
        Value::U16(x) => u64::from(*x),
        Value::U32(x) => u64::from(*x),
        Value::U64(x) => *x,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => {
            return Err(parse_err(
                path,
                format!("metadata `{key}` is {other:?}, expected an unsigned integer"),
            ))
        }
    };
    usize::try_from(n).map_err(|_| parse_err(path, format!("metadata `{key}` = {n} is too large")))
}

fn meta_f(c: &Content, key: &str) -> Option<f64> {
    match c.metadata.get(key)? {
        Value::F32(x) => Some(f64::from(*x)),
        Value::F64(x) => Some(*x),
        _ => None,
    }
}

fn meta_id(c: &Content, key: &str) -> Option<u32> {
    match c.metadata.get(key)? {
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

/// Inverse of llama.cpp's q/k row permutation for `heads` heads; a tensor that is not a
/// matrix of `heads` heads of an even size is an error naming `path` and the tensor.
fn unpermute(w: &Tensor, heads: usize, path: &Path, name: &str) -> Result<Tensor> {
    let bad = || {
        parse_err(
            path,
            format!(
                "tensor `{name}` of shape {:?} is not {heads} heads of an even size",
                w.dims()
            ),
        )
    };
    let (out, inp) = w.dims2().map_err(|_| bad())?;
    let hd = out.checked_div(heads).ok_or_else(bad)?;
    if hd * heads != out || hd % 2 != 0 {
        return Err(bad());
    }
    Ok(w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?)
}

impl GgufModel {
    /// Reads a GGUF file; only the Llama architecture is supported so far.
    pub fn load(path: &Path, dtype: DType) -> Result<Self> {
        super::gguf_check::check_gguf(path)?;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        Self::read_checked(&mut file, path, dtype)
    }

    /// Reads a GGUF from bytes in memory (header, metadata, tokenizer and tensors, with the
    /// same checks as [`GgufModel::load`]); `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path, dtype: DType) -> Result<Self> {
        super::gguf_check::check_gguf_reader(bytes, bytes.len() as u64, path)?;
        Self::read_checked(&mut std::io::Cursor::new(bytes), path, dtype)
    }

    /// Reads a GGUF whose header [`super::gguf_check`] has passed.
    fn read_checked<R: std::io::Read + std::io::Seek>(
        file: &mut R,
        path: &Path,
        dtype: DType,
    ) -> Result<Self> {
        let c = Content::read(file)
            .map_err(|e| parse_err(path, format!("not a valid GGUF file: {e}")))?;
        let arch = match c.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(parse_err(
                    path,
                    "metadata `general.architecture` is missing".into(),
                ))
            }
        };
        if arch != "llama" {
            return Err(parse_err(
                path,
                format!("unsupported GGUF architecture `{arch}` (supported: llama)"),
            ));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = meta_u(&c, path, &k("embedding_length"))?;
        let heads = meta_u(&c, path, &k("attention.head_count"))?;
        let kv = meta_u(&c, path, &k("attention.head_count_kv")).unwrap_or(heads);
        let layers = meta_u(&c, path, &k("block_count"))?;
        check_merges(&c, path)?;
        let mut tokenizer =
            Tokenizer::from_gguf(&c).map_err(|e| parse_err(path, format!("tokenizer: {e}")))?;
        // candle's GPT-2 fallback pipeline adds a prefix space to every piece between special
        // tokens; files that say `add_space_prefix = false` (SmolLM2) must not get one.
        let pre = match c.metadata.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.as_str(),
            _ => "gpt2",
        };
        let gpt2_like = !matches!(pre, "qwen2" | "smaug-bpe" | "lfm2" | "llama3");
        let no_prefix = matches!(
            c.metadata.get("tokenizer.ggml.add_space_prefix"),
            Some(Value::Bool(false))
        );
        if gpt2_like && no_prefix {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        let vocab = match meta_u(&c, path, &k("vocab_size")) {
            Ok(v) => v,
            Err(_) => tokenizer.get_vocab_size(true),
        };
        let tied = !c.tensor_infos.contains_key("output.weight");
        let config = HfConfig {
            model_type: "llama".into(),
            hidden_size: hidden,
            intermediate_size: meta_u(&c, path, &k("feed_forward_length"))?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden.checked_div(heads).unwrap_or(0),
            vocab_size: vocab,
            rms_norm_eps: meta_f(&c, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: meta_f(&c, &k("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: RopeScaling::None,
            max_position_embeddings: meta_u(&c, path, &k("context_length")).unwrap_or(2048),
            tie_word_embeddings: tied,
            bos_token_id: meta_id(&c, "tokenizer.ggml.bos_token_id"),
            eos_token_ids: meta_id(&c, "tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        };
        if heads == 0 || kv == 0 || hidden % heads != 0 || heads % kv != 0 {
            return Err(parse_err(
                path,
                format!("inconsistent heads: hidden {hidden}, heads {heads}, kv heads {kv}"),
            ));
        }
        let chat_template = match c.metadata.get("tokenizer.chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let dev = Device::Cpu;
        let mut get = |name: &str| -> Result<Tensor> {
            let q = c
                .tensor(file, name, &dev)
                .map_err(|e| parse_err(path, format!("tensor `{name}`: {e}")))?;
            q.dequantize(&dev)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| parse_err(path, format!("tensor `{name}`: {e}")))
        };
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert(
            "model.embed_tokens.weight".into(),
            get("token_embd.weight")?,
        );
        map.insert("model.norm.weight".into(), get("output_norm.weight")?);
        if !tied {
            map.insert("lm_head.weight".into(), get("output.weight")?);
        }
        for l in 0..layers {
            let g = |s: &str| format!("blk.{l}.{s}.weight");
            let h = |s: &str| format!("model.layers.{l}.{s}.weight");
            map.insert(
                h("self_attn.q_proj"),
                unpermute(&get(&g("attn_q"))?, heads, path, &g("attn_q"))?,
            );
            let k = unpermute(&get(&g("attn_k"))?, kv, path, &g("attn_k"))?;
            map.insert(h("self_attn.k_proj"), k);
            for (gg, hh) in [
                ("attn_v", "self_attn.v_proj"),
                ("attn_output", "self_attn.o_proj"),
                ("ffn_gate", "mlp.gate_proj"),
                ("ffn_up", "mlp.up_proj"),
                ("ffn_down", "mlp.down_proj"),
                ("attn_norm", "input_layernorm"),
                ("ffn_norm", "post_attention_layernorm"),
            ] {
                map.insert(h(hh), get(&g(gg))?);
            }
        }
        Ok(GgufModel {
            config,
            weights: Weights::new(map, path.to_path_buf(), dtype),
            tokenizer,
            chat_template,
        })
    }
}

/// Refuses a BPE merge "a b" whose halves or whose joined token are not in the vocabulary.
/// tokenizers builds a merge's token in a buffer as long as the longest vocabulary token before
/// it looks the token up, so a join longer than every token panics there (a fuzz finding)
/// instead of failing with its error. Missing or mistyped fields are left to candle's reader.
fn check_merges(c: &Content, path: &Path) -> Result<()> {
    let strings = |key: &str| match c.metadata.get(key) {
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| match x {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let (Some(tokens), Some(merges)) = (
        strings("tokenizer.ggml.tokens"),
        strings("tokenizer.ggml.merges"),
    ) else {
        return Ok(());
    };
    let vocab: std::collections::HashSet<&str> = tokens.into_iter().collect();
    for (i, m) in merges.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            continue;
        };
        let joined = format!("{a}{b}");
        let missing = [a, b, joined.as_str()]
            .into_iter()
            .find(|t| !vocab.contains(t));
        if let Some(t) = missing {
            return Err(parse_err(
                path,
                format!(
                    "tokenizer.ggml.merges[{i}] `{}`: `{}` is not in tokenizer.ggml.tokens",
                    m.escape_debug(),
                    t.escape_debug()
                ),
            ));
        }
    }
    Ok(())
}

//! GGUF loading of every supported tensor type: a tiny Llama written with llama.cpp's names and
//! q/k row permutation, quantized to each type, must give the logits of the HF-named model whose
//! weights went through the same quantization (rows are quantized independently, so permuting
//! rows commutes with it).

use crate::common::normals;
use afm::executor::config::HfConfig;
use afm::executor::decoder::KvCache;
use afm::executor::gguf::GgufModel;
use afm::executor::llama;
use afm::executor::weights::Weights;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const H: usize = 256;
const I: usize = 512;
const NH: usize = 4;
const NKV: usize = 2;
const HD: usize = H / NH;
const V: usize = 300;

/// llama.cpp's permutation of q/k rows: GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i.
fn permute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let hd = w.len() / cols / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (g, f) = (h * hd + 2 * i + j, h * hd + j * hd / 2 + i);
                out[g * cols..(g + 1) * cols].copy_from_slice(&w[f * cols..(f + 1) * cols]);
            }
        }
    }
    out
}

fn logits(dec: &afm::executor::decoder::Decoder, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    dec.forward(&x, &mut KvCache::default())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn write_gguf(
    path: &Path,
    dtype: GgmlDType,
    hf: &HashMap<String, Vec<f32>>,
) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut q: Vec<(String, QTensor)> = Vec::new();
    let mut dequant = HashMap::new();
    let mut add = |gguf: String, hf_name: &str, shape: (usize, usize), perm: Option<usize>| {
        let w = &hf[hf_name];
        let stored = perm.map_or_else(|| w.clone(), |heads| permute(w, heads, shape.1));
        let qt = QTensor::quantize(&Tensor::from_vec(stored, shape, &dev).unwrap(), dtype).unwrap();
        // The HF-side reference: the same quantization applied to the unpermuted rows.
        let r = QTensor::quantize(&Tensor::from_slice(w, shape, &dev).unwrap(), dtype).unwrap();
        dequant.insert(hf_name.to_string(), r.dequantize(&dev).unwrap());
        q.push((gguf, qt));
    };
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight",
        (V, H),
        None,
    );
    add("output.weight".into(), "lm_head.weight", (V, H), None);
    let p = |n: &str| format!("model.layers.0.{n}.weight");
    add(
        "blk.0.attn_q.weight".into(),
        &p("self_attn.q_proj"),
        (H, H),
        Some(NH),
    );
    add(
        "blk.0.attn_k.weight".into(),
        &p("self_attn.k_proj"),
        (NKV * HD, H),
        Some(NKV),
    );
    add(
        "blk.0.attn_v.weight".into(),
        &p("self_attn.v_proj"),
        (NKV * HD, H),
        None,
    );
    add(
        "blk.0.attn_output.weight".into(),
        &p("self_attn.o_proj"),
        (H, H),
        None,
    );
    add(
        "blk.0.ffn_gate.weight".into(),
        &p("mlp.gate_proj"),
        (I, H),
        None,
    );
    add(
        "blk.0.ffn_up.weight".into(),
        &p("mlp.up_proj"),
        (I, H),
        None,
    );
    add(
        "blk.0.ffn_down.weight".into(),
        &p("mlp.down_proj"),
        (H, I),
        None,
    );
    for (g, n) in [
        ("output_norm.weight", "model.norm.weight".to_string()),
        ("blk.0.attn_norm.weight", p("input_layernorm")),
        ("blk.0.ffn_norm.weight", p("post_attention_layernorm")),
    ] {
        let t = Tensor::from_slice(&hf[&n], H, &dev).unwrap();
        dequant.insert(n.clone(), t.clone());
        q.push((
            g.to_string(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let tokens: Vec<Value> = (0..V).map(|i| Value::String(format!("t{i}"))).collect();
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(H as u32)),
        ("llama.feed_forward_length", Value::U32(I as u32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(NH as u32)),
        ("llama.attention.head_count_kv", Value::U32(NKV as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.context_length", Value::U32(256)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
    dequant
}

#[test]
fn every_tensor_type_loads_with_hf_names() {
    let cfg_text = format!(
        r#"{{"model_type": "llama", "hidden_size": {H}, "intermediate_size": {I},
        "num_hidden_layers": 1, "num_attention_heads": {NH}, "num_key_value_heads": {NKV},
        "vocab_size": {V}, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": false}}"#
    );
    let cfg = HfConfig::parse(&cfg_text, Path::new("config.json")).unwrap();
    let shapes: Vec<(String, usize)> = vec![
        ("model.embed_tokens.weight".into(), V * H),
        ("lm_head.weight".into(), V * H),
        ("model.norm.weight".into(), H),
        ("model.layers.0.input_layernorm.weight".into(), H),
        ("model.layers.0.post_attention_layernorm.weight".into(), H),
        ("model.layers.0.self_attn.q_proj.weight".into(), H * H),
        (
            "model.layers.0.self_attn.k_proj.weight".into(),
            NKV * HD * H,
        ),
        (
            "model.layers.0.self_attn.v_proj.weight".into(),
            NKV * HD * H,
        ),
        ("model.layers.0.self_attn.o_proj.weight".into(), H * H),
        ("model.layers.0.mlp.gate_proj.weight".into(), I * H),
        ("model.layers.0.mlp.up_proj.weight".into(), I * H),
        ("model.layers.0.mlp.down_proj.weight".into(), H * I),
    ];
    let hf: HashMap<String, Vec<f32>> = shapes
        .into_iter()
        .enumerate()
        .map(|(k, (n, len))| {
            let mut v = normals(500 + k as u64, len, 0.1);
            if n.contains("norm") {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            (n, v)
        })
        .collect();
    let dir = crate::common::temp_dir("gguf");
    let ids: Vec<u32> = (0..9u32).map(|k| (k * 31 + 5) % V as u32).collect();
    for dtype in [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let path = dir.join(format!("{dtype:?}.gguf"));
        let reference = write_gguf(&path, dtype, &hf);
        let g = GgufModel::load(&path, DType::F32).unwrap();
        assert_eq!(g.config.num_key_value_heads, NKV);
        assert!(!g.config.tie_word_embeddings);
        let ours = logits(&llama::build(g.config.clone(), &g.weights).unwrap(), &ids);
        let w = Weights::new(reference, PathBuf::from("reference"), DType::F32);
        let want = logits(&llama::build(cfg.clone(), &w).unwrap(), &ids);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err <= 1e-5 * scale,
            "{dtype:?}: max |diff| {err} (scale {scale})"
        );
    }
    // Another architecture is refused with the file named.
    let path = dir.join("F32.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"llama").unwrap();
    let mut bad = bytes.clone();
    bad[pos..pos + 5].copy_from_slice(b"gpt-j");
    let bad_path = dir.join("gptj.gguf");
    std::fs::write(&bad_path, bad).unwrap();
    let e = GgufModel::load(&bad_path, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("gptj.gguf") && e.contains("unsupported GGUF architecture"),
        "{e}"
    );
    hostile_headers(&dir, &bytes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// GGUF headers whose counts or lengths the file cannot hold are refused before anything is
/// allocated from them; damaged copies of a valid file give an error, never a panic.
fn hostile_headers(dir: &Path, valid: &[u8]) {
    let load = |name: &str, bytes: &[u8]| -> Option<String> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let r = std::panic::catch_unwind(|| GgufModel::load(&p, DType::F32).err());
        r.unwrap_or_else(|_| panic!("{name}: loading panicked"))
            .map(|e| e.to_string())
    };
    let head = |tensors: u64, kvs: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    };
    let e = load("many.gguf", &head(1_000_000_000_000, 0)).unwrap();
    assert!(
        e.contains("many.gguf") && e.contains("1000000000000 tensors"),
        "{e}"
    );
    let mut b = head(0, 1);
    b.extend((1u64 << 60).to_le_bytes());
    b.extend([0u8; 16]);
    let e = load("string.gguf", &b).unwrap();
    assert!(e.contains("a string of 1152921504606846976 bytes"), "{e}");
    let mut b = head(1, 0);
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    b.extend(1u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let e = load("huge-tensor.gguf", &b).unwrap();
    assert!(
        e.contains("tensor `w`") && e.contains("run past the end"),
        "{e}"
    );
    let mut b = valid[..valid.len() / 2].to_vec();
    let e = load("half.gguf", &b).unwrap();
    assert!(e.contains("run past the end"), "{e}");
    b = b"GGUF".to_vec();
    b.extend(7u32.to_le_bytes());
    assert!(load("v7.gguf", &b).unwrap().contains("version 7"));
    // Every cut of the first 600 bytes, and seeded byte flips in the header.
    for cut in 0..600.min(valid.len()) {
        assert!(
            load("cut.gguf", &valid[..cut]).is_some(),
            "cut at {cut} loaded"
        );
    }
    let mut rng = afm::rng::StreamKey::new(1, 2, 3, afm::rng::Effect::Data).rng(0);
    for _ in 0..200 {
        let mut b = valid.to_vec();
        for _ in 0..4 {
            let i = (rng.next_u64() % 2048) as usize;
            b[i] ^= 1 << (rng.next_u64() % 8);
        }
        load("flipped.gguf", &b);
    }
}

//! The transformer executor: KV-cache consistency and analog mapping on tiny random models
//! (the comparison with `transformers` is in `golden`).

use crate::common::{assert_close, normals, repo, temp_dir};
use afm::executor::config::HfConfig;
use afm::executor::decoder::KvCache;
use afm::executor::llama;
use afm::executor::weights::Weights;
use afm::tile::TilePreset;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(crate) const TINY_LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
 "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "vocab_size": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
 "max_position_embeddings": 128, "tie_word_embeddings": false,
 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}"#;

pub(crate) const TINY_PHI3: &str = r#"{"architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
 "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 4, "vocab_size": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
 "max_position_embeddings": 64, "original_max_position_embeddings": 16, "tie_word_embeddings": false,
 "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.5],
                  "long_factor": [1.0, 2.0, 4.0, 8.0]}}"#;

/// Random HF-named weights for a config.
pub(crate) fn random_weights(cfg: &HfConfig, seed: u64) -> Weights {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (nh, nkv, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        shapes.push((p("input_layernorm.weight"), vec![h]));
        shapes.push((p("post_attention_layernorm.weight"), vec![h]));
        shapes.push((p("self_attn.o_proj.weight"), vec![h, nh * hd]));
        shapes.push((p("mlp.down_proj.weight"), vec![h, i]));
        if cfg.model_type == "phi3" {
            shapes.push((p("self_attn.qkv_proj.weight"), vec![(nh + 2 * nkv) * hd, h]));
            shapes.push((p("mlp.gate_up_proj.weight"), vec![2 * i, h]));
        } else {
            shapes.push((p("self_attn.q_proj.weight"), vec![nh * hd, h]));
            shapes.push((p("self_attn.k_proj.weight"), vec![nkv * hd, h]));
            shapes.push((p("self_attn.v_proj.weight"), vec![nkv * hd, h]));
            shapes.push((p("mlp.gate_proj.weight"), vec![i, h]));
            shapes.push((p("mlp.up_proj.weight"), vec![i, h]));
        }
    }
    let mut map = HashMap::new();
    for (k, (name, shape)) in shapes.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut vals = normals(seed * 1000 + k as u64, n, 0.2);
        if name.contains("norm") {
            vals.iter_mut().for_each(|x| *x += 1.0);
        }
        map.insert(name, Tensor::from_vec(vals, shape, &Device::Cpu).unwrap());
    }
    Weights::new(map, PathBuf::from("random"), DType::F32)
}

pub(crate) fn logits(
    dec: &afm::executor::decoder::Decoder,
    ids: &[u32],
    cache: &mut KvCache,
) -> Vec<f32> {
    let t = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    dec.forward(&t, cache)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn kv_cache_matches_full_prefill() {
    for (text, n_tokens) in [(TINY_LLAMA, 20usize), (TINY_PHI3, 12)] {
        let cfg = HfConfig::parse(text, Path::new("config.json")).unwrap();
        let dec = llama::build(cfg.clone(), &random_weights(&cfg, 1)).unwrap();
        let ids: Vec<u32> = (0..n_tokens as u32).map(|k| (k * 7 + 3) % 64).collect();
        let full = logits(&dec, &ids, &mut KvCache::default());
        let v = cfg.vocab_size;
        // Growing buffers (a one-token prefill grows them several times) and a reserved one.
        for (split, reserve) in [(n_tokens / 2, 0), (1, 0), (1, n_tokens)] {
            let mut cache = KvCache::with_capacity(reserve);
            let first = logits(&dec, &ids[..split], &mut cache);
            assert_close("prefill part", &first, &full[..split * v], 1e-4, 1e-4);
            let mut fork = None;
            for (k, id) in ids[split..].iter().enumerate() {
                let pos = split + k;
                if k == 2 {
                    // A clone is a cache of its own: it goes on with other tokens below.
                    let mut other = cache.clone();
                    logits(&dec, &[63], &mut other);
                    fork = Some((other, pos));
                }
                let step = logits(&dec, &[*id], &mut cache);
                assert_close(
                    "decode step",
                    &step,
                    &full[pos * v..(pos + 1) * v],
                    1e-4,
                    1e-4,
                );
            }
            assert_eq!(cache.len(), n_tokens);
            let (mut other, pos) = fork.unwrap();
            let mut own: Vec<u32> = ids[..pos].to_vec();
            own.extend([63, 62]);
            let want = logits(&dec, &own, &mut KvCache::default());
            let got = logits(&dec, &[62], &mut other);
            assert_close("fork", &got, &want[(pos + 1) * v..], 1e-4, 1e-4);
        }
    }
}

#[test]
fn longrope_switches_factors_past_the_original_context() {
    let cfg = HfConfig::parse(TINY_PHI3, Path::new("config.json")).unwrap();
    let dec = llama::build(cfg.clone(), &random_weights(&cfg, 1)).unwrap();
    let ids: Vec<u32> = (0..24u32).map(|k| (k * 7 + 3) % 64).collect();
    let short = logits(&dec, &ids[..16], &mut KvCache::default());
    let long = logits(&dec, &ids, &mut KvCache::default());
    // Position 0 has angle 0 under any factors; later positions change with the long factors.
    assert_close("position 0", &long[..64], &short[..64], 1e-5, 1e-5);
    let d: f32 = long[64..128]
        .iter()
        .zip(&short[64..128])
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(d > 1e-3, "long factors had no effect ({d})");
}

#[test]
fn analog_mapping_runs_and_stays_close() {
    let cfg = HfConfig::parse(TINY_LLAMA, Path::new("config.json")).unwrap();
    let w = random_weights(&cfg, 2);
    let ids: Vec<u32> = (0..10).map(|k| (k * 5 + 1) % 64).collect();
    let d = logits(
        &llama::build(cfg.clone(), &w).unwrap(),
        &ids,
        &mut KvCache::default(),
    );
    let rel_err = |dac_bits: i64| {
        let mut preset = TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
        preset.dac.bits = dac_bits;
        // lambda 14 is sized for 512-row tiles; on 32-input layers its ADC step is ~15% of a
        // typical output, so the ADC stays off here.
        preset.adc.bits = 0;
        preset.tile.rows = 16;
        let mut analog = llama::build(cfg.clone(), &w).unwrap();
        afm::executor::load::map_to_tiles(&mut analog, &preset, 0, false).unwrap();
        let a = logits(&analog, &ids, &mut KvCache::default());
        let err: f32 = a
            .iter()
            .zip(&d)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt();
        err / d.iter().map(|y| y * y).sum::<f32>().sqrt()
    };
    // Converters off: tiling, row-block sums and calibration change nothing but rounding.
    assert!(rel_err(0) < 1e-5, "exact mapping error {}", rel_err(0));
    // An 8-bit DAC with abs-max ranges: about a percent per projection, a few in the logits.
    let e8 = rel_err(8);
    assert!(e8 > 1e-4 && e8 < 0.06, "8-bit DAC error {e8}");
}

#[test]
fn bad_configs_and_weights_are_named() {
    let e = HfConfig::parse(
        &TINY_LLAMA.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
        Path::new("c.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("c.json") && e.contains("num_key_value_heads"),
        "{e}"
    );
    let e = HfConfig::parse(
        &TINY_LLAMA
            .replace("LlamaForCausalLM", "GPT2LMHeadModel")
            .replace("\"llama\"", "\"gpt2\""),
        Path::new("c.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unsupported architecture"), "{e}");
    let cfg = HfConfig::parse(TINY_LLAMA, Path::new("config.json")).unwrap();
    let mut bigger = cfg.clone();
    bigger.intermediate_size += 1;
    let e = llama::build(bigger, &random_weights(&cfg, 3))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("expected [49, 32]"),
        "{e}"
    );
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    use afm::executor::load::load_model;
    let src = repo("tests/golden/executor/tiny-llama");
    // A missing tensor names the folder and the tensor.
    let dir = temp_dir("missing-tensor");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    t.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let e = load_model(dir.to_str().unwrap(), DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
    // A truncated safetensors file names the file.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_model(dir.to_str().unwrap(), DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // No weights at all.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_model(dir.to_str().unwrap(), DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // Garbage and truncated GGUF files.
    let g = dir.join("bad.gguf");
    std::fs::write(&g, b"GGUF but not really a gguf file at all").unwrap();
    let e = load_model(g.to_str().unwrap(), DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad.gguf") && e.contains("not a valid GGUF"),
        "{e}"
    );
    std::fs::write(&g, [0u8; 0]).unwrap();
    assert!(load_model(g.to_str().unwrap(), DType::F32).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_real_gguf_names_the_tensor() {
    use afm::executor::load::{load_model, resolve_weights};
    let Ok(path) = resolve_weights("smollm2-135m-instruct", false) else {
        panic!("SmolLM2 GGUF not in the cache: run `afm model fetch smollm2-135m-instruct`");
    };
    let dir = temp_dir("truncated-gguf");
    let cut = dir.join("cut.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_model(cut.to_str().unwrap(), DType::F32)
        .err()
        .unwrap()
        .to_string();
    // Either the header's bounds check or the first tensor read past the end catches it.
    assert!(
        e.contains("cut.gguf") && (e.contains("tensor `") || e.contains("not a valid GGUF")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn half_precision_tracks_f32() {
    use afm::executor::load::load_model;
    let dir = repo("tests/golden/executor/tiny-llama");
    let ids: Vec<u32> = (0..12u32).map(|k| 3 + k * 19 % 250).collect();
    let full = logits(
        &load_model(dir.to_str().unwrap(), DType::F32)
            .unwrap()
            .decoder,
        &ids,
        &mut KvCache::default(),
    );
    for dtype in [DType::BF16, DType::F16] {
        let m = load_model(dir.to_str().unwrap(), dtype).unwrap();
        let half = logits(&m.decoder, &ids, &mut KvCache::default());
        let scale = full.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = half
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / scale;
        // bf16 keeps 8 bits of mantissa: a few percent of the logit scale, not more.
        assert!(
            err < 0.05 && err > 0.0,
            "{dtype:?}: max relative error {err}"
        );
    }
}

#[test]
fn sharded_safetensors_load_like_one_file() {
    use afm::executor::load::load_model;
    let src = repo("tests/golden/executor/tiny-llama");
    let dir = temp_dir("sharded");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut a, mut b, mut map) = (HashMap::new(), HashMap::new(), serde_json::Map::new());
    for (k, (name, t)) in all.into_iter().enumerate() {
        let shard = if k % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(name.clone(), serde_json::Value::String(shard.into()));
        if k % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ids: Vec<u32> = (0..7u32).map(|k| 10 + k * 3).collect();
    let one = logits(
        &load_model(src.to_str().unwrap(), DType::F32)
            .unwrap()
            .decoder,
        &ids,
        &mut KvCache::default(),
    );
    let two = logits(
        &load_model(dir.to_str().unwrap(), DType::F32)
            .unwrap()
            .decoder,
        &ids,
        &mut KvCache::default(),
    );
    assert_eq!(one, two);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sampling on `dev` over `n` rows of fixed logits: token frequencies within `tol` of the
/// softmax; top-k 2 picks only the two most likely tokens (returned for further checks).
pub fn check_device_sampling(dev: &Device, n: usize, tol: f64) -> (Tensor, Vec<u32>) {
    use afm::executor::sampling::{pick_on_device, Sampling};
    let l = [0.0f32, 1.0, 2.0, -10.0];
    let rows: Vec<f32> = (0..n).flat_map(|_| l).collect();
    let t = Tensor::from_vec(rows, (n, 4), dev).unwrap();
    let s = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let (tok, nan) = pick_on_device(&t, &s).unwrap();
    assert_eq!(nan.to_scalar::<f32>().unwrap(), 0.0);
    let mut counts = [0usize; 4];
    for k in tok.to_vec1::<u32>().unwrap() {
        counts[k as usize] += 1;
    }
    let z: f64 = l.iter().map(|&v| f64::from(v).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let p = f64::from(l[i]).exp() / z;
        assert!(
            (c as f64 / n as f64 - p).abs() < tol,
            "token {i}: {c} vs p {p}"
        );
    }
    let k2 = Sampling { top_k: 2, ..s };
    let tok = pick_on_device(&t, &k2).unwrap().0.to_vec1::<u32>().unwrap();
    assert!(tok.iter().all(|&k| k == 1 || k == 2));
    (t, tok)
}

/// Rows of random values with ties (some values rounded to a coarse grid) and infinities, for
/// the k-th largest selection, with the answer of a full sort.
pub fn kth_cases() -> Vec<(Vec<f32>, usize, usize, Vec<f32>)> {
    let mut out = Vec::new();
    for (seed, (rows, cols)) in [(1, 1), (3, 7), (5, 256), (2, 1000), (4, 49_152)]
        .into_iter()
        .enumerate()
    {
        let mut v = normals(seed as u64 + 11, rows * cols, 4.0);
        for (i, x) in v.iter_mut().enumerate() {
            match i % 17 {
                0 => *x = (*x * 2.0).round() / 2.0,
                5 => *x = -*x,
                9 if i % 3 == 0 => *x = f32::NEG_INFINITY,
                _ => {}
            }
        }
        let mut ks = vec![1, 2, cols.div_ceil(3), 50, cols];
        ks.retain(|&k| k <= cols);
        ks.dedup();
        for k in ks {
            let want: Vec<f32> = v
                .chunks(cols)
                .map(|r| {
                    let mut s = r.to_vec();
                    s.sort_by(|a, b| b.total_cmp(a));
                    s[k - 1]
                })
                .collect();
            out.push((v.clone(), rows, k, want));
        }
    }
    out
}

#[test]
fn kth_largest_matches_a_full_sort_with_ties() {
    use afm::executor::sampling::kth_largest;
    for (v, rows, k, want) in kth_cases() {
        let cols = v.len() / rows;
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        let got = kth_largest(&t, k).unwrap().flatten_all().unwrap();
        assert_eq!(got.to_vec1::<f32>().unwrap(), want, "{rows}x{cols}, k {k}");
    }
    let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(kth_largest(&t, 4).is_err() && kth_largest(&t, 0).is_err());
}

#[test]
fn device_sampling_follows_softmax_and_top_k() {
    use afm::executor::sampling::{pick_on_device, Sampling};
    let n = 100_000;
    let (t, top2) = check_device_sampling(&Device::Cpu, n, 0.006);
    let share2 = top2.iter().filter(|&&k| k == 2).count() as f64 / n as f64;
    let p2 = 1f64.exp() / (1.0 + 1f64.exp());
    assert!(
        (share2 - p2).abs() < 0.006,
        "top-2 share of token 2: {share2} vs {p2}"
    );
    let (tok, _) = pick_on_device(&t, &Sampling::GREEDY).unwrap();
    assert!(tok.to_vec1::<u32>().unwrap().iter().all(|&k| k == 2));
    let bad = Tensor::from_vec(vec![0f32, f32::NAN, 1.0, 2.0], (2, 2), &Device::Cpu).unwrap();
    let s = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let nan = pick_on_device(&bad, &s).unwrap().1;
    assert_eq!(nan.to_scalar::<f32>().unwrap(), 1.0);
}

/// Activation smoothing computes the same function, and with alpha = 1 every projection's
/// input columns end with abs-max 1 (o_proj's per value row, the max over its query heads), on
/// a grouped-query Llama and a fused Phi-3.
#[test]
fn smoothing_keeps_the_function_and_flattens_inputs() {
    use afm::train::smooth::{input_abs_max, smooth};
    for text in [TINY_LLAMA, TINY_PHI3] {
        let cfg = HfConfig::parse(text, Path::new("config.json")).unwrap();
        let dec = llama::build(cfg.clone(), &random_weights(&cfg, 3)).unwrap();
        let ids: Vec<u32> = (0..24u32).map(|k| (k * 11 + 5) % 64).collect();
        let batch = Tensor::from_slice(&ids, (2, 12), &Device::Cpu).unwrap();
        let stats = input_abs_max(&dec, std::slice::from_ref(&batch)).unwrap();
        assert_eq!(
            stats.len(),
            dec.blocks.len() * if cfg.model_type == "phi3" { 4 } else { 7 } + 1
        );
        let before = logits(&dec, &ids, &mut KvCache::default());
        for alpha in [0.5, 1.0] {
            let s = smooth(&dec, &stats, alpha, true).unwrap();
            let after = logits(&s, &ids, &mut KvCache::default());
            assert_close(
                &format!("{} alpha {alpha}", cfg.model_type),
                &after,
                &before,
                1e-4,
                1e-3,
            );
            if alpha < 1.0 {
                continue;
            }
            for (name, m) in input_abs_max(&s, std::slice::from_ref(&batch)).unwrap() {
                let top = m.iter().fold(0f32, |a, &b| a.max(b));
                assert!((top - 1.0).abs() < 1e-4, "{name}: largest column {top}");
                if !name.ends_with("o_proj") {
                    let low = m.iter().fold(f32::MAX, |a, &b| a.min(b));
                    assert!((low - 1.0).abs() < 1e-4, "{name}: smallest column {low}");
                }
            }
        }
    }
}

/// Smoothing one projection type (down_proj) keeps the function, flattens that type's inputs
/// and leaves every other projection's inputs as they were.
#[test]
fn smoothing_one_projection_type_leaves_the_others() {
    use afm::train::smooth::{input_abs_max, smooth_only};
    for text in [TINY_LLAMA, TINY_PHI3] {
        let (cfg, dec, ids, batch, column_stats) = tiny_with_stats(text);
        let stats: std::collections::BTreeMap<String, Vec<f32>> = column_stats
            .into_iter()
            .map(|(name, c)| (name, c.abs_max))
            .collect();
        let s = smooth_only(&dec, &stats, 1.0, true, &|n| n.ends_with("down_proj")).unwrap();
        let (before, after) = (
            logits(&dec, &ids, &mut KvCache::default()),
            logits(&s, &ids, &mut KvCache::default()),
        );
        assert_close(&cfg.model_type, &after, &before, 1e-4, 1e-3);
        for (name, m) in input_abs_max(&s, std::slice::from_ref(&batch)).unwrap() {
            if name.ends_with("down_proj") {
                assert!(m.iter().all(|&v| (v - 1.0).abs() < 1e-4), "{name}: {m:?}");
            } else {
                assert_close(&name, &m, &stats[&name], 1e-5, 1e-5);
            }
        }
    }
}

/// The tiny model of config `text` with random weights, 24 token ids as a (2, 12) batch, and
/// every projection's input statistics on that batch.
fn tiny_with_stats(
    text: &str,
) -> (
    HfConfig,
    afm::executor::decoder::Decoder,
    Vec<u32>,
    Tensor,
    std::collections::BTreeMap<String, afm::executor::linear::ColumnStats>,
) {
    let cfg = HfConfig::parse(text, Path::new("config.json")).unwrap();
    let dec = llama::build(cfg.clone(), &random_weights(&cfg, 5)).unwrap();
    let ids: Vec<u32> = (0..24u32).map(|k| (k * 7 + 3) % 64).collect();
    let batch = Tensor::from_slice(&ids, (2, 12), &Device::Cpu).unwrap();
    let stats = afm::train::smooth::input_stats(&dec, std::slice::from_ref(&batch)).unwrap();
    (cfg, dec, ids, batch, stats)
}

/// Isolating down_proj's outlier inputs permutes the MLP's intermediate channels without
/// changing the function, puts the k largest first, and maps them onto a row block of their own,
/// on a grouped-query Llama and a fused Phi-3.
#[test]
fn isolating_outliers_keeps_the_function_and_maps_a_head_block() {
    use afm::executor::linear::Projection;
    use afm::executor::load::program_chip;
    use afm::train::outliers::{isolate_mlp_outliers, Isolate};
    use afm::train::smooth::input_abs_max;
    let preset = TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    for text in [TINY_LLAMA, TINY_PHI3] {
        let (cfg, dec, ids, batch, full) = tiny_with_stats(text);
        let k = 3;
        let iso = isolate_mlp_outliers(&dec, &full, Isolate::Fixed(k)).unwrap();
        let before = logits(&dec, &ids, &mut KvCache::default());
        let after = logits(&iso, &ids, &mut KvCache::default());
        assert_close(&cfg.model_type, &after, &before, 1e-5, 1e-4);
        let moved = input_abs_max(&iso, std::slice::from_ref(&batch)).unwrap();
        for i in 0..cfg.num_hidden_layers {
            let name = format!("model.layers.{i}.mlp.down_proj");
            let (a, b) = (&full[&name].abs_max, &moved[&name]);
            let mut sorted = a.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let head_min = b[..k].iter().fold(f32::MAX, |m, &v| m.min(v));
            let rest_max = b[k..].iter().fold(0f32, |m, &v| m.max(v));
            // Later layers see their inputs through permuted sums: equal up to rounding.
            assert!(
                head_min >= rest_max * (1.0 - 1e-4),
                "{name}: {head_min} < {rest_max}"
            );
            assert!(
                (head_min - sorted[k - 1]).abs() <= 1e-4 * sorted[k - 1],
                "{name}: {head_min} vs {}",
                sorted[k - 1]
            );
            assert_eq!(iso.isolated[&name], k);
        }
        // The automatic rule isolates per layer what a kappa range of the rest would clip.
        let rule = Isolate::Auto { cap: 8, kappa: 2.0 };
        let auto = isolate_mlp_outliers(&dec, &full, rule).unwrap();
        let after = logits(&auto, &ids, &mut KvCache::default());
        assert_close(&cfg.model_type, &after, &before, 1e-5, 1e-4);
        for i in 0..cfg.num_hidden_layers {
            let name = format!("model.layers.{i}.mlp.down_proj");
            let st = &full[&name];
            let want = afm::train::outliers::auto_count(&st.abs_max, &st.mean_sq(), 2.0, 8);
            assert_eq!(
                auto.isolated.get(&name).copied().unwrap_or(0),
                want,
                "{name}"
            );
        }
        assert!(!auto.isolated.is_empty(), "kappa 2 isolated nothing");
        let chip = program_chip(&iso, &preset, 0, false).unwrap();
        let Projection::Analog(a) = &chip.blocks[0].down else {
            panic!("down_proj not analog")
        };
        let n = cfg.intermediate_size;
        assert_eq!(a.layer.map.row_blocks[0], (0, k));
        assert_eq!(a.layer.map.row_blocks.iter().map(|b| b.1).sum::<usize>(), n);
        let Projection::Analog(o) = &chip.blocks[0].o else {
            panic!("o_proj not analog")
        };
        assert_ne!(o.layer.map.row_blocks[0], (0, k));
        let err = isolate_mlp_outliers(&dec, &Default::default(), Isolate::Fixed(2)).unwrap_err();
        assert!(err.to_string().contains("no input statistics"), "{err}");
    }
}

/// Permuting the residual stream keeps the function, puts the channels with the largest
/// relative inputs first, and maps them onto a head block of every projection that reads the
/// stream; it composes with down_proj's isolation. Grouped-query Llama and fused Phi-3.
#[test]
fn isolating_residual_outliers_keeps_the_function_and_maps_head_blocks() {
    use afm::executor::linear::Projection;
    use afm::executor::load::program_chip;
    use afm::train::outliers::{
        isolate_mlp_outliers, isolate_residual_outliers, residual_outlier_order, Isolate,
    };
    use afm::train::smooth::input_stats;
    let preset = TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    for text in [TINY_LLAMA, TINY_PHI3] {
        let (cfg, dec, ids, batch, full) = tiny_with_stats(text);
        let k = 4;
        let iso = isolate_residual_outliers(&dec, &full, k).unwrap();
        let both = isolate_mlp_outliers(&iso, &full, Isolate::Fixed(3)).unwrap();
        let before = logits(&dec, &ids, &mut KvCache::default());
        for (label, m) in [("residual", &iso), ("residual + mlp", &both)] {
            let after = logits(m, &ids, &mut KvCache::default());
            assert_close(
                &format!("{} {label}", cfg.model_type),
                &after,
                &before,
                1e-5,
                1e-4,
            );
        }
        // The chosen channels now lead, in the order of the original stream.
        let mut want = residual_outlier_order(&full, cfg.hidden_size).unwrap();
        want.truncate(k);
        let moved = input_stats(&iso, std::slice::from_ref(&batch)).unwrap();
        let mut got = residual_outlier_order(&moved, cfg.hidden_size).unwrap();
        got.truncate(k);
        got.sort_unstable();
        assert_eq!(got, (0..k).collect::<Vec<_>>(), "{}", cfg.model_type);
        let readers = iso.isolated.keys().cloned().collect::<Vec<_>>();
        assert!(readers.contains(&"lm_head".to_string()), "{readers:?}");
        assert!(
            readers
                .iter()
                .all(|n| !n.ends_with("o_proj") && !n.ends_with("down_proj")),
            "{readers:?}"
        );
        assert!(readers.iter().all(|n| iso.isolated[n] == k));
        assert_eq!(both.isolated["model.layers.0.mlp.down_proj"], 3);
        let chip = program_chip(&both, &preset, 0, false).unwrap();
        let first = |p: &Projection| match p {
            Projection::Analog(a) => a.layer.map.row_blocks[0],
            _ => panic!("not analog"),
        };
        let qkv = match &chip.blocks[1].qkv {
            afm::executor::decoder::Qkv::Separate { q, .. } => q,
            afm::executor::decoder::Qkv::Fused(f) => f,
        };
        assert_eq!(first(qkv), (0, k));
        assert_eq!(first(&chip.lm_head), (0, k));
        assert_eq!(first(&chip.blocks[1].down), (0, 3));
        assert_ne!(first(&chip.blocks[1].o), (0, k));
        for bad in [0, cfg.hidden_size] {
            let e = isolate_residual_outliers(&dec, &full, bad).unwrap_err();
            assert!(e.to_string().contains("residual stream"), "{e}");
        }
    }
}

/// W (out, in) programmed as chip 0 of `preset`, calibrated by `rule` (None: the default) on
/// x: its ranges and its output for x.
pub fn calibrated(
    preset: &TilePreset,
    w: &Tensor,
    x: &Tensor,
    rule: Option<afm::executor::linear::Calibration>,
) -> (Vec<f32>, Tensor) {
    use afm::executor::linear::Projection;
    let p = Projection::digital(w.clone(), None)
        .to_analog(preset, 0, "p", Default::default())
        .unwrap();
    if let Some(r) = rule {
        p.set_calibration(r);
    }
    let y = p.forward(x).unwrap();
    match &p {
        Projection::Analog(a) => (a.ranges.read().unwrap().clone(), y),
        _ => unreachable!(),
    }
}

#[test]
fn kappa_calibration_sets_ranges_to_kappa_times_the_block_std() {
    use afm::executor::linear::Calibration;
    let preset = TilePreset::load(&repo("tiles/afm-paper.toml")).unwrap();
    // 600 inputs on 512-row tiles: two blocks of 300.
    let (out, inp, tokens) = (8, 600, 5);
    let w = Tensor::from_vec(normals(31, out * inp, 0.1), (out, inp), &Device::Cpu).unwrap();
    let mut xv = normals(32, tokens * inp, 1.0);
    // One outlier input in the first block: its abs-max range is 40, its std barely moves.
    xv[7] = 40.0;
    let x = Tensor::from_vec(xv.clone(), (tokens, inp), &Device::Cpu).unwrap();
    let ranges = |kappa: Option<f32>| calibrated(&preset, &w, &x, kappa.map(Calibration::Kappa)).0;
    let by_hand = |start: usize| {
        let v: Vec<f64> = (0..tokens)
            .flat_map(|t| xv[t * inp + start..t * inp + start + 300].to_vec())
            .map(f64::from)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        var.sqrt() as f32
    };
    let want: Vec<f32> = [0, 300].iter().map(|&s| 3.0 * by_hand(s)).collect();
    assert_close("kappa 3 ranges", &ranges(Some(3.0)), &want, 0.0, 1e-5);
    assert_eq!(ranges(None)[0], 40.0, "abs-max stays the default");
    assert!(
        want[0] < 10.0,
        "the outlier is clipped at kappa 3: {want:?}"
    );
}

/// MSE calibration on a layer whose first block has one outlier input: every range is one of
/// the candidates (abs-max / 2^(k/2)), the outlier block's is narrower than its abs-max, and the
/// chip's whole output (noise-free tiles) is closer to the digital product than with abs-max
/// ranges.
#[test]
fn mse_calibration_picks_ranges_with_less_output_error() {
    use afm::executor::linear::Calibration;
    let preset = TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    let (out, inp, tokens) = (64, 600, 32);
    let w = Tensor::from_vec(normals(41, out * inp, 0.1), (out, inp), &Device::Cpu).unwrap();
    let mut xv = normals(42, tokens * inp, 1.0);
    xv[7] = 40.0;
    let x = Tensor::from_vec(xv.clone(), (tokens, inp), &Device::Cpu).unwrap();
    let exact = x.matmul(&w.t().unwrap()).unwrap();
    let run = |rule: Calibration| {
        let (ranges, y) = calibrated(&preset, &w, &x, Some(rule));
        let err = (y - &exact)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (ranges, err)
    };
    let (abs_max, err_abs_max) = run(Calibration::AbsMax);
    let (mse, err_mse) = run(Calibration::Mse);
    for (s, (&m, &a)) in mse.iter().zip(&abs_max).enumerate() {
        let k = 2.0 * (a / m).log2();
        assert!(
            (k - k.round()).abs() < 1e-3 && (0.0..=12.0).contains(&k.round()),
            "block {s}: range {m} is not abs-max {a} / 2^(k/2)"
        );
    }
    assert_eq!(abs_max[0], 40.0);
    assert!(
        mse[0] < 40.0,
        "the outlier block keeps its abs-max: {mse:?}"
    );
    // Measured: 268 against 385 (0.70).
    assert!(
        err_mse < 0.8 * err_abs_max,
        "output error: mse ranges {err_mse}, abs-max ranges {err_abs_max}"
    );
}

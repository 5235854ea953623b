//! Rotating the residual stream (`train::rotate`): orthogonal, exact, and it flattens outliers.

use crate::common::assert_close;
use crate::executor::{logits, random_weights, TINY_LLAMA, TINY_PHI3};
use afm::executor::config::HfConfig;
use afm::executor::decoder::KvCache;
use afm::executor::llama;
use afm::train::rotate::{orthogonal, rotate};
use candle_core::{Device, Tensor};
use std::path::Path;

/// Q Q^T = I for a power of two, a mixed size and SmolLM2's 576 (9 x 64); another seed gives
/// another matrix.
#[test]
fn rotation_matrices_are_orthogonal() {
    for n in [1, 8, 24, 576] {
        let q = orthogonal(n, 7);
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let d: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        assert!(worst < 1e-12, "n = {n}: |Q Q^T - I| up to {worst}");
    }
    assert_ne!(orthogonal(24, 7), orthogonal(24, 8));
}

/// The largest |x| over the largest column rms of each input of layer 0's q_proj (qkv_proj).
fn peak_over_rms(dec: &afm::executor::decoder::Decoder, batch: &Tensor) -> f64 {
    let stats = afm::train::smooth::input_stats(dec, std::slice::from_ref(batch)).unwrap();
    let s = stats
        .iter()
        .find(|(k, _)| k.starts_with("model.layers.0.self_attn.q") && !k.ends_with("o_proj"))
        .map(|(_, v)| v)
        .unwrap();
    let peak = s.abs_max.iter().fold(0f32, |a, &b| a.max(b)) as f64;
    let rms = (s.mean_sq().iter().sum::<f64>() / s.abs_max.len() as f64).sqrt();
    peak / rms
}

/// The rotated model computes the same logits (grouped-query Llama and fused Phi-3), its norm
/// gains are 1 and its lm_head is untied; a residual channel 30x the others, which dominates
/// the attention inputs' peak, is spread over all of them.
#[test]
fn rotation_keeps_the_function_and_spreads_an_outlier_channel() {
    for text in [TINY_LLAMA, TINY_PHI3] {
        let cfg = HfConfig::parse(text, Path::new("config.json")).unwrap();
        let mut dec = llama::build(cfg.clone(), &random_weights(&cfg, 4)).unwrap();
        // An outlier channel in the stream: embedding column 3 scaled up.
        let mut scale = vec![1f32; cfg.hidden_size];
        scale[3] = 30.0;
        let s = Tensor::from_slice(&scale, (1, cfg.hidden_size), &Device::Cpu).unwrap();
        dec.embed = dec.embed.broadcast_mul(&s).unwrap();
        let ids: Vec<u32> = (0..24u32).map(|k| (k * 13 + 1) % 64).collect();
        let batch = Tensor::from_slice(&ids, (2, 12), &Device::Cpu).unwrap();
        let before = logits(&dec, &ids, &mut KvCache::default());
        let r = rotate(&dec, 11).unwrap();
        let after = logits(&r, &ids, &mut KvCache::default());
        assert_close(&cfg.model_type, &after, &before, 1e-4, 1e-3);
        assert!(!r.cfg.tie_word_embeddings);
        let gains = r.blocks[0].input_norm.to_vec1::<f32>().unwrap();
        assert!(
            gains.iter().all(|&g| g == 1.0),
            "input norm gains {gains:?}"
        );
        let (p0, p1) = (peak_over_rms(&dec, &batch), peak_over_rms(&r, &batch));
        assert!(
            p1 < 0.5 * p0,
            "{}: peak / rms {p0:.2} before, {p1:.2} after the rotation",
            cfg.model_type
        );
    }
}

//! Rotating the residual stream before analog training (the rotations of QuaRot and SpinQuant,
//! used here for tiles).
//!
//! A few residual-stream channels of an LLM carry values tens of times larger than the rest, so
//! one DAC range per row block must cover them and every other input, and the ADC whose bound
//! grows with that range, resolves a typical output with a few steps. An orthogonal Q applied to
//! the stream spreads those channels' energy over all channels. It folds exactly into the weights:
//! RMSNorm commutes with Q once its gain is folded into the projections that read the stream
//! (q/k/v, gate/up, lm_head: W diag(g) Q^T), and the writers take Q on their rows (embeddings,
//! o_proj, down_proj). Each attention head's values rotate too (v_proj's rows, o_proj's columns),
//! so o_proj's inputs lose their outliers as well. down_proj's inputs pass a nonlinearity and
//! stay as they are (`train::outliers` isolates theirs).

use crate::error::{Error, Result};
use crate::executor::decoder::{Block, Decoder, GateUp, Qkv};
use crate::executor::linear::Projection;
use crate::rng::{name_hash, Effect, StreamKey};
use crate::train::smooth::digital_parts;
use candle_core::{DType, Device, Tensor};

/// An n x n orthogonal matrix (row-major, f64) from `seed`: (R_m kron H_p) diag(s), where
/// n = m p with p the largest power of two dividing n, H_p the normalized Walsh-Hadamard
/// matrix, R_m a random orthogonal matrix (Gram-Schmidt of a Gaussian one; 1 when m = 1) and s
/// random signs. Every column of H_p has entries of magnitude 1/sqrt(p), so a single large
/// channel spreads evenly over the power-of-two factor, the best case a rotation can reach.
pub fn orthogonal(n: usize, seed: u64) -> Vec<f64> {
    let p = 1usize << n.trailing_zeros();
    let m = n / p;
    let key = StreamKey::new(seed, name_hash("rotate"), n as u64, Effect::Data);
    let mut rng = key.rng(0);
    let mut r: Vec<f64> = (0..m * m).map(|_| rng.normal_f64()).collect();
    // Modified Gram-Schmidt on the rows; a Gaussian matrix is full rank with probability 1.
    for i in 0..m {
        for j in 0..i {
            let d: f64 = (0..m).map(|k| r[i * m + k] * r[j * m + k]).sum();
            for k in 0..m {
                r[i * m + k] -= d * r[j * m + k];
            }
        }
        let norm = (0..m).map(|k| r[i * m + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..m {
            r[i * m + k] /= norm;
        }
    }
    let signs: Vec<f64> = (0..n)
        .map(|_| if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 })
        .collect();
    let h = 1.0 / (p as f64).sqrt();
    let mut q = vec![0f64; n * n];
    for a in 0..m {
        for b in 0..p {
            for c in 0..m {
                for d in 0..p {
                    let sign = if (b & d).count_ones() % 2 == 0 { h } else { -h };
                    let col = c * p + d;
                    q[(a * p + b) * n + col] = r[a * m + c] * sign * signs[col];
                }
            }
        }
    }
    q
}

/// A copy of `model` whose residual stream is rotated by [`orthogonal`]`(hidden, seed)` and whose
/// heads' values are rotated by `orthogonal(head_dim, seed + 1)`: the same function up to float
/// rounding, with every norm gain 1 and an untied lm_head. `model` must be digital and not yet
/// have isolated outliers (rotate first, then isolate).
pub fn rotate(model: &Decoder, seed: u64) -> Result<Decoder> {
    if !model.isolated.is_empty() {
        return Err(Error::Value(
            "rotation needs the model before its outliers are isolated (rotate first)".into(),
        ));
    }
    let c = &model.cfg;
    let dev = model.device();
    let (nh, nkv, hd, n) = (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.hidden_size,
    );
    let q = matrix(&orthogonal(n, seed), n, dev)?;
    let head = orthogonal(hd, seed.wrapping_add(1));
    // The value rotation of every kv head (v_proj's rows) and of every query head (o_proj's
    // columns): one block per head, the same block for a kv head and the query heads reading it.
    let vq = matrix(&block_diag(&head, hd, nkv), nkv * hd, dev)?;
    let oq = matrix(&block_diag(&head, hd, nh), nh * hd, dev)?;
    let mut blocks = Vec::with_capacity(model.blocks.len());
    for (i, b) in model.blocks.iter().enumerate() {
        let what = |s: &str| format!("model.layers.{i}.{s}");
        let reads = |p: &Projection, gain: &Tensor, s: &str| times_t(p, Some(gain), &q, &what(s));
        let qkv = match &b.qkv {
            Qkv::Separate { q: wq, k, v } => Qkv::Separate {
                q: reads(wq, &b.input_norm, "self_attn.q_proj")?,
                k: reads(k, &b.input_norm, "self_attn.k_proj")?,
                v: rotate_rows(
                    &reads(v, &b.input_norm, "self_attn.v_proj")?,
                    &vq,
                    0,
                    &what("self_attn.v_proj"),
                )?,
            },
            Qkv::Fused(f) => Qkv::Fused(rotate_rows(
                &reads(f, &b.input_norm, "self_attn.qkv_proj")?,
                &vq,
                (nh + nkv) * hd,
                &what("self_attn.qkv_proj"),
            )?),
        };
        let o = rotate_rows(
            &times_t(&b.o, None, &oq, &what("self_attn.o_proj"))?,
            &q,
            0,
            &what("self_attn.o_proj"),
        )?;
        let gate_up = match &b.gate_up {
            GateUp::Separate { gate, up } => GateUp::Separate {
                gate: reads(gate, &b.post_norm, "mlp.gate_proj")?,
                up: reads(up, &b.post_norm, "mlp.up_proj")?,
            },
            GateUp::Fused(f) => GateUp::Fused(reads(f, &b.post_norm, "mlp.gate_up_proj")?),
        };
        let down = rotate_rows(&b.down, &q, 0, &what("mlp.down_proj"))?;
        blocks.push(Block {
            input_norm: b.input_norm.ones_like()?,
            qkv,
            o,
            post_norm: b.post_norm.ones_like()?,
            gate_up,
            down,
        });
    }
    let lm_head = times_t(&model.lm_head, Some(&model.norm), &q, "lm_head")?;
    let embed = model
        .embed
        .to_dtype(DType::F32)?
        .matmul(&q.t()?)?
        .to_dtype(model.embed.dtype())?;
    let mut cfg = c.clone();
    cfg.tie_word_embeddings = false;
    Ok(Decoder::new(
        cfg,
        embed,
        blocks,
        model.norm.ones_like()?,
        lm_head,
    ))
}

/// An n x n f32 tensor of the row-major `v`.
fn matrix(v: &[f64], n: usize, dev: &Device) -> Result<Tensor> {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(f, (n, n), dev)?)
}

/// The block-diagonal matrix of `count` copies of the d x d block `b`, row-major.
fn block_diag(b: &[f64], d: usize, count: usize) -> Vec<f64> {
    let n = d * count;
    let mut out = vec![0f64; n * n];
    for k in 0..count {
        for i in 0..d {
            let row = (k * d + i) * n + k * d;
            out[row..row + d].copy_from_slice(&b[i * d..(i + 1) * d]);
        }
    }
    out
}

/// A projection whose inputs are rotated by `r`, after the norm gain that fed them when given:
/// W diag(gain) r^T (the readers of the stream), or W r^T (o_proj's heads).
fn times_t(p: &Projection, gain: Option<&Tensor>, r: &Tensor, what: &str) -> Result<Projection> {
    let (w, bias) = digital_parts(p, what)?;
    let mut w2 = w.to_dtype(DType::F32)?;
    if let Some(g) = gain {
        w2 = w2.broadcast_mul(&g.to_dtype(DType::F32)?.unsqueeze(0)?)?;
    }
    let w2 = w2.matmul(&r.t()?)?;
    Ok(Projection::digital(w2.to_dtype(w.dtype())?, bias.clone()))
}

/// A projection whose rows `start..start + r.rows` (and their bias) are rotated by `r`.
fn rotate_rows(p: &Projection, r: &Tensor, start: usize, what: &str) -> Result<Projection> {
    let (w, bias) = digital_parts(p, what)?;
    let (out, k) = (w.dims()[0], r.dims()[0]);
    if start + k > out {
        return Err(Error::Shape(format!(
            "`{what}`: rotating rows {start}..{} of {out}",
            start + k
        )));
    }
    let turn = |x: &Tensor| -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let mid = r.matmul(&x32.narrow(0, start, k)?)?;
        let mut parts = Vec::with_capacity(3);
        if start > 0 {
            parts.push(x32.narrow(0, 0, start)?);
        }
        parts.push(mid);
        if start + k < out {
            parts.push(x32.narrow(0, start + k, out - start - k)?);
        }
        Ok(Tensor::cat(&parts, 0)?.to_dtype(x.dtype())?)
    };
    let bias = match bias {
        Some(b) => Some(turn(&b.unsqueeze(1)?)?.squeeze(1)?),
        None => None,
    };
    Ok(Projection::digital(turn(w)?, bias))
}

//! Activation smoothing before analog training (SmoothQuant's equalization, for analog tiles).
//!
//! An LLM's projection inputs have a few columns far larger than the rest. One DAC range per row
//! block must cover them, so every other input uses a few of the DAC's levels, and the ADC, whose
//! bound grows with that range, resolves a typical output with a few steps. Dividing input column
//! i by s_i and multiplying weight column i by s_i leaves every product exact. The division folds
//! into whatever writes that column: the RMSNorm gain (q/k/v, gate/up, lm_head), the v_proj rows
//! (o_proj) or the up_proj rows (down_proj). The model computes the same function with flatter
//! inputs and taller weight columns, with s_i = max|x_i|^alpha / max|w_i|^(1 - alpha).

use crate::error::{Error, Result};
use crate::executor::decoder::{Block, Decoder, GateUp, KvCache, Qkv};
use crate::executor::linear::{ColumnStats, ProbeProjection, Projection};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// The statistics of every input column of every projection (HF name) of `model` over the
/// token batches `batches` (each batch x tokens), from an exact digital forward.
pub fn input_stats(model: &Decoder, batches: &[Tensor]) -> Result<BTreeMap<String, ColumnStats>> {
    let mut probes = model.map_projections(|name, p| match p {
        Projection::Digital { weight, bias } => Ok(Projection::Probe(Box::new(ProbeProjection {
            weight: weight.clone(),
            bias: bias.clone(),
            stats: Default::default(),
        }))),
        _ => Err(Error::Value(format!(
            "projection `{name}` is not digital; input statistics need the plain model"
        ))),
    })?;
    for ids in batches {
        probes.forward(ids, &mut KvCache::default())?;
    }
    let mut out = BTreeMap::new();
    for (name, p) in probes.projections_mut() {
        if let Projection::Probe(p) = p {
            let m = p
                .stats
                .lock()
                .map_err(|_| Error::Value(format!("probe `{name}`: lock poisoned")))?;
            out.insert(name, m.clone());
        }
    }
    Ok(out)
}

/// The largest |x| per input column of every projection ([`input_stats`]).
pub fn input_abs_max(model: &Decoder, batches: &[Tensor]) -> Result<BTreeMap<String, Vec<f32>>> {
    Ok(input_stats(model, batches)?
        .into_iter()
        .map(|(k, v)| (k, v.abs_max))
        .collect())
}

/// The smoothing factor per column: max|x|^alpha / max|w|^(1 - alpha), 1 where either is 0.
pub fn factors(x_max: &[f32], w_max: &[f32], alpha: f64) -> Vec<f32> {
    x_max
        .iter()
        .zip(w_max)
        .map(|(&a, &b)| {
            let s = (a as f64).powf(alpha) / (b as f64).powf(1.0 - alpha);
            if a > 0.0 && b > 0.0 && s.is_finite() && s > 0.0 {
                s as f32
            } else {
                1.0
            }
        })
        .collect()
}

/// A copy of `model` with every projection's inputs smoothed by `alpha` (0..=1) using the input
/// statistics `stats` of [`input_abs_max`]; lm_head too when `lm_head` (a digital, possibly tied
/// lm_head should stay as it is). Exact in real arithmetic: the logits change only by rounding.
pub fn smooth(
    model: &Decoder,
    stats: &BTreeMap<String, Vec<f32>>,
    alpha: f64,
    lm_head: bool,
) -> Result<Decoder> {
    smooth_only(model, stats, alpha, lm_head, &|_| true)
}

/// [`smooth`] for the projections (HF names) where `pick` holds; the others keep their inputs
/// and weights (factor 1). Smoothing only down_proj, say, trades its inputs' range against
/// its weights' rows alone (`afm eval --smooth A --smooth-layers down_proj`).
pub fn smooth_only(
    model: &Decoder,
    stats: &BTreeMap<String, Vec<f32>>,
    alpha: f64,
    lm_head: bool,
    pick: &dyn Fn(&str) -> bool,
) -> Result<Decoder> {
    let c = &model.cfg;
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let stat = |name: &str| {
        stats
            .get(name)
            .ok_or_else(|| Error::Value(format!("no smoothing statistics for `{name}`")))
    };
    let fac = |name: &str, x_max: &[f32], w_max: &[f32]| {
        if pick(name) {
            factors(x_max, w_max, alpha)
        } else {
            vec![1.0; w_max.len()]
        }
    };
    let mut blocks = Vec::with_capacity(model.blocks.len());
    for (i, b) in model.blocks.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        // Attention inputs: the norm gain gives, q/k/v (or qkv) columns take.
        let (input_norm, mut qkv) = match &b.qkv {
            Qkv::Separate { q, k, v } => {
                let w = [
                    dense(q, "q_proj")?,
                    dense(k, "k_proj")?,
                    dense(v, "v_proj")?,
                ];
                let name = n("self_attn.q_proj");
                let s = fac(&name, stat(&name)?, &col_max(&w)?);
                let q = scale_cols(q, &s)?;
                let k = scale_cols(k, &s)?;
                let v = scale_cols(v, &s)?;
                (div(&b.input_norm, &s)?, Qkv::Separate { q, k, v })
            }
            Qkv::Fused(f) => {
                let name = n("self_attn.qkv_proj");
                let s = fac(&name, stat(&name)?, &col_max(&[dense(f, "qkv_proj")?])?);
                (div(&b.input_norm, &s)?, Qkv::Fused(scale_cols(f, &s)?))
            }
        };
        // o_proj's input column (head h, dim d) is v's row (group of h, d): one factor per
        // value row, shared by the query heads of its group.
        let wo = dense(&b.o, "o_proj")?;
        let o_name = n("self_attn.o_proj");
        let (xo, wo_max) = (stat(&o_name)?, col_max(&[wo])?);
        let rep = nh / nkv.max(1);
        let group_max = |v: &[f32], g: usize, d: usize| {
            (0..rep).fold(0f32, |m, r| m.max(v[(g * rep + r) * hd + d]))
        };
        let mut sv = vec![1f32; nkv * hd];
        for g in 0..nkv {
            for d in 0..hd {
                sv[g * hd + d] =
                    fac(&o_name, &[group_max(xo, g, d)], &[group_max(&wo_max, g, d)])[0];
            }
        }
        let so: Vec<f32> = (0..nh * hd)
            .map(|j| sv[(j / hd / rep) * hd + j % hd])
            .collect();
        let o = scale_cols(&b.o, &so)?;
        qkv = match qkv {
            Qkv::Separate { q, k, v } => Qkv::Separate {
                q,
                k,
                v: div_rows(&v, &sv, 0)?,
            },
            Qkv::Fused(f) => Qkv::Fused(div_rows(&f, &sv, (nh + nkv) * hd)?),
        };
        // MLP: the norm gain feeds gate/up; up's rows feed down_proj's columns.
        let wd = dense(&b.down, "down_proj")?;
        let d_name = n("mlp.down_proj");
        let sd = fac(&d_name, stat(&d_name)?, &col_max(&[wd])?);
        let down = scale_cols(&b.down, &sd)?;
        let (post_norm, gate_up) = match &b.gate_up {
            GateUp::Separate { gate, up } => {
                let w = [dense(gate, "gate_proj")?, dense(up, "up_proj")?];
                let g_name = n("mlp.gate_proj");
                let s = fac(&g_name, stat(&g_name)?, &col_max(&w)?);
                let gate = scale_cols(gate, &s)?;
                let up = div_rows(&scale_cols(up, &s)?, &sd, 0)?;
                (div(&b.post_norm, &s)?, GateUp::Separate { gate, up })
            }
            GateUp::Fused(f) => {
                let name = n("mlp.gate_up_proj");
                let s = fac(&name, stat(&name)?, &col_max(&[dense(f, "gate_up_proj")?])?);
                let f = div_rows(&scale_cols(f, &s)?, &sd, c.intermediate_size)?;
                (div(&b.post_norm, &s)?, GateUp::Fused(f))
            }
        };
        blocks.push(Block {
            input_norm,
            qkv,
            o,
            post_norm,
            gate_up,
            down,
        });
    }
    let (norm, head) = if lm_head {
        let s = fac(
            "lm_head",
            stat("lm_head")?,
            &col_max(&[dense(&model.lm_head, "lm_head")?])?,
        );
        (div(&model.norm, &s)?, scale_cols(&model.lm_head, &s)?)
    } else {
        (model.norm.clone(), model.lm_head.clone_digital("lm_head")?)
    };
    Ok(Decoder::new(
        c.clone(),
        model.embed.clone(),
        blocks,
        norm,
        head,
    ))
}

/// The weight and bias of a digital projection (smoothing and `train::rotate` transform only
/// the plain model).
pub(super) fn digital_parts<'a>(
    p: &'a Projection,
    what: &str,
) -> Result<(&'a Tensor, &'a Option<Tensor>)> {
    match p {
        Projection::Digital { weight, bias } => Ok((weight, bias)),
        _ => Err(Error::Value(format!(
            "{what} is not digital; smoothing and rotation apply to the plain model"
        ))),
    }
}

/// The weight of a digital projection.
fn dense<'a>(p: &'a Projection, what: &str) -> Result<&'a Tensor> {
    Ok(digital_parts(p, what)?.0)
}

/// max over rows of |w| per column, over several matrices with the same columns.
fn col_max(ws: &[&Tensor]) -> Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::new();
    for w in ws {
        let m = w.to_dtype(DType::F32)?.abs()?.max(0)?.to_vec1::<f32>()?;
        if out.is_empty() {
            out = m;
        } else {
            out.iter_mut().zip(m).for_each(|(a, b)| *a = a.max(b));
        }
    }
    Ok(out)
}

/// `x` (vector) divided elementwise by `s`, in its own dtype.
fn div(x: &Tensor, s: &[f32]) -> Result<Tensor> {
    let s = Tensor::from_slice(s, s.len(), x.device())?;
    Ok((x.to_dtype(DType::F32)? / s)?.to_dtype(x.dtype())?)
}

/// A digital projection with weight column j multiplied by `s[j]`.
fn scale_cols(p: &Projection, s: &[f32]) -> Result<Projection> {
    let Projection::Digital { weight, bias } = p else {
        return Err(Error::Value("smoothing needs digital projections".into()));
    };
    let s = Tensor::from_slice(s, (1, s.len()), weight.device())?;
    let w = weight.to_dtype(DType::F32)?.broadcast_mul(&s)?;
    Ok(Projection::digital(
        w.to_dtype(weight.dtype())?,
        bias.clone(),
    ))
}

/// A digital projection with rows `start..start + s.len()` (and their bias) divided by `s`.
fn div_rows(p: &Projection, s: &[f32], start: usize) -> Result<Projection> {
    let Projection::Digital { weight, bias } = p else {
        return Err(Error::Value("smoothing needs digital projections".into()));
    };
    let out = weight.dims()[0];
    if start + s.len() > out {
        return Err(Error::Shape(format!(
            "smoothing rows {start}..{} of a projection with {out} rows",
            start + s.len()
        )));
    }
    let mut r = vec![1f32; out];
    r[start..start + s.len()].copy_from_slice(s);
    let rt = Tensor::from_slice(&r, (out, 1), weight.device())?;
    let w = (weight.to_dtype(DType::F32)?.broadcast_div(&rt))?.to_dtype(weight.dtype())?;
    let bias = match bias {
        Some(b) => Some(div(b, &r)?),
        None => None,
    };
    Ok(Projection::digital(w, bias))
}

//! Isolating the MLP's outlier channels in a row block of their own.
//!
//! On some tokens a few of down_proj's inputs (SwiGLU products) are hundreds of times larger
//! than the rest. One static DAC range per row block either clips them, and the model loses what
//! it depends on, or covers them, and the block's other inputs get a few of the DAC's levels.
//! Permuting the intermediate channels is exact (gate/up rows and down_proj's columns move
//! together), so the mapping can put the outliers first, in a short row block with its own
//! range and ADC bound, and leave the other blocks tight ranges. It costs one more row of tiles
//! per down_proj.
//!
//! The residual stream's channels permute exactly too, all layers at once (the embedding's
//! columns, the norms' weights, the columns of every projection that reads the stream and the
//! rows of those that write it): [`isolate_residual_outliers`] puts the channels with the
//! largest inputs to q/k/v, gate/up and lm_head first, in a head block of those projections.

use crate::error::{Error, Result};
use crate::executor::decoder::{Block, Decoder, GateUp};
use crate::executor::linear::{ColumnStats, Projection};
use candle_core::Tensor;
use std::collections::BTreeMap;

/// The indices of the `k` largest values of `x_max` (ties to the lower index), ascending.
pub fn top_channels(x_max: &[f32], k: usize) -> Vec<usize> {
    let mut order = top_channels_by_size(x_max);
    order.truncate(k.min(x_max.len()));
    order.sort_unstable();
    order
}

/// The permutation that puts `first` (ascending, distinct, < n) in front of the other
/// channels, both groups in their original order.
fn front_permutation(n: usize, first: &[usize]) -> Vec<u32> {
    let mut chosen = vec![false; n];
    first.iter().for_each(|&i| chosen[i] = true);
    first
        .iter()
        .copied()
        .chain((0..n).filter(|&i| !chosen[i]))
        .map(|i| i as u32)
        .collect()
}

/// How many of down_proj's inputs each layer isolates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Isolate {
    /// The same K in every layer.
    Fixed(usize),
    /// Per layer, the fewest of the largest inputs, at most `cap`, such that none of those left
    /// exceeds `kappa` times their rms: whatever a kappa range of the rest would clip.
    Auto {
        /// Most inputs isolated per layer.
        cap: usize,
        /// The ranges' kappa.
        kappa: f64,
    },
}

impl Isolate {
    /// `k` in every layer, or with `auto` a count per layer of at most `k` for ranges of
    /// `kappa` ([`Isolate::Auto`]).
    pub fn new(k: usize, auto: bool, kappa: f64) -> Self {
        match auto {
            true => Isolate::Auto { cap: k, kappa },
            false => Isolate::Fixed(k),
        }
    }
}

/// [`Isolate::Auto`]'s count: the smallest k <= `cap` such that, with the k largest inputs (by
/// `abs_max`) taken out, the largest one left is at most kappa * sqrt(mean of `mean_sq` over
/// those left); `cap` when there is none.
pub fn auto_count(abs_max: &[f32], mean_sq: &[f64], kappa: f64, cap: usize) -> usize {
    let n = abs_max.len();
    let order = top_channels_by_size(abs_max);
    let mut rest: f64 = mean_sq.iter().sum();
    for (k, &i) in order
        .iter()
        .enumerate()
        .take(cap.min(n.saturating_sub(1)) + 1)
    {
        let range = kappa * (rest / (n - k) as f64).sqrt();
        if f64::from(abs_max[i]) <= range {
            return k;
        }
        rest -= mean_sq[i];
    }
    cap.min(n.saturating_sub(1))
}

/// Column indices by decreasing value (ties to the lower index).
fn top_channels_by_size(x: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    order
}

/// A copy of `model` whose MLPs have down_proj's largest inputs (by abs-max in the statistics
/// `stats` of [`crate::train::smooth::input_stats`], as many as `rule` says per layer) moved to
/// the front, and down_proj marked to map them onto a row block of their own
/// ([`Decoder::isolated`]; a layer with none isolated keeps the plain split). The function is
/// unchanged: every product stays exact.
pub fn isolate_mlp_outliers(
    model: &Decoder,
    stats: &BTreeMap<String, ColumnStats>,
    rule: Isolate,
) -> Result<Decoder> {
    let n = model.cfg.intermediate_size;
    let cap = match rule {
        Isolate::Fixed(k) => k,
        Isolate::Auto { cap, .. } => cap,
    };
    check_count(cap, n, "an MLP")?;
    let mut out = model.map_projections(|name, p| p.clone_digital(name))?;
    for (i, b) in out.blocks.iter_mut().enumerate() {
        let name = format!("model.layers.{i}.mlp.down_proj");
        let st = stats
            .get(&name)
            .ok_or_else(|| Error::Value(format!("no input statistics for `{name}`")))?;
        if st.abs_max.len() != n || st.sum_sq.len() != n {
            return Err(Error::Shape(format!(
                "`{name}`: statistics for {} inputs, the MLP has {n}",
                st.abs_max.len()
            )));
        }
        let k = match rule {
            Isolate::Fixed(k) => k,
            Isolate::Auto { cap, kappa } => auto_count(&st.abs_max, &st.mean_sq(), kappa, cap),
        };
        if k == 0 {
            continue;
        }
        let perm = front_permutation(n, &top_channels(&st.abs_max, k));
        permute(b, &perm, n)?;
        out.isolated.insert(name, k);
    }
    Ok(out)
}

/// Whether projection `name` (HF name) reads the residual stream (its inputs are hidden
/// channels, after a norm), or else writes it (o_proj, down_proj).
fn reads_residual(name: &str) -> bool {
    !(name.ends_with("o_proj") || name.ends_with("down_proj"))
}

/// The residual-stream channels ordered by their largest input to any projection that reads
/// the stream, relative to that projection's input rms; largest first (ties to the lower index).
pub fn residual_outlier_order(
    stats: &BTreeMap<String, ColumnStats>,
    hidden: usize,
) -> Result<Vec<usize>> {
    let mut score = vec![0f32; hidden];
    let mut seen = 0;
    for (name, st) in stats.iter().filter(|(n, _)| reads_residual(n)) {
        if st.abs_max.len() != hidden {
            return Err(Error::Shape(format!(
                "`{name}`: statistics for {} inputs, the residual stream has {hidden}",
                st.abs_max.len()
            )));
        }
        let ms = st.mean_sq();
        let rms = (ms.iter().sum::<f64>() / hidden.max(1) as f64).sqrt() as f32;
        if rms > 0.0 {
            for (s, &m) in score.iter_mut().zip(&st.abs_max) {
                *s = s.max(m / rms);
            }
            seen += 1;
        }
    }
    if seen == 0 {
        return Err(Error::Value(
            "no input statistics of a projection that reads the residual stream".into(),
        ));
    }
    Ok(top_channels_by_size(&score))
}

/// `model` (digital projections) with its residual stream permuted so that the `k` channels of
/// [`residual_outlier_order`] come first, and every projection that reads the stream marked
/// with `k` isolated inputs ([`Decoder::isolated`], added to those already there). The function
/// is unchanged: every sum is the same up to float rounding.
pub fn isolate_residual_outliers(
    model: &Decoder,
    stats: &BTreeMap<String, ColumnStats>,
    k: usize,
) -> Result<Decoder> {
    let n = model.cfg.hidden_size;
    check_count(k, n, "a residual stream")?;
    let mut first = residual_outlier_order(stats, n)?;
    first.truncate(k);
    first.sort_unstable();
    let perm = front_permutation(n, &first);
    let idx = Tensor::from_slice(&perm, n, model.device())?;
    let mut readers = Vec::new();
    let mut out = model.map_projections(|name, p| {
        let reads = reads_residual(name);
        if reads {
            readers.push(name.to_string());
        }
        select(p, &idx, usize::from(reads))
    })?;
    out.embed = out.embed.index_select(&idx, 1)?.contiguous()?;
    out.norm = out.norm.index_select(&idx, 0)?;
    for b in &mut out.blocks {
        b.input_norm = b.input_norm.index_select(&idx, 0)?;
        b.post_norm = b.post_norm.index_select(&idx, 0)?;
    }
    out.isolated
        .extend(readers.into_iter().map(|name| (name, k)));
    Ok(out)
}

/// Both isolations on one set of statistics of `model` (the residual permutation leaves
/// down_proj's inputs, the MLP's channels, as they were): the residual stream's `residual`
/// largest channels (0: none), then down_proj's by `mlp` (None: none); at least one of them.
pub fn isolate_outliers(
    model: &Decoder,
    stats: &BTreeMap<String, ColumnStats>,
    residual: usize,
    mlp: Option<Isolate>,
) -> Result<Decoder> {
    let mut out = None;
    if residual > 0 {
        out = Some(isolate_residual_outliers(model, stats, residual)?);
    }
    if let Some(rule) = mlp {
        out = Some(isolate_mlp_outliers(
            out.as_ref().unwrap_or(model),
            stats,
            rule,
        )?);
    }
    out.ok_or_else(|| Error::Value("isolating outliers: no residual channels, no MLP rule".into()))
}

/// `k` isolated channels of `n` (of `what`) must leave some behind.
fn check_count(k: usize, n: usize, what: &str) -> Result<()> {
    if k == 0 || k >= n {
        return Err(Error::Value(format!(
            "isolating {k} outlier channels of {what} with {n}: expected 1..{n}"
        )));
    }
    Ok(())
}

/// Applies the intermediate-channel permutation `perm` to one block's MLP.
fn permute(b: &mut Block, perm: &[u32], n: usize) -> Result<()> {
    let dev = b.post_norm.device().clone();
    let idx = Tensor::from_slice(perm, perm.len(), &dev)?;
    b.down = select(&b.down, &idx, 1)?;
    b.gate_up = match &b.gate_up {
        GateUp::Separate { gate, up } => GateUp::Separate {
            gate: select(gate, &idx, 0)?,
            up: select(up, &idx, 0)?,
        },
        GateUp::Fused(f) => {
            // Rows are gate then up: the same permutation in both halves.
            let both: Vec<u32> = perm
                .iter()
                .copied()
                .chain(perm.iter().map(|&i| i + n as u32))
                .collect();
            let idx2 = Tensor::from_slice(&both, both.len(), &dev)?;
            GateUp::Fused(select(f, &idx2, 0)?)
        }
    };
    Ok(())
}

/// A digital projection with its weight's rows (`dim` 0, with the bias) or columns (`dim` 1)
/// taken in the order `idx`.
fn select(p: &Projection, idx: &Tensor, dim: usize) -> Result<Projection> {
    let Projection::Digital { weight, bias } = p else {
        return Err(Error::Value(
            "isolating outliers needs digital projections".into(),
        ));
    };
    let bias = match (bias, dim) {
        (Some(b), 0) => Some(b.index_select(idx, 0)?),
        (b, _) => b.clone(),
    };
    Ok(Projection::digital(
        weight.index_select(idx, dim)?.contiguous()?,
        bias,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_channels_ascending() {
        assert_eq!(top_channels(&[1.0, 9.0, 3.0, 9.0, 0.5], 3), vec![1, 2, 3]);
        assert_eq!(top_channels(&[1.0, 2.0], 5), vec![0, 1]);
    }

    #[test]
    fn auto_count_isolates_what_the_rest_would_clip() {
        // 100 inputs of rms 1 and abs-max 3, two of abs-max 50 and 30 (rms 5).
        let mut m = vec![3f32; 100];
        let mut q = vec![1f64; 100];
        (m[7], m[40], q[7], q[40]) = (50.0, 30.0, 25.0, 25.0);
        // kappa 4: rest rms sqrt((98 + 50) / 100) = 1.22 -> 4.9 < 50; without 7: 1.11 -> 4.5
        // < 30; without both: 1 -> 4 >= 3.
        assert_eq!(auto_count(&m, &q, 4.0, 16), 2);
        assert_eq!(auto_count(&m, &q, 4.0, 1), 1);
        // kappa 50: even the largest fits the rest's range.
        assert_eq!(auto_count(&m, &q, 50.0, 16), 0);
    }

    #[test]
    fn front_permutation_keeps_order() {
        assert_eq!(front_permutation(6, &[1, 4]), vec![1, 4, 0, 2, 3, 5]);
    }
}

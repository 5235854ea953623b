//! AdamW with decoupled weight decay, global grad-norm clipping and a warmup + linear or
//! polynomial decay schedule. Its moments are plain tensors by variable name, so that a
//! checkpoint saves and restores them exactly.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Optimizer and schedule settings (DESIGN §3.4 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate (not given by DESIGN; our default).
    pub lr: f64,
    /// Adam beta1 [0.9].
    pub beta1: f64,
    /// Adam beta2 [0.98].
    pub beta2: f64,
    /// Adam epsilon [1e-6].
    pub eps: f64,
    /// Decoupled weight decay [0.01] (not applied to input ranges).
    pub weight_decay: f64,
    /// Global grad-norm clip [1.0] (0: off).
    pub grad_clip: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decay power after warmup: 1 linear, other values polynomial (to 0 at the last step).
    pub decay_power: f64,
    /// The input ranges' learning rate as a multiple of `lr` [1: one rate for all, as the
    /// release]. Adam moves every value by about the learning rate per step, so ranges of ~10
    /// move ~100x slower, relative to their size, than weights of ~0.1; short runs may want more.
    pub range_lr_scale: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 2e-5,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.01,
            grad_clip: 1.0,
            warmup_steps: 100,
            decay_power: 1.0,
            range_lr_scale: 1.0,
        }
    }
}

impl OptimConfig {
    /// Learning rate at `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let left = 1.0 - (step - self.warmup_steps) as f64 / span;
        self.lr * left.max(0.0).powf(self.decay_power)
    }

    /// Checks the values; errors name the field.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        for (f, v, lo, hi) in [
            ("lr", self.lr, 0.0, f64::INFINITY),
            ("beta1", self.beta1, 0.0, 1.0),
            ("beta2", self.beta2, 0.0, 1.0),
            ("eps", self.eps, 0.0, f64::INFINITY),
            ("weight_decay", self.weight_decay, 0.0, f64::INFINITY),
            ("grad_clip", self.grad_clip, 0.0, f64::INFINITY),
            ("decay_power", self.decay_power, 0.0, f64::INFINITY),
            ("range_lr_scale", self.range_lr_scale, 0.0, f64::INFINITY),
        ] {
            if !(v.is_finite() && v >= lo && v < hi) {
                return Err((f.into(), format!("must be in [{lo}, {hi}), got {v}")));
            }
        }
        Ok(())
    }
}

/// AdamW state: step count and first/second moments by variable name.
#[derive(Debug, Default)]
pub struct AdamW {
    /// Steps taken.
    pub t: u64,
    /// First moments.
    pub m: BTreeMap<String, Tensor>,
    /// Second moments.
    pub v: BTreeMap<String, Tensor>,
}

/// Elements per row of [`grad_norm`]'s sum: a whole-tensor sum is one thread block on CUDA,
/// ~10x slower than rows first.
const NORM_ROW: usize = 4096;

/// The global L2 norm of the gradients: all of them, in name order (so that the norm does not
/// depend on the map's iteration order), laid end to end in one vector padded with zeros to
/// whole rows, squared and summed by rows, then the rows: a handful of kernels and one wait for
/// the device, where a sum per tensor took three launches each (SmolLM2: 420 tensors).
pub fn grad_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let Some(first) = names.first() else {
        return Ok(0.0);
    };
    let dev = grads[*first].device().clone();
    let mut parts = names
        .iter()
        .map(|n| grads[*n].to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let len: usize = parts.iter().map(Tensor::elem_count).sum();
    let padded = len.next_multiple_of(NORM_ROW).max(NORM_ROW);
    if padded > len {
        parts.push(Tensor::zeros(padded - len, DType::F32, &dev)?);
    }
    let sum = Tensor::cat(&parts, 0)?
        .reshape((padded / NORM_ROW, NORM_ROW))?
        .sqr()?
        .sum(1)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(f64::from(sum).sqrt())
}

impl AdamW {
    /// One update of `vars` with `grads` times `scale` (the global-norm clip's factor, applied
    /// inside the update; 1: none) at learning rate `lr`; variables named `*.input_range` get no
    /// weight decay and `lr * range_lr_scale`.
    pub fn step(
        &mut self,
        cfg: &OptimConfig,
        vars: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        (lr, scale): (f64, f64),
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            let w = var.as_tensor();
            // A gradient still attached to a graph would hold that step's activations through
            // the moments into every later step.
            let g = g.detach();
            let (decay, lr) = if name.ends_with(".input_range") {
                (0.0, lr * cfg.range_lr_scale)
            } else {
                (cfg.weight_decay, lr)
            };
            let zeros = || w.zeros_like();
            let (m, v) = match (self.m.get(name), self.v.get(name)) {
                (Some(m), Some(v)) => (m.clone(), v.clone()),
                _ => (zeros()?, zeros()?),
            };
            let k = super::step_ops::AdamStep {
                b1,
                b2,
                ic1: 1.0 / c1,
                ic2: 1.0 / c2,
                eps: cfg.eps,
                lr,
                decay,
                scale,
            };
            let (m, v) = if super::step_ops::adamw_fusable(w, &m, &v, &g) {
                super::step_ops::adamw_update(w, &m, &v, &g, &k)?;
                (m, v)
            } else {
                let (next, m, v) = super::step_ops::adamw_reference(w, &m, &v, &g, &k)?;
                var.set(&next)?;
                (m, v)
            };
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The moments as one map for a safetensors file (`m.NAME`, `v.NAME`).
    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::to_tensors`] at step `t`.
    pub fn from_tensors(t: u64, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let mut a = AdamW {
            t,
            ..AdamW::default()
        };
        for (k, v) in tensors {
            if let Some(n) = k.strip_prefix("m.") {
                a.m.insert(n.to_string(), v);
            } else if let Some(n) = k.strip_prefix("v.") {
                a.v.insert(n.to_string(), v);
            } else {
                return Err(Error::Value(format!(
                    "optimizer state: unknown tensor `{k}`"
                )));
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn grad_norm_is_the_l2_norm_over_all_tensors_of_any_shape() {
        let dev = Device::Cpu;
        let mut grads = HashMap::new();
        // Ragged lengths across a row boundary, a scalar-like tensor and a matrix.
        let a: Vec<f32> = (0..5000).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let b: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let want = a
            .iter()
            .chain(&b)
            .chain(&[2.0f32])
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        grads.insert("a".to_string(), Tensor::from_vec(a, 5000, &dev).unwrap());
        grads.insert("b".to_string(), Tensor::from_vec(b, (3, 4), &dev).unwrap());
        grads.insert("c".to_string(), Tensor::new(&[2.0f32], &dev).unwrap());
        let got = grad_norm(&grads).unwrap();
        assert!((got - want).abs() < 1e-5 * want, "{got} against {want}");
        assert_eq!(grad_norm(&HashMap::new()).unwrap(), 0.0);
    }
}

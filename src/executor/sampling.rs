//! Choosing the next token: greedy, or temperature with top-k and top-p, from a seeded stream.

use crate::rng::Rng;

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set with this much probability (1: all).
    pub top_p: f32,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };

    /// Picks a token from one row of logits.
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                    if v > b.1 {
                        (i, v)
                    } else {
                        b
                    }
                })
                .0 as u32
        };
        if self.temperature <= 0.0 {
            return argmax();
        }
        let mut idx: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        if idx.is_empty() {
            return argmax();
        }
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.top_k > 0 {
            idx.truncate(self.top_k);
        }
        let top = logits[idx[0]];
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| f64::from((logits[i] - top) / self.temperature).exp())
            .collect();
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = p
                .iter()
                .position(|x| {
                    acc += x;
                    acc >= f64::from(self.top_p)
                })
                .map_or(p.len(), |k| k + 1);
            p.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = p.iter().sum();
        let mut u = f64::from(rng.uniform()) * total;
        for (k, x) in p.iter().enumerate() {
            u -= x;
            if u < 0.0 {
                return idx[k] as u32;
            }
        }
        idx[p.len() - 1] as u32
    }
}

//! CPU paths of the fused step ops: plain loops, rows in parallel (each row's arithmetic is the
//! same whatever the thread count).

use rayon::prelude::*;

/// Causal softmax of `x` (rows of `s` keys; row r is query r % t at position s - t + r % t).
pub fn causal_softmax(x: &[f32], t: usize, s: usize, scale: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let off = s - t;
    y.par_chunks_mut(s)
        .zip(x.par_chunks(s))
        .enumerate()
        .for_each(|(r, (yr, xr))| {
            let seen = r % t + off + 1;
            let m = xr[..seen]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
            let mut z = 0f32;
            for (yj, &xj) in yr[..seen].iter_mut().zip(xr) {
                *yj = (xj * scale - m).exp();
                z += *yj;
            }
            yr[..seen].iter_mut().for_each(|v| *v /= z);
        });
    y
}

/// Gradient of [`causal_softmax`]: scale * y * (g - sum(g * y)) per row.
pub fn causal_softmax_grad(y: &[f32], g: &[f32], s: usize, scale: f32) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    dx.par_chunks_mut(s)
        .zip(y.par_chunks(s).zip(g.par_chunks(s)))
        .for_each(|(dr, (yr, gr))| {
            let d: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yj), &gj) in dr.iter_mut().zip(yr).zip(gr) {
                *o = scale * (yj * (gj - d));
            }
        });
    dx
}

/// log-sum-exp of `x * inv_t`.
fn lse(x: &[f32], inv_t: f32) -> f32 {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * inv_t));
    let z: f32 = x.iter().map(|&v| (v * inv_t - m).exp()).sum();
    m + z.ln()
}

/// Per-row KL(softmax(t * inv_t) || softmax(s * inv_t)) over rows of `v` logits.
pub fn kl_rows(t: &[f32], s: &[f32], v: usize, inv_t: f32) -> Vec<f32> {
    t.par_chunks(v)
        .zip(s.par_chunks(v))
        .map(|(tr, sr)| {
            let (lt, ls) = (lse(tr, inv_t), lse(sr, inv_t));
            tr.iter()
                .zip(sr)
                .map(|(&a, &b)| {
                    let (a, b) = (a * inv_t - lt, b * inv_t - ls);
                    a.exp() * (a - b)
                })
                .sum()
        })
        .collect()
}

/// Gradient of [`kl_rows`] in the student's logits: g[r] * inv_t * (q - p).
pub fn kl_grad(t: &[f32], s: &[f32], g: &[f32], v: usize, inv_t: f32) -> Vec<f32> {
    let mut ds = vec![0f32; s.len()];
    ds.par_chunks_mut(v)
        .zip(t.par_chunks(v).zip(s.par_chunks(v)))
        .zip(g.par_iter())
        .for_each(|((dr, (tr, sr)), &gr)| {
            let (lt, ls) = (lse(tr, inv_t), lse(sr, inv_t));
            let k = gr * inv_t;
            for ((o, &a), &b) in dr.iter_mut().zip(tr).zip(sr) {
                *o = k * ((b * inv_t - ls).exp() - (a * inv_t - lt).exp());
            }
        });
    ds
}

/// m = m * b + g * one_b, or with `square` v = v * b + g^2 * one_b (AdamW's moments).
pub fn adam_moment(m: &mut [f32], g: &[f32], (b, one_b, scale): (f32, f32, f32), square: bool) {
    m.par_iter_mut().zip(g.par_iter()).for_each(|(m, &g)| {
        let g = g * scale;
        let g = if square { g * g } else { g };
        *m = *m * b + g * one_b;
    });
}

/// AdamW's weight-update constants, rounded to f32.
#[derive(Debug, Clone, Copy)]
pub struct AdamConsts {
    /// 1 - lr * decay.
    pub keep: f32,
    /// 1 / (1 - beta1^t).
    pub ic1: f32,
    /// 1 / (1 - beta2^t).
    pub ic2: f32,
    /// Epsilon.
    pub eps: f32,
    /// Learning rate.
    pub lr: f32,
}

/// w = w * keep - ((m * ic1) / (sqrt(v * ic2) + eps)) * lr.
pub fn adam_weights(w: &mut [f32], m: &[f32], v: &[f32], k: &AdamConsts) {
    w.par_iter_mut()
        .zip(m.par_iter().zip(v.par_iter()))
        .for_each(|(w, (&m, &v))| {
            let u = (m * k.ic1) / ((v * k.ic2).sqrt() + k.eps);
            *w = *w * k.keep - u * k.lr;
        });
}

/// RMSNorm of rows of `n` features: (x / sqrt(mean(x^2) + eps)) * w.
pub fn rms_norm(x: &[f32], w: &[f32], n: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(yr, xr)| {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let d = (ss / n as f32 + eps).sqrt();
            for ((o, &xj), &wj) in yr.iter_mut().zip(xr).zip(w) {
                *o = (xj / d) * wj;
            }
        });
    y
}

/// Gradient of [`rms_norm`]: dx, then g * x / d (whose sum over rows is dw), one after the other.
pub fn rms_norm_grad(x: &[f32], w: &[f32], g: &[f32], n: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; 2 * x.len()];
    let (dx, gx) = out.split_at_mut(x.len());
    dx.par_chunks_mut(n)
        .zip(gx.par_chunks_mut(n))
        .zip(x.par_chunks(n).zip(g.par_chunks(n)))
        .for_each(|((dr, hr), (xr, gr))| {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let d = (ss / n as f32 + eps).sqrt();
            let dot: f32 = xr.iter().zip(gr).zip(w).map(|((x, g), w)| w * g * x).sum();
            let k = dot / (n as f32 * d * d * d);
            for j in 0..n {
                dr[j] = (w[j] * gr[j]) / d - xr[j] * k;
                hr[j] = gr[j] * (xr[j] / d);
            }
        });
    out
}

/// Clips each row of `n` weights to +-alpha times its standard deviation (n - 1), in place.
pub fn clip_rows(w: &mut [f32], n: usize, alpha: f32) {
    w.par_chunks_mut(n).for_each(|r| {
        let mean = r.iter().sum::<f32>() / n as f32;
        let ss: f32 = r.iter().map(|v| (v - mean) * (v - mean)).sum();
        let lim = (ss / (n.max(2) - 1) as f32).sqrt() * alpha;
        r.iter_mut().for_each(|v| *v = v.min(lim).max(-lim));
    });
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// silu(a) * b element-wise.
pub fn swiglu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.par_iter()
        .zip(b.par_iter())
        .map(|(&a, &b)| a * sigmoid(a) * b)
        .collect()
}

/// Gradient of [`swiglu`]: da then db, one after the other.
pub fn swiglu_grad(a: &[f32], b: &[f32], g: &[f32]) -> Vec<f32> {
    let n = a.len();
    let mut out = vec![0f32; 2 * n];
    let (da, db) = out.split_at_mut(n);
    da.par_iter_mut()
        .zip(db.par_iter_mut())
        .enumerate()
        .for_each(|(i, (da, db))| {
            let s = sigmoid(a[i]);
            *da = g[i] * b[i] * (s + a[i] * s * (1.0 - s));
            *db = g[i] * (a[i] * s);
        });
    out
}

/// Rotary embedding of rows of `2h` (row r is token r % t) by the (t, h) tables, or by the
/// opposite angles with `inverse` (its backward).
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], t: usize, h: usize, inverse: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(2 * h)
        .zip(x.par_chunks(2 * h))
        .enumerate()
        .for_each(|(r, (yr, xr))| {
            let tok = r % t;
            for i in 0..h {
                let (c, s) = (cos[tok * h + i], sin[tok * h + i]);
                let s = if inverse { -s } else { s };
                yr[i] = xr[i] * c - xr[i + h] * s;
                yr[i + h] = xr[i + h] * c + xr[i] * s;
            }
        });
    y
}

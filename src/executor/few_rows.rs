//! Products of a few input rows by a weight matrix on the CPU: decoding's matmuls.
//!
//! A decode step multiplies one to a few token rows by every weight matrix; the time is that
//! of reading the weights. candle's gemm packs the whole weight matrix for any product of more
//! than one row, which made a step of 2-8 rows cost 2.5-4x a step of one. Here each weight row
//! is read once and dotted with every input row while it sits in L1, with the threads splitting
//! the weight rows. Each dot product sums 8 lanes in a fixed order and then the lanes pairwise,
//! without fused multiply-adds, so a result has the same bits whichever rows share the call,
//! however many threads run, and with or without AVX2.

use rayon::prelude::*;

/// Most input rows for which [`product`] is the faster path.
pub const MAX_ROWS: usize = 8;

/// Weight rows per parallel work item.
const CHUNK: usize = 64;

/// `x` (m x k, row-major) times the transpose of `w` (n x k, row-major): m x n, row-major.
pub fn product(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "few_rows::product: x is not m x k");
    assert_eq!(w.len(), n * k, "few_rows::product: w is not n x k");
    // Column-major (n x m) while computing, so that each work item writes one slice.
    let mut t = vec![0f32; n * m];
    if m > 0 {
        t.par_chunks_mut(CHUNK * m)
            .zip(w.par_chunks(CHUNK * k.max(1)))
            .for_each(|(out, w)| columns(x, m, w, k, out));
    }
    let mut y = vec![0f32; m * n];
    transpose_into(&t, m, n, &mut y);
    y
}

/// [`product`] on the calling thread, into `y` (m x n, row-major): for callers that split the
/// work over threads themselves (the analog MVM's column chunks).
pub fn product_serial(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "few_rows::product_serial: x is not m x k");
    assert_eq!(w.len(), n * k, "few_rows::product_serial: w is not n x k");
    assert_eq!(y.len(), m * n, "few_rows::product_serial: y is not m x n");
    let mut t = vec![0f32; n * m];
    if m > 0 {
        columns(x, m, w, k, &mut t);
    }
    transpose_into(&t, m, n, y);
}

/// `t` (n x m, column-major results) into `y` (m x n, row-major).
fn transpose_into(t: &[f32], m: usize, n: usize, y: &mut [f32]) {
    for (j, col) in t.chunks_exact(m.max(1)).enumerate().take(n) {
        for (r, &v) in col.iter().enumerate() {
            y[r * n + j] = v;
        }
    }
}

/// The plain triple loop with the same summation order as [`product`]: the reference its test
/// compares against.
pub fn product_reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            let (a, b) = (&x[r * k..(r + 1) * k], &w[j * k..(j + 1) * k]);
            let mut lanes = [0f32; 8];
            let body = k / 8 * 8;
            for i in 0..body {
                lanes[i % 8] += a[i] * b[i];
            }
            let mut s = reduce(lanes);
            for i in body..k {
                s += a[i] * b[i];
            }
            y[r * n + j] = s;
        }
    }
    y
}

fn columns(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { columns_avx2(x, m, w, k, out) };
        return;
    }
    columns_plain(x, m, w, k, out)
}

/// [`columns_plain`] in AVX2 registers: the same lanes, products and sums in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn columns_avx2(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let body = k / 8 * 8;
    let lanes = |v: __m256| {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        l
    };
    for (wr, o) in w.chunks_exact(k.max(1)).zip(out.chunks_exact_mut(m)) {
        let wp = wr.as_ptr();
        let mut r = 0;
        while r + 4 <= m {
            let xp = [0, 1, 2, 3].map(|i| x[(r + i) * k..].as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < body {
                let wv = _mm256_loadu_ps(wp.add(c));
                for i in 0..4 {
                    let p = _mm256_mul_ps(_mm256_loadu_ps(xp[i].add(c)), wv);
                    acc[i] = _mm256_add_ps(acc[i], p);
                }
                c += 8;
            }
            for i in 0..4 {
                let xr = &x[(r + i) * k..(r + i + 1) * k];
                o[r + i] = tail(reduce(lanes(acc[i])), &xr[body..], &wr[body..]);
            }
            r += 4;
        }
        for (r, o) in o.iter_mut().enumerate().skip(r) {
            let xr = &x[r * k..(r + 1) * k];
            let mut acc = _mm256_setzero_ps();
            let mut c = 0;
            while c < body {
                let p = _mm256_mul_ps(
                    _mm256_loadu_ps(xr.as_ptr().add(c)),
                    _mm256_loadu_ps(wp.add(c)),
                );
                acc = _mm256_add_ps(acc, p);
                c += 8;
            }
            *o = tail(reduce(lanes(acc)), &xr[body..], &wr[body..]);
        }
    }
}

/// Output columns for the weight rows `w`: `out[j * m + r]` = row r of x . row j of w.
#[inline(always)]
fn columns_plain(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    let body = k / 8 * 8;
    for (wr, o) in w.chunks_exact(k.max(1)).zip(out.chunks_exact_mut(m)) {
        let mut r = 0;
        while r + 4 <= m {
            let xs = [0, 1, 2, 3].map(|i| &x[(r + i) * k..(r + i + 1) * k]);
            let mut lanes = [[0f32; 8]; 4];
            for (c, wc) in wr[..body].chunks_exact(8).enumerate() {
                for (l, xr) in lanes.iter_mut().zip(&xs) {
                    let xc = &xr[c * 8..c * 8 + 8];
                    for i in 0..8 {
                        l[i] += xc[i] * wc[i];
                    }
                }
            }
            for (i, l) in lanes.into_iter().enumerate() {
                o[r + i] = tail(reduce(l), &xs[i][body..], &wr[body..]);
            }
            r += 4;
        }
        for (r, o) in o.iter_mut().enumerate().skip(r) {
            let xr = &x[r * k..(r + 1) * k];
            let mut l = [0f32; 8];
            for (xc, wc) in xr[..body].chunks_exact(8).zip(wr[..body].chunks_exact(8)) {
                for i in 0..8 {
                    l[i] += xc[i] * wc[i];
                }
            }
            *o = tail(reduce(l), &xr[body..], &wr[body..]);
        }
    }
}

/// The 8 lanes summed pairwise.
#[inline(always)]
fn reduce(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// `s` plus the products of the last k mod 8 elements, in order.
#[inline(always)]
fn tail(mut s: f32, a: &[f32], b: &[f32]) -> f32 {
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Effect, StreamKey};

    #[test]
    fn product_equals_reference_bit_for_bit_and_candle_within_rounding() {
        let mut rng = StreamKey::new(9, 0, 0, Effect::Data).rng(0);
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        // Ragged everything: k not a multiple of 8, n not a multiple of the chunk, m across
        // the 4-row blocks and their remainders.
        for (m, n, k) in [
            (1, 1, 1),
            (3, 70, 13),
            (4, 129, 64),
            (7, 65, 100),
            (8, 200, 577),
        ] {
            let (x, w) = (rand(m * k), rand(n * k));
            let got = product(&x, m, &w, n, k);
            let want = product_reference(&x, m, &w, n, k);
            assert_eq!(got, want, "{m}x{n}x{k}");
            // The path of CPUs without AVX2 (column-major out), bit for bit too.
            let mut plain = vec![0f32; n * m];
            columns_plain(&x, m, &w, k, &mut plain);
            for (j, col) in plain.chunks_exact(m).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    assert_eq!(v, want[r * n + j], "plain path {m}x{n}x{k}");
                }
            }
            // Each row's result does not depend on the rows beside it.
            for r in 0..m {
                let one = product(&x[r * k..(r + 1) * k], 1, &w, n, k);
                assert_eq!(one[..], got[r * n..(r + 1) * n], "row {r} of {m}x{n}x{k}");
            }
            let dev = candle_core::Device::Cpu;
            let xt = candle_core::Tensor::from_vec(x, (m, k), &dev).unwrap();
            let wt = candle_core::Tensor::from_vec(w, (n, k), &dev).unwrap();
            let want = xt.matmul(&wt.t().unwrap()).unwrap().flatten_all().unwrap();
            for (a, b) in got.iter().zip(want.to_vec1::<f32>().unwrap()) {
                assert!(
                    (a - b).abs() <= 1e-5 * (k as f32).sqrt() * 4.0,
                    "{a} vs {b}"
                );
            }
        }
        assert!(product(&[], 0, &[1.0; 6], 2, 3).is_empty());
    }
}

//! Products of a few input rows by a weight matrix on the CPU: decoding's matmuls.
//!
//! A decode step multiplies one to a few dozen token rows by every weight matrix; with few rows
//! the time is that of reading the weights. candle's gemm packs the whole weight matrix for any
//! product of more than one row, which made a step of 2-8 rows cost 2.5-4x a step of one. Here
//! each weight row is read once and dotted with every input row while it sits in L1, with the
//! threads splitting the weight rows. Each dot product accumulates 8 lanes with fused
//! multiply-adds in a fixed order and then sums the lanes pairwise, so a result has the same
//! bits whichever rows share the call, however many threads run, and with or without AVX2 and
//! FMA.

use rayon::prelude::*;

/// Most input rows for which [`product`] is the faster path (measured on a 2-core EPYC: at 16
/// rows 0.21 against candle's 0.34 ms for 1536 x 576 and 12.2 against 13.6 ms for lm_head; at
/// 32 rows lm_head took 17.6 against 16.5 ms).
pub const MAX_ROWS: usize = 16;

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

/// `t` (n x m, column-major results) into `y` (m x n, row-major), 64 columns at a time: the
/// block of `t` stays in L1 while each output row gets 64 contiguous values (column by column,
/// 16 rows of lm_head took 5.3 ms, as long as their products).
fn transpose_into(t: &[f32], m: usize, n: usize, y: &mut [f32]) {
    const BLOCK: usize = 64;
    for j0 in (0..n).step_by(BLOCK) {
        let cols = BLOCK.min(n - j0);
        let block = &t[j0 * m..(j0 + cols) * m];
        for (r, row) in y.chunks_exact_mut(n).enumerate().take(m) {
            for (v, col) in row[j0..j0 + cols].iter_mut().zip(block.chunks_exact(m)) {
                *v = col[r];
            }
        }
    }
}

/// The plain triple loop with the same summation order as [`product`]: the reference its test
/// compares against.
pub fn product_reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            y[r * n + j] = dot(&x[r * k..(r + 1) * k], &w[j * k..(j + 1) * k]);
        }
    }
    y
}

/// One dot product in [`product`]'s order: lane i accumulates the elements i, i + 8, ... of
/// the body with fused multiply-adds, the lanes sum pairwise, the tail adds on in order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let body = a.len() / 8 * 8;
    let mut lanes = [0f32; 8];
    for (ac, bc) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] = ac[i].mul_add(bc[i], lanes[i]);
        }
    }
    tail(reduce(lanes), &a[body..], &b[body..])
}

fn columns(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe {
            if m <= PAIRED_FROM {
                columns_avx2::<1>(x, m, w, k, out)
            } else {
                columns_avx2::<2>(x, m, w, k, out)
            }
        };
        return;
    }
    columns_plain(x, m, w, k, out)
}

/// Input rows above which two weight rows go through the registers at once: each input load
/// then feeds two accumulators, which pays once the products, not the weights' reads, take
/// the time (16 rows: 0.18 against 0.26 ms for 1536 x 576); with fewer rows one weight row at a
/// time reads the weights faster (8 rows of lm_head: 4.9 against 8.4 ms).
const PAIRED_FROM: usize = 8;

/// [`columns_plain`] in AVX2 registers: the same lanes, products and sums in the same order,
/// `P` weight rows by four input rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2<const P: usize>(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let body = k / 8 * 8;
    let n = out.len() / m;
    let lanes = |v: __m256| {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        l
    };
    let finish = |acc: __m256, r: usize, j: usize| {
        tail(
            reduce(lanes(acc)),
            &x[r * k + body..(r + 1) * k],
            &w[j * k + body..(j + 1) * k],
        )
    };
    let mut j = 0;
    while j < n {
        // The last block may hold fewer weight rows: it repeats the last one and keeps one.
        let rows = (n - j).min(P);
        let wp: [*const f32; P] =
            std::array::from_fn(|q| w.as_ptr().add((j + q.min(rows - 1)) * k));
        let mut r = 0;
        while r + 4 <= m {
            let xp = [0, 1, 2, 3].map(|i| x.as_ptr().add((r + i) * k));
            let mut acc = [[_mm256_setzero_ps(); 4]; P];
            let mut c = 0;
            while c < body {
                let w0 = _mm256_loadu_ps(wp[0].add(c));
                let w1 = _mm256_loadu_ps(wp[P - 1].add(c));
                for i in 0..4 {
                    let xv = _mm256_loadu_ps(xp[i].add(c));
                    acc[0][i] = _mm256_fmadd_ps(xv, w0, acc[0][i]);
                    if P == 2 {
                        acc[P - 1][i] = _mm256_fmadd_ps(xv, w1, acc[P - 1][i]);
                    }
                }
                c += 8;
            }
            for (q, acc) in acc.iter().enumerate().take(rows) {
                for (i, &a) in acc.iter().enumerate() {
                    out[(j + q) * m + r + i] = finish(a, r + i, j + q);
                }
            }
            r += 4;
        }
        for r in r..m {
            for (q, &wr) in wp.iter().enumerate().take(rows) {
                let xr = x.as_ptr().add(r * k);
                let mut acc = _mm256_setzero_ps();
                let mut c = 0;
                while c < body {
                    let (a, b) = (_mm256_loadu_ps(xr.add(c)), _mm256_loadu_ps(wr.add(c)));
                    acc = _mm256_fmadd_ps(a, b, acc);
                    c += 8;
                }
                out[(j + q) * m + r] = finish(acc, r, j + q);
            }
        }
        j += rows;
    }
}

/// Output columns for the weight rows `w`: `out[j * m + r]` = row r of x . row j of w.
#[inline(always)]
fn columns_plain(x: &[f32], m: usize, w: &[f32], k: usize, out: &mut [f32]) {
    let n = out.len() / m;
    for j in 0..n {
        for r in 0..m {
            out[j * m + r] = dot(&x[r * k..(r + 1) * k], &w[j * k..(j + 1) * k]);
        }
    }
}

/// The 8 lanes summed pairwise.
#[inline(always)]
fn reduce(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// `s` plus the products of the last k mod 8 elements, in order, each fused.
#[inline(always)]
fn tail(mut s: f32, a: &[f32], b: &[f32]) -> f32 {
    for (x, y) in a.iter().zip(b) {
        s = x.mul_add(*y, s);
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
            (13, 67, 40),
            (32, 129, 96),
        ] {
            let (x, w) = (rand(m * k), rand(n * k));
            let got = product(&x, m, &w, n, k);
            let want = product_reference(&x, m, &w, n, k);
            assert_eq!(got, want, "{m}x{n}x{k}");
            // The path of CPUs without AVX2 and FMA (column-major out), bit for bit too.
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

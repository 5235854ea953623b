//! Counter-based standard normals for the per-MVM hot path.
//!
//! The n-th pair of a sub-stream is a pure function of (stream, n): two 32-bit hashes give two
//! uniforms, Box-Muller turns them into two normals. Being counter-based, any slice of a row of
//! noise can be produced on its own (by any thread, in any order) and still equals the same slice
//! of the whole row. The logarithm and sine/cosine are branch-free polynomials (cephes-style
//! `logf`, Taylor sine/cosine on a quarter turn, errors below 1e-6), so the loop vectorizes; no
//! fused multiply-add is used, so every x86-64 machine gets the same bits.

use super::StreamKey;

/// lowbias32 (Chris Wellons' hash-prospector): a 32-bit bijection with strong avalanche.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Natural logarithm of `x` in (0, 1] (cephes `logf` polynomial).
#[inline(always)]
fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e = if big { e + 1.0 } else { e };
    let f = m - 1.0;
    let z = f * f;
    let mut y = 7.037_683_6e-2;
    y = y * f - 1.151_461e-1;
    y = y * f + 1.167_699_9e-1;
    y = y * f - 1.242_014_1e-1;
    y = y * f + 1.424_932_3e-1;
    y = y * f - 1.666_805_8e-1;
    y = y * f + 2.000_071_4e-1;
    y = y * f - 2.499_999_4e-1;
    y = y * f + 3.333_333e-1;
    y = y * f * z;
    y += -2.121_944_4e-4 * e;
    y += -0.5 * z;
    f + y + 0.693_359_4 * e
}

/// 2 pi `turns` folded to [-1/4, 1/4] turn, and whether the fold negates the cosine
/// (sin(pi - x) = sin x, cos(pi - x) = -cos x).
#[inline(always)]
fn fold_turns(turns: f32) -> (f32, bool) {
    let far = turns.abs() > 0.25;
    let folded = if turns >= 0.0 {
        0.5 - turns
    } else {
        -0.5 - turns
    };
    (
        if far { folded } else { turns } * std::f32::consts::TAU,
        far,
    )
}

/// (sin, cos) of 2 pi `turns` for `turns` in [-0.5, 0.5].
#[inline(always)]
fn sincos_turns(turns: f32) -> (f32, f32) {
    let (z, far) = fold_turns(turns);
    let z2 = z * z;
    let s = z
        * (1.0
            + z2 * (-1.0 / 6.0
                + z2 * (1.0 / 120.0
                    + z2 * (-1.0 / 5040.0 + z2 * (1.0 / 362_880.0 - z2 / 39_916_800.0)))));
    let c = 1.0
        + z2 * (-0.5
            + z2 * (1.0 / 24.0
                + z2 * (-1.0 / 720.0
                    + z2 * (1.0 / 40_320.0 + z2 * (-1.0 / 3_628_800.0 + z2 / 479_001_600.0)))));
    (s, if far { -c } else { c })
}

#[inline(always)]
fn fill_pairs(k0: u32, k1: u32, first_pair: u32, out: &mut [f32]) {
    let mut chunks = out.chunks_exact_mut(2);
    let mut n = first_pair;
    for pair in &mut chunks {
        let (a, b) = normal_pair(k0, k1, n);
        pair[0] = a;
        pair[1] = b;
        n = n.wrapping_add(1);
    }
    if let [last] = chunks.into_remainder() {
        *last = normal_pair(k0, k1, n).0;
    }
}

/// The n-th pair of standard normals of the sub-stream with keys (k0, k1).
#[inline(always)]
pub fn normal_pair(k0: u32, k1: u32, n: u32) -> (f32, f32) {
    let h0 = hash32(hash32(n.wrapping_mul(2) ^ k0) ^ k1);
    let h1 = hash32(hash32(n.wrapping_mul(2).wrapping_add(1) ^ k0) ^ k1);
    // u0 in (0, 1] keeps the logarithm finite; u1 in [-0.5, 0.5).
    let u0 = ((h0 >> 8) + 1) as f32 * (1.0 / 16_777_216.0);
    let u1 = (h1 >> 8) as f32 * (1.0 / 16_777_216.0) - 0.5;
    let r = (-2.0 * ln(u0)).sqrt();
    let (s, c) = sincos_turns(u1);
    (r * c, r * s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_pairs_avx2(k0: u32, k1: u32, first_pair: u32, out: &mut [f32]) {
    fill_pairs(k0, k1, first_pair, out)
}

impl StreamKey {
    /// Fills `out` with the standard normals of sub-stream `index` starting at element `start`
    /// (which must be even): element j of the sub-stream is the same whichever slice asks for it.
    pub fn fill_normal_at(self, index: u64, start: usize, out: &mut [f32]) {
        debug_assert!(
            start % 2 == 0,
            "counter-based normals start at an even element"
        );
        let (k0, k1) = self.counter_keys(index);
        let first = (start / 2) as u32;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { fill_pairs_avx2(k0, k1, first, out) };
            return;
        }
        fill_pairs(k0, k1, first, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Effect;

    #[test]
    fn math_matches_std() {
        for i in 1..=10_000u32 {
            let x = i as f32 / 10_000.0;
            assert!(
                (ln(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0),
                "ln {x}"
            );
            let t = x - 0.5;
            let (s, c) = sincos_turns(t);
            let a = t * std::f32::consts::TAU;
            assert!(
                (s - a.sin()).abs() < 1e-6 && (c - a.cos()).abs() < 1e-6,
                "sincos {t}"
            );
        }
    }

    /// The CUDA kernels divide z2 by sincos_turns' two constants as x * (1 / c) plus one FMA
    /// correction (`div_const` in kernels/analog_train.cu); that equals the IEEE quotient for
    /// every z2 the stream can give (u1 takes 2^24 values), so CPU and GPU noise stay equal.
    #[test]
    fn constant_divisions_are_exact_where_the_stream_reaches() {
        for c in [39_916_800.0f32, 479_001_600.0] {
            let r = 1.0 / c;
            let differ = (0u32..1 << 24)
                .filter(|&h| {
                    let (z, _) = fold_turns(h as f32 * (1.0 / 16_777_216.0) - 0.5);
                    let z2 = z * z;
                    let q = z2 * r;
                    (-q).mul_add(c, z2).mul_add(r, q).to_bits() != (z2 / c).to_bits()
                })
                .count();
            assert_eq!(differ, 0, "z2 / {c}: {differ} quotients differ");
        }
    }

    #[test]
    fn slices_equal_the_whole_row() {
        let k = StreamKey::new(3, 4, 5, Effect::ReadPerMvm);
        let mut whole = vec![0f32; 101];
        k.fill_normal_at(7, 0, &mut whole);
        let mut part = vec![0f32; 31];
        k.fill_normal_at(7, 40, &mut part);
        assert_eq!(&whole[40..71], &part[..]);
        let mut portable = vec![0f32; 101];
        let c = k.child(7).0;
        fill_pairs(c as u32, (c >> 32) as u32, 0, &mut portable);
        assert_eq!(whole, portable);
    }

    #[test]
    fn moments_and_tails() {
        let k = StreamKey::new(9, 9, 9, Effect::OutputNoise);
        let n = 1 << 21;
        let mut v = vec![0f32; n];
        k.fill_normal_at(0, 0, &mut v);
        let m = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / n as f64;
        let kurt =
            v.iter().map(|&x| (f64::from(x) - m).powi(4)).sum::<f64>() / n as f64 / (var * var);
        let beyond3 = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n as f64;
        assert!(m.abs() < 3e-3, "mean {m}");
        assert!((var - 1.0).abs() < 3e-3, "var {var}");
        assert!((kurt - 3.0).abs() < 0.03, "kurtosis {kurt}");
        // P(|z| > 3) = 0.0026998
        assert!((beyond3 / 0.0026998 - 1.0).abs() < 0.05, "tail {beyond3}");
    }
}

//! Seeded, named random streams.
//!
//! Every random number in a simulation comes from a stream named by (run seed, layer, tile,
//! effect) and, inside it, by a sub-index such as an output column or a token row. Each named
//! sub-stream is an independent xoshiro256++ generator seeded by mixing the name with SplitMix64,
//! so the numbers a piece of work sees depend only on its name, never on which thread ran it or in
//! which order: the same seed gives bit-identical results with 1 or N threads.

mod fast;

pub(crate) use fast::normal_pair;

use rand::{Rng as _, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The physical effect a stream feeds. Distinct effects never share numbers, so turning one
/// effect on or off leaves the draws of the others unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Programming noise of the devices (static per chip instance).
    Program,
    /// Per-device drift exponents (static per chip instance).
    DriftNu,
    /// Accumulated 1/f noise observed at inference time t (static per chip and t).
    ReadAtTime,
    /// Read noise of one MVM (new for every call).
    ReadPerMvm,
    /// Additive output noise of one MVM (new for every call).
    OutputNoise,
    /// Weight noise injected during hardware-aware training.
    WeightNoise,
    /// Synthetic test data (random weights and inputs of `afm tile mvm`, benchmarks, tests).
    Data,
}

impl Effect {
    /// The number that names the effect in stream keys.
    pub fn tag(self) -> u64 {
        match self {
            Effect::Program => 1,
            Effect::DriftNu => 2,
            Effect::ReadAtTime => 3,
            Effect::ReadPerMvm => 4,
            Effect::OutputNoise => 5,
            Effect::WeightNoise => 6,
            Effect::Data => 7,
        }
    }
}

/// SplitMix64 finalizer: a bijective 64-bit mix with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// mix(mix(seed) ^ layer): the part of [`StreamKey::new`] that a CUDA kernel starts from, to
/// finish the keys of every tile itself.
pub fn layer_key(seed: u64, layer: u64) -> u64 {
    mix(mix(seed) ^ layer)
}

/// 64-bit FNV-1a hash of a layer name, so streams can be named by strings.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The name of one stream: (run seed, layer, tile, effect). Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey(u64);

impl StreamKey {
    /// Names the stream of `effect` on tile `tile` of layer `layer` for run seed `seed`.
    pub fn new(seed: u64, layer: u64, tile: u64, effect: Effect) -> Self {
        let mut k = mix(seed);
        k = mix(k ^ layer);
        k = mix(k ^ tile);
        StreamKey(mix(k ^ effect.tag()))
    }

    /// A derived key, e.g. for the n-th MVM call on a tile.
    pub fn child(self, index: u64) -> Self {
        StreamKey(mix(self.0 ^ mix(index.wrapping_add(0x5851_F42D_4C95_7F2D))))
    }

    /// The keys (k0, k1) of the counter-based normals of sub-stream `index`, as
    /// [`StreamKey::fill_normal_at`] uses them (and the CUDA kernels of `train::fused`).
    pub fn counter_keys(self, index: u64) -> (u32, u32) {
        let k = self.child(index).0;
        (k as u32, (k >> 32) as u32)
    }

    /// The generator of sub-stream `index` (a column, a token row, ...).
    pub fn rng(self, index: u64) -> Rng {
        Rng(Xoshiro256PlusPlus::seed_from_u64(self.child(index).0))
    }
}

/// One generator of a named sub-stream.
#[derive(Debug, Clone)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// A standard normal sample.
    #[inline]
    pub fn normal(&mut self) -> f32 {
        self.0.sample::<f32, _>(StandardNormal)
    }

    /// A standard normal sample in double precision (for statistics tests).
    #[inline]
    pub fn normal_f64(&mut self) -> f64 {
        self.0.sample::<f64, _>(StandardNormal)
    }

    /// Fills `out` with standard normal samples.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.normal();
        }
    }

    /// A uniform sample in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// 64 uniform random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0.random::<u64>()
    }
}

/// Test data for the crate's unit tests: standard normals of `dims` (CPU, f32) from seed's
/// data stream.
#[cfg(test)]
pub(crate) fn normal_tensor(seed: u64, dims: &[usize]) -> candle_core::Tensor {
    let mut v = vec![0f32; dims.iter().product()];
    StreamKey::new(seed, 0, 0, Effect::Data)
        .rng(0)
        .fill_normal(&mut v);
    candle_core::Tensor::from_vec(v, dims, &candle_core::Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_named_not_ordered() {
        let a = StreamKey::new(7, name_hash("q_proj"), 3, Effect::Program);
        let b = StreamKey::new(7, name_hash("q_proj"), 3, Effect::Program);
        let c = StreamKey::new(7, name_hash("q_proj"), 3, Effect::DriftNu);
        let (mut ra, mut rb, mut rc) = (a.rng(5), b.rng(5), c.rng(5));
        let (x, y, z) = (ra.normal(), rb.normal(), rc.normal());
        assert_eq!(x.to_bits(), y.to_bits());
        assert_ne!(x.to_bits(), z.to_bits());
        assert_ne!(a.rng(5).normal().to_bits(), a.rng(6).normal().to_bits());
    }

    #[test]
    fn normal_moments() {
        let mut r = StreamKey::new(1, 2, 3, Effect::Data).rng(0);
        let n = 200_000;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let v = f64::from(r.normal());
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }
}

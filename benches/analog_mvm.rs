//! Fused analog MVM vs a plain candle f32 matmul of the same shape (DESIGN: target ratio <= 1.3).
//!
//! 2048 x 2048 weight, 512-row tiles, 8-bit DAC and ADC (lambda 14), read noise on, 128 and 1024
//! tokens. Two read-noise models: state-independent (`read_abs`, a per-token reduction) and
//! conductance-proportional (`read_rel`, one extra GEMM for (x^2)(sigma^2)^T).

use afm::rng::{Effect, StreamKey};
use afm::tile::{analog_mvm, AnalogLayer, TilePreset};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::Path;

fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    StreamKey::new(seed, 0, 0, Effect::Data)
        .rng(0)
        .fill_normal(&mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

fn bench(c: &mut Criterion) {
    let n = 2048;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = TilePreset::load(&root.join("tiles/afm-paper.toml")).unwrap();
    let w = normals(1, n * n, 1.0 / (n as f32).sqrt());
    let wt = Tensor::from_slice(&w, (n, n), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("mvm_2048x2048");
    group.sample_size(20);
    for tokens in [128usize, 1024] {
        let x = normals(2, tokens * n, 1.0);
        let xt = Tensor::from_slice(&x, (tokens, n), &Device::Cpu).unwrap();
        group.bench_with_input(
            BenchmarkId::new("plain_f32_matmul", tokens),
            &tokens,
            |b, _| b.iter(|| xt.matmul(&wt.t().unwrap()).unwrap()),
        );
        for (name, rel, abs) in [
            ("analog_read_abs", 0.0, 0.02),
            ("analog_read_rel", 0.02, 0.0),
        ] {
            let mut p = base.clone();
            p.noise.read_rel = rel;
            p.noise.read_abs = abs;
            let layer = AnalogLayer::program(&w, n, n, &p, 0, "bench").unwrap();
            let ranges = vec![3.5f32; layer.blocks.len()];
            let mut call = 0u64;
            group.bench_with_input(BenchmarkId::new(name, tokens), &tokens, |b, &t| {
                b.iter(|| {
                    call += 1;
                    analog_mvm(&layer, &x, t, &ranges, call).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

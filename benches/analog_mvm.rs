//! Fused analog MVM vs a plain f32 product of the same shape (DESIGN: target ratio <= 1.3).
//!
//! `mvm_2048x2048`: 2048 x 2048 weight, 512-row tiles, 8-bit DAC and ADC (lambda 14), read noise
//! on, 128 and 1024 tokens. Two read-noise models: state-independent (`read_abs`, a per-token
//! reduction) and conductance-proportional (`read_rel`, one extra GEMM for (x^2)(sigma^2)^T).
//! `mvm_lm_head_49152x576`: SmolLM2's lm_head shape on `afm-paper` tiles as shipped (two row
//! blocks of 288, no per-MVM noise) at a decode step (4 tokens) and a prefill (512 tokens); the
//! plain product is the digital executor's (`few_rows` up to 8 rows, candle's matmul above).
//! mimalloc keeps freed pages, as in the `afm` binary.

use afm::executor::few_rows;
use afm::rng::{Effect, StreamKey};
use afm::tile::{analog_mvm, AnalogLayer, TilePreset};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::Path;

#[global_allocator]
static GLOBAL: afm::alloc::MiMalloc = afm::alloc::MiMalloc;

fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    StreamKey::new(seed, 0, 0, Effect::Data)
        .rng(0)
        .fill_normal(&mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

fn preset() -> TilePreset {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    TilePreset::load(&root.join("tiles/afm-paper.toml")).unwrap()
}

/// The plain product of `x` (tokens x n_in) by `w` (n_out x n_in) transposed, as the digital
/// executor computes it.
fn plain(x: &[f32], tokens: usize, w: &[f32], wt: &Tensor, n_out: usize, n_in: usize) {
    if tokens <= few_rows::MAX_ROWS {
        std::hint::black_box(few_rows::product(x, tokens, w, n_out, n_in));
    } else {
        let xt = Tensor::from_slice(x, (tokens, n_in), &Device::Cpu).unwrap();
        std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
    }
}

fn square(c: &mut Criterion) {
    afm::alloc::keep_freed_pages();
    let n = 2048;
    let base = preset();
    let w = normals(1, n * n, 1.0 / (n as f32).sqrt());
    let wt = Tensor::from_slice(&w, (n, n), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("mvm_2048x2048");
    group.sample_size(20);
    for tokens in [128usize, 1024] {
        let x = normals(2, tokens * n, 1.0);
        group.bench_with_input(
            BenchmarkId::new("plain_f32_matmul", tokens),
            &tokens,
            |b, &t| b.iter(|| plain(&x, t, &w, &wt, n, n)),
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

fn lm_head(c: &mut Criterion) {
    afm::alloc::keep_freed_pages();
    let (n_out, n_in) = (49152, 576);
    let w = normals(3, n_out * n_in, 1.0 / (n_in as f32).sqrt());
    let wt = Tensor::from_slice(&w, (n_out, n_in), &Device::Cpu).unwrap();
    let layer = AnalogLayer::program(&w, n_out, n_in, &preset(), 0, "lm_head").unwrap();
    let ranges = vec![3.5f32; layer.blocks.len()];
    let mut group = c.benchmark_group("mvm_lm_head_49152x576");
    group.sample_size(10);
    for tokens in [4usize, 512] {
        let x = normals(4, tokens * n_in, 1.0);
        group.bench_with_input(BenchmarkId::new("plain", tokens), &tokens, |b, &t| {
            b.iter(|| plain(&x, t, &w, &wt, n_out, n_in))
        });
        let mut call = 0u64;
        group.bench_with_input(BenchmarkId::new("analog", tokens), &tokens, |b, &t| {
            b.iter(|| {
                call += 1;
                analog_mvm(&layer, &x, t, &ranges, call).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, square, lm_head);
criterion_main!(benches);

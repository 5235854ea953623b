//! SmolLM2-135M-Instruct on CPU: prefill of 512 tokens and decode tokens/s, digital and analog
//! (afm-paper tiles), side by side. Needs `afm model fetch smollm2-135m-instruct` first.

use afm::executor::decoder::KvCache;
use afm::executor::load::{load_model, map_to_tiles, resolve_weights};
use afm::tile::TilePreset;
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::Path;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let path = resolve_weights("smollm2-135m-instruct", false)
        .expect("run `afm model fetch smollm2-135m-instruct` first");
    let path = path.to_str().unwrap();
    let preset =
        TilePreset::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tiles/afm-paper.toml"))
            .unwrap();
    let digital = load_model(path, DType::F32).unwrap();
    let mut analog = load_model(path, DType::F32).unwrap();
    map_to_tiles(&mut analog.decoder, &preset, 0, false).unwrap();
    let prompt: Vec<u32> = (0..512u32).map(|k| 200 + (k * 37) % 20000).collect();
    let x = Tensor::from_slice(&prompt, (1, 512), &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("smollm2_135m_cpu");
    g.sample_size(10);
    for (name, m) in [("digital", &digital), ("analog_afm_paper", &analog)] {
        // Calibrates the analog input ranges on the prompt before timing.
        m.decoder.forward(&x, &mut KvCache::default()).unwrap();
        g.throughput(Throughput::Elements(512));
        g.bench_function(format!("prefill_512/{name}"), |b| {
            b.iter(|| m.decoder.forward(&x, &mut KvCache::default()).unwrap())
        });
        // Decode 16 tokens after a 64-token context.
        let ctx = Tensor::from_slice(&prompt[..64], (1, 64), &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements(16));
        g.bench_function(format!("decode_16_after_64/{name}"), |b| {
            b.iter_batched(
                || {
                    let mut cache = KvCache::default();
                    m.decoder.forward(&ctx, &mut cache).unwrap();
                    cache
                },
                |mut cache| {
                    for k in 0..16u32 {
                        let t = Tensor::from_slice(&[300 + k], (1, 1), &Device::Cpu).unwrap();
                        m.decoder.forward(&t, &mut cache).unwrap();
                    }
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

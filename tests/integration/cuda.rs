//! The CUDA paths against the CPU: the analog training layer (forward, range initialization and
//! the gradients of x, W, bias and ranges) on ragged random shapes and on aihwkit-lightning's
//! golden cases, and on-device sampling against the softmax. Built with `--features cuda` and
//! run on a machine with a GPU (the CPU CI compiles none of this).

use crate::common::{assert_close, normals};
use crate::train_golden::run_layer;
use afm::train::layer::AnalogTrainConfig;
use candle_core::{Device, Tensor};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

#[test]
fn cuda_training_layer_matches_cpu_on_ragged_shapes() {
    let cases = [(7, 13, 5, 4), (33, 700, 96, 256), (64, 1100, 300, 512)];
    for (i, &(tokens, n_in, n_out, rows)) in cases.iter().enumerate() {
        let seed = 40 + i as u64;
        let t = |s: u64, shape: (usize, usize), scale: f32| {
            Tensor::from_vec(normals(s, shape.0 * shape.1, scale), shape, &Device::Cpu).unwrap()
        };
        let w = t(seed, (n_out, n_in), 0.05);
        let b = Tensor::from_vec(normals(seed + 1, n_out, 0.1), n_out, &Device::Cpu).unwrap();
        let x = t(seed + 2, (tokens, n_in), 1.0);
        let g = t(seed + 3, (tokens, n_out), 1.0);
        // The ranges initialize from this batch (range init on the device vs on the host).
        let cfg = AnalogTrainConfig {
            weight_noise: 0.0,
            range_init_batches: 2,
            tile_rows: rows,
            ..AnalogTrainConfig::default()
        };
        let cpu = run_layer(&Device::Cpu, &w, Some(&b), &x, &g, None, &cfg);
        let cuda = run_layer(&gpu(), &w, Some(&b), &x, &g, None, &cfg);
        for ((name, c), (_, d)) in cpu.iter().zip(&cuda) {
            // Rounding at a DAC/ADC step boundary may land one step apart on a different
            // summation order: allow that on a few elements, demand float agreement elsewhere.
            let scale = c.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let far = c
                .iter()
                .zip(d)
                .filter(|(a, b)| (*a - *b).abs() > 1e-4 * scale + 1e-4 * a.abs())
                .count();
            assert!(
                far * 200 <= c.len().max(200),
                "case {i} {name}: {far} of {} elements differ",
                c.len()
            );
            assert_close(&format!("case {i} {name}"), d, c, 0.02 * scale, 0.0);
        }
    }
}

#[test]
fn cuda_training_layer_matches_lightning_golden() {
    crate::train_golden::check_lightning_golden(&gpu(), "cuda");
}

#[test]
fn cuda_sampling_follows_softmax_and_top_k() {
    crate::executor::check_device_sampling(&gpu(), 200_000, 0.005);
}

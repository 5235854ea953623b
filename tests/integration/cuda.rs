//! The CUDA paths against the CPU: the analog training layer (forward, range initialization and
//! the gradients of x, W, bias and ranges) on ragged random shapes and on aihwkit-lightning's
//! golden cases, and on-device sampling against the softmax. Built with `--features cuda` and
//! run on a machine with a GPU (the CPU CI compiles none of this).

use crate::common::{assert_close, normals, repo};
use afm::executor::sampling::{pick_on_device, Sampling};
use afm::train::layer::{AnalogTrainConfig, AnalogTrainLinear};
use candle_core::{Device, Tensor, Var};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Output, ranges after the forward, and gradients (x, W, bias, ranges) of sum(y * g).
fn run_layer(
    dev: &Device,
    w: &Tensor,
    b: Option<&Tensor>,
    x: &Tensor,
    g: &Tensor,
    ranges: Option<&Tensor>,
    cfg: &AnalogTrainConfig,
) -> Vec<(String, Vec<f32>)> {
    let layer = AnalogTrainLinear::new(
        &w.to_device(dev).unwrap(),
        b.map(|b| b.to_device(dev).unwrap()).as_ref(),
        cfg,
        3,
        "l",
    )
    .unwrap();
    if let Some(r) = ranges {
        layer.ranges.set(&r.to_device(dev).unwrap()).unwrap();
    }
    layer.state.lock().unwrap().training = true;
    let x = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
    let y = layer.forward(x.as_tensor()).unwrap();
    let grads = (&y * g.to_device(dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = |v: &Var| vec_of(grads.get(v.as_tensor()).unwrap());
    let mut out = vec![
        ("y".to_string(), vec_of(&y)),
        ("ranges".to_string(), vec_of(layer.ranges.as_tensor())),
        ("dx".to_string(), grad(&x)),
        ("dW".to_string(), grad(&layer.weight)),
        ("d ranges".to_string(), grad(&layer.ranges)),
    ];
    if let Some(bias) = &layer.bias {
        out.push(("db".to_string(), grad(bias)));
    }
    out
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
    let g = candle_core::safetensors::load(
        repo("tests/golden/lightning_train.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (case, init) in [("ragged", 0), ("single", 0), ("init", 5)] {
        let t = |k: &str| g[&format!("{case}.{k}")].clone();
        let cfg = AnalogTrainConfig {
            weight_noise: 0.0,
            range_init_batches: init,
            ..AnalogTrainConfig::default()
        };
        let b = g.get(&format!("{case}.b")).cloned();
        let got = run_layer(
            &gpu(),
            &t("w"),
            b.as_ref(),
            &t("x"),
            &t("g"),
            Some(&t("ranges")),
            &cfg,
        );
        let want = |k: &str| vec_of(&t(k));
        for (name, v) in &got {
            let (key, abs, rel) = match name.as_str() {
                "y" => ("y", 1e-5, 1e-5),
                "ranges" => ("ranges_after", 0.0, 1e-6),
                "dx" => ("gx", 1e-5, 1e-4),
                "dW" => ("gw", 1e-4, 1e-4),
                "db" => ("gb", 1e-5, 1e-5),
                _ => ("granges", 1e-4, 1e-4),
            };
            assert_close(&format!("cuda {case} {name}"), v, &want(key), abs, rel);
        }
    }
}

#[test]
fn cuda_sampling_follows_softmax_and_top_k() {
    let l = [0.0f32, 1.0, 2.0, -10.0];
    let n = 200_000;
    let rows: Vec<f32> = (0..n).flat_map(|_| l).collect();
    let t = Tensor::from_vec(rows, (n, 4), &gpu()).unwrap();
    let s = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let (tok, nan) = pick_on_device(&t, &s).unwrap();
    assert_eq!(nan.to_scalar::<f32>().unwrap(), 0.0);
    let mut counts = [0usize; 4];
    for k in tok.to_vec1::<u32>().unwrap() {
        counts[k as usize] += 1;
    }
    let z: f64 = l.iter().map(|&v| f64::from(v).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let p = f64::from(l[i]).exp() / z;
        assert!(
            (c as f64 / n as f64 - p).abs() < 0.005,
            "token {i}: {c} vs p {p}"
        );
    }
    let k2 = Sampling { top_k: 2, ..s };
    let tok = pick_on_device(&t, &k2).unwrap().0.to_vec1::<u32>().unwrap();
    assert!(tok.iter().all(|&k| k == 1 || k == 2));
}

//! The analog training layer against aihwkit-lightning 2.1.0's torch path: training-mode
//! forward, and the gradients of x, W, the bias and the input ranges (golden files from
//! `tests/golden/make_golden_train.py`), plus the weight-noise statistics.

use crate::common::{assert_close, normals, repo};
use afm::train::fused::{
    Blocks, ClipCount, DacGradInPlace, DirectGrad, FixTarget, FusedOp, SideOutput, Stage,
};
use afm::train::layer::{AnalogTrainConfig, AnalogTrainLinear, NoiseShape};
use candle_core::{DType, Device, Tensor, Var};

fn golden_config() -> AnalogTrainConfig {
    AnalogTrainConfig {
        weight_noise: 0.0,
        range_init_batches: 0,
        ..AnalogTrainConfig::default()
    }
}

/// The values of a tensor (any device, any float dtype) as a flat f32 vector.
pub fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Where and how a layer runs in a check: the device, the fused path or the plain-tensor
/// reference, and the fused path's compute dtype.
pub struct Run<'a> {
    /// Device.
    pub dev: &'a Device,
    /// Plain-tensor reference instead of the fused ops.
    pub reference: bool,
    /// Compute dtype of the fused path.
    pub compute: DType,
}

impl<'a> Run<'a> {
    /// The fused path in f32 on `dev`.
    pub fn fused(dev: &'a Device) -> Self {
        Run {
            dev,
            reference: false,
            compute: DType::F32,
        }
    }
}

/// Output, ranges after the forward, and gradients (x, W, bias, ranges) of sum(y * g). The
/// layer's first `cfg.isolate_outliers` inputs get a row block of their own, as down_proj's do.
pub fn run_layer(
    run: &Run,
    w: &Tensor,
    b: Option<&Tensor>,
    x: &Tensor,
    g: &Tensor,
    ranges: Option<&Tensor>,
    cfg: &AnalogTrainConfig,
) -> Vec<(String, Vec<f32>)> {
    let dev = run.dev;
    let mut layer = AnalogTrainLinear::with_head(
        &w.to_device(dev).unwrap(),
        b.map(|b| b.to_device(dev).unwrap()).as_ref(),
        cfg,
        3,
        "l",
        cfg.isolate_outliers,
    )
    .unwrap();
    assert_eq!(
        layer.blocks[0].1 == cfg.isolate_outliers,
        cfg.isolate_outliers > 0
    );
    layer.reference = run.reference;
    layer.compute = run.compute;
    if let Some(r) = ranges {
        layer.ranges.set(&r.to_device(dev).unwrap()).unwrap();
    }
    layer.state.lock().unwrap().training = true;
    let x = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
    let y = layer.forward(x.as_tensor()).unwrap();
    let g = g.to_device(dev).unwrap().to_dtype(y.dtype()).unwrap();
    let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
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

/// The training layer on `dev` against the lightning golden cases: output, ranges after the
/// forward, and the gradients of x, W, bias and ranges.
pub fn check_lightning_golden(dev: &Device, label: &str) {
    let g = candle_core::safetensors::load(
        repo("tests/golden/lightning_train.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (case, init) in [("ragged", 0), ("single", 0), ("init", 5)] {
        let t = |k: &str| g[&format!("{case}.{k}")].clone();
        let cfg = AnalogTrainConfig {
            range_init_batches: init,
            ..golden_config()
        };
        let b = g.get(&format!("{case}.b")).cloned();
        let got = run_layer(
            &Run::fused(dev),
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
            assert_close(&format!("{label} {case} {name}"), v, &want(key), abs, rel);
        }
    }
}

/// `got` against `want`, named pairs in the same order: float agreement (relative to each
/// tensor's largest value, `rel`) except on at most `flips` of the elements, where a DAC/ADC
/// rounding at a step boundary may land one step apart when products sum in another order;
/// those still lie within `step` of the largest value.
pub fn assert_mostly_close(
    label: &str,
    got: &[(String, Vec<f32>)],
    want: &[(String, Vec<f32>)],
    (rel, flips, step): (f32, f64, f32),
) {
    assert_eq!(got.len(), want.len(), "{label}: outputs");
    for ((name, d), (_, c)) in got.iter().zip(want) {
        let scale = c.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let far = c
            .iter()
            .zip(d)
            .filter(|(a, b)| (*a - *b).abs() > rel * scale + rel * a.abs())
            .count();
        assert!(
            far as f64 <= flips * c.len().max(200) as f64,
            "{label} {name}: {far} of {} elements differ",
            c.len()
        );
        assert_close(&format!("{label} {name}"), d, c, step * scale, 0.0);
    }
}

/// Random ragged layer cases (tokens, inputs, outputs, tile rows) with their tensors.
pub fn ragged_cases() -> Vec<(String, [Tensor; 4], AnalogTrainConfig)> {
    use Kind::*;
    #[derive(PartialEq)]
    enum Kind {
        Release,
        // Learns through the ADC bound, with ranges and a bound tight enough that inputs and
        // outputs clip.
        Clamp,
        // The chips' PCM-shaped weight noise instead of the flat one.
        Pcm,
        // Outputs clamp at the ADC bound (which passes no gradient), in some of the backward's
        // 64 x 64 correction tiles and not in others.
        ClampOnly(f64),
    }
    // (tokens, inputs, outputs, tile rows, isolated head block, kind)
    let cases = [
        (7, 13, 5, 4, 2, Release),
        (33, 700, 96, 256, 0, Release),
        (64, 1100, 300, 512, 7, Release),
        (5, 1030, 17, 512, 0, Release),
        (40, 600, 70, 256, 0, Clamp),
        (19, 530, 44, 256, 3, Pcm),
        // Outputs a multiple of 8: the CUDA ADC kernels' 16-byte path (of the others, only the
        // 96-output case takes it). Last, so that the draws above keep their seeds.
        (24, 520, 264, 256, 4, Release),
        // Several correction tiles in both directions, ragged at both ends.
        (80, 600, 136, 256, 0, ClampOnly(3.0)),
        (150, 530, 200, 256, 5, ClampOnly(6.0)),
        // 18 token tiles: the CUDA correction checks up to 16 rows of tiles per thread block,
        // so gx's rows span two blocks, the second ragged.
        (1100, 300, 72, 256, 0, ClampOnly(3.0)),
    ];
    cases
        .iter()
        .enumerate()
        .map(|(i, (tokens, n_in, n_out, rows, head, kind))| {
            let (tokens, n_in, n_out, rows, head) = (*tokens, *n_in, *n_out, *rows, *head);
            let seed = 40 + i as u64;
            let t = |s: u64, shape: (usize, usize), scale: f32| {
                Tensor::from_vec(normals(s, shape.0 * shape.1, scale), shape, &Device::Cpu).unwrap()
            };
            let b = Tensor::from_vec(normals(seed + 1, n_out, 0.1), n_out, &Device::Cpu).unwrap();
            let tensors = [
                t(seed, (n_out, n_in), 0.05),
                b,
                t(seed + 2, (tokens, n_in), 1.0),
                t(seed + 3, (tokens, n_out), 1.0),
            ];
            // The ranges initialize from this batch; the weight noise is on (the same
            // counter-based draws on every path and device).
            let cfg = AnalogTrainConfig {
                range_init_batches: 2,
                tile_rows: rows,
                isolate_outliers: head,
                ..AnalogTrainConfig::default()
            };
            let cfg = match kind {
                Release => cfg,
                Clamp => AnalogTrainConfig {
                    adc_bound_grad: true,
                    range_init_kappa: 2.0,
                    out_bound: 3.0,
                    ..cfg
                },
                ClampOnly(lambda) => AnalogTrainConfig {
                    range_init_kappa: 2.0,
                    out_bound: *lambda,
                    ..cfg
                },
                Pcm => AnalogTrainConfig {
                    weight_noise: 1.0,
                    weight_noise_shape: NoiseShape::Pcm,
                    ..cfg
                },
            };
            (
                format!("case {i} ({tokens}x{n_in}->{n_out}, rows {rows}, head {head})"),
                tensors,
                cfg,
            )
        })
        .collect()
}

/// One ragged case on `run`.
pub fn run_case(run: &Run, t: &[Tensor; 4], cfg: &AnalogTrainConfig) -> Vec<(String, Vec<f32>)> {
    run_layer(run, &t[0], Some(&t[1]), &t[2], &t[3], None, cfg)
}

#[test]
fn training_layer_matches_lightning_forward_and_gradients() {
    check_lightning_golden(&Device::Cpu, "cpu");
}

#[test]
fn fused_layer_matches_the_reference_on_ragged_shapes_with_noise() {
    let cpu = Device::Cpu;
    let reference = Run {
        reference: true,
        ..Run::fused(&cpu)
    };
    for (label, t, cfg) in ragged_cases() {
        let fused = run_case(&Run::fused(&cpu), &t, &cfg);
        let plain = run_case(&reference, &t, &cfg);
        assert_mostly_close(&label, &fused, &plain, (1e-5, 0.005, 0.02));
        if cfg.adc_bound_grad {
            // The case exercises the bound's gradient: without it the ranges' gradients differ.
            let off = AnalogTrainConfig {
                adc_bound_grad: false,
                ..cfg.clone()
            };
            let without = run_case(&Run::fused(&cpu), &t, &off);
            // Without it, the clamped outputs' gradients are still taken out (in place, after
            // the products over all blocks) as the reference masks them.
            let plain_off = run_case(&reference, &t, &off);
            assert_mostly_close(&label, &without, &plain_off, (1e-5, 0.005, 0.02));
            let gap = fused[4].1.iter().zip(&without[4].1);
            assert!(
                gap.map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) > 1e-2,
                "{label}: {:?} vs {:?}",
                fused[4].1,
                without[4].1
            );
        }
        // Without noise and rounding the two agree everywhere to float tolerance.
        let exact = AnalogTrainConfig {
            dac_bits: 0,
            adc_bits: 0,
            weight_noise: 0.0,
            ..cfg.clone()
        };
        let fused = run_case(&Run::fused(&cpu), &t, &exact);
        let plain = run_case(&reference, &t, &exact);
        assert_mostly_close(&label, &fused, &plain, (1e-5, 0.0, 1e-5));
    }
}

/// y = x W^T with one block, W = [[1, 0.5]], range 1 and an ADC bound of 0.5 * 1 * 1, no
/// rounding or noise; the loss is sum(y). Token 1 ([1, 1], y = 1.5) is clamped at the bound,
/// token 2 ([0.2, 0], y = 0.2) is not. Through the bound, the clamped token's gradient 1 reaches
/// the range as lambda * w_max = 0.5 and the largest weight as lambda * range = 0.5; without
/// it only token 2 reaches W (0.2 on w[0, 0]) and nothing the range.
#[test]
fn adc_bound_gradient_reaches_the_range_and_the_largest_weight_by_hand() {
    let cpu = Device::Cpu;
    let w = Tensor::new(&[[1f32, 0.5]], &cpu).unwrap();
    let x = Tensor::new(&[[1f32, 1.0], [0.2, 0.0]], &cpu).unwrap();
    let g = Tensor::ones((2, 1), DType::F32, &cpu).unwrap();
    let ranges = Tensor::new(&[1f32], &cpu).unwrap();
    for (bound_grad, d_range, d_w) in [(true, 0.5, [0.7, 0.0]), (false, 0.0, [0.2, 0.0])] {
        let cfg = AnalogTrainConfig {
            dac_bits: 0,
            adc_bits: 0,
            out_bound: 0.5,
            weight_noise: 0.0,
            range_init_batches: 0,
            adc_bound_grad: bound_grad,
            ..AnalogTrainConfig::default()
        };
        for reference in [false, true] {
            let run = Run {
                reference,
                ..Run::fused(&cpu)
            };
            let got = run_layer(&run, &w, None, &x, &g, Some(&ranges), &cfg);
            let label = format!("bound grad {bound_grad}, reference {reference}");
            assert_close(&format!("{label} y"), &got[0].1, &[0.5, 0.2], 1e-6, 0.0);
            assert_close(&format!("{label} dW"), &got[3].1, &d_w, 1e-6, 0.0);
            assert_close(
                &format!("{label} d range"),
                &got[4].1,
                &[d_range],
                1e-6,
                0.0,
            );
        }
    }
}

/// A layer with exact converters and no ADC bound: its training forward adds only the weight
/// noise (`weight_noise` of shape `shape`).
fn noise_only(weight_noise: f64, shape: NoiseShape) -> AnalogTrainConfig {
    AnalogTrainConfig {
        dac_bits: 0,
        adc_bits: 0,
        out_bound: 0.0,
        weight_noise,
        weight_noise_shape: shape,
        range_init_batches: 0,
        ..AnalogTrainConfig::default()
    }
}

/// Root mean square of `v` (the std of zero-mean noise).
fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn training_weight_noise_is_per_channel_and_seeded() {
    let (out, inp) = (8, 600);
    let w: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0 * (1 + i / inp) as f32)
        .collect();
    let w = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
    let cfg = noise_only(0.03, NoiseShape::Flat);
    let layer = AnalogTrainLinear::new(&w, None, &cfg, 5, "noise").unwrap();
    layer.state.lock().unwrap().training = true;
    // Inputs: one-hot rows read single weights, so y - W^T e = the noise itself.
    let eye = Tensor::eye(inp, candle_core::DType::F32, &Device::Cpu).unwrap();
    let y1 = layer.forward(&eye).unwrap();
    let y2 = layer.forward(&eye).unwrap();
    let clean = w.t().unwrap();
    let noise = vec_of(&(&y1 - &clean).unwrap());
    assert_ne!(vec_of(&y1), vec_of(&y2), "new noise every forward");
    // Per channel c: std(noise) = 0.03 * max |W[c, :]| (two blocks of 300, each its own max).
    let wv = vec_of(&w);
    for c in 0..out {
        for (lo, hi) in [(0, 300), (300, 600)] {
            let wmax = wv[c * inp + lo..c * inp + hi]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            let n: Vec<f64> = (lo..hi).map(|i| f64::from(noise[i * out + c])).collect();
            let std = rms(&n);
            let want = 0.03 * f64::from(wmax);
            assert!(
                (std / want - 1.0).abs() < 0.15,
                "channel {c}: std {std} vs {want}"
            );
        }
    }
    // The same seed and call count give the same noise; evaluation mode has none.
    let again = AnalogTrainLinear::new(&w, None, &cfg, 5, "noise").unwrap();
    again.state.lock().unwrap().training = true;
    assert_eq!(vec_of(&again.forward(&eye).unwrap()), vec_of(&y1));
    again.state.lock().unwrap().training = false;
    assert_close(
        "eval",
        &vec_of(&again.forward(&eye).unwrap()),
        &vec_of(&clean),
        1e-6,
        0.0,
    );
}

#[test]
fn pcm_shaped_training_noise_follows_the_chips_programming_noise() {
    // Every row block of every channel holds weights at 0, 0.29 and 1 times its max |w|, so the
    // noise's std at each level is known: the AFM paper's programming-noise fit at 0, 52.2 and
    // 180 units (2.580, 8.339 and 19.198) over 180, times `weight_noise`.
    let (out, inp) = (8, 600);
    let levels = [0.0f32, 0.29, 1.0];
    let w: Vec<f32> = (0..out * inp)
        .map(|i| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            sign * levels[i % 3] * (1 + i / inp) as f32
        })
        .collect();
    let w = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
    let cfg = noise_only(0.5, NoiseShape::Pcm);
    let eye = Tensor::eye(inp, DType::F32, &Device::Cpu).unwrap();
    for reference in [false, true] {
        let mut layer = AnalogTrainLinear::new(&w, None, &cfg, 9, "pcm").unwrap();
        layer.reference = reference;
        layer.state.lock().unwrap().training = true;
        let noise = vec_of(&(&layer.forward(&eye).unwrap() - &w.t().unwrap()).unwrap());
        for (level, fit) in levels.iter().zip([2.5797, 8.3392, 19.1984]) {
            let n: Vec<f64> = (0..out * inp)
                .filter(|i| levels[i % inp % 3] == *level)
                .map(|i| {
                    let (c, j) = (i / inp, i % inp);
                    f64::from(noise[j * out + c]) / (1 + c) as f64
                })
                .collect();
            let std = rms(&n);
            let want = 0.5 * fit / 180.0;
            assert!(
                (std / want - 1.0).abs() < 0.08,
                "reference {reference}, |w| = {level} max: std {std} vs {want} ({} draws)",
                n.len()
            );
        }
    }
}

#[test]
fn weight_clipping_bounds_every_channel() {
    let w = Tensor::new(
        &[[0.1f32, -0.2, 0.3, 5.0], [1.0, 1.0, 1.0, -1.0]],
        &Device::Cpu,
    )
    .unwrap();
    let cfg = AnalogTrainConfig {
        clip_alpha: 1.0,
        ..AnalogTrainConfig::default()
    };
    let layer = AnalogTrainLinear::new(&w, None, &cfg, 0, "clip").unwrap();
    layer.clip_weights(cfg.clip_alpha_at(1)).unwrap();
    let c = layer.weight.as_tensor().to_vec2::<f32>().unwrap();
    // Row 0: std (n-1) of [0.1, -0.2, 0.3, 5.0] = 2.47521...; only 5.0 is clipped.
    assert!((c[0][3] - 2.475_21).abs() < 1e-4, "{:?}", c[0]);
    assert_eq!(&c[0][..3], &[0.1, -0.2, 0.3]);
    // Row 1: std 1.0: nothing changes.
    assert_eq!(c[1], vec![1.0, 1.0, 1.0, -1.0]);
}

#[test]
fn clipping_ramps_down_to_its_final_alpha() {
    let cfg = AnalogTrainConfig {
        clip_alpha: 1.0,
        clip_alpha_start: 10.0,
        clip_ramp_steps: 4,
        ..AnalogTrainConfig::default()
    };
    let alphas: Vec<f64> = (1..=6).map(|s| cfg.clip_alpha_at(s)).collect();
    assert_eq!(alphas, vec![10.0, 7.0, 4.0, 1.0, 1.0, 1.0]);
    assert_eq!(AnalogTrainConfig::default().clip_alpha_at(1), 2.5);
    let no_end = AnalogTrainConfig {
        clip_alpha: 0.0,
        ..cfg.clone()
    };
    assert_eq!(no_end.check().unwrap_err().0, "clip_alpha_start");
    // A looser alpha on the same weight leaves the outlier larger.
    let w = Tensor::new(&[[0.1f32, -0.2, 0.3, 5.0]], &Device::Cpu).unwrap();
    let layer = AnalogTrainLinear::new(&w, None, &cfg, 0, "ramp").unwrap();
    layer.clip_weights(cfg.clip_alpha_at(1)).unwrap();
    assert_eq!(
        layer.weight.as_tensor().to_vec2::<f32>().unwrap()[0][3],
        5.0
    );
    layer.clip_weights(cfg.clip_alpha_at(4)).unwrap();
    assert!(layer.weight.as_tensor().to_vec2::<f32>().unwrap()[0][3] < 5.0);
}

/// The clip statistics (clipped inputs, inputs counted) of two training forwards (the first
/// initializes the ranges, both count) of a ragged case's layer on `dev`, computing in
/// `compute`, the fused path or the plain-tensor reference.
pub fn clip_stats(
    t: &[Tensor; 4],
    cfg: &AnalogTrainConfig,
    dev: &Device,
    compute: DType,
    reference: bool,
) -> (f32, usize) {
    let t: Vec<Tensor> = t.iter().map(|x| x.to_device(dev).unwrap()).collect();
    let mut layer = AnalogTrainLinear::new(&t[0], Some(&t[1]), cfg, 3, "l").unwrap();
    layer.compute = compute;
    layer.reference = reference;
    layer.state.lock().unwrap().training = true;
    for _ in 0..2 {
        layer.forward(&t[2]).unwrap();
    }
    let (n, k) = layer.take_clip_stats().unwrap().unwrap();
    (n.to_scalar::<f32>().unwrap(), k)
}

#[test]
fn fused_clip_statistics_equal_the_reference() {
    for (label, t, cfg) in ragged_cases() {
        let stats = |reference| clip_stats(&t, &cfg, &Device::Cpu, DType::F32, reference);
        let (fused, plain) = (stats(false), stats(true));
        assert_eq!(fused, plain, "{label}");
        assert!(fused.1 > 0, "{label}: nothing counted");
    }
}

/// Block layouts for the W gradient's cases: (tokens, outputs, inputs, tile rows, head).
pub const DIRECT_GRAD_CASES: [(usize, usize, usize, usize, usize); 5] = [
    (9, 5, 12, 4, 0),
    (70, 33, 600, 256, 0),
    (40, 24, 1024, 512, 0),
    (17, 8, 530, 256, 3),
    (5, 11, 700, 256, 0),
];

/// g (T, out) and the other operand of a [`DirectGrad`] case on the CPU: wb (nb, out, r) for
/// x's gradient, xb (nb, T, r) for W's, zero past each block's inputs as the DAC and the noise
/// leave them.
pub fn direct_grad_inputs(
    seed: u64,
    target: FixTarget,
    (tokens, n_out, blocks): (usize, usize, &Blocks),
) -> (Tensor, Tensor) {
    let g = Tensor::from_vec(
        normals(seed, tokens * n_out, 1.0),
        (tokens, n_out),
        &Device::Cpu,
    );
    let mid = match target {
        FixTarget::X => n_out,
        FixTarget::W => tokens,
    };
    let mut other = normals(seed + 1, blocks.nb * mid * blocks.r, 1.0);
    for (i, v) in other.iter_mut().enumerate() {
        if i % blocks.r >= blocks.len(i / (mid * blocks.r)) {
            *v = 0.0;
        }
    }
    let other = Tensor::from_vec(other, (blocks.nb, mid, blocks.r), &Device::Cpu);
    (g.unwrap(), other.unwrap())
}

#[test]
fn direct_gradients_equal_the_blocked_products_unblocked() {
    for (i, &(tokens, n_out, n_in, rows, head)) in DIRECT_GRAD_CASES.iter().enumerate() {
        let blocks = Blocks::with_head(n_in, rows, head);
        for target in [FixTarget::X, FixTarget::W] {
            let (g, other) = direct_grad_inputs(70 + i as u64, target, (tokens, n_out, &blocks));
            let direct = g
                .apply_op2_no_bwd(&other, &DirectGrad { blocks, target })
                .unwrap();
            let gb = g.unsqueeze(0).unwrap();
            let blocked = match target {
                FixTarget::X => gb.broadcast_as((blocks.nb, tokens, n_out)).unwrap(),
                FixTarget::W => {
                    let gt = g.t().unwrap().unsqueeze(0).unwrap();
                    gt.broadcast_as((blocks.nb, n_out, tokens)).unwrap()
                }
            }
            .matmul(&other)
            .unwrap();
            let unblock = FusedOp {
                blocks,
                stage: Stage::Unblock,
            };
            let want = blocked.apply_op1_no_bwd(&unblock).unwrap();
            let rows_out = if target == FixTarget::X {
                tokens
            } else {
                n_out
            };
            assert_eq!(direct.dims(), [rows_out, n_in]);
            let label =
                format!("{target:?} gradient {tokens} x {n_out} x {n_in} / {rows} + {head}");
            assert_close(&label, &vec_of(&direct), &vec_of(&want), 1e-4, 1e-4);
        }
    }
}

/// A DAC backward case on the CPU for `blocks`: x (T, n_in) of normals with about a tenth of
/// the inputs beyond their block's range (some exactly at it, where the range's pull counts
/// them but the gradient passes), gx's blocked form gxb (nb, T, r, zero past each block's
/// inputs) and the ranges, the last one 0 (not in use).
pub fn dac_grad_inputs(seed: u64, tokens: usize, blocks: &Blocks) -> [Tensor; 3] {
    let cpu = &Device::Cpu;
    let ranges: Vec<f32> = (0..blocks.nb)
        .map(|s| {
            if s + 1 == blocks.nb && s > 0 {
                0.0
            } else {
                1.5 + 0.1 * s as f32
            }
        })
        .collect();
    let mut x = normals(seed, tokens * blocks.n_in, 1.0);
    for (i, v) in x.iter_mut().enumerate().step_by(7) {
        *v = ranges[blocks.of(i % blocks.n_in).0] * if i % 2 == 0 { 1.0 } else { -1.0 };
    }
    let (x, gxb) = (
        Tensor::from_vec(x, (tokens, blocks.n_in), cpu).unwrap(),
        direct_grad_inputs(seed + 2, FixTarget::W, (tokens, 1, blocks)).1,
    );
    [x, gxb, Tensor::from_vec(ranges, blocks.nb, cpu).unwrap()]
}

/// [`DacGradInPlace`] on a copy of gx (T, n_in): x's gradient and the ranges' (ranges in use,
/// decay 0.01 while half the inputs sit inside).
pub fn dac_grad_in_place(
    blocks: Blocks,
    [gx, x, ranges]: [&Tensor; 3],
    mask: Option<Tensor>,
) -> (Tensor, Tensor) {
    let gx = gx.copy().unwrap();
    let side = SideOutput::default();
    let op = DacGradInPlace {
        blocks,
        used: true,
        decay: 0.01,
        min_inside: 0.5,
        x: x.clone(),
        ranges: ranges.clone(),
        mask,
        ranges_grad: side.clone(),
    };
    gx.inplace_op1(&op).unwrap();
    (gx, side.take().unwrap())
}

/// The DAC's clipped-input count of x (T, n_in) on x's device ([`Stage::Dac`]) added to `prev`
/// (a scalar there).
pub fn clip_total(blocks: Blocks, x: &Tensor, ranges: &Tensor, prev: f32) -> f32 {
    let count = ClipCount {
        prev: Some(Tensor::new(prev, x.device()).unwrap()),
        total: SideOutput::default(),
    };
    let dac = FusedOp {
        blocks,
        stage: Stage::Dac {
            used: true,
            inv_states: None,
            clips: Some(count.clone()),
            mask: None,
        },
    };
    x.apply_op2_no_bwd(ranges, &dac).unwrap();
    count.total.take().unwrap().to_scalar::<f32>().unwrap()
}

/// The DAC's clip mask of x (T, n_in) on x's device ([`Stage::Dac`]).
pub fn clip_mask(blocks: Blocks, x: &Tensor, ranges: &Tensor) -> Tensor {
    let side = SideOutput::default();
    let dac = FusedOp {
        blocks,
        stage: Stage::Dac {
            used: true,
            inv_states: None,
            clips: None,
            mask: Some(side.clone()),
        },
    };
    x.apply_op2_no_bwd(ranges, &dac).unwrap();
    side.take().unwrap()
}

#[test]
fn dac_backward_in_place_equals_the_blocked_one() {
    for (i, &(tokens, _, n_in, rows, head)) in DIRECT_GRAD_CASES.iter().enumerate() {
        let blocks = Blocks::with_head(n_in, rows, head);
        let [x, gxb, ranges] = dac_grad_inputs(90 + i as u64, tokens, &blocks);
        let side = SideOutput::default();
        let stage = Stage::DacGrad {
            used: true,
            decay: 0.01,
            min_inside: 0.5,
            ranges_grad: side.clone(),
        };
        let want = gxb
            .apply_op3_no_bwd(&x, &ranges, &FusedOp { blocks, stage })
            .unwrap();
        let unblock = FusedOp {
            blocks,
            stage: Stage::Unblock,
        };
        let gx = gxb.apply_op1_no_bwd(&unblock).unwrap();
        let (got, gr) = dac_grad_in_place(blocks, [&gx, &x, &ranges], None);
        let label = format!("DAC backward {tokens} x {n_in} / {rows} + {head}");
        assert_close(&label, &vec_of(&got), &vec_of(&want), 0.0, 0.0);
        let want_gr = vec_of(&side.take().unwrap());
        assert_close(
            &format!("{label}: ranges"),
            &vec_of(&gr),
            &want_gr,
            0.0,
            0.0,
        );
        // Zeros where |x| > range (ranges in use), and some inputs sit exactly at it; the mask
        // marks |x| >= range in every block.
        let (xv, gv, rv) = (vec_of(&x), vec_of(&got), vec_of(&ranges));
        let range = |k: usize| rv[blocks.of(k % n_in).0];
        let beyond: Vec<_> = (0..xv.len())
            .filter(|&k| range(k) > 0.0 && xv[k].abs() > range(k))
            .collect();
        assert!(
            !beyond.is_empty() && beyond.iter().all(|&k| gv[k] == 0.0),
            "{label}"
        );
        let mask = vec_of_u8(&clip_mask(blocks, &x, &ranges));
        let bits: u32 = mask.iter().map(|w| w.count_ones()).sum();
        let marked = (0..xv.len()).filter(|&k| xv[k].abs() >= range(k)).count();
        assert_eq!(bits as usize, marked, "{label}: mask bits");
        let at = (0..xv.len()).filter(|&k| range(k) > 0.0 && xv[k].abs() == range(k));
        assert!(at.count() > 0, "{label}: inputs at the range");
        // The clipped count leaves out blocks whose range is not in use (0).
        let clipped = (0..xv.len())
            .filter(|&k| range(k) > 0.0 && xv[k].abs() >= range(k))
            .count();
        assert!(
            clipped > 0 && clipped < marked,
            "{label}: a block with range 0"
        );
        let total = clip_total(blocks, &x, &ranges, 2.5);
        assert_eq!(total, 2.5 + clipped as f32, "{label}: clipped count");
    }
}

/// A u8 tensor's values.
pub fn vec_of_u8(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

/// `range_init_mse` on `dev`: the first training batch sets every range to what
/// `afm eval --calib-mse` picks on a noise-free chip for the same inputs (the eval's own CPU
/// search, `tile::calibrate`), and closes the init window so a second batch leaves them.
pub fn check_mse_range_init(dev: &Device, label: &str) {
    use afm::executor::linear::Calibration;
    use afm::tile::TilePreset;
    let preset = TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    // 1100 inputs on 512-row tiles: three ragged blocks of 367 / 367 / 366.
    let (out, inp, tokens) = (48, 1100, 24);
    let w = Tensor::from_vec(normals(61, out * inp, 0.05), (out, inp), &Device::Cpu).unwrap();
    let mut xv = normals(62, tokens * inp, 1.0);
    // Outliers in the first and last blocks: abs-max would leave their ADC steps coarse.
    xv[5] = 30.0;
    xv[3 * inp + 1000] = -45.0;
    let x = Tensor::from_vec(xv, (tokens, inp), &Device::Cpu).unwrap();
    let want = crate::executor::calibrated(&preset, &w, &x, Some(Calibration::Mse)).0;
    let x2 = Tensor::from_vec(normals(63, tokens * inp, 3.0), (tokens, inp), &Device::Cpu).unwrap();
    for reference in [false, true] {
        let cfg = AnalogTrainConfig {
            range_init_batches: 3,
            range_init_mse: true,
            ..AnalogTrainConfig::default()
        };
        let mut layer =
            AnalogTrainLinear::new(&w.to_device(dev).unwrap(), None, &cfg, 3, "l").unwrap();
        layer.reference = reference;
        layer.state.lock().unwrap().training = true;
        layer.forward(&x.to_device(dev).unwrap()).unwrap();
        let got = vec_of(layer.ranges.as_tensor());
        let what = format!("{label} reference={reference} mse-initialized ranges");
        assert_close(&what, &got, &want, 0.0, 1e-6);
        assert!(!layer.initializing().unwrap(), "{what}: window still open");
        layer.forward(&x2.to_device(dev).unwrap()).unwrap();
        assert_close(&what, &vec_of(layer.ranges.as_tensor()), &want, 0.0, 0.0);
    }
    assert!(
        want[0] < 30.0 && want[2] < 45.0,
        "the outlier blocks keep their abs-max: {want:?}"
    );
}

#[test]
fn mse_range_init_equals_the_eval_calibration() {
    check_mse_range_init(&Device::Cpu, "cpu");
}

#[test]
fn mse_range_init_needs_an_init_window() {
    let cfg = AnalogTrainConfig {
        range_init_batches: 0,
        range_init_mse: true,
        ..AnalogTrainConfig::default()
    };
    let (field, msg) = cfg.check().unwrap_err();
    assert_eq!(field, "range_init_mse", "{msg}");
}

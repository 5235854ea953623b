//! The fused analog MVM against its plain-tensor reference, determinism, and error handling.

use crate::common::{assert_close, normals, repo};
use afm::device::DeviceConfig;
use afm::tile::{analog_mvm, analog_mvm_reference, quantize, AnalogLayer, TilePreset};
use candle_core::{Device, Tensor};

fn preset(name: &str) -> TilePreset {
    TilePreset::load(&repo(&format!("tiles/{name}.toml"))).unwrap()
}

/// A preset with every per-MVM noise source on, on the given device and geometry.
fn noisy(rows: i64, cols: i64, device: DeviceConfig) -> TilePreset {
    let mut p = preset("afm-paper");
    p.tile.rows = rows;
    p.tile.cols = cols;
    p.device = device;
    p.drift_time_s = 86_400.0;
    p.noise.output_gamma = 0.04;
    p.noise.read_rel = 0.05;
    p.noise.read_abs = 0.01;
    p
}

fn ranges_for(layer: &AnalogLayer, base: f32) -> Vec<f32> {
    (0..layer.blocks.len())
        .map(|s| base + 0.37 * s as f32)
        .collect()
}

/// Largest possible fused-vs-reference gap per output element: one ADC step per row block.
fn adc_slack(layer: &AnalogLayer, ranges: &[f32]) -> Vec<f32> {
    let levels = ((1u64 << layer.cfg.adc_bits) - 2) as f32;
    (0..layer.out_features())
        .map(|c| {
            layer
                .blocks
                .iter()
                .zip(ranges)
                .map(|(b, r)| b.alpha[c] * 2.0 * layer.cfg.lambda * b.w_max[c] * r / levels)
                .sum()
        })
        .collect()
}

/// `got` equals `want` to float tolerance but for elements at most one ADC step per row block
/// away (`slack` per output column), at most 1% of them: the rounding ties a different
/// summation order may flip.
fn assert_within_adc_slack(label: &str, got: &[f32], want: &[f32], slack: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let mut off = 0;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        if d > 1e-4 * (1.0 + b.abs()) {
            off += 1;
            assert!(
                d <= slack[i % slack.len()] * 1.001,
                "{label}: element {i}: {a} vs {b}"
            );
        }
    }
    assert!(
        off * 100 <= got.len(),
        "{label}: {off} of {} differ",
        got.len()
    );
}

/// The fused CPU MVM of `layer` on `x` (`tokens` rows) against its plain-tensor reference, with
/// [`ranges_for`] ranges and MVM call 3: equal but for outputs one ADC step per block apart.
fn check_fused_against_reference(label: &str, layer: &AnalogLayer, x: &[f32], tokens: usize) {
    let ranges = ranges_for(layer, 1.5);
    let fused = analog_mvm(layer, x, tokens, &ranges, 3).unwrap();
    let xt = Tensor::from_slice(x, (tokens, layer.in_features()), &Device::Cpu).unwrap();
    let reference = analog_mvm_reference(layer, &xt, &ranges, 3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_within_adc_slack(label, &fused, &reference, &adc_slack(layer, &ranges));
}

#[test]
fn quantizer_hand_values() {
    // 8 bits: 254 steps over [-1, 1], step 1/127; 63.5 rounds half to even -> 64.
    assert_eq!(quantize(0.5, 1.0, 8), 64.0 / 127.0);
    assert_eq!(quantize(-0.5, 1.0, 8), -64.0 / 127.0);
    assert_eq!(quantize(3.0, 1.0, 8), 1.0);
    assert_eq!(quantize(-3.0, 2.0, 8), -2.0);
    // 4 bits: 14 steps over [-1, 1], step 1/7.
    assert!((quantize(0.2, 1.0, 4) - 1.0 / 7.0).abs() < 1e-7);
    assert_eq!(quantize(0.3, 1.0, 0), 0.3);
}

#[test]
fn fused_matches_reference_on_random_shapes() {
    let devices = [
        DeviceConfig::Ideal,
        DeviceConfig::Gaussian {
            sigma_rel: 0.03,
            noise_scale: 1.0,
        },
        preset("afm-paper").device,
        preset("pcm-aihwkit").device,
        preset("hermes").device,
    ];
    // (in, out, tokens, tile rows, tile cols): ragged last tiles in both directions; up to 16
    // tokens take the few-row products, then the GEMM split over columns (20 tokens), over
    // token chunks of 64 with column chunks of 1024 (130 tokens: a ragged last chunk of each)
    // and over chunks of 256 tokens and 256 columns (1030 tokens).
    let shapes = [
        (37, 11, 3, 16, 8),
        (100, 70, 5, 32, 64),
        (513, 129, 4, 512, 128),
        (300, 33, 7, 64, 16),
        (1100, 96, 6, 512, 512),
        (70, 40, 20, 32, 16),
        (300, 1100, 130, 128, 256),
        (100, 300, 1030, 64, 64),
    ];
    for (k, &(n_in, n_out, tokens, rows, cols)) in shapes.iter().enumerate() {
        for (d, dev) in devices.iter().enumerate() {
            let p = noisy(rows, cols, dev.clone());
            let seed = (10 * k + d) as u64;
            let w = normals(seed, n_out * n_in, 0.1);
            let x = normals(seed + 1000, tokens * n_in, 1.0);
            let layer = AnalogLayer::program(&w, n_out, n_in, &p, seed, "layer").unwrap();
            check_fused_against_reference(&format!("shape {k} device {d}"), &layer, &x, tokens);
        }
    }
}

/// The blocked path (`AnalogLayer::forward_blocked`) on `dev` against the fused CPU path, on
/// ragged shapes with and without an isolated head block, for devices without per-MVM noise:
/// equal but for outputs a product's summation order moves across an ADC level.
pub fn check_blocked_against_fused(dev: &Device) {
    let devices = [
        DeviceConfig::Ideal,
        preset("afm-paper").device,
        preset("pcm-aihwkit").device,
    ];
    // (in, out, tokens, tile rows, tile cols, head, dac bits, adc bits)
    let shapes = [
        (37, 11, 3, 16, 8, 0, 8, 8),
        (100, 70, 5, 32, 64, 5, 8, 8),
        (513, 129, 4, 512, 128, 16, 8, 8),
        (300, 33, 70, 64, 16, 0, 4, 6),
        (1100, 96, 6, 512, 512, 16, 8, 0),
        (200, 40, 9, 64, 32, 3, 0, 8),
    ];
    for (k, &(n_in, n_out, tokens, rows, cols, head, dac, adc)) in shapes.iter().enumerate() {
        for (d, device) in devices.iter().enumerate() {
            let mut p = noisy(rows, cols, device.clone());
            (p.noise.output_gamma, p.noise.read_rel, p.noise.read_abs) = (0.0, 0.0, 0.0);
            (p.dac.bits, p.adc.bits) = (dac, adc);
            let seed = (10 * k + d) as u64;
            let w = normals(seed, n_out * n_in, 0.1);
            let x = normals(seed + 1000, tokens * n_in, 1.0);
            let layer =
                AnalogLayer::program_with_head(&w, n_out, n_in, head, &p, seed, "layer").unwrap();
            let ranges = ranges_for(&layer, 1.5);
            let fused = analog_mvm(&layer, &x, tokens, &ranges, 0).unwrap();
            let xt = Tensor::from_slice(&x, (1, tokens, n_in), dev).unwrap();
            let y = layer.forward_blocked(&xt, &ranges).unwrap();
            assert_eq!(y.dims(), [1, tokens, n_out]);
            let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Without an ADC nothing may move beyond float tolerance.
            let slack = if adc > 0 {
                adc_slack(&layer, &ranges)
            } else {
                vec![0.0; n_out]
            };
            assert_within_adc_slack(
                &format!("{dev:?} shape {k} device {d}"),
                &got,
                &fused,
                &slack,
            );
        }
    }
}

#[test]
fn blocked_path_matches_fused_on_the_cpu() {
    check_blocked_against_fused(&Device::Cpu);
}

#[test]
fn blocked_path_refuses_per_mvm_noise() {
    let p = noisy(64, 32, DeviceConfig::Ideal);
    let layer = AnalogLayer::program(&normals(1, 10 * 100, 0.1), 10, 100, &p, 0, "l").unwrap();
    let x = Tensor::from_slice(&normals(2, 300, 1.0), (3, 100), &Device::Cpu).unwrap();
    let err = layer
        .forward_blocked(&x, &ranges_for(&layer, 1.0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("noise.read_rel") && err.contains("--device cpu"),
        "{err}"
    );
}

#[test]
fn ideal_tile_without_converters_is_exact() {
    let mut p = preset("ideal");
    p.dac.bits = 0;
    p.adc.bits = 0;
    let (n_in, n_out, tokens) = (700, 50, 4);
    let w = normals(1, n_out * n_in, 0.05);
    let x = normals(2, tokens * n_in, 1.0);
    let layer = AnalogLayer::program(&w, n_out, n_in, &p, 0, "exact").unwrap();
    let y = analog_mvm(&layer, &x, tokens, &[1e9, 1e9], 0).unwrap();
    let mut exact = vec![0f32; tokens * n_out];
    for t in 0..tokens {
        for c in 0..n_out {
            exact[t * n_out + c] = (0..n_in)
                .map(|i| f64::from(x[t * n_in + i]) * f64::from(w[c * n_in + i]))
                .sum::<f64>() as f32;
        }
    }
    assert_close("ideal analog vs f64 product", &y, &exact, 1e-4, 1e-4);
}

#[test]
fn same_seed_same_bits_for_any_thread_count() {
    let p = noisy(128, 64, preset("pcm-aihwkit").device);
    let (n_in, n_out, tokens) = (333, 150, 9);
    let w = normals(5, n_out * n_in, 0.1);
    let x = normals(6, tokens * n_in, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let layer = AnalogLayer::program(&w, n_out, n_in, &p, 42, "det").unwrap();
            let ranges = ranges_for(&layer, 2.0);
            analog_mvm(&layer, &x, tokens, &ranges, 7).unwrap()
        })
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        let many = run(threads);
        assert!(
            one.iter()
                .zip(&many)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{threads} threads differ from 1 thread"
        );
    }
    let other_seed = {
        let layer = AnalogLayer::program(&w, n_out, n_in, &p, 43, "det").unwrap();
        analog_mvm(&layer, &x, tokens, &ranges_for(&layer, 2.0), 7).unwrap()
    };
    assert!(one.iter().zip(&other_seed).any(|(a, b)| a != b));
}

#[test]
fn per_mvm_noise_changes_per_call_but_chip_stays() {
    let p = noisy(64, 64, DeviceConfig::Ideal);
    let (n_in, n_out, tokens) = (100, 20, 2);
    let w = normals(8, n_out * n_in, 0.1);
    let x = normals(9, tokens * n_in, 1.0);
    let layer = AnalogLayer::program(&w, n_out, n_in, &p, 1, "calls").unwrap();
    let r = ranges_for(&layer, 2.0);
    let a = analog_mvm(&layer, &x, tokens, &r, 0).unwrap();
    let b = analog_mvm(&layer, &x, tokens, &r, 1).unwrap();
    let a2 = analog_mvm(&layer, &x, tokens, &r, 0).unwrap();
    assert_ne!(a, b);
    assert_eq!(a, a2);
}

#[test]
fn custom_op_keeps_leading_dims() {
    let p = preset("afm-paper");
    let (n_in, n_out) = (600, 40);
    let w = normals(11, n_out * n_in, 0.1);
    let x = normals(12, 2 * 3 * n_in, 1.0);
    let layer = AnalogLayer::program(&w, n_out, n_in, &p, 0, "op").unwrap();
    let r = ranges_for(&layer, 2.5);
    let xt = Tensor::from_slice(&x, (2, 3, n_in), &Device::Cpu).unwrap();
    let y = layer.forward(&xt, &r, 4).unwrap();
    assert_eq!(y.dims(), &[2, 3, n_out]);
    let direct = analog_mvm(&layer, &x, 6, &r, 4).unwrap();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), direct);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let p = preset("afm-paper");
    let w = normals(1, 10 * 20, 0.1);
    assert!(AnalogLayer::program(&w, 10, 21, &p, 0, "l").is_err());
    let mut nan_w = w.clone();
    nan_w[57] = f32::NAN;
    let e = AnalogLayer::program(&nan_w, 10, 20, &p, 0, "l").unwrap_err();
    assert!(e.to_string().contains("[2, 17]"), "{e}");
    let layer = AnalogLayer::program(&w, 10, 20, &p, 0, "l").unwrap();
    let x = normals(2, 3 * 20, 1.0);
    assert!(analog_mvm(&layer, &x, 3, &[1.0, 2.0], 0).is_err());
    assert!(analog_mvm(&layer, &x, 3, &[0.0], 0).is_err());
    assert!(analog_mvm(&layer, &x, 3, &[f32::NAN], 0).is_err());
    assert!(analog_mvm(&layer, &x[1..], 3, &[1.0], 0).is_err());
    let xt = Tensor::from_slice(&x, (3, 20), &Device::Cpu).unwrap();
    assert!(layer
        .forward(&xt.narrow(1, 0, 19).unwrap(), &[1.0], 0)
        .is_err());
}

#[test]
fn drift_compensation_restores_the_output_scale() {
    let mut p = preset("pcm-aihwkit");
    p.drift_time_s = 365.0 * 86_400.0;
    let (n_in, n_out, tokens) = (512, 64, 16);
    let w = normals(21, n_out * n_in, 0.05);
    let x = normals(22, tokens * n_in, 1.0);
    let mean_ratio = |p: &TilePreset| {
        let layer = AnalogLayer::program(&w, n_out, n_in, p, 3, "drift").unwrap();
        let mut ideal = p.clone();
        ideal.device = DeviceConfig::Ideal;
        let exact = AnalogLayer::program(&w, n_out, n_in, &ideal, 3, "drift").unwrap();
        let y = analog_mvm(&layer, &x, tokens, &[3.0], 0).unwrap();
        let e = analog_mvm(&exact, &x, tokens, &[3.0], 0).unwrap();
        let num: f64 = y.iter().zip(&e).map(|(a, b)| f64::from(a * b)).sum();
        let den: f64 = e.iter().map(|b| f64::from(b * b)).sum();
        num / den
    };
    let without = {
        let mut q = p.clone();
        q.drift_compensation = false;
        mean_ratio(&q)
    };
    let with = mean_ratio(&p);
    // A year of drift at nu ~ 0.05..0.1 shrinks conductances by (1.6e6)^-nu, i.e. to 0.3..0.5.
    assert!(without < 0.7, "uncompensated gain {without}");
    assert!((with - 1.0).abs() < 0.1, "compensated gain {with}");
}

/// Squared error of a programmed layer's weights against `w` (out x in), summed.
fn weight_sq_error(layer: &AnalogLayer, w: &[f32]) -> f64 {
    let n_in = layer.in_features();
    let mut e = 0.0;
    for b in &layer.blocks {
        for (k, &got) in b.w.iter().enumerate() {
            let (c, j) = (k / b.len, b.start + k % b.len);
            e += (f64::from(got) - f64::from(w[c * n_in + j])).powi(2);
        }
    }
    e
}

#[test]
fn weight_clip_least_error_lowers_the_programmed_error() {
    use afm::tile::program::Placement;
    use afm::tile::WeightClip;
    // 700 inputs on 512-row tiles: a ragged split (a 16-input head block, then 684 in two).
    let (n_out, n_in) = (48, 700);
    let mut w = normals(21, n_out * n_in, 0.05);
    w[3 * n_in + 5] = 0.6; // one outlier weight in a column
    let place = |clip| Placement {
        head: 16,
        clip,
        ..Placement::default()
    };
    let prog = |p: &TilePreset, clip| {
        AnalogLayer::program_placed(&w, n_out, n_in, place(clip), p, 7, "clip").unwrap()
    };
    let afm = preset("afm-paper");
    let (off, on) = (
        prog(&afm, WeightClip::Off),
        prog(&afm, WeightClip::LeastError),
    );
    let (e_off, e_on) = (weight_sq_error(&off, &w), weight_sq_error(&on, &w));
    assert!(
        e_on < 0.95 * e_off,
        "clipped {e_on:.4e} vs plain {e_off:.4e}"
    );
    let mut clipped = 0;
    for (a, b) in off.blocks.iter().zip(&on.blocks) {
        for (m_off, m_on) in a.w_max.iter().zip(&b.w_max) {
            assert!(m_on <= m_off && *m_on >= 0.5 * m_off, "{m_on} vs {m_off}");
            clipped += usize::from(m_on < m_off);
        }
    }
    assert!(clipped > 0, "nothing clipped");
    // A noise-free device has nothing to trade: the layer is the plain mapping, bit for bit.
    let ideal = preset("ideal");
    let (a, b) = (
        prog(&ideal, WeightClip::Off),
        prog(&ideal, WeightClip::LeastError),
    );
    for (x, y) in a.blocks.iter().zip(&b.blocks) {
        assert_eq!((&x.w, &x.w_max), (&y.w, &y.w_max));
    }
}

#[test]
fn head_copies_average_the_head_blocks_programming_noise() {
    use afm::tile::program::Placement;
    let (n_out, n_in, head) = (96, 700, 16);
    let w = normals(31, n_out * n_in, 0.05);
    let prog = |p: &TilePreset, copies| {
        let place = Placement {
            head,
            head_copies: copies,
            ..Placement::default()
        };
        AnalogLayer::program_placed(&w, n_out, n_in, place, p, 9, "copies")
    };
    let head_error = |l: &AnalogLayer| {
        let b = &l.blocks[0];
        assert_eq!((b.start, b.len), (0, head));
        b.w.iter()
            .enumerate()
            .map(|(k, &got)| (f64::from(got) - f64::from(w[(k / head) * n_in + k % head])).powi(2))
            .sum::<f64>()
    };
    let afm = preset("afm-paper");
    let one = prog(&afm, 1).unwrap();
    let eight = prog(&afm, 8).unwrap();
    // Independent programming noise of 8 summed copies: 1/8 of the variance, plus the zero
    // band's bias, which copies do not average.
    let (e1, e8) = (head_error(&one), head_error(&eight));
    assert!(e8 < 0.3 * e1, "8 copies {e8:.4e} vs one {e1:.4e}");
    // The ADC bound in weight units is 8x smaller; the other blocks are programmed as before.
    let eighth: Vec<f32> = one.blocks[0].w_max.iter().map(|m| m / 8.0).collect();
    assert_close("head w_max", &eight.blocks[0].w_max, &eighth, 0.0, 1e-6);
    for (a, b) in one.blocks[1..].iter().zip(&eight.blocks[1..]) {
        assert_eq!((&a.w, &a.w_max), (&b.w, &b.w_max));
    }
    // The copies must fit the tile's 512 rows.
    let err = prog(&afm, 33).unwrap_err().to_string();
    assert!(err.contains("33 copies"), "{err}");
    // With every per-MVM noise source on, the fused path still matches the reference.
    let p = noisy(512, 64, afm.device.clone());
    let layer = prog(&p, 4).unwrap();
    let tokens = 5;
    let x = normals(77, tokens * n_in, 1.0);
    check_fused_against_reference("head copies", &layer, &x, tokens);
}

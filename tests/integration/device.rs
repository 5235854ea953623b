//! Device models: hand-checkable properties (the published statistics are in `golden`).

use afm::device::{afm_sigma, ColumnStreams, DeviceConfig};
use afm::rng::{Effect, StreamKey};

fn streams(seed: u64) -> ColumnStreams {
    let k = |e| StreamKey::new(seed, 1, 2, e).rng(0);
    ColumnStreams {
        program: k(Effect::Program),
        drift: k(Effect::DriftNu),
        read: k(Effect::ReadAtTime),
    }
}

fn realize(cfg: &DeviceConfig, target: &[f32], t_s: f64, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; target.len()];
    let mut sq = vec![0f32; target.len()];
    cfg.build()
        .realize_column(target, t_s, &mut streams(seed), &mut out, &mut sq);
    out
}

#[test]
fn afm_polynomial_values() {
    // The two cubic branches meet (nearly) continuously at 52.5 and give ~2.58 at 0.
    assert!((afm_sigma(0.0) - 2.5797410660159494).abs() < 1e-12);
    assert!((afm_sigma(52.5) - afm_sigma(52.5 + 1e-9)).abs() < 0.05);
    assert!(afm_sigma(180.0) > afm_sigma(100.0));
}

#[test]
fn afm_zero_band_and_noise_level() {
    let cfg = DeviceConfig::PcmAfm {
        gmax: 180.0,
        zero_band: 0.6,
        noise_scale: 1.0,
    };
    // |u| * 180 < 0.6 is programmed to exactly zero.
    let small = vec![0.5 / 180.0; 1000];
    assert!(realize(&cfg, &small, 0.0, 1).iter().all(|&v| v == 0.0));
    let n = 200_000;
    let w = 100.0 / 180.0;
    let out = realize(&cfg, &vec![w as f32; n], 0.0, 2);
    let d: Vec<f64> = out.iter().map(|v| (f64::from(*v) - w) * 180.0).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let std = (d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt();
    assert!(mean.abs() < 0.05, "mean {mean}");
    assert!((std / afm_sigma(100.0) - 1.0).abs() < 0.01, "std {std}");
}

#[test]
fn gaussian_is_relative_to_column_max() {
    let cfg = DeviceConfig::Gaussian {
        sigma_rel: 0.02,
        noise_scale: 2.0,
    };
    let n = 100_000;
    let out = realize(&cfg, &vec![0.3; n], 0.0, 3);
    let var = out.iter().map(|v| (v - 0.3) * (v - 0.3)).sum::<f32>() / n as f32;
    assert!((var.sqrt() / 0.04 - 1.0).abs() < 0.02, "std {}", var.sqrt());
}

#[test]
fn hermes_defaults_follow_device_count() {
    let one: DeviceConfig = toml::from_str("model = \"hermes\"\nnum_devices = 1").unwrap();
    let DeviceConfig::Hermes { g_max_us, t0_s, .. } = one.resolved() else {
        panic!("not hermes")
    };
    assert_eq!((g_max_us, t0_s), (Some(10.35), Some(200.0)));
    let two: DeviceConfig = toml::from_str("model = \"hermes\"").unwrap();
    let DeviceConfig::Hermes { g_max_us, t0_s, .. } = two.resolved() else {
        panic!("not hermes")
    };
    assert_eq!((g_max_us, t0_s), (Some(20.7), Some(300.0)));
}

#[test]
fn pcm_drifts_down_with_time() {
    let cfg: DeviceConfig = toml::from_str("model = \"pcm-aihwkit\"").unwrap();
    let target = vec![0.6f32; 20_000];
    let mean = |t| realize(&cfg, &target, t, 4).iter().sum::<f32>() / target.len() as f32;
    let (m0, m1, m2) = (mean(0.0), mean(3600.0), mean(3.15e7));
    assert!(m0 > m1 && m1 > m2, "{m0} {m1} {m2}");
    // Same chip (streams) at every t: programming and nu are shared, only time differs.
    assert_eq!(
        realize(&cfg, &target, 60.0, 9),
        realize(&cfg, &target, 60.0, 9)
    );
}

/// Mean squared error of `n` weights realized at target `u` at t = 0.
fn realized_sq_error(cfg: &DeviceConfig, u: f32, n: usize, seed: u64) -> f64 {
    let out = realize(cfg, &vec![u; n], 0.0, seed);
    out.iter()
        .map(|&v| (f64::from(v) - f64::from(u)).powi(2))
        .sum::<f64>()
        / n as f64
}

#[test]
fn expected_sq_error_matches_the_realized_devices() {
    let afm: DeviceConfig = toml::from_str("model = \"pcm-afm\"").unwrap();
    let gauss = DeviceConfig::Gaussian {
        sigma_rel: 0.03,
        noise_scale: 1.0,
    };
    // Programming noise only: drift and 1/f noise are what the expectation leaves out.
    let pcm: DeviceConfig =
        toml::from_str("model = \"pcm-aihwkit\"\ndrift_scale = 0.0\nread_noise_scale = 0.0")
            .unwrap();
    let cases = [
        (&afm, 0.8f32),
        (&afm, 0.3),
        (&afm, 0.002), // in the zero band: the error is the weight itself
        (&afm, -0.5),
        (&gauss, 0.4),
        (&pcm, 0.7),
        (&pcm, -0.2),
    ];
    for (k, (cfg, u)) in cases.into_iter().enumerate() {
        let want = cfg.build().expected_sq_error(f64::from(u));
        let got = realized_sq_error(cfg, u, 100_000, 10 + k as u64);
        assert!(
            (got / want - 1.0).abs() < 0.03,
            "{cfg:?} at u = {u}: realized {got:.3e}, expected {want:.3e}"
        );
    }
}

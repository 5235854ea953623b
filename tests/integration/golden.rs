//! Comparisons with real peers through committed golden files, produced by
//! `tests/golden/make_golden.py` (aihwkit-lightning 2.1.0, aihwkit 1.2.0); no Python needed here.

use crate::common::{rel_diff, repo};
use afm::device::{ColumnStreams, Device, DeviceConfig, PcmModel, AFM_GMAX};
use afm::rng::{Effect, StreamKey};
use afm::tile::{analog_mvm, AnalogLayer, TilePreset};
use candle_core::Tensor;
use rayon::prelude::*;
use serde_json::Value;

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(path)).unwrap()).unwrap()
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// aihwkit-lightning `AnalogLinear` (torch path, eval, inp_res = out_res = 254, out_bound 14,
/// max_input_size 512, per-channel ADC bound): our output equals theirs within one ADC step
/// (bit-exact where every float operation is exact).
#[test]
fn lightning_analog_linear_forward() {
    let meta = json("tests/golden/lightning_forward.json");
    let tensors = candle_core::safetensors::load(
        repo("tests/golden/lightning_forward.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let cfg = &meta["config"];
    let mut preset = TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    preset.tile.rows = cfg["max_input_size"].as_i64().unwrap();
    preset.adc.lambda = cfg["out_bound"].as_f64().unwrap();
    assert_eq!(cfg["inp_res"].as_f64(), Some(254.0));
    assert_eq!(cfg["out_res"].as_f64(), Some(254.0));
    let cases = meta["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 4);
    for (name, case) in cases {
        let get = |t: &str| vec_of(&tensors[&format!("{name}.{t}")]);
        let (n_in, n_out, tokens) = (
            case["in"].as_u64().unwrap() as usize,
            case["out"].as_u64().unwrap() as usize,
            case["tokens"].as_u64().unwrap() as usize,
        );
        let layer = AnalogLayer::program(&get("weight"), n_out, n_in, &preset, 0, name).unwrap();
        let sizes: Vec<usize> = layer.map.row_blocks.iter().map(|b| b.1).collect();
        let theirs: Vec<usize> = case["slice_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            sizes, theirs,
            "{name}: row blocks differ from lightning's slices"
        );
        let ranges = get("input_ranges");
        let mut y = analog_mvm(&layer, &get("x"), tokens, &ranges, 0).unwrap();
        if case["has_bias"].as_bool().unwrap() {
            let bias = get("bias");
            for row in y.chunks_mut(n_out) {
                row.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
            }
        }
        let want = get("y");
        let exact = case["exact_float32_arithmetic"].as_bool().unwrap();
        let mut differing = 0;
        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
            let c = i % n_out;
            let step: f32 = layer
                .blocks
                .iter()
                .zip(&ranges)
                .map(|(blk, r)| 2.0 * 14.0 * blk.w_max[c] * r / 254.0)
                .fold(0.0, f32::max);
            let d = (a - b).abs();
            if exact {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
            } else {
                assert!(
                    d <= step + 1e-5 * b.abs().max(1.0),
                    "{name}[{i}]: {a} vs {b}, step {step}"
                );
            }
            if d > 1e-5 * b.abs().max(1.0) {
                differing += 1;
            }
        }
        // The inputs keep away from rounding ties, so a flipped level would mean a real bug.
        assert_eq!(
            differing, 0,
            "{name}: {differing} outputs differ by more than float error"
        );
    }
}

struct Moments {
    mean: f64,
    std: f64,
}

fn moments(v: impl Iterator<Item = f64> + Clone) -> Moments {
    let n = v.clone().count() as f64;
    let mean = v.clone().sum::<f64>() / n;
    let var = v.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Moments {
        mean,
        std: var.sqrt(),
    }
}

/// A mean agrees if it is within 2% of the reference std (it is often near zero); a std or a
/// drift factor within 2% relative.
fn check(what: &str, ours: f64, theirs: f64, scale: f64) {
    let ok = if scale > 0.0 {
        (ours - theirs).abs() <= 0.02 * scale
    } else {
        rel_diff(ours, theirs) <= 0.02 || (ours - theirs).abs() < 1e-9
    };
    assert!(ok, "{what}: ours {ours:.6} vs aihwkit {theirs:.6}");
}

fn pcm_model(name: &str) -> PcmModel {
    let cfg: DeviceConfig = match name {
        "pcm_aihwkit" => toml::from_str("model = \"pcm-aihwkit\"").unwrap(),
        "hermes_1" => toml::from_str("model = \"hermes\"\nnum_devices = 1").unwrap(),
        _ => toml::from_str("model = \"hermes\"\nnum_devices = 2").unwrap(),
    };
    match cfg.build() {
        Device::Pcm(m) => m,
        other => panic!("{other:?} is not a PCM model"),
    }
}

/// Programming error, drift exponents, drift factor and the conductance at 1 h / 1 day / 1 year
/// of `pcm-aihwkit` and `hermes` (1 and 2 devices) against aihwkit's own noise classes, 10^6
/// samples per conductance bin on both sides.
#[test]
fn aihwkit_noise_statistics() {
    let meta = json("tests/golden/noise_stats.json");
    let n = meta["samples_per_bin"].as_u64().unwrap() as usize;
    assert_eq!(n, 1_000_000);
    for name in ["pcm_aihwkit", "hermes_1", "hermes_2"] {
        let model = &meta["models"][name];
        let m = pcm_model(name);
        assert!(
            (m.g_max_us - model["g_max_us"].as_f64().unwrap()).abs() < 1e-9,
            "{name} g_max"
        );
        assert!(
            (m.t0_s - model["t0_s"].as_f64().unwrap()).abs() < 1e-9,
            "{name} t0"
        );
        assert!(
            (m.t_read_s - model["t_read_s"].as_f64().unwrap()).abs() < 1e-15,
            "{name} t_read"
        );
        let bins = model["bins"].as_array().unwrap();
        bins.par_iter().enumerate().for_each(|(b, bin)| {
            let g = bin["g_target_us"].as_f64().unwrap();
            let key = |e| StreamKey::new(17, b as u64, 0, e).rng(0);
            let mut s = ColumnStreams {
                program: key(Effect::Program),
                drift: key(Effect::DriftNu),
                read: key(Effect::ReadAtTime),
            };
            let samples: Vec<(f64, f64)> = (0..n)
                .map(|_| {
                    let gp = m.program(g, s.program.normal_f64());
                    (gp, m.nu(g, s.drift.normal_f64()))
                })
                .collect();
            let at = |k: &str| bin[k].as_f64().unwrap();
            let tag = format!("{name} g={g}");
            let prog = moments(samples.iter().map(|(gp, _)| gp - g));
            check(
                &format!("{tag} prog mean"),
                prog.mean,
                at("prog_mean_us"),
                at("prog_std_us"),
            );
            check(&format!("{tag} prog std"), prog.std, at("prog_std_us"), 0.0);
            let nu = moments(samples.iter().map(|(_, nu)| *nu));
            check(&format!("{tag} nu mean"), nu.mean, at("nu_mean"), 0.0);
            check(&format!("{tag} nu std"), nu.std, at("nu_std"), 0.0);
            for d in bin["drift"].as_array().unwrap() {
                let t = d["t_inference_s"].as_f64().unwrap();
                let tt = (t + m.t0_s) / m.t0_s;
                let factor = samples.iter().map(|(_, nu)| tt.powf(-nu)).sum::<f64>() / n as f64;
                check(
                    &format!("{tag} t={t} drift factor"),
                    factor,
                    d["drift_factor_mean"].as_f64().unwrap(),
                    0.0,
                );
                let fin = moments(
                    samples
                        .iter()
                        .map(|&(gp, nu)| m.at_time(gp, nu, t, s.read.normal_f64()))
                        .collect::<Vec<_>>()
                        .into_iter(),
                );
                let want_std = d["g_final_std_us"].as_f64().unwrap();
                check(
                    &format!("{tag} t={t} g mean"),
                    fin.mean,
                    d["g_final_mean_us"].as_f64().unwrap(),
                    want_std,
                );
                check(&format!("{tag} t={t} g std"), fin.std, want_std, 0.0);
            }
        });
    }
}

/// `pcm-afm` against the AFM paper's helper (transcribed in the golden script): same per-bin
/// mean and std of the programming error in the helper's units (|w| <= 180).
#[test]
fn afm_paper_noise_statistics() {
    let meta = json("tests/golden/noise_stats.json");
    let model = &meta["models"]["pcm_afm"];
    assert_eq!(model["gmax"].as_f64(), Some(AFM_GMAX));
    let dev = DeviceConfig::PcmAfm {
        gmax: AFM_GMAX,
        zero_band: 0.6,
        noise_scale: 1.0,
    }
    .build();
    let n = 1_000_000;
    for (b, bin) in model["bins"].as_array().unwrap().iter().enumerate() {
        let w = bin["w"].as_f64().unwrap();
        let target = vec![(w / AFM_GMAX) as f32; n];
        let key = |e| StreamKey::new(23, b as u64, 0, e).rng(0);
        let mut s = ColumnStreams {
            program: key(Effect::Program),
            drift: key(Effect::DriftNu),
            read: key(Effect::ReadAtTime),
        };
        let (mut out, mut sq) = (vec![0f32; n], vec![0f32; n]);
        dev.realize_column(&target, 0.0, &mut s, &mut out, &mut sq);
        let err = moments(
            out.iter()
                .zip(&target)
                .map(|(o, t)| f64::from(o - t) * AFM_GMAX),
        );
        let want_std = bin["prog_std"].as_f64().unwrap();
        check(&format!("pcm-afm w={w} std"), err.std, want_std, 0.0);
        let scale = if want_std > 0.0 { want_std } else { 1e-3 };
        check(
            &format!("pcm-afm w={w} mean"),
            err.mean,
            bin["prog_mean"].as_f64().unwrap(),
            scale,
        );
    }
}

//! `afm quantize`: RTN levels and scales on a hand-checkable matrix, the half-step error bound
//! on random ones, static input levels, and a quantized tiny model that saves, loads and runs
//! with the same logits (calibrated ranges and an analog model's learned ones).

use crate::common::{afm, normals, temp_dir};
use afm::executor::decoder::KvCache;
use afm::executor::load::load_model;
use afm::quant::export::{quantize_model, RangeSource};
use afm::quant::input::StaticInput;
use afm::quant::rtn::{quantize, Grouping, QuantizedWeight};
use afm::tile::mapping::split_sizes;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

#[test]
fn rtn_levels_and_scales_by_hand() {
    // Powers of two keep every quotient exact; 2.5 is a tie and rounds away from zero.
    let w = [7.0, -3.0, 1.0, 0.0, 3.5, 1.25, -0.5, 0.0];
    let q = quantize(&w, 2, 4, 4, Grouping::PerChannel).unwrap();
    assert_eq!(q.levels, vec![7, -3, 1, 0, 7, 3, -1, 0]);
    assert_eq!(q.scales, vec![1.0, 0.5]);
    assert_eq!(
        q.dequantize(),
        vec![7.0, -3.0, 1.0, 0.0, 3.5, 1.5, -0.5, 0.0]
    );
    // Groups of 3 over rows of 4: a ragged last group, here all zero (scale 0).
    let g = quantize(&w, 2, 4, 4, Grouping::Group { size: 3 }).unwrap();
    assert_eq!(g.levels, vec![7, -3, 1, 0, 7, 3, -1, 0]);
    assert_eq!(g.scales, vec![1.0, 0.0, 0.5, 0.0]);
    // 3 bits: levels -3..=3, scale max/3.
    let t = quantize(&[3.0, -1.5, 0.9, 0.0], 1, 4, 3, Grouping::PerChannel).unwrap();
    assert_eq!(t.levels, vec![3, -2, 1, 0]);
    // Packing: two levels per byte as level + 8, low nibble first, odd rows padded.
    let p = quantize(&[7.0, -7.0, 1.0], 1, 3, 4, Grouping::PerChannel).unwrap();
    assert_eq!(p.pack_nibbles(), vec![0x1f, 0x09]);
    let back = QuantizedWeight::from_nibbles("p", &[0x1f, 0x09], p.scales.clone(), 1, 3, 3, 4);
    assert_eq!(back.unwrap(), p);
    let e = QuantizedWeight::from_nibbles("p", &[0x0f, 0x09], vec![1.0], 1, 3, 3, 4).unwrap_err();
    assert!(e.to_string().contains("level -8"), "{e}");
    let e = quantize(&[f32::NAN, 1.0], 1, 2, 4, Grouping::PerChannel).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
}

#[test]
fn rtn_error_is_at_most_half_a_step() {
    for (seed, out, inp, bits, grouping) in [
        (1, 64, 200, 4, Grouping::PerChannel),
        (2, 33, 131, 4, Grouping::Group { size: 32 }),
        (3, 17, 96, 3, Grouping::Group { size: 7 }),
    ] {
        let w = normals(seed, out * inp, 0.05);
        let q = quantize(&w, out, inp, bits, grouping).unwrap();
        let d = q.dequantize();
        let gl = grouping.group_len(inp);
        let mut worst = 0f32;
        for (i, (a, b)) in w.iter().zip(&d).enumerate() {
            let scale = q.scales[(i / inp) * q.groups() + (i % inp) / gl];
            let err = (a - b).abs();
            assert!(
                err <= scale / 2.0 * (1.0 + 1e-5),
                "{err} > {scale}/2 at {i}"
            );
            worst = worst.max(err / scale);
        }
        // Random weights do land near the middle of a step somewhere.
        assert!(worst > 0.4, "worst error {worst} of a step");
        let packed = q.pack_nibbles();
        let back =
            QuantizedWeight::from_nibbles("w", &packed, q.scales.clone(), out, inp, gl, bits);
        assert_eq!(back.unwrap(), q);
    }
}

#[test]
fn static_inputs_round_within_their_block_range() {
    // Two blocks: range 127 (step 1) and 12.7 (step 0.1).
    let s = StaticInput::new(8, vec![(0, 3), (3, 2)], vec![127.0, 12.7]).unwrap();
    let x = Tensor::new(&[[3.4f32, -200.0, 0.5, 1.04, -99.0]], &Device::Cpu).unwrap();
    let y = s.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    let want = [3.0, -127.0, 1.0, 1.0, -12.7];
    for (a, b) in y[0].iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{:?}", y[0]);
    }
    // Unset ranges calibrate to each block's abs-max on the first forward, then stay.
    let c = StaticInput::new(8, vec![(0, 2), (2, 1)], Vec::new()).unwrap();
    c.forward(&Tensor::new(&[[-2.0f32, 1.0, 0.5]], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(c.ranges(), vec![2.0, 0.5]);
    c.forward(&Tensor::new(&[[-9.0f32, 1.0, 0.5]], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(c.ranges(), vec![2.0, 0.5]);
    assert!(StaticInput::new(8, vec![(0, 2)], vec![f32::NAN]).is_err());
    assert!(StaticInput::new(8, vec![(0, 2)], vec![1.0, 2.0]).is_err());
}

fn logits(m: &afm::executor::decoder::Decoder, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    m.forward(&x, &mut KvCache::default())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn quantized_tiny_model_saves_loads_and_runs() {
    let dir = temp_dir("quant");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let text = dir.join("calib.txt");
    std::fs::write(&text, "static ranges from a calibration text. ".repeat(8)).unwrap();
    let ids: Vec<u32> = b"the quick brown fox".iter().map(|&b| b as u32).collect();
    let fp = load_model(model.to_str().unwrap(), DType::F32).unwrap();
    let fp_logits = logits(&fp.decoder, &ids);

    // Calibrated W4A8 through the binary, then loaded: the logits of the in-memory model.
    let out = dir.join("w4a8");
    let o = afm(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--group-size",
        "16",
        "--inputs",
        "static8",
        "--calib-text",
        text.to_str().unwrap(),
        "--block-rows",
        "48",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = load_model(out.to_str().unwrap(), DType::F32).unwrap();
    assert!(loaded.tokenizer.is_some());
    let q_logits = logits(&loaded.decoder, &ids);
    let cfg = afm::quant::export::load_config(&out).unwrap().unwrap();
    assert_eq!(cfg.projections.len(), 2 * 7 + 1);
    let inputs = cfg.inputs.as_ref().unwrap();
    assert_eq!(inputs.ranges["model.layers.0.mlp.down_proj"].len(), 4); // 160 in / 48
    assert_eq!(inputs.ranges["lm_head"].len(), 2); // 64 in / 48
    let d = max_diff(&fp_logits, &q_logits);
    assert!(d > 1e-4 && d < 2.0, "W4A8 vs FP logits differ by {d}");
    assert!(q_logits.iter().all(|v| v.is_finite()));
    let tok = fp.tokenizer.as_ref().unwrap();
    let cal = tok
        .encode(std::fs::read_to_string(&text).unwrap().as_str(), false)
        .unwrap();
    let cal_ids = cal.get_ids();
    let again = quantize_model(
        &fp.decoder,
        "tiny",
        4,
        Grouping::Group { size: 16 },
        Some((
            8,
            RangeSource::Calibrate {
                block_rows: 48,
                ids: cal_ids[..cal_ids.len().min(512)].to_vec(),
                label: "t".into(),
            },
        )),
    )
    .unwrap();
    assert_eq!(again.config.inputs.as_ref().unwrap().ranges, inputs.ranges);
    assert_eq!(logits(&again.decoder, &ids), q_logits);

    // An analog model's learned ranges are used as given, on its own tile rows.
    let analog = dir.join("analog");
    std::fs::create_dir_all(&analog).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(model.join(f), analog.join(f)).unwrap();
    }
    let mut ranges = std::collections::BTreeMap::new();
    ranges.insert("lm_head".to_string(), vec![3.0; split_sizes(64, 32).len()]);
    for l in 0..2 {
        for (p, inp) in [
            ("self_attn.q_proj", 64),
            ("self_attn.k_proj", 64),
            ("self_attn.v_proj", 64),
            ("self_attn.o_proj", 64),
            ("mlp.gate_proj", 64),
            ("mlp.up_proj", 64),
            ("mlp.down_proj", 160),
        ] {
            let n = split_sizes(inp, 32).len();
            ranges.insert(
                format!("model.layers.{l}.{p}"),
                (1..=n).map(|i| i as f32).collect(),
            );
        }
    }
    let meta = afm::train::student::AnalogMeta {
        analog: afm::train::layer::AnalogTrainConfig {
            tile_rows: 32,
            ..Default::default()
        },
        input_ranges: ranges.clone(),
        isolated: Default::default(),
    };
    std::fs::write(
        analog.join("analog.json"),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();
    let out2 = dir.join("afm-w4a8");
    let o = afm(&[
        "quantize",
        "--model",
        analog.to_str().unwrap(),
        "--inputs",
        "static8",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg2 = afm::quant::export::load_config(&out2).unwrap().unwrap();
    let i2 = cfg2.inputs.unwrap();
    assert_eq!((i2.block_rows, &i2.ranges), (32, &ranges));
    assert_eq!(cfg2.grouping, Grouping::PerChannel);
    assert!(load_model(out2.to_str().unwrap(), DType::F32).is_ok());

    refusals(&dir, &model, &out);
    let _ = std::fs::remove_dir_all(&dir);
}

fn load_err(dir: &Path) -> String {
    match load_model(dir.to_str().unwrap(), DType::F32) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn refusals(dir: &Path, model: &Path, good: &Path) {
    let m = model.to_str().unwrap();
    let err = |args: &[&str]| {
        let o = afm(args);
        assert!(!o.status.success(), "afm {args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = err(&[
        "quantize", "--model", m, "--inputs", "static8", "--out", "x",
    ]);
    assert!(
        e.contains("no learned input ranges") && e.contains("--calib-text"),
        "{e}"
    );
    let e = err(&["quantize", "--model", m, "--weights", "int8", "--out", "x"]);
    assert!(e.contains("expected int2, int3 or int4"), "{e}");
    let e = err(&[
        "quantize",
        "--model",
        m,
        "--group-size",
        "4",
        "--per-channel",
        "--out",
        "x",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    // A damaged export: its config names the file, a missing tensor names the tensor.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "quantization.json",
    ] {
        std::fs::copy(good.join(f), bad.join(f)).unwrap();
    }
    let qj = bad.join("quantization.json");
    let text = std::fs::read_to_string(&qj).unwrap();
    std::fs::write(
        &qj,
        text.replace("\"weight_bits\": 4", "\"weight_bits\": 9"),
    )
    .unwrap();
    let e = load_err(&bad);
    assert!(
        e.contains("quantization.json") && e.contains("9-bit"),
        "{e}"
    );
    std::fs::write(&qj, text.replace("lm_head", "lm_head_x")).unwrap();
    let e = load_err(&bad);
    assert!(e.contains("lm_head_x.qweight"), "{e}");
}

#[test]
fn qat_weights_round_like_the_export_and_pass_gradients_straight() {
    use afm::train::layer::{fake_quant_weight, AnalogTrainConfig, AnalogTrainLinear};
    let (out, inp) = (12, 40);
    let w = normals(7, out * inp, 0.1);
    let var = candle_core::Var::from_vec(w.clone(), (out, inp), &Device::Cpu).unwrap();
    let fq = fake_quant_weight(var.as_tensor(), 4).unwrap();
    let want = quantize(&w, out, inp, 4, Grouping::PerChannel)
        .unwrap()
        .dequantize();
    let got = fq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    crate::common::assert_close("fake-quantized W", &got, &want, 1e-6, 1e-5);
    // Straight through: d(sum(c * q(W)))/dW = c.
    let c = Tensor::from_vec(normals(8, out * inp, 1.0), (out, inp), &Device::Cpu).unwrap();
    let grads = (fq * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(var.as_tensor()).unwrap();
    assert_eq!(
        g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        c.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // The training layer with weight_bits = 4 and converters off computes x q(W)^T.
    let cfg = AnalogTrainConfig {
        dac_bits: 0,
        adc_bits: 0,
        out_bound: 0.0,
        weight_noise: 0.0,
        clip_alpha: 0.0,
        weight_bits: 4,
        ..Default::default()
    };
    let layer = AnalogTrainLinear::new(var.as_tensor(), None, &cfg, 0, "qat").unwrap();
    let x = Tensor::from_vec(normals(9, 5 * inp, 1.0), (5, inp), &Device::Cpu).unwrap();
    let y = layer.forward(&x).unwrap().flatten_all().unwrap();
    let wq = Tensor::from_vec(want, (out, inp), &Device::Cpu).unwrap();
    let y0 = x.matmul(&wq.t().unwrap()).unwrap().flatten_all().unwrap();
    crate::common::assert_close(
        "QAT layer output",
        &y.to_vec1::<f32>().unwrap(),
        &y0.to_vec1::<f32>().unwrap(),
        1e-5,
        1e-5,
    );
    assert!(AnalogTrainConfig {
        weight_bits: 9,
        ..Default::default()
    }
    .check()
    .is_err());
}

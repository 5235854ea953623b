//! Training data and training on tiny models: datagen determinism, resume and validation of
//! the shard files.

use crate::common::{repo, temp_dir};
use afm::executor::load::{load_model, load_model_on};
use afm::train::datagen::{datagen, sample_rows, DatagenConfig};
use afm::train::shards::{read_split, DataIndex};
use candle_core::DType;

pub(crate) fn tiny() -> afm::executor::load::LoadedModel {
    tiny_on(&candle_core::Device::Cpu)
}

/// The tiny-llama checkpoint in f32 on `dev`.
pub(crate) fn tiny_on(dev: &candle_core::Device) -> afm::executor::load::LoadedModel {
    load_model_on(
        repo("tests/golden/executor/tiny-llama").to_str().unwrap(),
        DType::F32,
        dev,
    )
    .unwrap()
}

fn cfg(rows: usize, batch: usize) -> DatagenConfig {
    DatagenConfig {
        model: "tiny-llama".into(),
        seq_len: 24,
        rows,
        temperature: 1.0,
        top_k: 50,
        seed: 3,
        batch,
        rows_per_shard: 6,
        val_every: 5,
    }
}

#[test]
fn datagen_rows_start_at_bos_and_do_not_depend_on_batching() {
    let m = tiny();
    let a = sample_rows(&m.decoder, &cfg(8, 8), 0, 8).unwrap();
    let b: Vec<Vec<u32>> = [(0, 3), (3, 3), (6, 2)]
        .iter()
        .flat_map(|&(f, n)| sample_rows(&m.decoder, &cfg(8, 3), f, n).unwrap())
        .collect();
    assert_eq!(a, b, "row r draws from stream r whatever the batch");
    assert!(a
        .iter()
        .all(|r| r.len() == 24 && r[0] == 1 && r.iter().all(|&t| t < 256)));
    assert_ne!(a[0], a[1]);
    // top-k 1 is greedy: every row is the same.
    let greedy = DatagenConfig {
        top_k: 1,
        ..cfg(3, 3)
    };
    let g = sample_rows(&m.decoder, &greedy, 0, 3).unwrap();
    assert!(g.iter().all(|r| *r == g[0]));
}

#[test]
fn datagen_resumes_to_the_same_files_and_holds_out_rows() {
    let m = tiny();
    let (one, two) = (temp_dir("dg-one"), temp_dir("dg-two"));
    datagen(&m.decoder, &cfg(17, 4), &one, &mut |_| {}).unwrap();
    // A run stopped after 2 shards (as a kill between shards leaves it), then resumed.
    datagen(&m.decoder, &cfg(12, 4), &two, &mut |_| {}).unwrap();
    let mut made = 0;
    let idx = datagen(&m.decoder, &cfg(17, 4), &two, &mut |n| made += n).unwrap();
    assert_eq!(made, 5 * 24, "only the missing rows are generated");
    assert_eq!(idx, DataIndex::load(&one).unwrap());
    for split in [false, true] {
        assert_eq!(
            read_split(&one, split).unwrap(),
            read_split(&two, split).unwrap()
        );
    }
    // Rows 4, 9, 14 (every 5th) are held out: 3 of 17.
    assert_eq!(idx.rows(), (14, 3));
    // A different setting refuses to mix into the folder.
    let e = datagen(
        &m.decoder,
        &DatagenConfig {
            seed: 9,
            ..cfg(17, 4)
        },
        &two,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("other settings"), "{e}");
    // A truncated shard is named in the error.
    let f = two.join("train-00001.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
    let e = read_split(&two, false).unwrap_err().to_string();
    assert!(
        e.contains("train-00001.bin") && e.contains("expected"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&two);
}

mod hwa {
    use crate::common::{repo, shakespeare_data, temp_dir};
    use afm::executor::decoder::{Decoder, KvCache};
    use afm::executor::load::{apply_ranges, load_model, program_chip};
    use afm::tile::TilePreset;
    use afm::train::datagen::{datagen, DatagenConfig};
    use afm::train::layer::AnalogTrainConfig;
    use afm::train::shards::read_split;
    use afm::train::student::load_meta;
    use afm::train::trainer::{distill_loss, train, TrainConfig};
    use candle_core::{DType, Device, Tensor};
    use std::path::Path;

    const SEQ: usize = 64;

    pub(super) fn digital_training() -> AnalogTrainConfig {
        AnalogTrainConfig {
            dac_bits: 0,
            adc_bits: 0,
            out_bound: 0.0,
            weight_noise: 0.0,
            clip_alpha: 0.0,
            range_init_batches: 0,
            ..AnalogTrainConfig::default()
        }
    }

    fn hwa(steps: usize, lr: f64) -> TrainConfig {
        let mut c = TrainConfig::default();
        c.run.steps = steps;
        c.run.batch_size = 8;
        c.run.checkpoint_every = 0;
        c.optim.lr = lr;
        c.optim.warmup_steps = 10;
        c.analog.tile_rows = 32;
        c.analog.range_init_batches = 10;
        c
    }

    fn kl_on_chip(
        model_dir: &Path,
        teacher: &Decoder,
        preset: &TilePreset,
        seed: u64,
        rows: &[Vec<u32>],
    ) -> f64 {
        let m = load_model(model_dir.to_str().unwrap(), DType::F32).unwrap();
        let mut chip = program_chip(&m.decoder, preset, seed, false).unwrap();
        let meta = load_meta(model_dir).unwrap().unwrap();
        assert!(apply_ranges(&mut chip, &meta.input_ranges).unwrap() > 0);
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (rows.len(), SEQ), &Device::Cpu).unwrap();
        let t = teacher.forward(&ids, &mut KvCache::default()).unwrap();
        let s = chip.forward(&ids, &mut KvCache::default()).unwrap();
        let (kl, _) = distill_loss(&t, &s, &ids, 1.0).unwrap();
        f64::from(kl.to_scalar::<f32>().unwrap())
    }

    #[test]
    fn hwa_training_lowers_the_kl_under_pcm_noise() {
        let dir = temp_dir("hwa");
        // 1. A tiny teacher: tiny-llama trained on Shakespeare's bytes.
        let text = dir.join("text");
        shakespeare_data(&text, 512);
        let base = load_model(
            repo("tests/golden/executor/tiny-llama").to_str().unwrap(),
            DType::F32,
        )
        .unwrap();
        let mut tc = TrainConfig::default();
        tc.run.steps = 300;
        tc.run.batch_size = 16;
        tc.run.kl_weight = 0.0;
        tc.run.ce_weight = 1.0;
        tc.run.checkpoint_every = 0;
        tc.optim.lr = 3e-3;
        tc.optim.warmup_steps = 20;
        tc.analog = digital_training();
        let mut first_ce = None;
        let mut last_ce = 0.0;
        train(
            &base.decoder,
            None,
            &text,
            &dir.join("teacher"),
            &tc,
            false,
            &mut |l| {
                first_ce.get_or_insert(l.loss);
                last_ce = l.loss;
            },
        )
        .unwrap();
        let first_ce = first_ce.unwrap();
        assert!(
            last_ce < first_ce - 1.0,
            "teacher learns: CE {first_ce} -> {last_ce}"
        );
        let teacher = load_model(dir.join("teacher/final").to_str().unwrap(), DType::F32).unwrap();
        // 2. Synthetic data from it.
        let data = dir.join("data");
        let dg = DatagenConfig {
            model: "teacher".into(),
            seq_len: SEQ,
            rows: 404,
            temperature: 1.0,
            top_k: 0,
            seed: 1,
            batch: 32,
            rows_per_shard: 404,
            val_every: 10,
        };
        datagen(&teacher.decoder, &dg, &data, &mut |_| {}).unwrap();
        let val = read_split(&data, true).unwrap();
        // 3. The untrained student (ranges from the data, weights as the teacher's) and the
        //    HWA-trained one.
        let mut untrained = hwa(10, 0.0);
        untrained.analog.clip_alpha = 0.0;
        train(
            &teacher.decoder,
            None,
            &data,
            &dir.join("untrained"),
            &untrained,
            false,
            &mut |_| {},
        )
        .unwrap();
        let mut log = Vec::new();
        train(
            &teacher.decoder,
            None,
            &data,
            &dir.join("hwa"),
            &hwa(200, 2e-3),
            false,
            &mut |l| log.push(l.kl),
        )
        .unwrap();
        // 4. KL to the teacher on held-out rows, on PCM chips (3 seeds).
        let preset = TilePreset::parse(
            "name = \"t\"\ndescription = \"\"\ndrift_time_s = 0.0\ndrift_compensation = true\n\
             [tile]\nrows = 32\ncols = 64\n[dac]\nbits = 8\n[adc]\nbits = 8\nlambda = 14.0\n\
             [noise]\noutput_gamma = 0.0\nread_rel = 0.0\nread_abs = 0.0\n\
             [device]\nmodel = \"pcm-afm\"\ngmax = 180.0\nzero_band = 0.6\nnoise_scale = 1.0\n",
            Path::new("test-preset.toml"),
        )
        .unwrap();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for seed in 0..3 {
            before.push(kl_on_chip(
                &dir.join("untrained/final"),
                &teacher.decoder,
                &preset,
                seed,
                &val,
            ));
            after.push(kl_on_chip(
                &dir.join("hwa/final"),
                &teacher.decoder,
                &preset,
                seed,
                &val,
            ));
        }
        eprintln!("teacher CE {first_ce:.3} -> {last_ce:.3}; HWA train KL {:.4} -> {:.4}; KL on chips untrained {before:?} trained {after:?}", log[0], log[log.len() - 1]);
        // Seen: untrained 0.163, 0.173, 0.165; trained 0.135, 0.138, 0.136 (about 18% lower).
        for s in 0..3 {
            assert!(
                after[s] < 0.9 * before[s],
                "seed {s}: trained {} vs untrained {}",
                after[s],
                before[s]
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn qat_mode_trains_for_w4a8_and_exports_with_its_ranges() {
        let dir = temp_dir("train-qat");
        let data = dir.join("data");
        shakespeare_data(&data, 32);
        let cfg = dir.join("train.toml");
        std::fs::write(
            &cfg,
            "[run]\nsteps = 6\nbatch_size = 4\ncheckpoint_every = 0\n[optim]\nlr = 1e-3\n\
             warmup_steps = 1\n[analog]\ntile_rows = 32\nrange_init_batches = 2\n",
        )
        .unwrap();
        let teacher = repo("tests/golden/executor/tiny-llama");
        let afm = crate::common::afm;
        let out = dir.join("qat");
        let (t, d, o, c) = (
            teacher.to_str().unwrap(),
            data.to_str().unwrap(),
            out.to_str().unwrap(),
            cfg.to_str().unwrap(),
        );
        let base = [
            "train",
            "--teacher",
            t,
            "--data",
            d,
            "--out",
            o,
            "--config",
            c,
        ];
        let r = afm(&[&base[..], &["--mode", "qat-w4a8"]].concat());
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let meta = load_meta(&out.join("final")).unwrap().unwrap();
        let a = &meta.analog;
        assert_eq!((a.weight_bits, a.dac_bits, a.adc_bits), (4, 8, 0));
        assert_eq!((a.weight_noise, a.clip_alpha, a.out_bound), (0.0, 0.0, 0.0));
        assert!(meta.input_ranges.values().flatten().all(|r| *r > 0.0));
        let q = dir.join("w4a8");
        let r = afm(&[
            "quantize",
            "--model",
            out.join("final").to_str().unwrap(),
            "--inputs",
            "static8",
            "--out",
            q.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let qc = afm::quant::export::load_config(&q).unwrap().unwrap();
        assert_eq!(qc.inputs.unwrap().ranges, meta.input_ranges);
        let r = afm(&[&base[..], &["--mode", "qat-w4a8", "--tiles", "afm-paper"]].concat());
        assert!(String::from_utf8_lossy(&r.stderr).contains("--mode qat-w4a8"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn input_ranges_take_their_own_learning_rate_and_no_decay() {
    use afm::train::optim::{AdamW, OptimConfig};
    use candle_core::{Device, Tensor, Var};
    let t = |v: f32| Tensor::from_vec(vec![v], 1, &Device::Cpu).unwrap();
    let vars: std::collections::BTreeMap<String, Var> = [
        ("l.weight".to_string(), Var::from_tensor(&t(1.0)).unwrap()),
        (
            "l.input_range".to_string(),
            Var::from_tensor(&t(1.0)).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    let grads: std::collections::HashMap<String, Tensor> =
        vars.keys().map(|k| (k.clone(), t(0.5))).collect();
    let cfg = OptimConfig {
        range_lr_scale: 10.0,
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    AdamW::default()
        .step(&cfg, &vars, &grads, (1e-3, 1.0))
        .unwrap();
    let get = |k: &str| vars[k].as_tensor().to_vec1::<f32>().unwrap()[0];
    // First Adam step: update = g / |g| (up to eps) = 1; weight: decay 1e-4 then - 1e-3.
    assert!(
        (get("l.weight") - (1.0 - 1e-4 - 1e-3)).abs() < 1e-6,
        "{}",
        get("l.weight")
    );
    // Range: no decay, 10x the rate.
    assert!(
        (get("l.input_range") - (1.0 - 1e-2)).abs() < 1e-6,
        "{}",
        get("l.input_range")
    );
    let bad = OptimConfig {
        range_lr_scale: -1.0,
        ..OptimConfig::default()
    };
    assert_eq!(bad.check().unwrap_err().0, "range_lr_scale");
}

#[test]
fn text_data_cuts_bos_rows_and_holds_out() {
    use afm::train::datagen::write_text_data;
    use afm::train::shards::read_split;
    let dir = crate::common::temp_dir("text-data");
    let ids: Vec<u32> = (10..1010).collect();
    let index = write_text_data(&ids, 1, 10, 2000, 100, "text:test", &dir).unwrap();
    // 1000 ids make 111 rows of BOS + 9 ids (one id left over); row 100 is held out.
    assert_eq!(index.rows(), (110, 1));
    let train = read_split(&dir, false).unwrap();
    let val = read_split(&dir, true).unwrap();
    assert_eq!(train[0], vec![1, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
    assert_eq!(val[0][..2], [1, 10 + 99 * 9]);
    assert!(train.iter().all(|r| r.len() == 10 && r[0] == 1));
    assert!(write_text_data(&ids[..5], 1, 10, 2000, 100, "short", &dir).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny-llama run on 32-row tiles, batch 2, no weight clipping, that isolates down_proj's 3
/// largest inputs (statistics from 2 batches): a fresh folder with `rows` rows of
/// tinyshakespeare in DIR/data, and the config for `steps` steps with `range_init` batches of
/// range initialization.
pub(crate) fn isolating_run(
    name: &str,
    rows: usize,
    steps: usize,
    range_init: usize,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    afm::train::trainer::TrainConfig,
) {
    let dir = temp_dir(name);
    let data = dir.join("data");
    crate::common::shakespeare_data(&data, rows);
    let mut c = afm::train::trainer::TrainConfig::default();
    c.run.steps = steps;
    c.run.batch_size = 2;
    c.analog.tile_rows = 32;
    c.analog.range_init_batches = range_init;
    c.analog.clip_alpha = 0.0;
    c.analog.smooth_batches = 2;
    c.analog.isolate_outliers = 3;
    (dir, data, c)
}

/// `run.crop_tokens` trains on other windows of the same rows (another first loss), and a crop
/// that leaves no row is refused by name.
#[test]
fn cropped_rows_train_on_other_windows_and_too_large_a_crop_is_named() {
    use afm::train::trainer::train;
    let (dir, data, mut c) = isolating_run("crop", 8, 1, 1);
    let m = tiny();
    let first_loss = |c: &afm::train::trainer::TrainConfig, out: &str| {
        let mut loss = None;
        train(&m.decoder, None, &data, &dir.join(out), c, true, &mut |l| {
            loss = Some(l.loss)
        })
        .map(|_| loss.unwrap())
    };
    let whole = first_loss(&c, "whole").unwrap();
    c.run.crop_tokens = 16;
    let cropped = first_loss(&c, "cropped").unwrap();
    assert!(whole.is_finite() && cropped.is_finite());
    assert!(whole != cropped, "cropping did not change the windows");
    c.run.crop_tokens = 63;
    let err = first_loss(&c, "too-large").unwrap_err().to_string();
    assert!(err.contains("run.crop_tokens"), "{err}");
}

/// `run.frozen` keeps the named layers' weights at the teacher's, past the weight clipping too,
/// while the other layers train; an entry that names no layer is refused by name.
#[test]
fn frozen_layers_keep_the_teachers_weights() {
    use afm::train::trainer::{train, TrainConfig};
    let (dir, data, mut c) = isolating_run("frozen", 8, 2, 1);
    let m = tiny();
    let go = |c: &TrainConfig, out: &str| {
        train(
            &m.decoder,
            None,
            &data,
            &dir.join(out),
            c,
            true,
            &mut |_| {},
        )
        .map(|_| {
            candle_core::safetensors::load(
                dir.join(out).join("final/model.safetensors"),
                &candle_core::Device::Cpu,
            )
            .unwrap()
        })
    };
    let mut still = c.clone();
    still.optim.lr = 0.0;
    let start = go(&still, "start").unwrap();
    c.analog.clip_alpha = 2.5;
    c.run.frozen = vec!["lm_head".into(), "mlp.down_proj".into()];
    let trained = go(&c, "frozen").unwrap();
    let (mut kept, mut moved) = (0, 0);
    for (name, t) in &trained {
        if !name.ends_with(".weight") || name.contains("norm") || name.contains("embed") {
            continue;
        }
        let diff = (t - &start[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        if name.contains("down_proj") || name.starts_with("lm_head") {
            assert_eq!(diff, 0.0, "{name} moved");
            kept += 1;
        } else {
            assert!(diff > 0.0, "{name} did not train");
            moved += 1;
        }
    }
    assert!(
        kept == m.decoder.blocks.len() + 1 && moved > 0,
        "{kept} kept, {moved} moved"
    );
    c.run.frozen = vec!["mlp.no_such_proj".into()];
    let err = go(&c, "bad").map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("run.frozen") && err.contains("no_such_proj"),
        "{err}"
    );
}

/// A rotated, smoothed run with isolated outliers stopped after a checkpoint and resumed (which
/// rotates, smooths and permutes the teacher again from the same seed and first batches) ends
/// with the same bytes as the run that was not stopped, and the saved model maps its outliers as
/// it was trained.
#[test]
fn rotated_smoothed_isolated_training_resumes_to_the_same_model() {
    use afm::train::trainer::train;
    let (dir, data, mut c) = isolating_run("smooth-resume", 12, 4, 2);
    let m = tiny();
    c.run.checkpoint_every = 2;
    c.analog.smooth_alpha = 0.5;
    c.analog.rotate = true;
    c.run.export_every = 2;
    c.run.crop_tokens = 8;
    let run = |out: &str, stop_at: Option<usize>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(
                &m.decoder,
                None,
                &data,
                &dir.join(out),
                &c,
                stop_at.is_none(),
                &mut |l| assert!(Some(l.step) != stop_at, "stopped at step {}", l.step),
            )
            .map(|_| ())
        }))
    };
    run("whole", None).unwrap().unwrap();
    assert!(run("cut", Some(3)).is_err(), "the run did not stop");
    assert!(dir.join("cut/latest.json").exists());
    run("cut", None).unwrap().unwrap();
    let bytes = |d: &str| std::fs::read(dir.join(d).join("final/model.safetensors")).unwrap();
    assert!(bytes("whole") == bytes("cut"), "resumed model differs");
    // The folder exported at the last step is the final model; the one before it differs.
    let export = |k: usize| {
        std::fs::read(dir.join(format!("whole/model-{k:08}/model.safetensors"))).unwrap()
    };
    assert!(
        export(4) == bytes("whole"),
        "the last export is not the final model"
    );
    assert!(
        export(2) != bytes("whole"),
        "the export of step 2 is the final model"
    );
    assert!(dir.join("cut/model-00000002/analog.json").exists());
    let meta = afm::train::student::load_meta(&dir.join("whole/final"))
        .unwrap()
        .unwrap();
    assert_eq!(meta.analog.smooth_alpha, 0.5);
    assert!(meta.analog.rotate);
    let n = m.decoder.cfg.intermediate_size;
    let layers = m.decoder.blocks.len();
    assert_eq!(meta.isolated.len(), layers);
    for (name, &k) in &meta.isolated {
        assert!(name.ends_with("mlp.down_proj") && k == 3, "{name}: {k}");
        let blocks = afm::tile::split_with_head(n, 3, 32);
        assert_eq!(meta.input_ranges[name].len(), blocks.len(), "{name}");
    }
    // The saved folder, put on tiles with its mapping, takes every learned range.
    let mut saved_model =
        load_model(dir.join("whole/final").to_str().unwrap(), DType::F32).unwrap();
    saved_model.decoder.isolated = meta.isolated.clone();
    let mut preset = afm::tile::TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    preset.tile.rows = 32;
    let mut chip =
        afm::executor::load::program_chip(&saved_model.decoder, &preset, 0, false).unwrap();
    let set = afm::executor::load::apply_ranges(&mut chip, &meta.input_ranges);
    assert!(set.is_ok(), "{set:?}");
    saved_model.decoder.isolated.clear();
    let mut plain =
        afm::executor::load::program_chip(&saved_model.decoder, &preset, 0, false).unwrap();
    assert!(afm::executor::load::apply_ranges(&mut plain, &meta.input_ranges).is_err());
    // The smoothing moved the norms: the saved gains are not the teacher's.
    let saved = candle_core::safetensors::load(
        dir.join("whole/final/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let g = saved["model.layers.0.input_layernorm.weight"]
        .to_vec1::<f32>()
        .unwrap();
    let t = m.decoder.blocks[0].input_norm.to_vec1::<f32>().unwrap();
    assert!(g.iter().zip(&t).any(|(a, b)| (a - b).abs() > 1e-3));
    for (alpha, batches, isolate, field) in [
        (1.5, 8, 0, "smooth_alpha"),
        (0.5, 0, 0, "smooth_batches"),
        (0.0, 0, 4, "smooth_batches"),
        (0.0, 8, 513, "isolate_outliers"),
    ] {
        let bad = afm::train::layer::AnalogTrainConfig {
            smooth_alpha: alpha,
            smooth_batches: batches,
            isolate_outliers: isolate,
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err().0, field);
    }
    let bad = afm::train::layer::AnalogTrainConfig {
        isolate_residual: 513,
        ..Default::default()
    };
    assert_eq!(bad.check().unwrap_err().0, "isolate_residual");
}

/// Training with the residual stream's outliers isolated saves the permuted model and a head
/// block in every projection that reads the stream, and the folder goes back onto tiles with
/// every learned range.
#[test]
fn residual_isolation_trains_and_maps_back_onto_tiles() {
    use afm::train::trainer::train;
    let (dir, data, mut c) = isolating_run("residual-isolation", 8, 2, 1);
    let m = tiny();
    c.analog.isolate_residual = 2;
    let out = dir.join("out");
    train(&m.decoder, None, &data, &out, &c, true, &mut |_| {}).unwrap();
    let meta = afm::train::student::load_meta(&out.join("final"))
        .unwrap()
        .unwrap();
    let reads = |n: &str| !n.ends_with("o_proj") && !n.ends_with("down_proj");
    let layers = m.decoder.blocks.len();
    assert!(meta
        .isolated
        .contains_key("model.layers.0.self_attn.q_proj"));
    for (name, &k) in &meta.isolated {
        let want = if reads(name) { 2 } else { 3 };
        assert!(k == want && !name.ends_with("o_proj"), "{name}: {k}");
    }
    assert!(meta.isolated.len() > layers, "{:?}", meta.isolated.keys());
    let mut saved = load_model(out.join("final").to_str().unwrap(), DType::F32).unwrap();
    saved.decoder.isolated = meta.isolated.clone();
    let mut preset = afm::tile::TilePreset::load(&repo("tiles/ideal.toml")).unwrap();
    preset.tile.rows = 32;
    let mut chip = afm::executor::load::program_chip(&saved.decoder, &preset, 0, false).unwrap();
    let set = afm::executor::load::apply_ranges(&mut chip, &meta.input_ranges);
    assert!(set.is_ok(), "{set:?}");
    // The stream was permuted: the saved embedding is not the teacher's.
    let emb = |d: &afm::executor::decoder::Decoder| d.embed.to_vec2::<f32>().unwrap();
    assert_ne!(emb(&saved.decoder), emb(&m.decoder));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn committed_training_configs_load_and_a_bad_noise_shape_is_named() {
    use afm::train::layer::NoiseShape;
    use afm::train::trainer::TrainConfig;
    let mut shapes = Vec::new();
    for e in std::fs::read_dir(repo("scripts")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let c = TrainConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            shapes.push(c.analog.weight_noise_shape);
        }
    }
    assert!(
        shapes.len() >= 6
            && shapes.contains(&NoiseShape::Pcm)
            && shapes.contains(&NoiseShape::Flat)
    );
    let dir = temp_dir("bad-noise-shape");
    let p = dir.join("t.toml");
    std::fs::write(&p, "[analog]\nweight_noise_shape = \"lognormal\"\n").unwrap();
    let e = TrainConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("t.toml") && e.contains("`analog.weight_noise_shape`") && e.contains("pcm"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The distillation loss reaches every trainable variable of the student: each projection's
/// weight (and input ranges), the first layer's too, whose gradient passes every RMSNorm,
/// softmax and rotary embedding above it (candle's fused forms of these have no backward).
#[test]
fn gradients_reach_every_layer_of_the_student() {
    use afm::executor::decoder::KvCache;
    use afm::train::layer::AnalogTrainConfig;
    use afm::train::student::{build_student, trainable};
    use afm::train::trainer::distill_loss;
    use candle_core::{Device, Tensor};
    let teacher = tiny().decoder;
    let cfg = AnalogTrainConfig {
        range_init_batches: 0,
        ..AnalogTrainConfig::default()
    };
    let student = build_student(&teacher, &cfg, 5, false, DType::F32).unwrap();
    // In training mode, as the trainer runs it: outside it the layers compute digitally and
    // the student can equal the teacher bit for bit (KL 0, every gradient 0).
    afm::train::student::set_training(&student, true).unwrap();
    let ids: Vec<u32> = (0..2 * 16).map(|i| (i * 7 + 3) % 200).collect();
    let ids = Tensor::from_vec(ids, (2, 16), &Device::Cpu).unwrap();
    let t = teacher.forward(&ids, &mut KvCache::default()).unwrap();
    let s = student.forward(&ids, &mut KvCache::default()).unwrap();
    let (kl, _) = distill_loss(&t, &s, &ids, 1.0).unwrap();
    assert!(
        kl.to_scalar::<f32>().unwrap() > 1e-4,
        "the analog student differs from the teacher"
    );
    let grads = kl.backward().unwrap();
    // The composed forms compute what the fused kernels do: a student without converters or
    // noise, whose forward takes them, gives the teacher's logits.
    let plain = hwa::digital_training();
    let digital = build_student(&teacher, &plain, 5, false, DType::F32).unwrap();
    let d = digital.forward(&ids, &mut KvCache::default()).unwrap();
    assert!(d.track_op() && !t.track_op());
    let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    crate::common::assert_close(
        "composed vs fused forward",
        &flat(&d),
        &flat(&t),
        1e-4,
        1e-4,
    );
    let vars = trainable(&student);
    assert!(
        vars.len() > 3 * teacher.blocks.len(),
        "{} variables",
        vars.len()
    );
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("`{name}` gets no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // A range's gradient comes from its clipped inputs alone, which these ranges may have
        // none of; every weight has one.
        let needs = !name.ends_with(".input_range");
        assert!(
            norm.is_finite() && (norm > 0.0 || !needs),
            "`{name}`: gradient norm^2 {norm}"
        );
    }
}

#[test]
fn adam_moments_keep_no_graph_of_the_step() {
    use afm::train::optim::{AdamW, OptimConfig};
    use candle_core::{DType, Device, Tensor, Var};
    let ones = |r, c| Tensor::ones((r, c), DType::F32, &Device::Cpu).unwrap();
    let w = Var::from_tensor(&ones(2, 3)).unwrap();
    // A gradient still attached to a graph (a custom op's backward may return one).
    let src = Var::from_tensor(&ones(2, 3)).unwrap();
    let g = (src.as_tensor() * 0.5).unwrap();
    assert!(g.track_op());
    let vars = [("l.weight".to_string(), w)].into_iter().collect();
    let grads = [("l.weight".to_string(), g)].into_iter().collect();
    let mut opt = AdamW::default();
    opt.step(&OptimConfig::default(), &vars, &grads, (1e-3, 1.0))
        .unwrap();
    assert!(!opt.m["l.weight"].track_op() && !opt.v["l.weight"].track_op());
}

//! Cycle-level chip model: HERMES and 3D-AIMC tile MVMs against their published numbers, tile
//! and chip counts by hand arithmetic, array energy from programmed conductances, and the
//! event-driven scheduler's invariants (dependencies, exclusive resources, pipelining,
//! contention, determinism).

use crate::common::{rel_diff, repo, temp_dir};
use afm::chip::{graph, schedule, simulate, ChipMap, RunSpec};
use afm::executor::{Manifest, ModelConfig};
use afm::tile::cost::Drive;
use afm::tile::mapping::{check_isolated, HeadBlocks};
use afm::tile::{array_energy_pj, AnalogLayer, TileCostModel, TilePreset};
use std::path::{Path, PathBuf};

fn preset(name: &str) -> (TilePreset, PathBuf) {
    let file = repo(&format!("tiles/{name}.toml"));
    (TilePreset::load(&file).unwrap(), file)
}

fn cost_of(p: &TilePreset) -> TileCostModel {
    p.cost_sections(Path::new("test")).unwrap().0
}

fn model(name: &str) -> ModelConfig {
    Manifest::load(&repo(&format!("models/{name}.toml")))
        .unwrap()
        .config
}

#[test]
fn hermes_core_mvm_matches_le_gallo_2023() {
    let (mut p, _) = preset("hermes");
    // 1-phase mode: 133 ns per core MVM, 0.86 uJ for all 64 cores, 63.1 TOPS, 9.76 TOPS/W.
    let one = cost_of(&p).mvm(256, 256, 1, 16);
    assert!((one.core_ns() - 133.0).abs() <= 3.0, "{}", one.core_ns());
    let e64 = 64.0 * one.core_pj() * 1e-6; // pJ -> uJ
    assert!(rel_diff(e64, 0.86) <= 0.05, "{e64} uJ");
    assert!(
        rel_diff(one.tops(64), 63.1) <= 0.05,
        "{} TOPS",
        one.tops(64)
    );
    assert!(
        rel_diff(one.tops_per_w(), 9.76) <= 0.05,
        "{}",
        one.tops_per_w()
    );
    // By hand: 64 cores x 2 x 256 x 256 ops / 133 ns = 8388608 / 133 = 63072 ops/ns = 63.07 TOPS.
    assert!((one.tops(64) - 8_388_608.0 / 133.0 * 1e-3).abs() < 0.5);
    // 4-phase mode: 520 ns, 3.38 uJ, 16.1 TOPS, 2.48 TOPS/W.
    p.timing.as_mut().unwrap().phases = 4;
    let four = cost_of(&p).mvm(256, 256, 1, 16);
    assert!((four.core_ns() - 520.0).abs() <= 3.0, "{}", four.core_ns());
    let e64 = 64.0 * four.core_pj() * 1e-6;
    assert!(rel_diff(e64, 3.38) <= 0.05, "{e64} uJ");
    assert!(
        rel_diff(four.tops(64), 16.1) <= 0.05,
        "{} TOPS",
        four.tops(64)
    );
    assert!(
        rel_diff(four.tops_per_w(), 2.48) <= 0.05,
        "{}",
        four.tops_per_w()
    );
    // The PWM window is (2^7 - 1) x 1 ns per phase.
    assert_eq!((four.cycles, four.drive_ns), (4, 127.0));
}

#[test]
fn afm_paper_tile_matches_the_3d_aimc_study() {
    let (p, _) = preset("afm-paper");
    let c = cost_of(&p).mvm(512, 512, 1, 16);
    // Büchel et al. 2025: 100 ns and 10 nJ per 512 x 512 MVM.
    assert!((c.core_ns() - 100.0).abs() <= 1.0, "{}", c.core_ns());
    assert!(rel_diff(c.core_pj(), 10_000.0) <= 0.01, "{}", c.core_pj());
    // 128 ADCs for 512 columns: 4 conversions of 4 ns.
    assert_eq!(c.conv_ns, 16.0);
}

#[test]
fn adc_energy_and_time_scale_with_its_bits() {
    let (mut p, file) = preset("afm-paper");
    let at8 = cost_of(&p).mvm(512, 512, 1, 16);
    // Walden FOM: 2^(b - 8) x 14.12 pJ per conversion; SAR: 4 ns x b / 8 per conversion.
    for (bits, e_rel, conv_ns) in [(6, 0.25, 12.0), (7, 0.5, 14.0), (10, 4.0, 20.0)] {
        p.adc.bits = bits;
        let c = cost_of(&p).mvm(512, 512, 1, 16);
        assert!(
            rel_diff(c.adc_pj, at8.adc_pj * e_rel) < 1e-12,
            "{bits}: {}",
            c.adc_pj
        );
        assert_eq!(c.conv_ns, conv_ns, "{bits} bits: 4 conversions");
        assert_eq!(
            (c.dac_pj, c.array_pj, c.post_pj),
            (at8.dac_pj, at8.array_pj, at8.post_pj)
        );
    }
    // ADC off in the functional model: the reference cost.
    p.adc.bits = 0;
    assert_eq!(cost_of(&p).mvm(512, 512, 1, 16), at8);
    // A bad reference names its field.
    let text = std::fs::read_to_string(&file).unwrap();
    let e = TilePreset::parse(
        &text.replacen("e_conv_ref_bits = 8", "e_conv_ref_bits = 1", 1),
        Path::new("bad.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("energy.e_conv_ref_bits") && e.contains("2..=16"),
        "{e}"
    );
}

#[test]
fn phases_drive_modes_and_reduction() {
    let (mut p, _) = preset("hermes");
    let t = p.timing.as_mut().unwrap();
    t.drive = Drive::BitSerial;
    t.phases = 2;
    let c = cost_of(&p).mvm(256, 128, 4, 16);
    // Bit-serial 8-bit: 7 magnitude bits per phase, one 1-ns pulse each, 2 phases = 14 cycles.
    assert_eq!((c.cycles, c.drive_ns), (14, 1.0));
    // Each 1-ns conversion hides behind the next 3-ns cycle (drive + integration), so only the
    // last shows: 1 + 14 x 3 + 1 + 2 = 46 ns.
    assert_eq!(c.core_ns(), 46.0);
    // 4 row blocks: 2 adder levels of 1 ns; 128 outputs x 16 bits / 256 bits/ns = 8 ns send.
    assert_eq!((c.reduce_ns, c.send_ns), (2.0, 8.0));
    // Conversions slower than the drive: 64 columns per ADC x 1 ns = 64 ns per cycle; with 2
    // PWM cycles of 129 ns the ADCs finish max(2 x 129 + 64, 129 + 2 x 64) = 322 ns after landing.
    let t = p.timing.as_mut().unwrap();
    t.drive = Drive::Pwm;
    t.adcs = 4;
    let c = cost_of(&p).mvm(256, 256, 1, 16);
    assert_eq!(c.xbar_ns() + c.adc_tail_ns(), 1.0 + 322.0);
}

#[test]
fn array_energy_from_programmed_conductances() {
    let (mut p, _) = preset("hermes");
    p.device = afm::device::DeviceConfig::Ideal;
    let (rows, cols) = (300, 20);
    // Equal weights: every device at g_max; inputs at the range: 127 PWM steps.
    let layer = AnalogLayer::program(&vec![0.5; rows * cols], cols, rows, &p, 0, "e").unwrap();
    let x = vec![2.0f32; 2 * rows];
    let ranges = vec![2.0f32; layer.blocks.len()];
    let cost = cost_of(&p);
    let e = array_energy_pj(&layer, &x, 2, &ranges, &cost).unwrap();
    // By hand: 2 tokens x 300 rows x 20 columns x 20.7 uS x (0.1 V)^2 x 127 ns = 315.6 pJ.
    let hand = 2.0 * 300.0 * 20.0 * 20.7 * 0.01 * 127.0 * 1e-3;
    assert!(rel_diff(e, hand) < 1e-6, "{e} vs {hand}");
    // Zero inputs draw no array energy; half the range is 64 steps (63.5 rounds to even 64).
    assert_eq!(
        array_energy_pj(&layer, &vec![0.0; rows], 1, &ranges, &cost).unwrap(),
        0.0
    );
    let half = array_energy_pj(&layer, &vec![1.0; rows], 1, &ranges, &cost).unwrap();
    assert!(rel_diff(half, hand / 2.0 * 64.0 / 127.0) < 1e-6);
    // Bit-serial: 127 = 0b1111111 is 7 pulses of 1 ns.
    let mut bs = cost.clone();
    bs.timing.drive = Drive::BitSerial;
    let e_bs = array_energy_pj(&layer, &x, 2, &ranges, &bs).unwrap();
    assert!(rel_diff(e_bs, hand * 7.0 / 127.0) < 1e-6);
    assert!(array_energy_pj(&layer, &x, 3, &ranges, &cost).is_err());
}

fn tiles_and_chips(model_name: &str, preset_name: &str) -> (usize, usize) {
    let (p, _) = preset(preset_name);
    let (cost, chip) = p.cost_sections(Path::new("test")).unwrap();
    let none = Default::default();
    let m = ChipMap::new(
        &model(model_name),
        &cost,
        chip,
        p.rows(),
        p.cols(),
        false,
        &none,
    );
    (m.tiles, m.chips)
}

#[test]
fn tile_and_chip_counts_by_hand() {
    // SmolLM2-135M (hidden 576, MLP 1536, KV 192, vocab 49152, 30 layers) on 256 x 256:
    // q,o 3x3 = 9; k,v 3x1 = 3; gate,up 3x6 = 18; down 6x3 = 18 -> 78 per layer;
    // lm_head 3 x 192 = 576. 30 x 78 + 576 = 2916 tiles; 64 per chip -> 46 chips (45 x 64 = 2880).
    assert_eq!(
        tiles_and_chips("smollm2-135m-instruct", "hermes"),
        (2916, 46)
    );
    // On 512 x 512: q,o 2x2 = 4; k,v 2x1 = 2; gate,up 2x3 = 6; down 3x2 = 6 -> 30 per layer;
    // lm_head 2 x 96 = 192. 30 x 30 + 192 = 1092 tiles; 128 per chip -> 9 chips (8 x 128 = 1024).
    assert_eq!(
        tiles_and_chips("smollm2-135m-instruct", "afm-paper"),
        (1092, 9)
    );
    // Llama-3.2-1B (2048, 8192, KV 512, vocab 128256, 16 layers) on 256: q,o 8x8 = 64; k,v 8x2 =
    // 16; gate,up 8x32 = 256; down 32x8 = 256 -> 928; lm_head 8 x 501 = 4008.
    // 16 x 928 + 4008 = 18856 tiles; 18856 / 64 = 294.6 -> 295 chips.
    assert_eq!(tiles_and_chips("llama-3.2-1b", "hermes"), (18856, 295));
    // On 512: q,o 4x4 = 16; k,v 4x1 = 4; gate,up 4x16 = 64; down 16x4 = 64 -> 232; lm_head
    // 4 x 251 = 1004. 16 x 232 + 1004 = 4716 tiles; 4716 / 128 = 36.8 -> 37 chips.
    assert_eq!(tiles_and_chips("llama-3.2-1b", "afm-paper"), (4716, 37));
    // Phi-3-mini (3072, 8192, 32 KV heads, vocab 32064, 32 layers) on 256: qkv 9216 x 3072 ->
    // 12x36 = 432; o 12x12 = 144; gate_up 16384 x 3072 -> 12x64 = 768; down 32x12 = 384 -> 1728;
    // lm_head 12 x 126 = 1512. 32 x 1728 + 1512 = 56808 tiles; / 64 = 887.6 -> 888 chips.
    assert_eq!(tiles_and_chips("phi-3-mini-4k", "hermes"), (56808, 888));
    // On 512: qkv 6x18 = 108; o 6x6 = 36; gate_up 6x32 = 192; down 16x6 = 96 -> 432; lm_head
    // 6 x 63 = 378. 32 x 432 + 378 = 14202 tiles; / 128 = 110.95 -> 111 chips.
    assert_eq!(tiles_and_chips("phi-3-mini-4k", "afm-paper"), (14202, 111));
    // Isolating 16 of down_proj's 1536 inputs on 512 x 512 gives it a fourth row block of
    // tiles: 2 more per layer, 30 x 32 + 192 = 1152 tiles, 9 chips still (1152 / 128 = 9).
    let (p, _) = preset("afm-paper");
    let (cost, chip) = p.cost_sections(Path::new("test")).unwrap();
    let isolated: std::collections::BTreeMap<String, usize> = (0..30)
        .map(|l| (format!("model.layers.{l}.mlp.down_proj"), 16))
        .collect();
    let cfg = model("smollm2-135m-instruct");
    let heads = HeadBlocks::single(isolated.clone());
    let m = ChipMap::new(&cfg, &cost, chip, 512, 512, false, &heads);
    assert_eq!((m.tiles, m.chips, m.layer_tiles(0)), (1152, 9, 32));
    // A head block longer than a tile has rows is refused, naming the projection.
    let mut wide = isolated.clone();
    wide.insert("model.layers.3.mlp.down_proj".into(), 513);
    let e = check_isolated(&wide, 512, Path::new("afm-paper.toml")).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("afm-paper.toml: field `tile.rows`")
            && e.contains("`model.layers.3.mlp.down_proj` has 513 isolated inputs"),
        "{e}"
    );
    check_isolated(&isolated, 512, Path::new("afm-paper.toml")).unwrap();
    // Eight copies of each 16-input head fill 128 of its tiles' rows: no tile more, and each of
    // the 2 head tiles per layer drives 112 more rows (array and DAC energy, linear in rows).
    let copies = HeadBlocks {
        isolated: isolated.clone(),
        copies: 8,
    };
    let m8 = ChipMap::new(&cfg, &cost, chip, 512, 512, false, &copies);
    assert_eq!((m8.tiles, m8.chips), (m.tiles, m.chips));
    let driven = |m: &ChipMap| -> f64 {
        m.groups
            .iter()
            .map(|g| g.cost.array_pj + g.cost.dac_pj)
            .sum()
    };
    let (a, b) = (cost.mvm(128, 288, 4, 8), cost.mvm(16, 288, 4, 8));
    let hand = 30.0 * 2.0 * (a.array_pj + a.dac_pj - b.array_pj - b.dac_pj);
    assert!(rel_diff(driven(&m8) - driven(&m), hand) < 1e-9);
    let e = HeadBlocks {
        copies: 33,
        ..copies
    }
    .check(512, Path::new("afm-paper.toml"))
    .unwrap_err()
    .to_string();
    assert!(e.contains("16 isolated inputs in 33 copies"), "{e}");
}

#[test]
fn mapping_area_and_utilization() {
    let (p, _) = preset("hermes");
    let (cost, chip) = p.cost_sections(Path::new("test")).unwrap();
    let m = ChipMap::new(
        &model("smollm2-135m-instruct"),
        &cost,
        chip,
        256,
        256,
        false,
        &HeadBlocks::default(),
    );
    assert_eq!(m.layer_tiles(0), 78);
    assert_eq!(m.layer_tiles(30), 576);
    // 30 x (2 x 576^2 + 2 x 192 x 576 + 3 x 1536 x 576) + 49152 x 576 = 134479872 weights over
    // 2916 x 65536 cells.
    assert_eq!(m.weights, 134_479_872);
    assert!((m.array_utilization - 134_479_872.0 / (2916.0 * 65536.0)).abs() < 1e-12);
    // Area: 2916 x 1.392 + 46 chips x (digital 4 x 0.5 + 0.2 + 0.1 + 4.0 + 2 x 0.1 + other 10).
    let hand = 2916.0 * 1.392 + 46.0 * (2.0 + 0.2 + 0.1 + 4.0 + 0.2 + 10.0);
    assert!((m.area_mm2 - hand).abs() < 1e-6, "{}", m.area_mm2);
    let tiles_in_groups: usize = m.groups.iter().map(|g| g.tiles).sum();
    assert_eq!(tiles_in_groups, m.tiles);
    assert!(m.groups.iter().all(|g| g.tiles <= 64));
}

fn run(model_name: &str, preset_name: &str, p_len: usize, d_len: usize) -> afm::chip::ChipReport {
    let (p, file) = preset(preset_name);
    let spec = RunSpec {
        model: model_name.into(),
        prompt_len: p_len,
        gen_len: d_len,
        digital_lm_head: false,
        heads: HeadBlocks::default(),
    };
    simulate(&model(model_name), &p, &file, &spec, &mut |_, _| {})
        .unwrap()
        .0
}

#[test]
fn schedule_respects_dependencies_and_exclusive_resources() {
    let (p, _) = preset("hermes");
    let (cost, chip) = p.cost_sections(Path::new("test")).unwrap();
    let cfg = model("tiny-llama");
    let map = ChipMap::new(&cfg, &cost, chip, 256, 256, false, &HeadBlocks::default());
    let g = graph::build(&cfg, &cost, chip, &map, 6, 3);
    let s = schedule::simulate(&g, &mut |_, _| {});
    let mut by_res: Vec<Vec<(u64, u64)>> = vec![Vec::new(); g.resources.len()];
    for i in 0..g.len() {
        let end_busy = s.start[i] + u64::from(g.busy_ns[i]);
        assert_eq!(s.done[i], end_busy + u64::from(g.tail_ns[i]));
        for &j in g.successors(i) {
            assert!(
                s.start[j as usize] >= s.done[i],
                "op {j} starts before {i} is done"
            );
        }
        by_res[g.resource[i] as usize].push((s.start[i], end_busy));
    }
    for spans in &mut by_res {
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[1].0 >= w[0].1, "overlap on one resource: {w:?}");
        }
    }
    assert_eq!(s.events, 2 * g.len() as u64);
}

#[test]
fn prefill_pipelines_and_decode_grows_with_the_cache() {
    let one = run("tiny-llama", "hermes", 1, 0);
    let many = run("tiny-llama", "hermes", 32, 0);
    // Pipelined: 32 prompt tokens take longer than one, but far less than 32 times as long.
    assert!(many.ttft_ns > one.ttft_ns);
    assert!(
        many.ttft_ns < 8 * one.ttft_ns,
        "{} vs {}",
        many.ttft_ns,
        one.ttft_ns
    );
    // A decode step with a longer cache reads more: later steps are slower.
    let short = run("tiny-llama", "hermes", 4, 4);
    let long = run("tiny-llama", "hermes", 400, 4);
    assert!(long.decode_per_token_ns > short.decode_per_token_ns);
    let kv = |r: &afm::chip::ChipReport| {
        r.decode_energy_per_token
            .iter()
            .find(|x| x.component == "kv_cache")
            .unwrap()
            .pj
    };
    assert!(kv(&long) > 10.0 * kv(&short));
    // Tile energy per token does not depend on the context: drive, array, ADC are the same.
    for i in 0..3 {
        let (a, b) = (
            &short.decode_energy_per_token[i],
            &long.decode_energy_per_token[i],
        );
        assert!(rel_diff(a.pj, b.pj) < 1e-12, "{}", a.component);
    }
    assert!(short.layers.iter().all(|l| l.decode_ns > 0.0));
}

#[test]
fn contention_on_a_slower_kv_cache_shows() {
    let (mut p, file) = preset("hermes");
    let spec = RunSpec {
        model: "tiny-llama".into(),
        prompt_len: 64,
        gen_len: 2,
        digital_lm_head: false,
        heads: HeadBlocks::default(),
    };
    let cfg = model("tiny-llama");
    let fast = simulate(&cfg, &p, &file, &spec, &mut |_, _| {}).unwrap().0;
    p.chip.as_mut().unwrap().kv_cache.ops_per_ns /= 16.0;
    let slow = simulate(&cfg, &p, &file, &spec, &mut |_, _| {}).unwrap().0;
    assert!(slow.ttft_ns > fast.ttft_ns);
    assert!(slow.prefill_utilization.digital[3].1 > fast.prefill_utilization.digital[3].1);
}

#[test]
fn same_inputs_same_bytes_and_the_cli_writes_the_report() {
    let a = run("tiny-phi3", "afm-paper", 5, 3);
    let b = run("tiny-phi3", "afm-paper", 5, 3);
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.to_markdown(), b.to_markdown());
    let dir = temp_dir("chip-report");
    let chip_report = |more: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_afm"))
            .args([
                "chip",
                "report",
                "--model",
                "tiny-llama",
                "--tiles",
                "hermes",
            ])
            .args(more)
            .current_dir(repo("."))
            .output()
            .unwrap()
    };
    let out = chip_report(&[
        "--prompt-len",
        "8",
        "--gen-len",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("time to first token") && stdout.contains("Simulation wall time"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    // tiny-llama (hidden 64, MLP 160, vocab 256) on 256 x 256: one tile per projection, 7 per
    // layer, and one for lm_head.
    assert_eq!(json["tiles"], 2 * 7 + 1);
    let svg = std::fs::read_to_string(dir.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    std::fs::remove_dir_all(&dir).unwrap();
    // Copies of head blocks that the model does not have: one error naming the flag.
    let out = chip_report(&["--head-copies", "4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--head-copies 4") && err.contains("no isolated"),
        "{err}"
    );
}

#[test]
fn presets_without_or_with_bad_cost_sections() {
    let (p, _) = preset("hermes");
    let mut bare = p.clone();
    bare.chip = None;
    let e = bare
        .cost_sections(Path::new("bare.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bare.toml") && e.contains("[chip]"), "{e}");
    let text = std::fs::read_to_string(repo("tiles/hermes.toml")).unwrap();
    for (from, to, want) in [
        (
            "phases = 1",
            "phases = 3",
            "field `timing.phases`: must be 1, 2 or 4, got 3",
        ),
        (
            "tiles_per_chip = 64",
            "tiles_per_chip = 0",
            "field `chip.tiles_per_chip`",
        ),
        (
            "ops_per_ns = 32.0",
            "ops_per_ns = -1.0",
            "chip.softmax.ops_per_ns",
        ),
        (
            "e_conv_pj = 43.27",
            "e_conv_pj = 43.27\nfoo = 1",
            "unknown field `foo`",
        ),
    ] {
        let e = TilePreset::parse(&text.replacen(from, to, 1), Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains(want), "{e}");
    }
}

#[test]
fn measured_array_energy_replaces_the_average() {
    let (p, file) = preset("hermes");
    let (cost, chip) = p.cost_sections(Path::new("test")).unwrap();
    let cfg = model("tiny-llama");
    let spec = RunSpec {
        model: "tiny-llama".into(),
        prompt_len: 2,
        gen_len: 1,
        digital_lm_head: false,
        heads: HeadBlocks::default(),
    };
    let mut map = ChipMap::new(&cfg, &cost, chip, 256, 256, false, &HeadBlocks::default());
    let base = afm::chip::simulate_mapped(&cfg, &p, &file, &map, &spec, &mut |_, _| {})
        .unwrap()
        .0;
    // q_proj of layer 0 at the average: 64 x 64 x 0.25 x 20.7 uS x 0.01 V^2 x 0.25 x 127 ns.
    let avg = 64.0 * 64.0 * 0.25 * 20.7 * 0.01 * 0.25 * 127.0 * 1e-3;
    assert!(map.set_array_energy(0, "self_attn.q_proj", avg + 1000.0));
    assert!(!map.set_array_energy(0, "no_such_proj", 1.0));
    let more = afm::chip::simulate_mapped(&cfg, &p, &file, &map, &spec, &mut |_, _| {})
        .unwrap()
        .0;
    // 1000 pJ more per q_proj MVM, once for each of the 3 tokens (2 prompt, 1 decode).
    let array = |r: &afm::chip::ChipReport| {
        r.prefill_energy_per_token[1].pj * 2.0 + r.decode_energy_per_token[1].pj
    };
    assert!((array(&more) - array(&base) - 3000.0).abs() < 1e-6);
    assert_eq!(more.ttft_ns, base.ttft_ns);
}

//! Sweep files: parsing, expansion into explicit points, and presets per point.

mod report;

use crate::common::{repo, temp_dir};
use afm::sweep::spec::apply;
use afm::sweep::SweepFile;
use afm::tile::TilePreset;

fn sweep(dir: &std::path::Path, body: &str) -> afm::Result<SweepFile> {
    let p = dir.join("s.toml");
    std::fs::write(&p, body).unwrap();
    SweepFile::load(&p)
}

const HEAD: &str = "name = \"t\"\nbase = \"afm-paper\"\nmodel = \"smollm2-135m-instruct\"\n\
                    tasks = [\"wikitext2\"]\n";

#[test]
fn grid_expands_in_order_and_points_follow() {
    let dir = temp_dir("sweep-grid");
    let s = sweep(
        &dir,
        &format!(
            "{HEAD}[grid]\n\"adc.bits\" = [6, 7, 8]\n\"tile.rows\" = [256, 512]\n\
             [[points]]\ndrift_time_s = 3600.0\n"
        ),
    )
    .unwrap();
    let pts = s.expand();
    assert_eq!(pts.len(), 7);
    let labels: Vec<String> = pts.iter().map(|p| p.label()).collect();
    assert_eq!(labels[0], "adc.bits=6 tile.rows=256");
    assert_eq!(labels[1], "adc.bits=6 tile.rows=512");
    assert_eq!(labels[5], "adc.bits=8 tile.rows=512");
    assert_eq!(labels[6], "drift_time_s=3600.0");
    assert_eq!(s.seeds, 3);
    let base = TilePreset::load(&repo("tiles/afm-paper.toml")).unwrap();
    let p = apply(&base, &pts[0]).unwrap();
    assert_eq!((p.adc.bits, p.rows()), (6, 256));
    assert_eq!(p.name, "afm-paper#0");
    assert_eq!(p.dac, base.dac, "untouched fields stay");
    assert_eq!(apply(&base, &pts[6]).unwrap().drift_time_s, 3600.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_sweeps_and_points_say_what_is_wrong() {
    let dir = temp_dir("sweep-bad");
    let err = |body: &str| sweep(&dir, body).unwrap_err().to_string();
    assert!(err(HEAD).contains("grid"));
    assert!(err(&format!("{HEAD}seeds = 0\n[grid]\n\"adc.bits\" = [6]\n")).contains("seeds"));
    assert!(err(&format!("{HEAD}[grid]\n\"adc.bits\" = []\n")).contains("grid.adc.bits"));
    assert!(err(&format!("{HEAD}colour = 1\n[grid]\n\"adc.bits\" = [6]\n")).contains("colour"));
    let base = TilePreset::load(&repo("tiles/afm-paper.toml")).unwrap();
    let s = sweep(
        &dir,
        &format!(
            "{HEAD}[[points]]\n\"adc.nope\" = 1\n[[points]]\n\"foo.bar\" = 1\n\
             [[points]]\n\"adc.bits\" = \"eight\"\n"
        ),
    )
    .unwrap();
    let pts = s.expand();
    let e0 = apply(&base, &pts[0]).unwrap_err().to_string();
    assert!(e0.contains("nope") && e0.contains("sweep point 0"), "{e0}");
    let e1 = apply(&base, &pts[1]).unwrap_err().to_string();
    assert!(e1.contains("no section `foo`"), "{e1}");
    let e2 = apply(&base, &pts[2]).unwrap_err().to_string();
    assert!(e2.contains("sweep point 2"), "{e2}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_sweeps_expand_to_valid_presets() {
    let dir = repo("tiles/sweeps");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let s = SweepFile::load(&path).unwrap();
        let base = TilePreset::load(&afm::tile::resolve_preset_path(&s.base)).unwrap();
        for p in s.expand() {
            apply(&base, &p).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 15, "{n} points");
}

#[test]
fn sweep_points_run_record_failures_and_resume() {
    use afm::sweep::run::{run_point, write_points, Context};
    let dir = temp_dir("sweep-run");
    let model_dir = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let s = sweep(
        &dir,
        &format!(
            "name = \"t\"\nbase = \"afm-paper\"\nmodel = \"{}\"\ntasks = [\"{}\"]\nseeds = 2\n\
             text_tokens = 256\nprompt_len = 16\ngen_len = 4\n\
             [[points]]\n\"adc.bits\" = 6\n\"tile.rows\" = 32\n[[points]]\n\"adc.bits\" = 99\n",
            model_dir.display(),
            text.display()
        ),
    )
    .unwrap();
    let m = afm::executor::load::load_model(model_dir.to_str().unwrap(), candle_core::DType::F32)
        .unwrap();
    let tok = m.tokenizer.clone().unwrap();
    let task = afm::eval::tasks::load(&s.tasks[0], &dir, None, None).unwrap();
    let base_file = afm::tile::resolve_preset_path(&s.base);
    let cx = Context {
        sweep: &s,
        base: TilePreset::load(&base_file).unwrap(),
        base_file,
        model: &m.decoder,
        tok: &tok,
        tasks: vec![task],
        calibration: None,
    };
    let out = dir.join("out");
    let points = s.expand();
    write_points(&out, &points).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("points.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    let ok = run_point(&cx, &points[0], &out).unwrap();
    assert!(ok.error.is_none(), "{:?}", ok.error);
    let ppl = ok.metrics.iter().find(|m| m.metric == "ppl").unwrap();
    assert_eq!(ppl.values.len(), 2);
    assert!(ppl.mean.is_finite() && ppl.mean > 1.0);
    let chip = ok.chip.as_ref().unwrap();
    assert!(chip.tiles > 0 && chip.energy_per_token_pj > 0.0 && chip.ttft_ns > 0);
    let bad = run_point(&cx, &points[1], &out).unwrap();
    assert!(
        bad.error.as_ref().unwrap().contains("sweep point 1"),
        "{:?}",
        bad.error
    );
    // A re-run reads the stored results instead of recomputing.
    let again = run_point(&cx, &points[0], &out).unwrap();
    assert_eq!(again, ok);
    let _ = std::fs::remove_dir_all(&dir);
}

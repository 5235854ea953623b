//! `afm sweep --jobs/--shard` and `afm report` through the binary on a tiny model: the results do
//! not depend on the thread count, shards merge into the unsharded table, a re-run recomputes
//! nothing, bad input is refused with its reason; the Pareto front follows the metric's direction.

use crate::common::{afm, temp_dir};
use afm::eval::run::Summary;
use afm::report::{pareto, Objective};
use afm::sweep::run::{ChipMetrics, PointResult};
use afm::sweep::{Point, Shard};
use std::path::{Path, PathBuf};

fn ok(args: &[&str]) {
    let o = afm(args);
    assert!(
        o.status.success(),
        "afm {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn fails(args: &[&str]) -> String {
    let o = afm(args);
    assert!(!o.status.success(), "afm {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ids(dir: &Path) -> Vec<usize> {
    let r: Vec<PointResult> = serde_json::from_str(&read(&dir.join("results.json"))).unwrap();
    r.iter().map(|r| r.point.id).collect()
}

#[test]
fn jobs_shards_resume_and_report_agree() {
    let dir = temp_dir("sweep-report");
    let model = crate::eval_run::tiny_model_with_tokenizer(&dir);
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let body = |seeds: usize| {
        format!(
            "name = \"t\"\nbase = \"afm-paper\"\nmodel = \"{}\"\ntasks = [\"{}\"]\nseeds = {seeds}\n\
             text_tokens = 128\nprompt_len = 8\ngen_len = 2\n\
             [grid]\n\"adc.bits\" = [4, 8]\n\"tile.rows\" = [32, 64]\n\
             [[points]]\n\"adc.bits\" = 99\n",
            model.display(),
            text.display()
        )
    };
    let file = dir.join("s.toml");
    std::fs::write(&file, body(2)).unwrap();
    let f = file.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = dir.join(name);
        let mut a = vec!["sweep", f, "--out", out.to_str().unwrap()];
        a.extend(extra);
        ok(&a);
        out
    };
    let one = run("j1", &["--jobs", "1"]);
    let two = run("j2", &["--jobs", "2"]);
    assert_eq!(
        read(&one.join("results.json")),
        read(&two.join("results.json"))
    );
    let results: Vec<PointResult> = serde_json::from_str(&read(&one.join("results.json"))).unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[..4]
        .iter()
        .all(|r| r.error.is_none() && r.chip.is_some()));
    let err = results[4].error.as_deref().unwrap();
    assert!(
        err.contains("adc.bits") && err.contains("sweep point 4"),
        "{err}"
    );
    // The ADC's cost follows its bits: 4 bits spend less per token than 8 (points 0 and 2 have
    // 32 rows), at the same tile count.
    let chip = |i: usize| results[i].chip.clone().unwrap();
    assert!(chip(0).energy_per_token_pj < chip(2).energy_per_token_pj);
    assert_eq!(chip(0).tiles, chip(2).tiles);

    // A re-run finds every point on disk: nothing is rewritten.
    let stamp = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d.join("results"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = stamp(&two);
    run("j2", &["--jobs", "2"]);
    assert_eq!(stamp(&two), before);

    let s1 = run("s1", &["--shard", "1/2", "--jobs", "2"]);
    let s2 = run("s2", &["--shard", "2/2"]);
    assert_eq!((ids(&s1), ids(&s2)), (vec![0, 2, 4], vec![1, 3]));
    let r1 = dir.join("r1");
    let r12 = dir.join("r12");
    ok(&[
        "report",
        one.to_str().unwrap(),
        "--out",
        r1.to_str().unwrap(),
    ]);
    ok(&[
        "report",
        s2.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--out",
        r12.to_str().unwrap(),
    ]);
    let unsharded = read(&one.join("results.json"));
    assert_eq!(read(&r1.join("results.json")), unsharded);
    assert_eq!(read(&r12.join("results.json")), unsharded);
    assert_eq!(
        read(&r12.join("results.csv")),
        read(&one.join("results.csv"))
    );
    let strip = |t: String| -> String {
        t.lines()
            .filter(|l| !l.starts_with("Folders:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let md = read(&r1.join("report.md"));
    assert_eq!(strip(md.clone()), strip(read(&r12.join("report.md"))));
    assert!(
        md.contains("5 points: 4 done, 1 failed, 0 not run yet"),
        "{md}"
    );
    assert!(md.contains("## Failed points") && md.contains("- point 4 (`adc.bits=99`)"));
    assert!(md.contains("ppl (lower is better)"));
    for name in ["plot-energy.svg", "plot-adc.bits.svg", "plot-tile.rows.svg"] {
        let svg = read(&r1.join(name));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(md.contains(&format!("({name})")), "{name} not in report.md");
    }
    let svg = read(&r1.join("plot-adc.bits.svg"));
    assert!(svg.contains(">tile.rows=32<") && svg.contains(">tile.rows=64<"));
    assert!(read(&r1.join("plot-energy.svg")).contains(">Pareto front<"));

    // One shard alone: the other's points are listed as not run.
    let r_s1 = dir.join("r_s1");
    ok(&[
        "report",
        s1.to_str().unwrap(),
        "--out",
        r_s1.to_str().unwrap(),
    ]);
    assert!(read(&r_s1.join("report.md")).contains("Points 1, 3 have no result"));

    // Refusals: folders of different sweeps, bad shard specs, a folder that is no sweep.
    std::fs::write(&file, body(1)).unwrap();
    let other = run("other", &["--shard", "2/2"]);
    let e = fails(&["report", one.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(e.contains("different sweeps"), "{e}");
    for bad in ["3/2", "0/2", "a/2", "2", "1/0"] {
        let e = fails(&["sweep", f, "--out", "unused", "--shard", bad]);
        assert!(e.contains(&format!("--shard `{bad}`")), "{e}");
    }
    let e = fails(&["report", dir.to_str().unwrap()]);
    assert!(e.contains("no sweep.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn result(id: usize, energy: f64, metric: &str, mean: f64) -> PointResult {
    PointResult {
        point: Point {
            id,
            values: [("adc.bits".to_string(), serde_json::json!(id))].into(),
        },
        metrics: vec![Summary {
            row: String::new(),
            task: "t".into(),
            metric: metric.into(),
            mean,
            std: 0.0,
            values: vec![mean],
        }],
        chip: Some(ChipMetrics {
            ttft_ns: 1,
            decode_per_token_ns: 1.0,
            decode_tokens_per_s: 1.0,
            energy_per_token_pj: energy,
            area_mm2: 1.0,
            tiles: 1,
            chips: 1,
        }),
        error: None,
        seconds: None,
    }
}

#[test]
fn pareto_front_follows_the_metric_direction_and_shards_split_points() {
    let pts = [
        (1.0, 50.0),
        (2.0, 40.0),
        (3.0, 45.0),
        (2.0, 60.0),
        (4.0, 30.0),
    ];
    for (metric, want) in [("ppl", vec![0, 1, 4]), ("acc", vec![0, 3])] {
        let rs: Vec<PointResult> = pts
            .iter()
            .enumerate()
            .map(|(i, &(e, m))| result(i, e, metric, m))
            .collect();
        let obj = Objective::of(&rs).unwrap();
        assert_eq!(obj.higher_is_better, metric != "ppl");
        let front: Vec<usize> = pareto(&rs, &obj).iter().map(|r| r.point.id).collect();
        assert_eq!(front, want, "{metric}");
    }
    let s = Shard::parse("2/3").unwrap();
    let mine: Vec<usize> = (0..8).filter(|&i| s.has(i)).collect();
    assert_eq!(mine, vec![1, 4, 7]);
    assert!((0..5).all(|i| Shard::ALL.has(i)));
}

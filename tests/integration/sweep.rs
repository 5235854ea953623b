//! Sweep files: parsing, expansion into explicit points, and presets per point.

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

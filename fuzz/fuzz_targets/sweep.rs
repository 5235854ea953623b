//! Sweep files (TOML): any bytes give a sweep or an error naming the file; a sweep that parses
//! expands to at most `MAX_POINTS` points, and its first points apply to a real base preset
//! (or fail with an error), never a panic.
#![no_main]

use afm::sweep::spec::{apply, SweepFile, MAX_POINTS};
use afm::tile::TilePreset;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn base() -> &'static TilePreset {
    static BASE: OnceLock<TilePreset> = OnceLock::new();
    BASE.get_or_init(|| {
        let text = include_str!("../../tiles/afm-paper.toml");
        TilePreset::parse(text, Path::new("afm-paper.toml")).expect("shipped preset")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SweepFile::parse(text, Path::new("fuzz.toml")) {
        Ok(s) => {
            let points = s.expand();
            assert!(!points.is_empty() && points.len() <= MAX_POINTS);
            for p in points.iter().take(8) {
                let _ = p.label();
                let _ = apply(base(), p);
            }
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});

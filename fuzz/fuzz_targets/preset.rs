//! Tile presets (TOML): any bytes give a preset or an error naming the file, never a panic;
//! a preset that parses renders (`to_toml`, what sweeps start from) to text that parses again.
#![no_main]

use afm::tile::TilePreset;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    match TilePreset::parse(text, file) {
        Ok(p) => {
            let again = TilePreset::parse(&p.to_toml(), file);
            assert!(again.is_ok(), "rendered preset does not parse: {again:?}");
            let _ = p.cost_sections(file);
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});

//! Tile presets: every shipped file loads, and bad values give one clear error line.

use crate::common::repo;
use afm::tile::TilePreset;
use std::path::Path;

const GOOD: &str = r#"
name = "t"
[tile]
rows = 64
cols = 32
[dac]
bits = 8
[adc]
bits = 8
lambda = 14.0
[device]
model = "pcm-afm"
"#;

fn err_of(text: &str) -> String {
    TilePreset::parse(text, Path::new("bad.toml"))
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn shipped_presets_load() {
    for name in ["ideal", "afm-paper", "hermes", "pcm-aihwkit"] {
        let p = TilePreset::load(&repo(&format!("tiles/{name}.toml"))).unwrap();
        assert_eq!(p.name, name);
        let again = TilePreset::parse(&p.to_toml(), Path::new("roundtrip")).unwrap();
        assert_eq!(again.tile, p.tile);
    }
    let p = TilePreset::load(&repo("tiles/afm-paper.toml")).unwrap();
    assert_eq!(
        (p.rows(), p.dac.bits, p.adc.bits, p.adc.lambda),
        (512, 8, 8, 14.0)
    );
    let h = TilePreset::load(&repo("tiles/hermes.toml")).unwrap();
    assert_eq!((h.rows(), h.cols()), (256, 256));
}

#[test]
fn bad_values_name_file_field_and_range() {
    assert!(TilePreset::parse(GOOD, Path::new("good.toml")).is_ok());
    let cases = [
        (
            "rows = 64",
            "rows = 0",
            "field `tile.rows`: must be in 1..=1048576, got 0",
        ),
        (
            "[dac]\nbits = 8",
            "[dac]\nbits = -3",
            "field `dac.bits`: must be 0 (off) or in 2..=16, got -3",
        ),
        (
            "lambda = 14.0",
            "lambda = nan",
            "field `adc.lambda`: must be a finite number > 0, got NaN",
        ),
        (
            "model = \"pcm-afm\"",
            "model = \"pcm-afm\"\nnoise_scale = -1.0",
            "field `device.noise_scale`",
        ),
        (
            "model = \"pcm-afm\"",
            "model = \"hermes\"\nnum_devices = 3",
            "field `device.num_devices`: must be 1 or 2",
        ),
        (
            "model = \"pcm-afm\"",
            "model = \"hermes\"\nnum_devices = 1\ng_max_us = 20.0",
            "(0, 10.35]",
        ),
    ];
    for (from, to, want) in cases {
        let e = err_of(&GOOD.replace(from, to));
        assert!(e.starts_with("bad.toml: "), "{e}");
        assert!(e.contains(want), "{e} lacks {want}");
        assert!(!e.contains('\n'), "{e} is not one line");
    }
}

#[test]
fn unknown_names_are_rejected_with_position() {
    let e = err_of(&GOOD.replace("model = \"pcm-afm\"", "model = \"memristor\""));
    assert!(
        e.contains("unknown variant `memristor`") && e.contains("line 12"),
        "{e}"
    );
    let e = err_of(&GOOD.replace("cols = 32", "cols = 32\ncolz = 3"));
    assert!(e.contains("unknown field `colz`"), "{e}");
    let e = err_of(&GOOD.replace("[dac]\nbits = 8", "[dac]\nbits = \"eight\""));
    assert!(e.contains("bad.toml") && e.contains("line"), "{e}");
}

#[test]
fn garbage_never_panics() {
    let mut state = 0x1234_5678_u64;
    for len in [0usize, 1, 7, 64, 300] {
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 33) as u8
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            assert!(TilePreset::parse(&text, Path::new("garbage.toml")).is_err());
        }
    }
    let truncated = &GOOD[..GOOD.len() / 2];
    assert!(TilePreset::parse(truncated, Path::new("t.toml")).is_err());
    let e = TilePreset::load(Path::new("/nonexistent/preset.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/preset.toml"));
}

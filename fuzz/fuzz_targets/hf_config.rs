//! The JSON files of an HF model folder: `config.json` (a config or an error naming the file;
//! a config that parses writes back, `to_json`, to a config that parses to the same) and
//! `model.safetensors.index.json` (plain shard file names or an error naming the file).
#![no_main]

use afm::executor::config::HfConfig;
use afm::executor::weights::parse_shard_index;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match HfConfig::parse(text, Path::new("config.json")) {
        Ok(c) => {
            let back = HfConfig::parse(&c.to_json().to_string(), Path::new("again.json"));
            assert!(back.is_ok(), "written config does not parse: {back:?}");
        }
        Err(e) => assert!(e.to_string().contains("config.json"), "{e}"),
    }
    let index = Path::new("model.safetensors.index.json");
    match parse_shard_index(text, index) {
        Ok(names) => assert!(names.iter().all(|n| !n.contains('/') && n != "..")),
        Err(e) => assert!(e.to_string().contains("index.json"), "{e}"),
    }
});

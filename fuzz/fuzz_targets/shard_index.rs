//! Token shard indexes (`index.json` of `afm datagen`): an index or an error naming the file;
//! an index that parses names only files inside its folder and counts its rows without
//! overflow.
#![no_main]

use afm::train::shards::DataIndex;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("data");
    match DataIndex::parse(text, &dir.join("index.json")) {
        Ok(idx) => {
            let _ = idx.rows();
            for val in [false, true] {
                for (path, rows) in idx.files(dir, val) {
                    assert_eq!(path.parent(), Some(dir), "{path:?}");
                    assert!(rows.checked_mul(idx.seq_len * 4).is_some());
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("index.json"), "{e}"),
    }
});

//! Task JSONL files (`afm eval --tasks my.jsonl`): items of one of the five formats with the
//! malformed lines listed, or an error naming the file, never a panic.
#![no_main]

use afm::eval::tasks::{parse_jsonl, TaskData};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_jsonl(text, Path::new("fuzz.jsonl")) {
        Ok((TaskData::MultipleChoice(items), _)) => {
            for it in items {
                assert!(it.gold < it.continuations.len());
                assert_eq!(it.contexts.len(), it.continuations.len());
            }
        }
        Ok((data, bad)) => {
            let n = match &data {
                TaskData::Continuation(v) => v.len(),
                TaskData::Generation(v, _) => v.len(),
                _ => 1,
            };
            assert!(n > 0);
            assert!(bad.iter().all(|(line, _)| *line >= 1));
        }
        Err(e) => assert!(e.to_string().contains("fuzz.jsonl"), "{e}"),
    }
});

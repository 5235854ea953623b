//! GGUF files: the bounds check, the header and metadata, the tokenizer built from them and the
//! tensors; a model or an error naming the file, never a panic, and nothing allocated that the
//! file's bytes do not back.
#![no_main]

use afm::executor::gguf::GgufModel;
use candle_core::DType;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = GgufModel::from_bytes(data, Path::new("fuzz.gguf"), DType::F32) {
        assert!(e.to_string().contains("fuzz.gguf"), "{e}");
    }
});

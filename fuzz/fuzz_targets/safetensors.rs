//! safetensors files (header and data): tensors or an error naming the file, never a panic or
//! an allocation beyond what the bytes hold.
#![no_main]

use afm::executor::weights::parse_safetensors;
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let file = Path::new("model.safetensors");
    match parse_safetensors(data, file, &Device::Cpu) {
        Ok(tensors) => {
            for t in tensors.values() {
                assert!(t.elem_count() * t.dtype().size_in_bytes() <= data.len());
            }
        }
        Err(e) => assert!(e.to_string().contains("model.safetensors"), "{e}"),
    }
});

#![no_main]
//! Any bytes as a GGUF file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gpuattest_agent::models::gguf::fingerprint(&mut &data[..], data.len() as u64);
});

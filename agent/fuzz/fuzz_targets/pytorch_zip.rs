#![no_main]
//! Any bytes as a zip-format PyTorch checkpoint.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gpuattest_agent::models::pytorch::fingerprint(&mut std::io::Cursor::new(data), data.len() as u64);
});

#![no_main]
//! Any bytes as a safetensors file: the parser must return, never panic, and stay bounded.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gpuattest_agent::models::safetensors::fingerprint(&mut &data[..], data.len() as u64);
});

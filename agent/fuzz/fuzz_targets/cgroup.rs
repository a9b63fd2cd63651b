#![no_main]
//! Any text as /proc/<pid>/cgroup.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gpuattest_agent::jobs::cgroup::parse(&String::from_utf8_lossy(data));
});

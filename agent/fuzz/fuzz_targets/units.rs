#![no_main]
//! The time, duration and size parsers (`gpuattest_proto::units`) on arbitrary text: flags, config
//! files and the export API's `since`/`until` query values all reach them. They return, never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = gpuattest_proto::units::parse_duration(&s);
    let _ = gpuattest_proto::units::parse_size(&s);
    let _ = gpuattest_proto::units::parse_time(&s, 1_800_000_000_000);
});

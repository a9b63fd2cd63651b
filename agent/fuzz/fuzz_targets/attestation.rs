#![no_main]
//! The GPU attestation evidence parsers (`gpuattest-evidence`) on arbitrary bytes: an agent (or
//! whoever holds its key) chooses every byte of the SPDM report and certificate chain the collector
//! verifies. Each returns a verdict or an error, never panics, and stays within its bounds.
use libfuzzer_sys::fuzz_target;

/// NVIDIA's public H100 chain (see `evidence/test-data/README.md`), so reports are checked against a
/// real chain too.
const CHAIN: &[u8] = include_bytes!("../../../evidence/test-data/hopperCertChain.txt");

fuzz_target!(|data: &[u8]| {
    let _ = gpuattest_evidence::Report::parse(data);
    let _ = gpuattest_evidence::verify_at(data, CHAIN, &[0; 32], 1_800_000_000, &[]);
    let _ = gpuattest_evidence::verify_at(b"", data, &[0; 32], 1_800_000_000, &[]);
    if let Ok(certs) = gpuattest_evidence::chain_from_pem(data) {
        let _ = gpuattest_evidence::check_chain(&certs, 1_800_000_000, &[]);
    }
    let _ = gpuattest_evidence::x509::certificate(data);
    let _ = gpuattest_evidence::x509::subject_serial_number(data);
});

//! `gpuattest-collector attestation verify` on NVIDIA's public H100 sample (nvtrust; kept in
//! `evidence/test-data/`): valid with the pinned root, and refused in one line when a
//! measurement byte is flipped, the nonce differs, or the input is hostile.

use std::path::{Path, PathBuf};

use gpuattest_tests::{bin, run};
use serde_json::Value;

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../evidence/test-data").join(name)
}

fn verify(report: &Path, certs: &Path, nonce: &str) -> (i32, String, String) {
    run(std::process::Command::new(bin("gpuattest-collector"))
        .args(["attestation", "verify", "--json", "--report"])
        .arg(report)
        .arg("--certs")
        .arg(certs)
        .args(["--nonce", nonce]))
}

#[test]
fn the_public_h100_sample_verifies_and_every_corruption_is_refused() {
    let (report, certs) = (sample("hopperAttestationReport.txt"), sample("hopperCertChain.txt"));
    let (code, out, err) = verify(&report, &certs, NONCE);
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["driver_version"], "550.90.07");
    assert_eq!(v["vbios_version"], "96.00.9F.00.01");
    assert_eq!(v["device_serial"], "53C22BA15E5D68088282DA074ED9FB37AA585771");
    assert_eq!(v["measurements"].as_array().map(Vec::len), Some(64));
    assert_eq!(v["checks"]["x-nvidia-gpu-attestation-report-cert-chain-validated"], true);

    let t = tempfile::tempdir().expect("tmp");
    // One byte of a measurement flipped (hex digit of the first block's digest).
    let mut hex = std::fs::read_to_string(&report).expect("report");
    let at = 2 * (37 + 8 + 4 + 3 + 5);
    let flipped = if &hex[at..at + 1] == "0" { "1" } else { "0" };
    hex.replace_range(at..at + 1, flipped);
    let bad = t.path().join("flipped.txt");
    std::fs::write(&bad, hex).expect("write");
    let (code, out, err) = verify(&bad, &certs, NONCE);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("signature does not verify") && err.trim().lines().count() == 1, "{err}");
    // Another nonce.
    let (code, _, err) = verify(&report, &certs, &"00".repeat(32));
    assert_eq!(code, 1);
    assert!(err.contains("not the one issued"), "{err}");
    // Hostile input: a malformed nonce, a 10 MB chain, random bytes as a report.
    assert_eq!(verify(&report, &certs, "xyz").0, 64);
    let huge = t.path().join("huge.pem");
    std::fs::write(&huge, vec![b'A'; 10 << 20]).expect("write");
    let (code, _, err) = verify(&report, &huge, NONCE);
    assert_eq!(code, 64, "{err}");
    let junk = t.path().join("junk.bin");
    std::fs::write(&junk, (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>())
        .expect("write");
    let (code, _, err) = verify(&junk, &certs, NONCE);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("panicked") && err.trim().lines().count() == 1, "{err}");
}

//! `attestation verify`: a GPU attestation report checked offline, with an optional benchmark.

use super::*;

/// `attestation verify --bench N`: microseconds per verification with the chain checked in full
/// (a fresh verifier each time), from the chain cache (a host's steady state: parse, nonce, one P-384
/// signature check, FWID), and with every link already seen (all cached links: what a new chain
/// costs when only its leaf is new is between the two), as JSON.
fn attestation_bench(report: &[u8], chain: &[u8], nonce: &[u8], anchors: &[[u8; 32]], n: u32) -> Result {
    let now = crate::now_ms() / 1000;
    let started = std::time::Instant::now();
    let mut valid = true;
    for _ in 0..n {
        valid &= gpuattest_evidence::Verifier::new(anchors.to_vec()).verify(report, chain, nonce, now).valid;
    }
    let full = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let cached = gpuattest_evidence::Verifier::new(anchors.to_vec());
    let _ = cached.verify(report, chain, nonce, now);
    let started = std::time::Instant::now();
    for _ in 0..n {
        valid &= cached.verify(report, chain, nonce, now).valid;
    }
    let steady = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    // A chain not seen before under CAs seen before: only its new links are checked.
    let started = std::time::Instant::now();
    for _ in 0..n {
        cached.forget_chains();
        valid &= cached.verify(report, chain, nonce, now).valid;
    }
    let known_cas = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    print_json(&serde_json::json!({
        "iterations": n,
        "valid": valid,
        "full_verify_us": (full * 10.0).round() / 10.0,
        "cached_chain_verify_us": (steady * 10.0).round() / 10.0,
        "known_links_verify_us": (known_cas * 10.0).round() / 10.0,
        "ratio": (full / steady * 100.0).round() / 100.0,
    }))
}

/// `attestation verify`: one GPU attestation report (hex or binary, detected) with its PEM chain,
/// against the expected nonce; `--anchor` PEM files add trusted roots beside the pinned NVIDIA one.
/// Exit 0 only when every mandatory check passes.
///
/// # Errors
/// Usage for unreadable inputs or a bad nonce; runtime (1) for a report that does not verify.
pub fn attestation_verify(
    report: &Path,
    certs: &Path,
    nonce: &str,
    anchors: &[std::path::PathBuf],
    json: bool,
    bench: Option<u32>,
) -> Result {
    let read = |p: &Path, max: usize| -> Result<Vec<u8>> {
        let meta = std::fs::metadata(p).map_err(|e| usage(format!("{}: {e}", p.display())))?;
        if !meta.is_file() || meta.len() > max as u64 {
            return Err(usage(format!("{}: not a file of at most {max} bytes", p.display())));
        }
        std::fs::read(p).map_err(|e| usage(format!("{}: {e}", p.display())))
    };
    let hex = |s: &[u8]| -> Option<Vec<u8>> {
        let t: Vec<u8> = s.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        (t.len().is_multiple_of(2) && t.iter().all(u8::is_ascii_hexdigit))
            .then(|| t.chunks(2).filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect())
    };
    let raw = read(report, 2 * gpuattest_evidence::MAX_REPORT_BYTES + 4096)?;
    let report_bytes = hex(&raw).filter(|b| !b.is_empty()).unwrap_or(raw);
    let chain = read(certs, gpuattest_evidence::MAX_CHAIN_BYTES)?;
    let nonce =
        hex(nonce.as_bytes()).filter(|n| n.len() == 32).ok_or_else(|| usage("--nonce: 64 hex digits (32 bytes)"))?;
    let mut trusted = Vec::new();
    for a in anchors {
        let pem = read_pem(a)?;
        let certs =
            gpuattest_evidence::chain_from_pem(&pem).map_err(|e| config(format!("--anchor {}: {e}", a.display())))?;
        trusted.extend(certs.iter().map(|c| gpuattest_proto::sha256(c)));
    }
    let now = crate::now_ms() / 1000;
    if let Some(n) = bench {
        return attestation_bench(&report_bytes, &chain, &nonce, &trusted, n.max(1));
    }
    let v = gpuattest_evidence::verify_at(&report_bytes, &chain, &nonce, now, &trusted);
    if json {
        print_json(&serde_json::json!({
            "valid": v.valid,
            "checks": v.checks,
            "nonce": v.nonce,
            "measurements": v.measurements.iter().map(|(i, d)| serde_json::json!({"index": i, "digest": d})).collect::<Vec<_>>(),
            "driver_version": v.driver_version,
            "vbios_version": v.vbios_version,
            "device_serial": v.device_serial,
            "hwmodel": v.hwmodel,
            "fwid": v.fwid,
            "errors": v.errors,
        }))?;
    } else {
        let mut text = String::new();
        for (name, ok) in &v.checks {
            text.push_str(&format!("{} {name}\n", if *ok { "ok  " } else { "FAIL" }));
        }
        out(&text)?;
    }
    if v.valid {
        Ok(())
    } else {
        Err(runtime(format!("the attestation report does not verify: {}", v.errors.join("; "))))
    }
}

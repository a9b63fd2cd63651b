//! NVIDIA GPU attestation evidence, read and checked in pure Rust, with no unsafe code: the SPDM 1.1
//! GET_MEASUREMENTS request and response a GPU signs (DMTF DSP0274, [`spdm`]), NVIDIA's opaque data
//! fields after the response nonce, the ECDSA P-384 / SHA-384 signature over request ||
//! response-without-signature with the key of the chain's leaf certificate, and the certificate chain
//! ([`chain`], [`x509`]) to the pinned NVIDIA Device Identity CA root.
//!
//! [`Verifier::verify`] checks, and names each check after NVIDIA's claims where one exists:
//! - the report's structure (every length bounded by the bytes that remain);
//! - the nonce in the request against the one the collector issued;
//! - the signature with the leaf certificate's P-384 key;
//! - the chain: each certificate signed (ECDSA P-384 / SHA-384) by the next, issuer names matching
//!   subjects, every certificate within its validity, issuers marked CA with keyCertSign, the leaf
//!   allowed to sign, the root self-signed and either the pinned NVIDIA root (by its SHA-256
//!   fingerprint) or an anchor the operator configured;
//! - the firmware identity: the FWID in the report's opaque data is one of the leaf certificate's
//!   TCG DICE TcbInfo FWIDs.
//!
//! It reports, unchecked, the claims the caller compares with other evidence: driver and VBIOS
//! versions, the device identity (the leaf's serialNumber, NVIDIA's UEID), the hardware model (the
//! leaf's commonName) and every measurement. What it does not check: RIM files and their XML
//! signatures (golden values are compared by the caller, from an operator's file), OCSP/CRL
//! revocation, and Blackwell's report differences.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod chain;
pub mod spdm;
pub mod x509;

pub use chain::{chain_from_pem, check_chain, check_chain_with};
pub use spdm::{AttestationError, MAX_REPORT_BYTES, Measurement, Report, field};

/// SHA-256 fingerprint of the NVIDIA Device Identity CA root (DER), as NVIDIA publishes it.
pub const NVIDIA_DEVICE_IDENTITY_ROOT_SHA256: &str = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";

/// Largest certificate chain accepted, PEM.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// How long a chain's verdict is reused before the chain is checked again (never past the earliest
/// notAfter in it).
pub const CHAIN_CACHE_SECONDS: i64 = 3600;
/// Chains remembered at once; the cache starts over when full.
pub const CHAIN_CACHE_ENTRIES: usize = 65_536;

/// The names of the checks in [`Verdict::checks`].
pub mod claim {
    /// The report is a well-formed GET_MEASUREMENTS exchange.
    pub const PARSED: &str = "x-nvidia-gpu-attestation-report-parsed";
    /// The request's nonce is the one issued.
    pub const NONCE_MATCH: &str = "x-nvidia-gpu-attestation-report-nonce-match";
    /// The leaf certificate's key signed the report.
    pub const SIGNATURE_VERIFIED: &str = "x-nvidia-gpu-attestation-report-signature-verified";
    /// The chain ends at the pinned NVIDIA root (an anchor the operator configured is not this).
    pub const ROOT_PINNED: &str = "x-nvidia-gpu-attestation-report-cert-chain-root-pinned";
    /// The chain verifies to a trusted root.
    pub const CHAIN_VALIDATED: &str = "x-nvidia-gpu-attestation-report-cert-chain-validated";
    /// The report's FWID is one of the leaf certificate's.
    pub const FWID_MATCH: &str = "x-nvidia-gpu-attestation-report-cert-chain-fwid-match";
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Every check, by NVIDIA's claim names where one exists, and what the report says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Every mandatory check passed: parsed, nonce, signature, chain, FWID.
    pub valid: bool,
    /// Check name ([`claim`]) -> passed.
    pub checks: BTreeMap<&'static str, bool>,
    /// The request's nonce, hex.
    pub nonce: String,
    /// (index, value hex) of every measurement block.
    pub measurements: Vec<(u8, String)>,
    /// From the opaque data.
    pub driver_version: Option<String>,
    /// From the opaque data.
    pub vbios_version: Option<String>,
    /// The leaf certificate's subject serialNumber: the device's identity (NVIDIA's `ueid`).
    pub device_serial: Option<String>,
    /// The leaf certificate's commonName (NVIDIA's `hwmodel`).
    pub hwmodel: Option<String>,
    /// The report's firmware identity, hex.
    pub fwid: Option<String>,
    /// Sentences for what failed.
    pub errors: Vec<String>,
}

struct Cached {
    result: Result<(), String>,
    checked_at: i64,
    expires: i64,
}

/// Verifies reports against the pinned root and the operator's anchors, remembering each chain's
/// verdict (by the SHA-256 of its PEM) so that a host's steady state costs one signature check.
pub struct Verifier {
    anchors: Vec<[u8; 32]>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Links (SHA-256 of child DER || issuer key) whose signature verified: a new GPU's chain under
    /// the CAs of GPUs seen before costs one link (its leaf), not the whole chain.
    links: Mutex<std::collections::HashSet<[u8; 32]>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Verifier {
    /// A verifier trusting the pinned NVIDIA root and `anchors` (SHA-256 of root certificates, DER).
    pub fn new(anchors: Vec<[u8; 32]>) -> Verifier {
        Verifier {
            anchors,
            cache: Mutex::new(HashMap::new()),
            links: Mutex::new(std::collections::HashSet::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The fingerprints of every certificate in a PEM file of anchors.
    ///
    /// # Errors
    /// [`AttestationError::Chain`] when the file is not PEM certificates.
    pub fn anchors_from_pem(pem: &[u8]) -> Result<Vec<[u8; 32]>, AttestationError> {
        Ok(chain_from_pem(pem)?.iter().map(|c| sha256(c)).collect())
    }

    /// Chain checks answered from the cache, and those done in full.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Forgets every chain's verdict but keeps the verified links: what a chain not seen before costs
    /// under CAs seen before (benchmarks; a policy reload builds a new verifier anyway).
    pub fn forget_chains(&self) {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    fn chain(&self, pem: &[u8], certs: &[Vec<u8>], now: i64) -> Result<(), String> {
        let key = sha256(pem);
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(&key)
            && now >= c.checked_at
            && now <= c.expires
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return c.result.clone();
        }
        drop(cache);
        self.misses.fetch_add(1, Ordering::Relaxed);
        let result = check_chain_with(certs, now, &self.anchors, &mut |child, issuer_key| {
            let key = sha256(&[child.der, issuer_key].concat());
            let lock = || self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if lock().contains(&key) {
                return true;
            }
            let ok = chain::link_verifies(child, issuer_key);
            if ok {
                let mut links = lock();
                if links.len() >= CHAIN_CACHE_ENTRIES {
                    links.clear();
                }
                links.insert(key);
            }
            ok
        });
        let earliest_end = certs.iter().filter_map(|c| x509::certificate(c)).map(|c| c.not_after).min().unwrap_or(now);
        let expires = (now + CHAIN_CACHE_SECONDS).min(earliest_end);
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CHAIN_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, Cached { result: result.clone(), checked_at: now, expires });
        result
    }

    /// Checks a report (raw bytes) and its chain (PEM, leaf first) against the nonce the collector
    /// issued, at `now` (Unix seconds).
    pub fn verify(&self, report: &[u8], chain_pem: &[u8], expected_nonce: &[u8], now: i64) -> Verdict {
        let mut checks = BTreeMap::new();
        let mut errors = Vec::new();
        let parsed = Report::parse(report);
        checks.insert(claim::PARSED, parsed.is_ok());
        let chain = chain_from_pem(chain_pem);
        let leaf = chain.as_ref().ok().and_then(|c| c.first());
        let mut verdict = Verdict {
            valid: false,
            checks: BTreeMap::new(),
            nonce: String::new(),
            measurements: Vec::new(),
            driver_version: None,
            vbios_version: None,
            device_serial: leaf.and_then(|c| x509::subject_serial_number(c)),
            hwmodel: leaf.and_then(|c| x509::subject_common_name(c)),
            fwid: None,
            errors: Vec::new(),
        };
        let r = match parsed {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                return Verdict { checks, errors, ..verdict };
            }
        };
        let nonce_ok = r.request_nonce.as_slice() == expected_nonce;
        checks.insert(claim::NONCE_MATCH, nonce_ok);
        if !nonce_ok {
            errors.push(format!(
                "the report answers nonce {}, not the one issued ({})",
                hex(&r.request_nonce),
                hex(expected_nonce)
            ));
        }
        let (mut signed, mut root_pinned, mut chain_ok, mut fwid_ok) = (false, false, false, false);
        match &chain {
            Ok(certs) => {
                match certs.first().and_then(|c| x509::p384_public_key(c)) {
                    Some(key) => signed = r.signature_verifies(report, key),
                    None => errors.push("the leaf certificate's key is not an EC P-384 key".into()),
                }
                if !signed {
                    errors.push("the signature does not verify with the leaf certificate's key".into());
                }
                root_pinned = certs.last().is_some_and(|root| hex(&sha256(root)) == NVIDIA_DEVICE_IDENTITY_ROOT_SHA256);
                match self.chain(chain_pem, certs, now) {
                    Ok(()) => chain_ok = true,
                    Err(e) => errors.push(format!("certificate chain: {e}")),
                }
                let leaf_fwids = certs.first().and_then(|c| x509::certificate(c)).map(|c| c.fwids).unwrap_or_default();
                let report_fwid = r.field(field::FWID);
                fwid_ok = report_fwid.is_some_and(|f| leaf_fwids.contains(&f));
                if !fwid_ok {
                    errors.push(match (report_fwid, leaf_fwids.is_empty()) {
                        (None, _) => "the report carries no FWID".into(),
                        (Some(_), true) => "the leaf certificate carries no FWID (TcbInfo) to compare with".into(),
                        (Some(_), false) => "the report's FWID is not the leaf certificate's".into(),
                    });
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        checks.insert(claim::SIGNATURE_VERIFIED, signed);
        checks.insert(claim::ROOT_PINNED, root_pinned);
        checks.insert(claim::CHAIN_VALIDATED, chain_ok);
        checks.insert(claim::FWID_MATCH, fwid_ok);
        verdict.valid = nonce_ok && signed && chain_ok && fwid_ok;
        verdict.checks = checks;
        verdict.nonce = hex(&r.request_nonce);
        verdict.measurements = r.measurements.iter().map(|m| (m.index, hex(&m.value))).collect();
        verdict.driver_version = r.driver_version();
        verdict.vbios_version = r.vbios_version();
        verdict.fwid = r.fwid();
        verdict.errors = errors;
        verdict
    }
}

/// Checks a report and its chain against the nonce the collector issued, now.
pub fn verify(report: &[u8], chain_pem: &[u8], expected_nonce: &[u8]) -> Verdict {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    verify_at(report, chain_pem, expected_nonce, now, &[])
}

/// [`Verifier::verify`] at `now` (Unix seconds) with a verifier of its own, trusting `anchors` (SHA-256
/// of root certificates) beside the pinned NVIDIA root.
pub fn verify_at(report: &[u8], chain_pem: &[u8], expected_nonce: &[u8], now: i64, anchors: &[[u8; 32]]) -> Verdict {
    Verifier::new(anchors.to_vec()).verify(report, chain_pem, expected_nonce, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVIDIA's public H100 sample (nvtrust, `guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/
    /// samples/hopperAttestationReport.txt` and `hopperCertChain.txt`), kept in `test-data/`.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data");
        let hex = std::fs::read_to_string(dir.join("hopperAttestationReport.txt")).expect("report");
        let hex = hex.trim();
        let report = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect();
        (report, std::fs::read(dir.join("hopperCertChain.txt")).expect("chain"))
    }

    const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn the_public_h100_sample_parses_and_its_signature_verifies() {
        let (report, chain) = sample();
        let r = Report::parse(&report).expect("parse");
        assert_eq!((r.version, r.measurements.len()), (0x11, 64));
        assert!(r.measurements.iter().all(|m| m.value.len() == 48 && m.value_type == 1));
        assert_eq!(r.measurements[1].index, 2);
        assert_eq!(hex(&r.request_nonce), SAMPLE_NONCE);
        assert_eq!(r.driver_version().as_deref(), Some("550.90.07"));
        assert_eq!(r.vbios_version().as_deref(), Some("96.00.9F.00.01"));
        assert_eq!(r.fwid().map(|f| f.len()), Some(96));
        let v = verify_at(&report, &chain, &unhex(SAMPLE_NONCE), 1_800_000_000, &[]);
        assert!(v.checks["x-nvidia-gpu-attestation-report-signature-verified"], "{v:?}");
        assert!(v.checks["x-nvidia-gpu-attestation-report-nonce-match"], "{v:?}");
        assert!(v.checks["x-nvidia-gpu-attestation-report-cert-chain-root-pinned"], "{v:?}");
        assert!(v.checks["x-nvidia-gpu-attestation-report-cert-chain-validated"], "{v:?}");
        assert!(v.valid && v.errors.is_empty(), "{v:?}");
        assert_eq!(v.device_serial.as_deref(), Some("53C22BA15E5D68088282DA074ED9FB37AA585771"));
    }

    #[test]
    fn the_fwid_and_hardware_model_come_from_the_leaf_and_chains_are_cached() {
        let (report, chain) = sample();
        let v = Verifier::new(Vec::new());
        let first = v.verify(&report, &chain, &unhex(SAMPLE_NONCE), 1_800_000_000);
        assert!(first.valid && first.checks[claim::FWID_MATCH], "{first:?}");
        assert!(first.hwmodel.as_deref().is_some_and(|m| m.contains("GH100")), "{first:?}");
        assert_eq!(v.cache_stats(), (0, 1));
        // The same chain again: answered from the cache; the signature is still checked every time.
        let again = v.verify(&report, &chain, &unhex(SAMPLE_NONCE), 1_800_000_060);
        assert_eq!(again, first);
        assert_eq!(v.cache_stats(), (1, 1));
        let mut flipped = report.clone();
        flipped[37 + 8 + 4 + 3 + 5] ^= 1;
        assert!(!v.verify(&flipped, &chain, &unhex(SAMPLE_NONCE), 1_800_000_060).valid);
        // Past the cache's hour, checked again (its links from the link cache).
        let _ = v.verify(&report, &chain, &unhex(SAMPLE_NONCE), 1_800_000_000 + CHAIN_CACHE_SECONDS + 1);
        assert_eq!(v.cache_stats(), (2, 2));
        // A chain whose intermediate was tampered with fails even though its other links are cached.
        let certs = chain_from_pem(&chain).expect("chain");
        let mut bad = certs.clone();
        let n = bad[1].len();
        bad[1][n - 5] ^= 1;
        let mut calls = 0;
        let linked = check_chain_with(&bad, 1_800_000_000, &[], &mut |c, k| {
            calls += 1;
            chain::link_verifies(c, k)
        });
        assert!(linked.is_err() && calls >= 1);
        // A report whose FWID field is not the leaf's: rewrite its last FWID byte (the signature then
        // fails too, but the FWID check must say so on its own).
        let r = Report::parse(&report).expect("parse");
        let fwid = r.field(field::FWID).expect("fwid").to_vec();
        let at = report.windows(fwid.len()).position(|w| w == fwid.as_slice()).expect("fwid in report");
        let mut other = report.clone();
        other[at + 47] ^= 1;
        let v2 = v.verify(&other, &chain, &unhex(SAMPLE_NONCE), 1_800_000_000);
        assert!(!v2.checks[claim::FWID_MATCH] && v2.errors.iter().any(|e| e.contains("FWID")), "{v2:?}");
    }

    #[test]
    fn the_chain_is_checked_link_by_link() {
        let (_, chain) = sample();
        let certs = chain_from_pem(&chain).expect("chain");
        let now = 1_800_000_000;
        assert_eq!(check_chain(&certs, now, &[]), Ok(()));
        // Before the leaf's notBefore (2020-10-17).
        assert!(check_chain(&certs, 1_500_000_000, &[]).expect_err("early").contains("validity"));
        // A byte of the intermediate's signature flipped.
        let mut tampered = certs.clone();
        let n = tampered[1].len();
        tampered[1][n - 5] ^= 1;
        assert!(check_chain(&tampered, now, &[]).is_err());
        // The intermediate taken out: the leaf's issuer is no longer next.
        let mut gap = certs.clone();
        gap.remove(1);
        assert!(check_chain(&gap, now, &[]).expect_err("gap").contains("issuer"));
        // Not ending at a trusted root: the pinned root dropped, then its issuer trusted as an anchor
        // fails too (it is not self-signed).
        let mut short = certs.clone();
        short.pop();
        assert!(check_chain(&short, now, &[]).is_err());
        // A leaf used as a CA: the leaf twice.
        let mut leaf_ca = certs.clone();
        leaf_ca.insert(1, certs[0].clone());
        assert!(check_chain(&leaf_ca, now, &[]).is_err());
    }

    #[test]
    fn a_flipped_measurement_a_wrong_nonce_and_a_foreign_root_fail() {
        let (report, chain) = sample();
        let mut flipped = report.clone();
        flipped[37 + 8 + 4 + 3 + 5] ^= 1; // a byte of the first measurement's digest
        let v = verify(&flipped, &chain, &unhex(SAMPLE_NONCE));
        assert!(!v.checks["x-nvidia-gpu-attestation-report-signature-verified"], "{v:?}");
        let v = verify(&report, &chain, &[7u8; 32]);
        assert!(!v.checks["x-nvidia-gpu-attestation-report-nonce-match"], "{v:?}");
        assert!(v.errors.iter().any(|e| e.contains("not the one issued")), "{v:?}");
        // The chain without its root: the pinned root is not reached.
        let text = String::from_utf8(chain).expect("pem");
        let cut = text.rfind("-----BEGIN").expect("root");
        let v = verify(&report, &text.as_bytes()[..cut], &unhex(SAMPLE_NONCE));
        assert!(!v.checks["x-nvidia-gpu-attestation-report-cert-chain-root-pinned"], "{v:?}");
        // Another leaf (the intermediate in its place): its key did not sign.
        let first_end = text.find("-----END CERTIFICATE-----").expect("end") + 26;
        let v = verify(&report, &text.as_bytes()[first_end..], &unhex(SAMPLE_NONCE));
        assert!(!v.checks["x-nvidia-gpu-attestation-report-signature-verified"], "{v:?}");
    }

    #[test]
    fn hostile_reports_and_chains_are_errors_not_panics() {
        let (report, chain) = sample();
        for cut in 0..report.len() {
            assert!(Report::parse(&report[..cut]).is_err(), "a report cut at {cut} parsed");
        }
        let mut longer = report.clone();
        longer.push(0);
        assert!(matches!(Report::parse(&longer), Err(AttestationError::Malformed(_))));
        let mut lying = report.clone();
        lying[37 + 5] = 0xff; // a measurement record longer than the report
        lying[37 + 6] = 0xff;
        assert!(Report::parse(&lying).is_err());
        assert!(matches!(Report::parse(&vec![0u8; MAX_REPORT_BYTES + 1]), Err(AttestationError::TooLarge(_))));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..(seed % 600) as usize)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Report::parse(&bytes);
            let _ = verify(&bytes, &chain, &[0; 32]);
        }
        assert!(chain_from_pem(&vec![b'A'; MAX_CHAIN_BYTES + 1]).is_err(), "a 64 KiB+ chain");
        assert!(chain_from_pem(b"not a certificate").is_err());
        let v = verify(&report, b"", &unhex(SAMPLE_NONCE));
        assert!(!v.valid && v.errors.iter().any(|e| e.contains("certificate chain")), "{v:?}");
    }
}

//! NVIDIA GPU attestation reports, read and checked in pure Rust: the SPDM 1.1 GET_MEASUREMENTS request
//! and response the GPU signs (DMTF DSP0274), NVIDIA's opaque data fields after the response nonce,
//! and the ECDSA P-384 / SHA-384 signature over request || response-without-signature with the key of
//! the chain's leaf certificate.
//!
//! What this module checks: the report's structure (every length bounded by the bytes that remain),
//! the nonce in the request against the one the collector issued, the signature with the leaf
//! certificate's P-384 key, and the chain: each certificate signed (ECDSA P-384 / SHA-384) by the
//! next, issuer names matching subjects, every certificate within its validity, issuers marked CA
//! with keyCertSign, the root self-signed and either the pinned NVIDIA Device Identity CA (by its
//! SHA-256 fingerprint) or an anchor the operator configured. What it does not check yet: golden
//! measurements (RIMs and their XML signatures), OCSP/CRL revocation, the FWID and device-identity
//! extensions against the report, Blackwell specifics.

use std::collections::BTreeMap;

/// SHA-256 fingerprint of the NVIDIA Device Identity CA root (DER), as NVIDIA publishes it.
pub const NVIDIA_DEVICE_IDENTITY_ROOT_SHA256: &str = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";

/// Largest report accepted (an H100 report is about 4 KiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Largest certificate chain accepted, PEM.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

const REQUEST_LEN: usize = 37;
const SIGNATURE_LEN: usize = 96;
const GET_MEASUREMENTS: u8 = 0xe0;
const MEASUREMENTS: u8 = 0x60;

/// Why a report or chain cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// Shorter than its own fields say.
    #[error("attestation report truncated: {0}")]
    Truncated(&'static str),
    /// A field holds a value SPDM does not allow here.
    #[error("attestation report malformed: {0}")]
    Malformed(String),
    /// Larger than any real report.
    #[error("attestation report of {0} bytes is larger than {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    /// The certificate chain cannot be used.
    #[error("certificate chain: {0}")]
    Chain(String),
}

/// One measurement block: its index and DMTF measurement value (a digest for NVIDIA's blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// Index (1-based).
    pub index: u8,
    /// DMTF measurement value type (the low 7 bits of its first byte).
    pub value_type: u8,
    /// The value (the SHA-384 digest for NVIDIA's blocks).
    pub value: Vec<u8>,
}

/// A parsed GET_MEASUREMENTS exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// SPDM version of the request (0x11 for 1.1).
    pub version: u8,
    /// The requester's nonce (the collector's, when the agent asked correctly).
    pub request_nonce: [u8; 32],
    /// The responder's own nonce.
    pub response_nonce: [u8; 32],
    /// The measurement blocks, in order.
    pub measurements: Vec<Measurement>,
    /// NVIDIA's opaque data: (field type, value), in order.
    pub opaque: Vec<(u16, Vec<u8>)>,
    /// The signature: r || s, 48 bytes each.
    pub signature: Vec<u8>,
    /// Length of the signed bytes: everything before the signature.
    pub signed_len: usize,
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(b: &'a [u8], at: &mut usize, n: usize, what: &'static str) -> Result<&'a [u8], AttestationError> {
    let end = at.checked_add(n).ok_or(AttestationError::Truncated(what))?;
    let s = b.get(*at..end).ok_or(AttestationError::Truncated(what))?;
    *at = end;
    Ok(s)
}

fn le(bytes: &[u8]) -> usize {
    bytes.iter().rev().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
}

/// NVIDIA opaque data field types this module names.
pub mod field {
    /// The driver version, ASCII, NUL-padded.
    pub const DRIVER_VERSION: u16 = 3;
    /// The VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// The firmware identity (FWID), a SHA-384 digest.
    pub const FWID: u16 = 20;
}

impl Report {
    /// Parses request || response (signature last), as NVML returns it.
    ///
    /// # Errors
    /// [`AttestationError`] naming the first field that does not fit.
    pub fn parse(b: &[u8]) -> Result<Report, AttestationError> {
        if b.len() > MAX_REPORT_BYTES {
            return Err(AttestationError::TooLarge(b.len()));
        }
        let mut at = 0;
        let req = take(b, &mut at, REQUEST_LEN, "the GET_MEASUREMENTS request")?;
        if req[1] != GET_MEASUREMENTS {
            return Err(AttestationError::Malformed(format!(
                "request code {:#04x}, not GET_MEASUREMENTS (0xe0)",
                req[1]
            )));
        }
        let version = req[0];
        let mut request_nonce = [0u8; 32];
        request_nonce.copy_from_slice(&req[4..36]);
        let head = take(b, &mut at, 8, "the MEASUREMENTS response header")?;
        if head[0] != version {
            return Err(AttestationError::Malformed(format!(
                "response version {:#04x} differs from the request's {version:#04x}",
                head[0]
            )));
        }
        if head[1] != MEASUREMENTS {
            return Err(AttestationError::Malformed(format!(
                "response code {:#04x}, not MEASUREMENTS (0x60)",
                head[1]
            )));
        }
        let blocks = usize::from(head[4]);
        let record_len = le(&head[5..8]);
        let record = take(b, &mut at, record_len, "the measurement record")?;
        let mut measurements = Vec::with_capacity(blocks);
        let mut r = 0;
        for _ in 0..blocks {
            let h = take(record, &mut r, 4, "a measurement block header")?;
            let value = take(record, &mut r, le(&h[2..4]), "a measurement block")?;
            // DMTF measurement: type (1), size (2, LE), value.
            let mut v = 0;
            let dmtf = take(value, &mut v, 3, "a DMTF measurement header")?;
            let digest = take(value, &mut v, le(&dmtf[1..3]), "a DMTF measurement value")?;
            measurements.push(Measurement { index: h[0], value_type: dmtf[0] & 0x7f, value: digest.to_vec() });
        }
        if r != record.len() {
            return Err(AttestationError::Malformed(format!(
                "the measurement record has {} bytes after its {blocks} blocks",
                record.len() - r
            )));
        }
        let mut response_nonce = [0u8; 32];
        response_nonce.copy_from_slice(take(b, &mut at, 32, "the response nonce")?);
        let opaque_len = le(take(b, &mut at, 2, "the opaque data length")?);
        let opaque_bytes = take(b, &mut at, opaque_len, "the opaque data")?;
        let mut opaque = Vec::new();
        let mut o = 0;
        while o < opaque_bytes.len() {
            let h = take(opaque_bytes, &mut o, 4, "an opaque field header")?;
            let v = take(opaque_bytes, &mut o, le(&h[2..4]), "an opaque field")?;
            opaque.push((le(&h[0..2]) as u16, v.to_vec()));
        }
        let signed_len = at;
        let signature = take(b, &mut at, SIGNATURE_LEN, "the signature")?.to_vec();
        if at != b.len() {
            return Err(AttestationError::Malformed(format!("{} bytes after the signature", b.len() - at)));
        }
        Ok(Report { version, request_nonce, response_nonce, measurements, opaque, signature, signed_len })
    }

    fn field(&self, t: u16) -> Option<&[u8]> {
        self.opaque.iter().find(|(ft, _)| *ft == t).map(|(_, v)| v.as_slice())
    }

    /// The driver version the GPU reports (opaque field 3).
    pub fn driver_version(&self) -> Option<String> {
        let v = self.field(field::DRIVER_VERSION)?;
        let text: String = v.iter().take_while(|b| **b != 0).map(|b| char::from(*b)).collect();
        text.chars().all(|c| c.is_ascii_graphic()).then_some(text).filter(|t| !t.is_empty())
    }

    /// The VBIOS version (opaque field 6), as `nvidia-smi` writes it (`96.00.9F.00.01`).
    pub fn vbios_version(&self) -> Option<String> {
        let v = self.field(field::VBIOS_VERSION)?;
        (v.len() >= 5).then(|| format!("{:02X}.{:02X}.{:02X}.{:02X}.{:02X}", v[3], v[2], v[1], v[0], v[4]))
    }

    /// The firmware identity (opaque field 20), hex.
    pub fn fwid(&self) -> Option<String> {
        self.field(field::FWID).map(gpuattest_proto::hex)
    }

    /// Checks the signature over `report[..signed_len]` with an uncompressed P-384 public key.
    pub fn signature_verifies(&self, report: &[u8], public_key: &[u8]) -> bool {
        report.get(..self.signed_len).is_some_and(|signed| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, public_key)
                .verify(signed, &self.signature)
                .is_ok()
        })
    }
}

/// The DER certificates of a PEM chain, leaf first.
///
/// # Errors
/// [`AttestationError::Chain`] for a chain too large, not PEM, or empty.
pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, AttestationError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if pem.len() > MAX_CHAIN_BYTES {
        return Err(AttestationError::Chain(format!("{} bytes, more than {MAX_CHAIN_BYTES}", pem.len())));
    }
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| AttestationError::Chain(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(AttestationError::Chain("no certificate".into()));
    }
    Ok(certs)
}

/// Every check, by NVIDIA's claim names where one exists, and what the report says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Every mandatory check passed: parsed, nonce, signature, chain.
    pub valid: bool,
    /// Check name -> passed.
    pub checks: BTreeMap<&'static str, bool>,
    /// The request's nonce, hex.
    pub nonce: String,
    /// (index, value hex) of every measurement block.
    pub measurements: Vec<(u8, String)>,
    /// From the opaque data.
    pub driver_version: Option<String>,
    /// From the opaque data.
    pub vbios_version: Option<String>,
    /// The leaf certificate's subject serialNumber: the device's identity.
    pub device_serial: Option<String>,
    /// Sentences for what failed or was not checked.
    pub errors: Vec<String>,
}

/// Checks a chain (leaf first) at `now` (Unix seconds): each certificate signed by the next with
/// ECDSA P-384 / SHA-384, names chained, validity, CA constraints, the leaf allowed to sign, and the
/// last certificate self-signed and trusted (its SHA-256 is the pinned root's or one of `anchors`').
///
/// # Errors
/// The first problem, as a sentence naming the certificate by its position.
pub fn check_chain(certs: &[Vec<u8>], now: i64, anchors: &[[u8; 32]]) -> Result<(), String> {
    use crate::x509::{DIGITAL_SIGNATURE, ECDSA_WITH_SHA384, KEY_CERT_SIGN, certificate, p384_public_key};
    if certs.len() > 8 {
        return Err(format!("{} certificates, more than a device chain has (8)", certs.len()));
    }
    let parsed: Vec<_> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| certificate(c).ok_or_else(|| format!("certificate {i} is not a readable X.509 certificate")))
        .collect::<Result<_, _>>()?;
    let Some(root) = parsed.last() else { return Err("no certificate".into()) };
    for (i, c) in parsed.iter().enumerate() {
        if now < c.not_before || now > c.not_after {
            return Err(format!("certificate {i} is outside its validity period"));
        }
        if c.signature_algorithm != ECDSA_WITH_SHA384 {
            return Err(format!("certificate {i} is not signed with ECDSA P-384 / SHA-384"));
        }
        let issuer = parsed.get(i + 1).unwrap_or(root);
        if i + 1 < parsed.len() {
            if issuer.is_ca != Some(true) || issuer.key_usage.is_some_and(|k| k & KEY_CERT_SIGN == 0) {
                return Err(format!("certificate {} signs certificate {i} but is not a CA allowed to", i + 1));
            }
        } else if root.is_ca == Some(false) {
            return Err("the root is not a CA".into());
        }
        if c.issuer != issuer.subject {
            return Err(format!("certificate {i} names an issuer other than the next certificate"));
        }
        let key =
            p384_public_key(issuer.der).ok_or_else(|| format!("the issuer of certificate {i} has no P-384 key"))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key)
            .verify(c.tbs, c.signature)
            .map_err(|_| format!("certificate {i}'s signature does not verify with its issuer's key"))?;
    }
    if parsed[0].key_usage.is_some_and(|k| k & DIGITAL_SIGNATURE == 0) {
        return Err("the leaf certificate may not sign (keyUsage)".into());
    }
    let root_sha = gpuattest_proto::sha256(root.der);
    let pinned = gpuattest_proto::hex(&root_sha) == NVIDIA_DEVICE_IDENTITY_ROOT_SHA256;
    if !pinned && !anchors.contains(&root_sha) {
        return Err(
            "the chain ends at a root that is neither the pinned NVIDIA Device Identity CA nor a configured anchor"
                .into(),
        );
    }
    Ok(())
}

/// Checks a report and its chain against the nonce the collector issued, now.
pub fn verify(report: &[u8], chain_pem: &[u8], expected_nonce: &[u8]) -> Verdict {
    verify_at(report, chain_pem, expected_nonce, crate::now_ms() / 1000, &[])
}

/// [`verify`] at `now` (Unix seconds), trusting `anchors` (SHA-256 of root certificates) beside the
/// pinned NVIDIA root.
pub fn verify_at(report: &[u8], chain_pem: &[u8], expected_nonce: &[u8], now: i64, anchors: &[[u8; 32]]) -> Verdict {
    let mut checks = BTreeMap::new();
    let mut errors = Vec::new();
    let parsed = Report::parse(report);
    checks.insert("x-nvidia-gpu-attestation-report-parsed", parsed.is_ok());
    let chain = chain_from_pem(chain_pem);
    let Ok(r) = parsed else {
        errors.extend(parsed.err().map(|e| e.to_string()));
        return Verdict {
            valid: false,
            checks,
            nonce: String::new(),
            measurements: Vec::new(),
            driver_version: None,
            vbios_version: None,
            device_serial: None,
            errors,
        };
    };
    let nonce_ok = r.request_nonce.as_slice() == expected_nonce;
    checks.insert("x-nvidia-gpu-attestation-report-nonce-match", nonce_ok);
    if !nonce_ok {
        errors.push(format!(
            "the report answers nonce {}, not the one issued ({})",
            gpuattest_proto::hex(&r.request_nonce),
            gpuattest_proto::hex(expected_nonce)
        ));
    }
    let (mut signed, mut root_pinned, mut chain_ok) = (false, false, false);
    match &chain {
        Ok(certs) => {
            match certs.first().and_then(|c| crate::x509::p384_public_key(c)) {
                Some(key) => signed = r.signature_verifies(report, key),
                None => errors.push("the leaf certificate's key is not an EC P-384 key".into()),
            }
            if !signed {
                errors.push("the signature does not verify with the leaf certificate's key".into());
            }
            root_pinned = certs.last().is_some_and(|root| {
                gpuattest_proto::hex(&gpuattest_proto::sha256(root)) == NVIDIA_DEVICE_IDENTITY_ROOT_SHA256
            });
            match check_chain(certs, now, anchors) {
                Ok(()) => chain_ok = true,
                Err(e) => errors.push(format!("certificate chain: {e}")),
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    checks.insert("x-nvidia-gpu-attestation-report-signature-verified", signed);
    checks.insert("x-nvidia-gpu-attestation-report-cert-chain-root-pinned", root_pinned);
    checks.insert("x-nvidia-gpu-attestation-report-cert-chain-validated", chain_ok);
    Verdict {
        valid: nonce_ok && signed && chain_ok,
        checks,
        nonce: gpuattest_proto::hex(&r.request_nonce),
        measurements: r.measurements.iter().map(|m| (m.index, gpuattest_proto::hex(&m.value))).collect(),
        driver_version: r.driver_version(),
        vbios_version: r.vbios_version(),
        device_serial: chain.as_ref().ok().and_then(|c| c.first()).and_then(|c| crate::x509::subject_serial_number(c)),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVIDIA's public H100 sample (nvtrust, `guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/
    /// samples/hopperAttestationReport.txt` and `hopperCertChain.txt`), kept in `test-data/nvidia/`.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/nvidia");
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
        assert_eq!(gpuattest_proto::hex(&r.request_nonce), SAMPLE_NONCE);
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

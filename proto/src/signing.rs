//! What bytes are signed, and how.
//!
//! The signed message is `SIGNING_CONTEXT || report_bytes`. The context string separates gpuattest
//! report signatures from every other use of the same key (the enrollment proof, a future v2), so a
//! signature made for one purpose can never be replayed as another.

use ring::signature::{self, Ed25519KeyPair, UnparsedPublicKey};

use crate::pb::SignedReport;

/// Domain-separation prefix for report signatures (ends with a NUL so no report prefix can collide).
pub const SIGNING_CONTEXT: &[u8] = b"gpuattest.v1.UsageReport\0";

/// Domain-separation prefix for key-rotation requests.
pub const ROTATION_CONTEXT: &[u8] = b"gpuattest.v1.RotateKey\0";

/// The bytes a rotation request signs.
pub fn rotation_message(host_id: &str, new_public_key: &[u8], last_seq_old_key: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROTATION_CONTEXT.len() + host_id.len() + 1 + new_public_key.len() + 8);
    m.extend_from_slice(ROTATION_CONTEXT);
    m.extend_from_slice(host_id.as_bytes());
    m.push(0);
    m.extend_from_slice(new_public_key);
    m.extend_from_slice(&last_seq_old_key.to_be_bytes());
    m
}

/// Verifies a rotation request's signature by the current key.
///
/// # Errors
/// [`SignError::BadSignature`] when it does not verify.
pub fn verify_rotation(
    current_public_key: &[u8],
    host_id: &str,
    new_public_key: &[u8],
    last_seq_old_key: u64,
    signature: &[u8],
) -> Result<(), SignError> {
    UnparsedPublicKey::new(&signature::ED25519, current_public_key)
        .verify(&rotation_message(host_id, new_public_key, last_seq_old_key), signature)
        .map_err(|_| SignError::BadSignature)
}

/// Why a signed report did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// The signature field is not 64 bytes.
    #[error("signature is {0} bytes, expected 64")]
    BadSignatureLength(usize),
    /// The report names a key id other than the one expected.
    #[error("report is signed by key {found}, but this host's enrolled key is {expected}")]
    UnknownKey {
        /// Hex of the key id in the report.
        found: String,
        /// Hex of the key id that was expected.
        expected: String,
    },
    /// The Ed25519 signature does not match the bytes.
    #[error("signature does not verify over the report bytes (tampered or signed by another key)")]
    BadSignature,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The key id of a raw 32-byte Ed25519 public key: its SHA-256.
pub fn key_id(public_key: &[u8]) -> [u8; 32] {
    sha256(public_key)
}

fn signed_message(report: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + report.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(report);
    msg
}

/// Signs already-encoded report bytes and wraps them in a [`SignedReport`].
pub fn sign_report(key: &Ed25519KeyPair, report: Vec<u8>) -> SignedReport {
    use ring::signature::KeyPair;
    let sig = key.sign(&signed_message(&report));
    SignedReport { report, signature: sig.as_ref().to_vec(), key_id: key_id(key.public_key().as_ref()).to_vec() }
}

/// Verifies a signed report against a host's pinned public key, over the exact bytes received.
///
/// # Errors
/// [`SignError::UnknownKey`] when the report names another key, [`SignError::BadSignatureLength`] and
/// [`SignError::BadSignature`] when the signature does not match the bytes.
pub fn verify_report(public_key: &[u8], signed: &SignedReport) -> Result<(), SignError> {
    let expected = key_id(public_key);
    if signed.key_id.as_slice() != expected.as_slice() {
        return Err(SignError::UnknownKey { found: hex(&signed.key_id), expected: hex(&expected) });
    }
    if signed.signature.len() != 64 {
        return Err(SignError::BadSignatureLength(signed.signature.len()));
    }
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&signed_message(&signed.report), &signed.signature)
        .map_err(|_| SignError::BadSignature)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("parse")
    }

    #[test]
    fn signs_and_verifies_exact_bytes() {
        let k = key();
        let signed = sign_report(&k, b"\x08\x01report-bytes".to_vec());
        assert_eq!(verify_report(k.public_key().as_ref(), &signed), Ok(()));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let k = key();
        let signed = sign_report(&k, b"\x0a\x04host\x10\x07".to_vec());
        for i in 0..signed.report.len() {
            let mut bad = signed.clone();
            bad.report[i] ^= 0x01;
            assert_eq!(verify_report(k.public_key().as_ref(), &bad), Err(SignError::BadSignature), "flip at byte {i}");
        }
        let mut bad = signed.clone();
        bad.signature[10] ^= 0x80;
        assert_eq!(verify_report(k.public_key().as_ref(), &bad), Err(SignError::BadSignature));
    }

    #[test]
    fn other_key_is_unknown() {
        let (a, b) = (key(), key());
        let signed = sign_report(&a, b"x".to_vec());
        assert!(matches!(verify_report(b.public_key().as_ref(), &signed), Err(SignError::UnknownKey { .. })));
    }

    #[test]
    fn signature_without_context_does_not_verify() {
        // A signature made over the bare bytes (another protocol using the same key) must not verify.
        let k = key();
        let report = b"abc".to_vec();
        let sig = k.sign(&report);
        let forged =
            SignedReport { report, signature: sig.as_ref().to_vec(), key_id: key_id(k.public_key().as_ref()).to_vec() };
        assert_eq!(verify_report(k.public_key().as_ref(), &forged), Err(SignError::BadSignature));
    }

    #[test]
    fn rotation_signatures_bind_host_key_and_sequence() {
        let (old, new) = (key(), key());
        let sig = old.sign(&rotation_message("h1", new.public_key().as_ref(), 9));
        let pk = old.public_key().as_ref();
        assert_eq!(verify_rotation(pk, "h1", new.public_key().as_ref(), 9, sig.as_ref()), Ok(()));
        assert!(verify_rotation(pk, "h2", new.public_key().as_ref(), 9, sig.as_ref()).is_err());
        assert!(verify_rotation(pk, "h1", new.public_key().as_ref(), 10, sig.as_ref()).is_err());
        assert!(verify_rotation(new.public_key().as_ref(), "h1", new.public_key().as_ref(), 9, sig.as_ref()).is_err());
        // A report signature can never pass as a rotation.
        let report_sig =
            sign_report(&old, rotation_message("h1", new.public_key().as_ref(), 9)[ROTATION_CONTEXT.len()..].to_vec());
        assert!(verify_rotation(pk, "h1", new.public_key().as_ref(), 9, &report_sig.signature).is_err());
    }

    #[test]
    fn short_signature_is_refused() {
        let k = key();
        let mut signed = sign_report(&k, b"abc".to_vec());
        signed.signature.truncate(10);
        assert_eq!(verify_report(k.public_key().as_ref(), &signed), Err(SignError::BadSignatureLength(10)));
    }
}

//! The GPU's certificate chain: PEM in, DER certificates out, and the chain checked link by link to
//! the pinned NVIDIA Device Identity CA root or an operator's anchor.

use crate::spdm::AttestationError;
use crate::{MAX_CHAIN_BYTES, NVIDIA_DEVICE_IDENTITY_ROOT_SHA256, hex, sha256};

/// The DER certificates of a PEM chain, leaf first.
///
/// # Errors
/// [`AttestationError::Chain`] for a chain too large, not PEM, or empty.
pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, AttestationError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
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

/// Checks a chain (leaf first) at `now` (Unix seconds): each certificate signed by the next with
/// ECDSA P-384 / SHA-384, names chained, validity, CA constraints, the leaf allowed to sign, and the
/// last certificate self-signed and trusted (its SHA-256 is the pinned root's or one of `anchors`').
///
/// # Errors
/// The first problem, as a sentence naming the certificate by its position.
pub fn check_chain(certs: &[Vec<u8>], now: i64, anchors: &[[u8; 32]]) -> Result<(), String> {
    check_chain_with(certs, now, anchors, &mut |child, issuer_key| link_verifies(child, issuer_key))
}

/// One link: `child`'s signature (ECDSA P-384 / SHA-384 over its TBS) by the issuer's P-384 key.
pub fn link_verifies(child: &crate::x509::Certificate<'_>, issuer_key: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, issuer_key)
        .verify(child.tbs, child.signature)
        .is_ok()
}

/// [`check_chain`] with the signature of each link checked by `link` (a verifier that remembers links
/// it has seen verify, so a new leaf under known CAs costs one link).
///
/// # Errors
/// As [`check_chain`].
pub fn check_chain_with(
    certs: &[Vec<u8>],
    now: i64,
    anchors: &[[u8; 32]],
    link: &mut dyn FnMut(&crate::x509::Certificate<'_>, &[u8]) -> bool,
) -> Result<(), String> {
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
        if !link(c, key) {
            return Err(format!("certificate {i}'s signature does not verify with its issuer's key"));
        }
    }
    if parsed[0].key_usage.is_some_and(|k| k & DIGITAL_SIGNATURE == 0) {
        return Err("the leaf certificate may not sign (keyUsage)".into());
    }
    let root_sha = sha256(root.der);
    let pinned = hex(&root_sha) == NVIDIA_DEVICE_IDENTITY_ROOT_SHA256;
    if !pinned && !anchors.contains(&root_sha) {
        return Err(
            "the chain ends at a root that is neither the pinned NVIDIA Device Identity CA nor a configured anchor"
                .into(),
        );
    }
    Ok(())
}

//! Just enough DER to find an X.509 certificate's SubjectPublicKeyInfo, so a host can be bound to the
//! key of the client certificate it enrolled with. Certificates here have already been verified by
//! rustls against the client CA; this reads, it does not verify. Every length is checked against the
//! bytes that remain; anything malformed is `None`.

/// One DER element: (tag, the whole element's bytes, its contents).
pub(crate) fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, &whole[header..]))
}

/// The SubjectPublicKeyInfo of a DER certificate, as its DER bytes.
pub fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, _, certificate) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, mut tbs) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // version [0] (optional), serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    let mut index = 0;
    while !tbs.is_empty() {
        let (tag, whole, _) = element(tbs)?;
        tbs = &tbs[whole.len()..];
        if index == 0 && tag == 0xa0 {
            continue;
        }
        if index == 5 {
            return (tag == SEQUENCE).then_some(whole);
        }
        index += 1;
    }
    None
}

/// The uncompressed P-384 point (0x04 || X || Y, 97 bytes) of a certificate whose key is an
/// id-ecPublicKey on secp384r1, as ring's ECDSA_P384 verifiers take it; `None` for any other key.
pub fn p384_public_key(cert: &[u8]) -> Option<&[u8]> {
    /// 1.2.840.10045.2.1 id-ecPublicKey, then 1.3.132.0.34 secp384r1, as DER.
    const ALGORITHM: &[u8] =
        &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let (_, _, spki) = element(subject_public_key_info(cert)?)?;
    let (tag, whole, algorithm) = element(spki)?;
    if tag != 0x30 || algorithm != ALGORITHM {
        return None;
    }
    let (tag, _, bits) = element(&spki[whole.len()..])?;
    // BIT STRING: no unused bits, then the point.
    let point = bits.strip_prefix(&[0u8])?;
    (tag == 0x03 && point.len() == 97 && point[0] == 0x04).then_some(point)
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo: what a host is bound to.
pub fn public_key_sha256(cert: &[u8]) -> Option<[u8; 32]> {
    subject_public_key_info(cert).map(gpuattest_proto::sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 certificate made by `openssl req -x509 -newkey ec`, DER, in hex.
    const CERT: &str = "308201763082011da00302010202141ab49bf0d0828350f2ff92bce3998e86f584d1a1300a06082a8648ce3d04030230\
        11310f300d06035504030c06686f73742d31301e170d3236313133303231303930395a170d3336313132373231303930\
        395a3011310f300d06035504030c06686f73742d313059301306072a8648ce3d020106082a8648ce3d03010703420004\
        df1f1841da4be0153a8b67193c5297a4d2427b7597650f30b42921b9dc49860ec9dc83b71ba66e04ff9d208c92477394\
        c7409658d20bc72c539fdd3596962b66a3533051301d0603551d0e04160414bf914c331c3e6761738e1704601405917c\
        b1279b301f0603551d23041830168014bf914c331c3e6761738e1704601405917cb1279b300f0603551d130101ff0405\
        30030101ff300a06082a8648ce3d040302034700304402204470bdaee8037b310c7945f8e09fd08d0f09acf3dd279eea\
        2ef725e5ac3f80240220719ed5ef5af0b7d1a3b9660723958f0f187e92b8c2bca8a1f03ce13fbc2049a9";
    /// Its public key as `openssl x509 -pubkey | openssl pkey -pubin -outform DER` writes it.
    const SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004df1f1841da4be0153a8b67193c5297a4d2427b7597\
        650f30b42921b9dc49860ec9dc83b71ba66e04ff9d208c92477394c7409658d20bc72c539fdd3596962b66";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn finds_the_subject_public_key_info() {
        let der = unhex(CERT);
        assert_eq!(subject_public_key_info(&der), Some(unhex(SPKI).as_slice()), "what openssl says the key is");
    }

    #[test]
    fn hostile_input_is_none() {
        let der = unhex(CERT);
        for cut in 0..der.len() {
            // A truncated certificate never reads past its end (it may still contain the SPKI).
            let _ = subject_public_key_info(&der[..cut]);
        }
        assert!(subject_public_key_info(&[]).is_none());
        assert!(subject_public_key_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(subject_public_key_info(&[0x04, 0x00]).is_none());
        assert!(subject_public_key_info(&[0x30, 0x02, 0x30, 0x00]).is_none());
    }
}

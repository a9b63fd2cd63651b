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

/// The parts of a certificate a chain check needs. Borrowed from the DER; nothing is verified here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate<'a> {
    /// The whole certificate.
    pub der: &'a [u8],
    /// The signed part (tbsCertificate, tag and length included).
    pub tbs: &'a [u8],
    /// The outer signature algorithm's contents (its OID and parameters).
    pub signature_algorithm: &'a [u8],
    /// The signature, as the BIT STRING carries it (DER ECDSA-Sig-Value for ECDSA).
    pub signature: &'a [u8],
    /// Issuer name (DER).
    pub issuer: &'a [u8],
    /// Subject name (DER).
    pub subject: &'a [u8],
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// basicConstraints cA, where the extension is present.
    pub is_ca: Option<bool>,
    /// keyUsage bits (bit 0 = digitalSignature, bit 5 = keyCertSign), where the extension is present.
    pub key_usage: Option<u16>,
    /// The SHA-384 FWIDs of the TCG DICE TcbInfo extension (2.23.133.5.4.1), where there is one: an
    /// NVIDIA device certificate's firmware identity.
    pub fwids: Vec<&'a [u8]>,
}

/// ecdsa-with-SHA384 (1.2.840.10045.4.3.3), as DER.
pub const ECDSA_WITH_SHA384: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
/// keyUsage bit digitalSignature.
pub const DIGITAL_SIGNATURE: u16 = 1 << 0;
/// keyUsage bit keyCertSign.
pub const KEY_CERT_SIGN: u16 = 1 << 5;

/// UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let digits = v.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |s: &[u8]| s.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0'));
    let (y, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = n(&digits[..2]);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (n(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let (m, d, hh, mm, ss) = (n(&rest[..2]), n(&rest[2..4]), n(&rest[4..6]), n(&rest[6..8]), n(&rest[8..10]));
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Reads a DER certificate's parts; `None` for anything malformed.
pub fn certificate(der: &[u8]) -> Option<Certificate<'_>> {
    let (tag, whole, body) = element(der)?;
    if tag != 0x30 || whole.len() != der.len() {
        return None;
    }
    let (tag, tbs, tbs_body) = element(body)?;
    let rest = &body[tbs.len()..];
    let (alg_tag, alg_whole, signature_algorithm) = element(rest)?;
    let (sig_tag, _, sig_bits) = element(&rest[alg_whole.len()..])?;
    if tag != 0x30 || alg_tag != 0x30 || sig_tag != 0x03 {
        return None;
    }
    let signature = sig_bits.strip_prefix(&[0u8])?;
    let mut fields = Vec::new();
    let mut t = tbs_body;
    while !t.is_empty() {
        let (tag, whole, content) = element(t)?;
        fields.push((tag, whole, content));
        t = &t[whole.len()..];
    }
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let get = |i: usize| fields.get(skip + i).copied();
    let (_, issuer, _) = get(2)?;
    let (_, _, validity) = get(3)?;
    let (_, subject, _) = get(4)?;
    let (t1, w1, v1) = element(validity)?;
    let (t2, _, v2) = element(&validity[w1.len()..])?;
    let (not_before, not_after) = (time(t1, v1)?, time(t2, v2)?);
    let (mut is_ca, mut key_usage, mut fwids) = (None, None, Vec::new());
    let after_key = fields.get(skip + 6..).unwrap_or_default();
    if let Some((_, _, explicit)) = after_key.iter().copied().find(|(tag, _, _)| *tag == 0xa3) {
        let (_, _, mut exts) = element(explicit)?;
        while !exts.is_empty() {
            let (_, whole, ext) = element(exts)?;
            exts = &exts[whole.len()..];
            let (_, oid, _) = element(ext)?;
            let mut r = &ext[oid.len()..];
            // An optional `critical` BOOLEAN, then the value as an OCTET STRING.
            if let Some((0x01, critical, _)) = element(r) {
                r = &r[critical.len()..];
            }
            let (tag, _, value) = element(r)?;
            if tag != 0x04 {
                return None;
            }
            match oid {
                // 2.5.29.19 basicConstraints: SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... }
                [0x06, 0x03, 0x55, 0x1d, 0x13] => {
                    let (_, _, seq) = element(value)?;
                    is_ca = Some(matches!(element(seq), Some((0x01, _, [b])) if *b != 0));
                }
                // 2.5.29.15 keyUsage: BIT STRING, first byte the unused bits, bit 0 the top bit.
                [0x06, 0x03, 0x55, 0x1d, 0x0f] => {
                    let (_, _, bits) = element(value)?;
                    let (_, b) = bits.split_first()?;
                    let hi = u16::from(*b.first().unwrap_or(&0));
                    let lo = u16::from(*b.get(1).unwrap_or(&0));
                    let raw = (hi << 8) | lo;
                    key_usage = Some((0..16).filter(|i| raw & (0x8000 >> i) != 0).fold(0, |a, i| a | (1 << i)));
                }
                // 2.23.133.5.4.1 tcg-dice-TcbInfo: its fwids, each SEQUENCE { hashAlg, digest }.
                [0x06, 0x06, 0x67, 0x81, 0x05, 0x05, 0x04, 0x01] => fwids = sha384_fwids(value),
                _ => {}
            }
        }
    }
    Some(Certificate {
        der,
        tbs,
        signature_algorithm,
        signature,
        issuer,
        subject,
        not_before,
        not_after,
        is_ca,
        key_usage,
        fwids,
    })
}

/// Every `SEQUENCE { id-sha384, OCTET STRING (48) }` inside `value`, read element by element at every
/// depth (TcbInfo's fields are context-tagged and mostly optional; the FWID list is the only place
/// such a pair occurs).
fn sha384_fwids(value: &[u8]) -> Vec<&[u8]> {
    const SHA384: &[u8] = &[0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    fn walk<'a>(mut input: &'a [u8], depth: u8, out: &mut Vec<&'a [u8]>) {
        while let Some((tag, whole, content)) = element(input) {
            input = &input[whole.len()..];
            if tag == 0x30
                && let Some(rest) = content.strip_prefix(SHA384)
                && let Some((0x04, _, digest)) = element(rest)
                && digest.len() == 48
            {
                out.push(digest);
            } else if tag & 0x20 != 0 && depth < 8 {
                walk(content, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(value, 0, &mut out);
    out
}

/// The subject's serialNumber attribute (2.5.4.5), where it is printable text: an NVIDIA device
/// certificate's device identity (its UEID).
pub fn subject_serial_number(cert: &[u8]) -> Option<String> {
    subject_attribute(cert, &[0x06, 0x03, 0x55, 0x04, 0x05])
}

/// The subject's commonName (2.5.4.3), where it is printable text: an NVIDIA device certificate's
/// hardware model (`GH100 A01 FSP BROM`).
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    subject_attribute(cert, &[0x06, 0x03, 0x55, 0x04, 0x03])
}

fn subject_attribute(cert: &[u8], wanted: &[u8]) -> Option<String> {
    let (_, _, mut rdns) = element(certificate(cert)?.subject)?;
    while !rdns.is_empty() {
        let (_, whole, set) = element(rdns)?;
        rdns = &rdns[whole.len()..];
        let (_, _, attr) = element(set)?;
        let (_, oid, _) = element(attr)?;
        if oid == wanted {
            let (_, _, value) = element(&attr[oid.len()..])?;
            return value
                .iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ')
                .then(|| String::from_utf8_lossy(value).into_owned());
        }
    }
    None
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo: what a host is bound to.
pub fn public_key_sha256(cert: &[u8]) -> Option<[u8; 32]> {
    subject_public_key_info(cert).map(crate::sha256)
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

    #[test]
    fn certificates_are_read_and_hostile_ones_are_none() {
        let der = unhex(CERT);
        let c = certificate(&der).expect("certificate");
        assert_eq!(c.is_ca, Some(true), "openssl's self-signed certificates are CAs");
        assert!(c.not_after > c.not_before && c.not_before > 1_700_000_000);
        assert_eq!(c.issuer, c.subject, "self-signed");
        for cut in 0..der.len() {
            assert!(certificate(&der[..cut]).is_none(), "a certificate cut at {cut} was read");
        }
        let mut bad_time = der.clone();
        if let Some(i) = bad_time.windows(2).position(|w| w == [0x17, 0x0d]) {
            bad_time[i + 2] = b'x';
            assert!(certificate(&bad_time).is_none(), "a malformed time");
        }
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        for bad in [&b"2012312359Z"[..], b"99991331235959Z", b"9999123123595Z", b"991231235959"] {
            assert!(time(0x18, bad).is_none() && time(0x17, bad).is_none(), "{bad:?}");
        }
    }
}

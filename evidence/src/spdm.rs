//! The SPDM 1.1 GET_MEASUREMENTS exchange an NVIDIA GPU signs (DMTF DSP0274): the request (code
//! 0xE0, with the requester's nonce), the MEASUREMENTS response (0x60) with its measurement blocks,
//! the responder's nonce, NVIDIA's opaque data fields, and the 96-byte raw P-384 signature last.
//! Every length is bounded by the bytes that remain; anything malformed is an [`AttestationError`].

/// Largest report accepted (an H100 report is about 4 KiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

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

    /// The value of opaque field `t`, where present.
    pub fn field(&self, t: u16) -> Option<&[u8]> {
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
        self.field(field::FWID).map(crate::hex)
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

//! A structurally real SPDM 1.1 GET_MEASUREMENTS exchange, as an NVIDIA GPU in confidential-computing
//! mode returns it: request (0xE0, the caller's nonce), MEASUREMENTS response (0x60) with DMTF
//! measurement blocks, a responder nonce, NVIDIA's opaque fields (driver version 3, VBIOS version 6,
//! FWID 20) and a raw P-384 signature (r || s) over everything before it, made with the GPU's key from
//! the scenario's `evidence_dir`. The test run's certificates chain that key to a test root, never to
//! NVIDIA's.
//!
//! Measurement `i` is SHA-384 of `gpuattest-sim-measurement:{gpu name}:{vbios}:{i}` (the same for
//! every GPU of one model and firmware, as real measurements are), and a GPU's FWID is SHA-384 of
//! `gpuattest-sim-fwid:{uuid}`, so tests can write golden values and certificates for them.

use ring::digest::{SHA384, digest};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};

/// Measurement blocks in a simulated report.
pub const MEASUREMENT_BLOCKS: u8 = 8;

/// The corruptions a scenario can ask for (`attestation_fault` on a GPU).
pub const FAULTS: &[&str] = &[
    "bad_signature",
    "wrong_nonce",
    "truncated",
    "foreign_chain",
    "unknown_root",
    "wrong_driver",
    "wrong_measurement",
];

/// Measurement `index` of a GPU of model `name` with VBIOS `vbios`.
pub fn measurement(name: &str, vbios: &str, index: u8) -> Vec<u8> {
    digest(&SHA384, format!("gpuattest-sim-measurement:{name}:{vbios}:{index}").as_bytes()).as_ref().to_vec()
}

/// What a simulated GPU signs.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// `GPU-...`.
    pub uuid: &'a str,
    /// Its NVML name.
    pub name: &'a str,
    /// The driver version.
    pub driver: &'a str,
    /// The VBIOS version.
    pub vbios: &'a str,
}

/// The firmware identity of the GPU `uuid`.
pub fn fwid(uuid: &str) -> Vec<u8> {
    digest(&SHA384, format!("gpuattest-sim-fwid:{uuid}").as_bytes()).as_ref().to_vec()
}

/// `96.00.99.00.01` as the 8 bytes of opaque field 6 (the order NVIDIA's verifier reads back).
fn vbios_bytes(v: &str) -> Vec<u8> {
    let p: Vec<u8> = v.split('.').map(|x| u8::from_str_radix(x, 16).unwrap_or(0)).collect();
    let g = |i: usize| p.get(i).copied().unwrap_or(0);
    vec![g(3), g(2), g(1), g(0), g(4), 0, 0, 0]
}

fn field(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// The report of `gpu` over `nonce`, signed with `key_pkcs8` (P-384, PKCS#8 DER), with `fault`.
///
/// # Errors
/// A key ring cannot use.
pub fn report(nonce: &[u8; 32], gpu: Signer<'_>, key_pkcs8: &[u8], fault: Option<&str>) -> Result<Vec<u8>, String> {
    let Signer { uuid, name, driver, vbios } = gpu;
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, key_pkcs8, &rng)
        .map_err(|e| format!("GPU key for {uuid}: {e}"))?;
    let mut asked = *nonce;
    if fault == Some("wrong_nonce") {
        asked.iter_mut().for_each(|b| *b ^= 0xff);
    }
    // GET_MEASUREMENTS, SPDM 1.1: version, code, param1 (signature requested), param2 (all blocks),
    // the nonce, slot 0.
    let mut b = vec![0x11, 0xe0, 0x01, 0xff];
    b.extend_from_slice(&asked);
    b.push(0);
    let mut record = Vec::new();
    for i in 1..=MEASUREMENT_BLOCKS {
        let mut value = measurement(name, vbios, i);
        if fault == Some("wrong_measurement") && i == 1 {
            value[0] ^= 0x01;
        }
        // Block: index, DMTF spec (1), size; DMTF value: type (1, immutable ROM digest), size, digest.
        record.push(i);
        record.push(0x01);
        record.extend_from_slice(&((value.len() + 3) as u16).to_le_bytes());
        record.push(0x01);
        record.extend_from_slice(&(value.len() as u16).to_le_bytes());
        record.extend_from_slice(&value);
    }
    let len = record.len() as u32;
    b.extend_from_slice(&[0x11, 0x60, 0x00, 0x00, MEASUREMENT_BLOCKS]);
    b.extend_from_slice(&len.to_le_bytes()[..3]);
    b.extend_from_slice(&record);
    b.extend_from_slice(&digest(&SHA384, nonce).as_ref()[..32]);
    let mut driver_field = if fault == Some("wrong_driver") { "999.99.99" } else { driver }.as_bytes().to_vec();
    driver_field.push(0);
    let mut opaque = Vec::new();
    field(&mut opaque, 3, &driver_field);
    field(&mut opaque, 6, &vbios_bytes(vbios));
    field(&mut opaque, 20, &fwid(uuid));
    b.extend_from_slice(&(opaque.len() as u16).to_le_bytes());
    b.extend_from_slice(&opaque);
    let sig = key.sign(&rng, &b).map_err(|e| format!("signing for {uuid}: {e}"))?;
    b.extend_from_slice(sig.as_ref());
    match fault {
        Some("bad_signature") => {
            let n = b.len();
            b[n - 1] ^= 0x01;
        }
        Some("truncated") => b.truncate(b.len() - 10),
        _ => {}
    }
    Ok(b)
}

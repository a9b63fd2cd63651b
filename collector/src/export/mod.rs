//! Customer attestations: a DSSE envelope (payload type `application/vnd.in-toto+json`) around an
//! in-toto Statement v1 whose predicate summarises one tenant's usage over a period, signed with the
//! collector's export key (Ed25519), and verifiable offline: the signature, the signed tree head of the
//! transparency log, and an inclusion proof for every report the statement names.
//!
//! # Layout
//! - [`merkle`]: RFC 6962 tree hashing, inclusion and consistency proofs.
//! - [`keys`]: the export key, its SPKI PEM form and the signed tree head.
//! - [`statement`]: building the statement from stored evidence.
//! - this file: DSSE (PAE, envelope) and offline verification.

pub mod keys;
pub use crate::merkle;
pub mod statement;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use keys::ExportKey;

/// The DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// This predicate's type (versioned).
pub const PREDICATE_TYPE: &str = "https://gpuattest.dev/attestation/gpu-usage/v1";
/// Largest export file `verify` reads.
pub const MAX_EXPORT_BYTES: u64 = 512 * 1024 * 1024;

/// A DSSE envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Base64 of the statement bytes.
    pub payload: String,
    /// `application/vnd.in-toto+json`.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Signatures over the PAE.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Key id: SHA-256 (hex) of the signer's SPKI DER.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the signature.
    pub sig: String,
}

/// DSSE pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Wraps and signs a statement.
pub fn seal(statement: &Value, key: &ExportKey) -> Envelope {
    let payload = serde_json::to_vec(statement).unwrap_or_default();
    let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
    Envelope {
        payload: B64.encode(&payload),
        payload_type: PAYLOAD_TYPE.into(),
        signatures: vec![EnvelopeSignature { keyid: key.key_id(), sig: B64.encode(sig) }],
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Tenant attested.
    pub tenant: String,
    /// Subjects (reports) whose inclusion in the log was proven.
    pub subjects: usize,
    /// Size of the signed tree head.
    pub tree_size: u64,
    /// Its root (hex).
    pub root_hash: String,
    /// Landmark measurement records whose signatures were checked.
    pub location_records: usize,
    /// Reports the export names as stored but not yet sequenced into the log (nothing proves them).
    pub unsequenced: usize,
}

fn hex32(s: &str) -> Option<merkle::Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

/// Verifies an exported envelope offline with the export public key (SPKI PEM).
///
/// # Errors
/// One sentence saying what does not hold: payload type, signature, statement form, tree-head
/// signature, or an inclusion proof.
pub fn verify(envelope_json: &[u8], key_pem: &str) -> Result<Verified, String> {
    let public = keys::public_key_from_pem(key_pem)?;
    let env: Envelope = serde_json::from_slice(envelope_json).map_err(|e| format!("not a DSSE envelope: {e}"))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(format!("payload type is {:?}, expected {PAYLOAD_TYPE}", env.payload_type));
    }
    let payload = B64.decode(env.payload.as_bytes()).map_err(|e| format!("payload is not base64: {e}"))?;
    let message = pae(&env.payload_type, &payload);
    let signed = env.signatures.iter().any(|s| {
        B64.decode(s.sig.as_bytes()).is_ok_and(|sig| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public).verify(&message, &sig).is_ok()
        })
    });
    if !signed {
        return Err("no signature verifies with this key (the export was altered, or signed by another key)".into());
    }
    let st: Value = serde_json::from_slice(&payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    if st["_type"] != STATEMENT_TYPE || st["predicateType"] != PREDICATE_TYPE {
        return Err("payload is not a gpuattest in-toto Statement v1".into());
    }
    let t = &st["predicate"]["transparency"];
    let size = t["tree_size"].as_u64().ok_or("the statement has no transparency tree size")?;
    let root = t["root_hash"].as_str().and_then(hex32).ok_or("the statement has no valid tree root")?;
    let head_sig =
        t["tree_head_signature"].as_str().and_then(|s| B64.decode(s).ok()).ok_or("no tree-head signature")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
        .verify(&keys::tree_head_message(size, &root), &head_sig)
        .map_err(|_| "the signed tree head does not verify with this key".to_string())?;
    let subjects = st["subject"].as_array().ok_or("the statement has no subjects")?;
    let proofs = t["inclusion"].as_array().ok_or("the statement has no inclusion proofs")?;
    if proofs.len() != subjects.len() {
        return Err(format!("{} subjects but {} inclusion proofs", subjects.len(), proofs.len()));
    }
    for (subject, proof) in subjects.iter().zip(proofs) {
        let name = subject["name"].as_str().unwrap_or_default();
        let (host_id, seq) =
            statement::parse_subject(name).ok_or_else(|| format!("subject {name:?} is not a report"))?;
        let digest = subject["digest"]["sha256"]
            .as_str()
            .and_then(hex32)
            .ok_or_else(|| format!("subject {name} has no sha256"))?;
        let index = proof["index"].as_u64().ok_or_else(|| format!("no log index for {name}"))?;
        let path: Option<Vec<merkle::Hash>> =
            proof["path"].as_array().map(|p| p.iter().filter_map(|h| h.as_str().and_then(hex32)).collect());
        let path = path.ok_or_else(|| format!("no proof path for {name}"))?;
        let leaf = merkle::leaf_hash(&crate::store::log_leaf_data(&host_id, seq, &digest));
        if !merkle::verify_inclusion(&leaf, index, size, &path, &root) {
            return Err(format!("the inclusion proof for {name} does not match the signed tree head"));
        }
    }
    let mut location_records = 0;
    for h in st["predicate"]["hosts"].as_array().into_iter().flatten() {
        location_records += verify_location(h)?;
    }
    Ok(Verified {
        tenant: st["predicate"]["tenant"].as_str().unwrap_or_default().to_string(),
        subjects: subjects.len(),
        tree_size: size,
        root_hash: gpuattest_proto::hex(&root),
        location_records,
        unsequenced: t["unsequenced"].as_array().map_or(0, Vec::len),
    })
}

/// Checks a host's location records (each signed by its landmark, each measuring this host) and that
/// its stated verdict is the one they give under the stated policy; the number of records checked.
fn verify_location(h: &Value) -> Result<usize, String> {
    use prost::Message;
    let Some(loc) = h.get("location").filter(|l| !l.is_null()) else { return Ok(0) };
    let host_id = h["host_id"].as_str().unwrap_or_default();
    let mut landmarks = Vec::new();
    let mut measurements = Vec::new();
    for r in loc["records"].as_array().into_iter().flatten() {
        let name = r["landmark"].as_str().unwrap_or_default();
        let key =
            r["landmark_public_key"].as_str().and_then(hex32).ok_or("a location record without its landmark's key")?;
        let record =
            r["record"].as_str().and_then(|b| B64.decode(b).ok()).ok_or("a location record that is not base64")?;
        let sig = r["signature"]
            .as_str()
            .and_then(|b| B64.decode(b).ok())
            .ok_or("a location signature that is not base64")?;
        if !gpuattest_proto::landmark::record_verifies(&key, &record, &sig) {
            return Err(format!("host {host_id}: landmark {name}'s record does not verify with its key"));
        }
        let m = gpuattest_proto::pb::LocationRecord::decode(record.as_slice()).map_err(|e| e.to_string())?;
        if m.host_id != host_id || m.landmark != name {
            return Err(format!("host {host_id}: landmark {name}'s record measured {} as {}", m.host_id, m.landmark));
        }
        landmarks.push(crate::store::LandmarkRow {
            name: name.to_string(),
            lat: r["lat"].as_f64().unwrap_or(f64::NAN),
            lon: r["lon"].as_f64().unwrap_or(f64::NAN),
            public_key: key.to_vec(),
            key_id: String::new(),
            address: String::new(),
        });
        measurements.push(crate::store::Measurement {
            landmark: name.to_string(),
            min_rtt_us: m.min_rtt_us,
            median_rtt_us: m.median_rtt_us,
            rounds: m.rounds,
            measured_at: m.measured_at_unix_ms,
            kind: if m.kind == crate::store::measurement_kind::GPU { m.kind.clone() } else { "key".into() },
            gpu_uuid: m.gpu_uuid.clone(),
            gpu_model: r["gpu_model"].as_str().unwrap_or_default().to_string(),
            record,
            signature: sig,
        });
    }
    let p = &loc["policy"];
    let policy = crate::location::LocationPolicy {
        tolerance_km: p["tolerance_km"].as_f64().unwrap_or(500.0),
        min_landmarks: p["min_landmarks"].as_u64().unwrap_or(3) as usize,
        // Every record the export carries counted, as when it was made.
        window: "100000d".into(),
        processing_floor_us: p["processing_floor_us"].as_u64().unwrap_or(0),
        gpu_attestation_floor_us: serde_json::from_value(p["gpu_attestation_floor_us"].clone()).unwrap_or_default(),
        ..crate::location::LocationPolicy::default()
    };
    let site: Option<crate::store::Site> = serde_json::from_value(loc["site"].clone()).ok().flatten();
    let newest = measurements.iter().map(|m| m.measured_at).max().unwrap_or(0);
    let gpus_attest = loc["gpus_attest"].as_bool().unwrap_or(false);
    let v = crate::location::verdict(&policy, site.as_ref(), &landmarks, &measurements, gpus_attest, newest);
    let stated = loc["verdict"].as_str().unwrap_or_default();
    // Records older than the collector's window made a verdict `insufficient` there; recomputed with
    // every record, the same records can only say more, so only a contradiction is refused.
    if stated != v.verdict && !(stated == "insufficient" || stated == "unregistered") {
        return Err(format!("host {host_id}: the export says {stated}, its records say {}", v.verdict));
    }
    Ok(measurements.len())
}

/// A consistency proof between two signed tree heads, as `log consistency` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older head.
    pub from: keys::SignedHead,
    /// The newer head.
    pub to: keys::SignedHead,
    /// Hex hashes.
    pub proof: Vec<String>,
}

/// Verifies a consistency proof offline: both heads signed by the key, and the newer tree extends the
/// older one.
///
/// # Errors
/// One sentence saying which check failed.
pub fn verify_consistency(proof_json: &[u8], key_pem: &str) -> Result<(), String> {
    let public = keys::public_key_from_pem(key_pem)?;
    let p: ConsistencyProof =
        serde_json::from_slice(proof_json).map_err(|e| format!("not a consistency proof: {e}"))?;
    let from = p.from.verify(&public)?;
    let to = p.to.verify(&public)?;
    let path: Vec<merkle::Hash> = p.proof.iter().filter_map(|h| hex32(h)).collect();
    if path.len() != p.proof.len() {
        return Err("the proof holds a hash that is not 32 bytes of hex".into());
    }
    if merkle::verify_consistency(p.from.tree_size, p.to.tree_size, &path, &from, &to) {
        Ok(())
    } else {
        Err(format!(
            "the log of size {} does not extend the log of size {}: history was rewritten",
            p.to.tree_size, p.from.tree_size
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}

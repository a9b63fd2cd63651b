//! The one report verifier: ingest, `reports verify` and the review page's re-verification all call
//! [`report`], so a report that one of them accepts the others accept too.
//!
//! The rule: a report of host H with sequence number S is valid when it is signed, over the exact bytes
//! stored, by a key H holds for S (its current key, or a key it retired after S), it decodes, and it
//! says it is (H, S). Which key a host holds is read from the store at the time of the check, never
//! from a copy a stream took when it opened: a key retired mid-stream stops working at once.

use gpuattest_proto::pb;
use gpuattest_proto::{SignError, verify_report};

/// A key that may sign some of a host's reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// The raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// For a retired key: the last sequence number it may sign. `None`: the host's current key.
    pub valid_through: Option<u64>,
}

/// Why a report is not valid evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The key id is neither the host's current key nor one it retired.
    #[error("signed by a key that is neither the host's current key nor one it retired")]
    UnknownKey,
    /// Signed by a retired key after the last report that key may sign.
    #[error("report {seq} is signed by a key retired after report {through}")]
    KeyRetired {
        /// The report's sequence number.
        seq: u64,
        /// The last sequence number the key may sign.
        through: u64,
    },
    /// The signature does not verify over the bytes.
    #[error("{0}")]
    BadSignature(String),
    /// The signed bytes are not a `UsageReport`.
    #[error("signed bytes are not a UsageReport: {0}")]
    Malformed(String),
    /// The report names another host.
    #[error("report names host {claimed:?} but belongs to host {expected}")]
    WrongHost {
        /// What the report says.
        claimed: String,
        /// The host it came from or is stored under.
        expected: String,
    },
    /// Sequence number 0.
    #[error("sequence numbers start at 1")]
    SeqZero,
    /// Stored under another sequence number than it says.
    #[error("stored as ({host_id}, {stored}) but says ({host_id}, {says})")]
    WrongSeq {
        /// The host.
        host_id: String,
        /// Where it is stored.
        stored: u64,
        /// What it says.
        says: u64,
    },
}

/// Verifies one signed report of `host_id` with the key the store holds for its key id (`None` when
/// the store knows no such key of this host). `stored_seq` is where a stored report sits; `None` for a
/// report arriving now. Returns the decoded report, decoded only after the signature verified.
///
/// # Errors
/// The first [`Problem`] found, in the order above.
pub fn report(
    key: Option<&SigningKey>,
    signed: &pb::SignedReport,
    host_id: &str,
    stored_seq: Option<u64>,
) -> Result<pb::UsageReport, Problem> {
    let key = key.ok_or(Problem::UnknownKey)?;
    match verify_report(&key.public_key, signed) {
        Ok(()) => {}
        Err(SignError::UnknownKey { .. }) => return Err(Problem::UnknownKey),
        Err(e) => return Err(Problem::BadSignature(e.to_string())),
    }
    let r = <pb::UsageReport as prost::Message>::decode(signed.report.as_slice())
        .map_err(|e| Problem::Malformed(e.to_string()))?;
    if r.host_id != host_id {
        return Err(Problem::WrongHost { claimed: r.host_id, expected: host_id.to_string() });
    }
    if r.seq == 0 {
        return Err(Problem::SeqZero);
    }
    if let Some(stored) = stored_seq
        && stored != r.seq
    {
        return Err(Problem::WrongSeq { host_id: host_id.to_string(), stored, says: r.seq });
    }
    if let Some(through) = key.valid_through
        && r.seq > through
    {
        return Err(Problem::KeyRetired { seq: r.seq, through });
    }
    Ok(r)
}

/// Bounds on the observation interval a report announces: below 1 s or above 1 h is taken as the bound.
pub const INTERVAL_BOUNDS_MS: (u64, u64) = (1_000, 3_600_000);

/// The interval the silence rule uses for a report's announced interval (0: not announced).
pub fn bounded_interval(announced_ms: u64) -> Option<u64> {
    (announced_ms > 0).then(|| announced_ms.clamp(INTERVAL_BOUNDS_MS.0, INTERVAL_BOUNDS_MS.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("keygen");
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
    }

    fn signed(k: &Ed25519KeyPair, host: &str, seq: u64) -> pb::SignedReport {
        let r = pb::UsageReport { host_id: host.into(), seq, ..Default::default() };
        gpuattest_proto::sign_report(k, r.encode_to_vec())
    }

    #[test]
    fn one_rule_for_current_retired_and_unknown_keys() {
        let (k, other) = (key(), key());
        let current = SigningKey { public_key: k.public_key().as_ref().to_vec(), valid_through: None };
        let retired = SigningKey { valid_through: Some(5), ..current.clone() };
        assert_eq!(report(Some(&current), &signed(&k, "h", 9), "h", None).map(|r| r.seq), Ok(9));
        assert_eq!(report(Some(&retired), &signed(&k, "h", 5), "h", Some(5)).map(|r| r.seq), Ok(5));
        assert_eq!(
            report(Some(&retired), &signed(&k, "h", 6), "h", None),
            Err(Problem::KeyRetired { seq: 6, through: 5 })
        );
        assert_eq!(report(None, &signed(&k, "h", 1), "h", None), Err(Problem::UnknownKey));
        assert_eq!(report(Some(&current), &signed(&other, "h", 1), "h", None), Err(Problem::UnknownKey));
        assert!(matches!(report(Some(&current), &signed(&k, "g", 1), "h", None), Err(Problem::WrongHost { .. })));
        assert_eq!(report(Some(&current), &signed(&k, "h", 0), "h", None), Err(Problem::SeqZero));
        assert!(matches!(report(Some(&current), &signed(&k, "h", 2), "h", Some(3)), Err(Problem::WrongSeq { .. })));
        let mut flipped = signed(&k, "h", 1);
        flipped.report[0] ^= 1;
        assert!(matches!(report(Some(&current), &flipped, "h", None), Err(Problem::BadSignature(_))));
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(bounded_interval(0), None);
        assert_eq!(bounded_interval(1), Some(1_000));
        assert_eq!(bounded_interval(9_000_000_000_000_000_000), Some(3_600_000));
        assert_eq!(bounded_interval(10_000), Some(10_000));
    }
}

//! The gpuattest wire contract, version 1: the protobuf messages and gRPC service that agents and
//! collectors speak, and the few rules that say exactly which bytes are signed.
//!
//! A report travels as a [`pb::SignedReport`]: the exact encoded [`pb::UsageReport`] bytes plus an
//! Ed25519 signature over [`SIGNING_CONTEXT`] followed by those bytes. Verifiers check the signature
//! over the bytes they received and decode only afterwards; nothing is ever re-encoded before
//! verification, so a report can be re-verified from storage years later.
//!
//! # Layout
//! - [`pb`]: the generated messages, client and server for package `gpuattest.v1`.
//! - [`signing`]: signing context, key ids, signing and verification of reports.
//! - [`units`]: duration text forms shared by both sides' flags and config files.
//! - [`landmark`]: the location landmark protocol: frames, and what hosts and landmarks sign.

pub mod landmark;
pub mod signing;
pub mod units;

/// Generated code for protobuf package `gpuattest.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("gpuattest.v1");
}

pub use signing::{
    ROTATION_CONTEXT, SIGNING_CONTEXT, SignError, hex, key_id, rotation_message, sha256, sign_report, verify_report,
    verify_rotation,
};

/// gRPC metadata the collector sets on the status that closes (or refuses) a stream because the host is
/// revoked: the agent then stops for good (exit 78) instead of reconnecting forever. Its value is the
/// revocation's reason.
pub const REVOKED_METADATA: &str = "x-gpuattest-host-revoked";

/// Largest encoded message either side accepts on the wire, in bytes. A report for a host with many
/// GPUs, processes and model fingerprints is tens of kilobytes; anything near this bound is hostile.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

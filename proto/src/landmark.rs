//! The landmark protocol: how an agent and a location landmark talk over one TCP connection the agent
//! opens (Nagle off on both ends), and exactly what each side signs.
//!
//! Frames are `kind (1 byte) || length (4 bytes, big-endian) || payload`, at most [`MAX_FRAME`] bytes
//! of payload. The agent sends [`HELLO`] (a `LandmarkHello`); the landmark then sends [`CHALLENGE`]
//! frames (a fresh 32-byte nonce each) and times each [`ANSWER`] (the host's Ed25519 signature over
//! [`answer_message`]); after a round of challenges it sends a [`RECORD`] (a `SignedLocationRecord`),
//! and later rounds follow on the same connection. When the hello names GPUs in confidential-computing
//! mode, each round is followed by a GPU-bound one: [`GPU_CHALLENGE`] frames answered by
//! [`GPU_ANSWER`] (a `GpuAttestation` over [`gpu_nonce`]), and a record of kind `gpu`.

use ring::signature::{ED25519, UnparsedPublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The agent's opening frame.
pub const HELLO: u8 = 1;
/// A challenge: 32 random bytes.
pub const CHALLENGE: u8 = 2;
/// The host's signature over [`answer_message`], 64 bytes.
pub const ANSWER: u8 = 3;
/// A signed measurement record.
pub const RECORD: u8 = 4;
/// A GPU-bound challenge: 32 random bytes; the answer is a GPU's attestation over [`gpu_nonce`].
pub const GPU_CHALLENGE: u8 = 5;
/// A `GpuAttestation` answering a [`GPU_CHALLENGE`].
pub const GPU_ANSWER: u8 = 6;

/// Largest frame payload either side accepts (a GPU's report and certificate chain fit).
pub const MAX_FRAME: usize = 64 * 1024;

/// Domain separation for the nonce a GPU attests to.
pub const GPU_NONCE_CONTEXT: &[u8] = b"gpuattest.v1.LocationGpuNonce\0";

/// The nonce a GPU signs to answer challenge `nonce` from `landmark` for `host_id`: SHA-256 over all
/// three, so the report answers this challenge only, from this landmark, for this host.
pub fn gpu_nonce(nonce: &[u8], landmark: &str, host_id: &str) -> [u8; 32] {
    let mut m = Vec::with_capacity(GPU_NONCE_CONTEXT.len() + nonce.len() + landmark.len() + host_id.len() + 1);
    m.extend_from_slice(GPU_NONCE_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(landmark.as_bytes());
    m.push(0);
    m.extend_from_slice(host_id.as_bytes());
    crate::sha256(&m)
}

/// Domain separation for the host's answers.
pub const ANSWER_CONTEXT: &[u8] = b"gpuattest.v1.LocationAnswer\0";
/// Domain separation for the landmark's records.
pub const RECORD_CONTEXT: &[u8] = b"gpuattest.v1.LocationRecord\0";

/// Light in fiber: about 200 km per millisecond (refractive index about 1.5), so 0.2 km per
/// microsecond one way.
pub const FIBER_KM_PER_US: f64 = 0.2;

/// The bytes a host signs to answer `nonce` from `landmark`: the answer names both, so it cannot be
/// replayed to another landmark or for another host.
pub fn answer_message(nonce: &[u8], landmark: &str, host_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(ANSWER_CONTEXT.len() + nonce.len() + landmark.len() + host_id.len() + 2);
    m.extend_from_slice(ANSWER_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(landmark.as_bytes());
    m.push(0);
    m.extend_from_slice(host_id.as_bytes());
    m
}

/// The bytes a landmark signs for a record.
pub fn record_message(record: &[u8]) -> Vec<u8> {
    [RECORD_CONTEXT, record].concat()
}

/// Checks a landmark's signature over a record with its raw Ed25519 public key.
pub fn record_verifies(public_key: &[u8], record: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key).verify(&record_message(record), signature).is_ok()
}

/// Checks a host's answer.
pub fn answer_verifies(public_key: &[u8], nonce: &[u8], landmark: &str, host_id: &str, signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key).verify(&answer_message(nonce, landmark, host_id), signature).is_ok()
}

/// Writes one frame.
///
/// # Errors
/// The connection's, or a payload over [`MAX_FRAME`].
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame larger than MAX_FRAME"));
    }
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame: (kind, payload).
///
/// # Errors
/// The connection's, or a length over [`MAX_FRAME`] (the peer is then not speaking this protocol).
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is larger than {MAX_FRAME}: not the landmark protocol"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        write_frame(&mut a, CHALLENGE, &[7; 32]).await.expect("write");
        assert_eq!(read_frame(&mut b).await.expect("read"), (CHALLENGE, vec![7; 32]));
        assert!(write_frame(&mut a, RECORD, &vec![0; MAX_FRAME + 1]).await.is_err());
        a.write_all(&[RECORD, 0xff, 0xff, 0xff, 0xff]).await.expect("raw");
        assert!(read_frame(&mut b).await.is_err(), "a 4 GiB length is refused before any allocation");
    }

    #[test]
    fn answers_name_the_landmark_and_the_host() {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
        let pk = ring::signature::KeyPair::public_key(&key).as_ref().to_vec();
        let sig = key.sign(&answer_message(&[1; 32], "ashburn", "host-a"));
        assert!(answer_verifies(&pk, &[1; 32], "ashburn", "host-a", sig.as_ref()));
        assert!(!answer_verifies(&pk, &[1; 32], "dallas", "host-a", sig.as_ref()), "another landmark");
        assert!(!answer_verifies(&pk, &[1; 32], "ashburn", "host-b", sig.as_ref()), "another host");
        assert!(!answer_verifies(&pk, &[2; 32], "ashburn", "host-a", sig.as_ref()), "another nonce");
    }
}

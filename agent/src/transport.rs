//! Talking to the collector: address policy, enrollment, and the report stream session.

use std::time::Duration;

use gpuattest_proto::pb::{self, collector_client::CollectorClient};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why talking to a collector failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address is not usable under the transport policy.
    #[error("collector address {addr}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// The connection could not be made or broke.
    #[error("collector {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The collector refused the request.
    #[error("collector {addr} refused: {status}")]
    Refused {
        /// The address.
        addr: String,
        /// The gRPC status message.
        status: String,
        /// The gRPC code.
        code: tonic::Code,
    },
    /// The collector broke the protocol.
    #[error("collector {addr} broke the protocol: {reason}")]
    Protocol {
        /// The address.
        addr: String,
        /// What it did.
        reason: String,
    },
}

impl TransportError {
    /// Whether retrying later (or another collector) can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Address { .. } => false,
            TransportError::Refused { code, .. } => !matches!(
                code,
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
            ),
            _ => true,
        }
    }
}

/// Checks the transport policy: plaintext `http://` only to loopback; anything else needs TLS.
///
/// # Errors
/// [`TransportError::Address`] with what to do.
pub fn check_address(addr: &str) -> Result<Uri, TransportError> {
    let bad = |reason: &str| TransportError::Address { addr: addr.to_string(), reason: reason.to_string() };
    let uri: Uri = addr.parse().map_err(|_| bad("not a URL; use http://127.0.0.1:7443 for a local collector"))?;
    let host = uri.host().ok_or_else(|| bad("no host in the URL"))?;
    match uri.scheme_str() {
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(bad(
                    "plaintext http:// is allowed only to loopback addresses; use https:// with the collector's TLS certificate",
                ));
            }
            Ok(uri)
        }
        Some("https") => Err(bad(
            "TLS transport is not in this build yet; run the collector on loopback or behind a local TLS-terminating proxy",
        )),
        _ => Err(bad("the scheme must be http:// (loopback only) or https://")),
    }
}

/// Connects a gRPC client to `addr`.
///
/// # Errors
/// [`TransportError`] when the address is refused by policy or the connection fails.
pub async fn connect(addr: &str) -> Result<CollectorClient<Channel>, TransportError> {
    let uri = check_address(addr)?;
    let channel = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| TransportError::Connect {
            addr: addr.to_string(),
            reason: format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()),
        })?;
    Ok(CollectorClient::new(channel)
        .max_decoding_message_size(gpuattest_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(gpuattest_proto::MAX_MESSAGE_BYTES))
}

/// Converts a gRPC status into a [`TransportError`].
pub fn refused(addr: &str, s: &tonic::Status) -> TransportError {
    TransportError::Refused { addr: addr.to_string(), status: s.message().to_string(), code: s.code() }
}

/// Enrolls this host's key with a one-time token.
///
/// # Errors
/// [`TransportError::Refused`] when the token is unknown, used or expired.
pub async fn enroll(addr: &str, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, TransportError> {
    let mut client = connect(addr).await?;
    client.enroll(req).await.map(tonic::Response::into_inner).map_err(|s| refused(addr, &s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_loopback() {
        assert!(check_address("http://127.0.0.1:7443").is_ok());
        assert!(check_address("http://127.5.6.7:1").is_ok());
        assert!(check_address("http://localhost:7443").is_ok());
        assert!(check_address("http://[::1]:7443").is_ok());
        for bad in ["http://10.0.0.5:7443", "http://collector.example.com", "ftp://127.0.0.1", "not a url", "http://"] {
            let e = check_address(bad).expect_err(bad);
            assert!(e.to_string().contains(bad.split('/').next().unwrap_or(bad)), "{e}");
        }
    }
}

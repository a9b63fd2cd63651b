//! Talking to the collector: address policy, enrollment, and the report stream session.

use std::time::Duration;

use gpuattest_proto::pb::{self, collector_client::CollectorClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

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
    /// The collector says this host is revoked: reporting is over for this identity.
    #[error("collector {addr}: {message}")]
    Revoked {
        /// The address.
        addr: String,
        /// The collector's sentence (with the reason).
        message: String,
    },
}

impl TransportError {
    /// Whether retrying later (or another collector) can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Address { .. } | TransportError::Revoked { .. } => false,
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
        Some("https") => Ok(uri),
        _ => Err(bad("the scheme must be http:// (loopback only) or https://")),
    }
}

/// TLS material for `https://` collectors, read once at start-up.
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM of the CA that signed the collector's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of this agent's client certificate (for collectors that require mTLS).
    pub cert_pem: Option<Vec<u8>>,
    /// PEM of its private key.
    pub key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Tls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .finish()
    }
}

impl Tls {
    /// Reads the PEM files (bounded to 1 MiB each).
    ///
    /// # Errors
    /// A sentence naming the file that cannot be read, or a certificate without its key.
    pub fn load(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Tls, String> {
        let read = |p: Option<&std::path::Path>| -> Result<Option<Vec<u8>>, String> {
            p.map(|p| crate::files::read_bounded(p, 1 << 20).ok_or_else(|| format!("cannot read {}", p.display())))
                .transpose()
        };
        let tls = Tls { ca_pem: read(ca)?, cert_pem: read(cert)?, key_pem: read(key)? };
        if tls.cert_pem.is_some() != tls.key_pem.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        Ok(tls)
    }
}

/// Connects a gRPC client to `addr`; `https://` uses `tls` (the collector's CA, and a client
/// certificate where the collector requires one).
///
/// # Errors
/// [`TransportError`] when the address is refused by policy or the connection fails.
pub async fn connect(addr: &str, tls: &Tls) -> Result<CollectorClient<Channel>, TransportError> {
    let uri = check_address(addr)?;
    let mut endpoint = Endpoint::from(uri.clone());
    if uri.scheme_str() == Some("https") {
        let mut cfg = ClientTlsConfig::new().domain_name(uri.host().unwrap_or("localhost").trim_matches(['[', ']']));
        match &tls.ca_pem {
            Some(ca) => cfg = cfg.ca_certificate(Certificate::from_pem(ca)),
            None => {
                return Err(TransportError::Address {
                    addr: addr.to_string(),
                    reason: "https:// needs the collector's CA certificate: pass --tls-ca FILE".into(),
                });
            }
        }
        if let (Some(c), Some(k)) = (&tls.cert_pem, &tls.key_pem) {
            cfg = cfg.identity(Identity::from_pem(c, k));
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| TransportError::Connect { addr: addr.to_string(), reason: format!("TLS set-up: {e}") })?;
    }
    let channel = endpoint
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
    if s.metadata().get(gpuattest_proto::REVOKED_METADATA).is_some() {
        return TransportError::Revoked { addr: addr.to_string(), message: s.message().to_string() };
    }
    TransportError::Refused { addr: addr.to_string(), status: s.message().to_string(), code: s.code() }
}

/// Enrolls this host's key with a one-time token.
///
/// # Errors
/// [`TransportError::Refused`] when the token is unknown, used or expired.
pub async fn enroll(addr: &str, tls: &Tls, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, TransportError> {
    let mut client = connect(addr, tls).await?;
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
        assert!(check_address("https://collector.example.com:7443").is_ok());
        for bad in ["http://10.0.0.5:7443", "http://collector.example.com", "ftp://127.0.0.1", "not a url", "http://"] {
            let e = check_address(bad).expect_err(bad);
            assert!(e.to_string().contains(bad.split('/').next().unwrap_or(bad)), "{e}");
        }
    }
}

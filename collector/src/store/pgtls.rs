//! TLS to PostgreSQL, over the rustls the gRPC listener already uses.
//!
//! The URL takes libpq's parameters: `sslmode` and `sslrootcert` (the CA that signed the server's
//! certificate, PEM). Whenever TLS is used, the certificate chain is verified against that CA and the
//! certificate must name the host in the URL (libpq's `verify-full`): `require` and `verify-ca`, which
//! in libpq accept a server they cannot authenticate, are made as strict, because a collector that
//! talks to an impostor database hands it the evidence and takes its answers. `hostaddr` connects to an
//! address while the certificate is checked against `host`.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Largest CA file read (a bundle of a few hundred certificates fits).
const MAX_CA_BYTES: u64 = 1 << 20;

/// How the store reaches PostgreSQL, from the URL's `sslmode` and `sslrootcert`.
#[derive(Clone)]
pub enum Transport {
    /// No TLS (`sslmode=disable`, or the default with no `sslrootcert`).
    Plain,
    /// TLS, verified against the configured CA.
    Tls {
        /// The handshake's configuration.
        connector: PgTls,
        /// False only with `sslmode=prefer`, which lets a server without TLS be reached in the clear.
        required: bool,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls { required, .. } => f.debug_struct("Tls").field("required", required).finish(),
        }
    }
}

/// The URL with the TLS parameters taken out (tokio-postgres does not know `sslrootcert`, nor the
/// `verify-*` modes), and how to connect.
///
/// # Errors
/// One sentence saying what is wrong and what to write instead.
pub fn split_url(url: &str) -> Result<(String, Transport), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root = Some(percent_decode(v)?),
            Some((k @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir"), _)) => {
                return Err(format!(
                    "{k} is not taken: the collector does not present a client certificate to PostgreSQL; \
                     authenticate with a password (SCRAM) over verified TLS"
                ));
            }
            _ => rest.push(pair),
        }
    }
    let required = match mode.as_deref() {
        None | Some("prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some("disable") => {
            if root.is_some() {
                return Err("sslmode=disable with sslrootcert: drop one of them".into());
            }
            false
        }
        Some(other) => {
            return Err(format!("sslmode={other} is not taken; use verify-full (with sslrootcert), prefer or disable"));
        }
    };
    let stripped = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
    let transport = match root {
        Some(path) => Transport::Tls { connector: PgTls::from_ca_file(Path::new(&path))?, required },
        None if required => {
            return Err(format!(
                "sslmode={} needs sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate): \
                 the collector does not send evidence to a server it cannot authenticate",
                mode.unwrap_or_default()
            ));
        }
        None => Transport::Plain,
    };
    Ok((stripped, transport))
}

fn percent_decode(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let b = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("sslrootcert: bad percent escape in {v:?}"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("sslrootcert: {v:?} is not UTF-8 once decoded"))
}

/// A rustls connector for tokio-postgres, trusting only the configured CA.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

impl PgTls {
    /// Trusts the certificates in the PEM file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, is too large, holds no certificate, or holds one rustls refuses.
    pub fn from_ca_file(path: &Path) -> Result<PgTls, String> {
        let shown = path.display();
        let pem = crate::files::read_bounded_file(path, MAX_CA_BYTES, "sslrootcert")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("sslrootcert {shown}: not PEM certificates ({e})"))?;
            roots.add(cert).map_err(|e| format!("sslrootcert {shown}: a certificate rustls refuses ({e})"))?;
        }
        if roots.is_empty() {
            return Err(format!("sslrootcert {shown}: no certificate in it; give the CA's PEM file"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS to PostgreSQL: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PgTls { config: Arc::new(config) })
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect { config: self.config.clone(), name: ServerName::try_from(domain.to_string())? })
    }
}

/// One connection's handshake.
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// No channel binding: SCRAM runs without `-PLUS`; the verified certificate is what rules out a
    /// server in the middle.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    //! TLS to a real PostgreSQL: the test server's own TLS is not ours to configure, so a TLS front
    //! (rustls, with the test certificates in `test-data/pgtls`) answers PostgreSQL's SSLRequest,
    //! completes the handshake and relays the decrypted protocol to the test server. It takes TLS
    //! connections only, and counts its handshakes.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::{Store, StoreError};
    use crate::tools::scratch::ScratchSchema;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/pgtls").join(name)
    }

    /// PostgreSQL's SSLRequest: length 8, code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

    /// A TLS front for the server at `upstream`; its port and the count of completed handshakes.
    fn tls_front(upstream: String) -> (u16, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(data("server.pem")).expect("cert").map(|c| c.expect("pem")).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(data("server.key")).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((mut client, _)) = listener.accept().await {
                    let (acceptor, upstream, count) = (acceptor.clone(), upstream.clone(), count.clone());
                    tokio::spawn(async move {
                        let mut first = [0u8; 8];
                        if client.read_exact(&mut first).await.is_err() || first != SSL_REQUEST {
                            return; // TLS only
                        }
                        if client.write_all(b"S").await.is_err() {
                            return;
                        }
                        let Ok(mut tls) = acceptor.accept(client).await else { return };
                        count.fetch_add(1, Ordering::SeqCst);
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    });
                }
            });
        });
        (port, handshakes)
    }

    /// The scratch schema's URL through the front at `port` as `host`, with `tls` appended.
    fn through(schema: &ScratchSchema, host: &str, port: u16, tls: &str) -> (String, String) {
        let config: tokio_postgres::Config = schema.url.parse().expect("url");
        let upstream = match (config.get_hosts().first(), config.get_ports().first()) {
            (Some(tokio_postgres::config::Host::Tcp(h)), p) => format!("{h}:{}", p.copied().unwrap_or(5432)),
            other => panic!("the TLS tests need a TCP test server, not {other:?}"),
        };
        let (scheme, rest) = schema.url.split_once("://").expect("scheme");
        let (authority, tail) = rest.split_at(rest.find('/').expect("path"));
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        (format!("{scheme}://{user}{host}:{port}{tail}&{tls}"), upstream)
    }

    fn front_for(schema: &ScratchSchema) -> (u16, Arc<AtomicUsize>) {
        let (_, upstream) = through(schema, "localhost", 0, "");
        tls_front(upstream)
    }

    #[test]
    fn the_store_reaches_postgres_over_verified_tls() {
        let Some(schema) = ScratchSchema::or_skip("TLS to PostgreSQL") else { return };
        let (port, handshakes) = front_for(&schema);
        let ca = data("ca.pem");
        for host in ["localhost", "127.0.0.1"] {
            let (url, _) = through(&schema, host, port, &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
            let before = handshakes.load(Ordering::SeqCst);
            let store = Store::connect(&url).unwrap_or_else(|e| panic!("{host}: {e}"));
            // The writer and every reader, all through the front: migrations ran and reads answer.
            assert_eq!(store.hosts(None).expect("hosts").len(), 0);
            assert_eq!(handshakes.load(Ordering::SeqCst) - before, 1 + crate::store::READERS, "{host}");
        }
        // `require` is made as strict as verify-full, and `prefer` with a CA uses it.
        for mode in ["require", "verify-ca", "prefer"] {
            let (url, _) = through(&schema, "localhost", port, &format!("sslmode={mode}&sslrootcert={}", ca.display()));
            Store::connect(&url).unwrap_or_else(|e| panic!("{mode}: {e}"));
        }
    }

    fn refusal(url: &str) -> String {
        match Store::connect(url) {
            Ok(_) => panic!("connected: {url}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_server_that_cannot_be_authenticated_is_refused_in_one_line() {
        let Some(schema) = ScratchSchema::or_skip("TLS to PostgreSQL") else { return };
        let (port, handshakes) = front_for(&schema);
        // Signed by another CA.
        let other = data("other-ca.pem");
        let (url, _) =
            through(&schema, "localhost", port, &format!("sslmode=verify-full&sslrootcert={}", other.display()));
        let e = refusal(&url);
        assert!(e.contains("certificate") && !e.contains('\n'), "{e}");
        // The right CA, but the certificate does not name the host asked for (hostaddr connects).
        let ca = data("ca.pem");
        let (url, _) = through(
            &schema,
            "db.example.net",
            port,
            &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}", ca.display()),
        );
        let e = refusal(&url);
        assert!(e.contains("certificate") && e.contains("db.example.net") && !e.contains('\n'), "{e}");
        assert_eq!(handshakes.load(Ordering::SeqCst), 0, "no handshake may complete");
    }

    #[test]
    fn tls_parameters_are_checked_before_connecting() {
        let bad = |url: &str| match Store::connect(url) {
            Err(StoreError::BadUrl { reason, url: shown }) => {
                assert!(!shown.contains("hunter2") && !reason.contains("hunter2"), "{shown} {reason}");
                reason
            }
            other => panic!("{url}: {other:?}"),
        };
        let base = "postgres://u:hunter2@127.0.0.1:9/db";
        assert!(bad(&format!("{base}?sslmode=require")).contains("needs sslrootcert"));
        assert!(bad(&format!("{base}?sslmode=verify-full")).contains("needs sslrootcert"));
        assert!(bad(&format!("{base}?sslmode=allow")).contains("not taken"));
        assert!(bad(&format!("{base}?sslmode=disable&sslrootcert=/x")).contains("drop one"));
        let missing = bad(&format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"));
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let t = tempfile::tempdir().expect("tmp");
        let garbage = t.path().join("garbage.pem");
        std::fs::write(&garbage, b"\x00\xffnot a certificate\n-----BEGIN CERTIFICATE-----\n%%%\n").expect("write");
        let e = bad(&format!("{base}?sslmode=verify-full&sslrootcert={}", garbage.display()));
        assert!(e.contains("garbage.pem"), "{e}");
        let empty = t.path().join("empty.pem");
        std::fs::write(&empty, b"").expect("write");
        assert!(bad(&format!("{base}?sslrootcert={}", empty.display())).contains("no certificate"));
        assert!(bad(&format!("{base}?sslrootcert={}", t.path().display())).contains("not a regular file"));
        let huge = t.path().join("huge.pem");
        std::fs::write(&huge, vec![b'a'; (MAX_CA_BYTES + 1) as usize]).expect("write");
        assert!(bad(&format!("{base}?sslrootcert={}", huge.display())).contains("larger than"));
        assert!(bad(&format!("{base}?sslrootcert=%zz")).contains("percent escape"));
        assert!(
            bad(&format!("{base}?sslmode=verify-full&sslcert=/c.pem&sslkey=/k.pem")).contains("client certificate")
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let ca = data("ca.pem");
        let encoded = ca.display().to_string().replace('/', "%2F");
        let (url, t) = split_url(&format!(
            "postgres://u@h/db?options=-csearch_path%3Ds&sslmode=verify-full&sslrootcert={encoded}"
        ))
        .expect("split");
        assert_eq!(url, "postgres://u@h/db?options=-csearch_path%3Ds");
        assert!(matches!(t, Transport::Tls { required: true, .. }));
        let (url, t) = split_url("postgres://u@h/db?sslmode=disable").expect("split");
        assert_eq!((url.as_str(), matches!(t, Transport::Plain)), ("postgres://u@h/db", true));
        let (url, t) = split_url("postgres://u@h/db").expect("split");
        assert_eq!((url.as_str(), matches!(t, Transport::Plain)), ("postgres://u@h/db", true));
    }
}

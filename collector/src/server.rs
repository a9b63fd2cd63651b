//! Running the collector: gRPC ingest and the HTTP side on listeners handed in from outside (port 0 in
//! tests and the demo), until the shutdown signal.

use std::sync::{Arc, RwLock};

use gpuattest_proto::pb::collector_server::CollectorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

mod grpc_conns;

pub use grpc_conns::{GRPC_HANDSHAKE_TIMEOUT, MAX_GRPC_CONNECTIONS};
use grpc_conns::{limited_incoming, tls_incoming};

use crate::http::{HttpState, router};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::store::Store;

/// A running collector's shared parts.
#[derive(Clone)]
pub struct Collector {
    /// The store.
    pub store: Arc<Store>,
    /// The policy in force.
    pub policy: Arc<RwLock<Policy>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where the policy comes from, for hot reload; `None`: fixed for the process's life.
    pub policy_source: Option<crate::policy::PolicySource>,
    /// `--data`: the export key lives there (beside the embedded store, or alone with a shared one).
    pub data_dir: Option<std::path::PathBuf>,
    /// On shutdown, how long streams and HTTP requests get to finish before serving stops anyway.
    pub shutdown_grace: std::time::Duration,
    /// HTTPS for the HTTP listener.
    pub http_tls: Option<Arc<rustls::ServerConfig>>,
}

/// The HTTP listener's rustls configuration from PEM certificate chain and key: HTTP/1.1 by ALPN, no
/// client certificates (people sign in with bearer tokens).
///
/// # Errors
/// A sentence naming what in the PEM material is unusable.
pub fn http_tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--http-tls-cert: not a PEM certificate chain ({e})"))?;
    if certs.is_empty() {
        return Err("--http-tls-cert: no certificate in the file".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("--http-tls-key: not a PEM private key ({e})"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--http-tls-cert and --http-tls-key do not make a usable identity: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub use crate::config::DEFAULT_SHUTDOWN_GRACE;

/// TLS for the gRPC listener.
#[derive(Clone)]
pub struct GrpcTls {
    /// Server certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Server private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA whose client certificates are accepted (mTLS), PEM.
    pub client_ca_pem: Option<Vec<u8>>,
    /// Refuse clients without a certificate.
    pub require_client_cert: bool,
}

impl GrpcTls {
    /// The rustls server configuration: the certificate chain and key, HTTP/2 by ALPN, and client
    /// certificates verified against the client CA (required, or optional where not required).
    ///
    /// # Errors
    /// A sentence naming what in the PEM material is unusable.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--tls-cert: not a PEM certificate chain ({e})"))?;
        if certs.is_empty() {
            return Err("--tls-cert: no certificate in the file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("--tls-key: not a PEM private key ({e})"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca) {
                    let c = c.map_err(|e| format!("--client-ca: not a PEM certificate ({e})"))?;
                    roots.add(c).map_err(|e| format!("--client-ca: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("--client-ca: {e}"))?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("--tls-cert and --tls-key do not make a usable identity: {e}"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("gRPC server on {addr}: {reason}")]
    Grpc {
        /// Listen address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The HTTP server failed.
    #[error("HTTP server on {addr}: {reason}")]
    Http {
        /// Listen address.
        addr: String,
        /// What failed.
        reason: String,
    },
}

impl Collector {
    /// Every 5 s, flags hosts silent for more than the policy's number of their intervals.
    async fn watch_silence(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            let policy = self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<usize, crate::store::StoreError> {
                let now = crate::now_ms();
                let silent = store.silent_hosts(now, policy.integrity().silence_intervals)?;
                for (host_id, hostname, last_seen, last_seq) in &silent {
                    store.raise_flag(host_id, *last_seq, now, &policy.silence_flag(hostname, *last_seen, now))?;
                }
                Ok(silent.len())
            })
            .await;
            match result {
                Ok(Ok(n)) if n > 0 => tracing::warn!(hosts = n, "silent hosts flagged"),
                Ok(Err(e)) => tracing::error!(error = %e, "silence check failed"),
                _ => {}
            }
        }
    }

    /// Flags hosts with a registered site whose location is still not verified `unverified_after`
    /// after they enrolled (checked every half of that, at most every minute). Reads three rows per
    /// live host per check.
    async fn watch_location(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let policy = self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let after = policy.location().unverified_after_ms();
            let period = std::time::Duration::from_millis((after / 2).clamp(1_000, 60_000) as u64);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<usize, crate::store::StoreError> {
                let landmarks = store.landmarks()?;
                if landmarks.is_empty() {
                    return Ok(0);
                }
                let now = crate::now_ms();
                let mut flagged = 0;
                for h in store.hosts(None)?.into_iter().filter(|h| !h.revoked && h.last_seq > 0) {
                    if now - h.enrolled_at_ms < after {
                        continue;
                    }
                    let v = crate::location::host_verdict(&store, policy.location(), &h.host_id, &landmarks, now)?;
                    if v.verdict == "insufficient" {
                        store.raise_flag(
                            &h.host_id,
                            h.last_seq,
                            now,
                            &policy.location_unverified_flag(&h.hostname, &v),
                        )?;
                        flagged += 1;
                    }
                }
                Ok(flagged)
            })
            .await;
            match result {
                Ok(Ok(n)) if n > 0 => tracing::warn!(hosts = n, "hosts whose location is not verified flagged"),
                Ok(Err(e)) => tracing::error!(error = %e, "location check failed"),
                _ => {}
            }
        }
    }

    /// A collector over a store and policy.
    pub fn new(store: Arc<Store>, policy: Policy) -> Self {
        Collector {
            store,
            policy: Arc::new(RwLock::new(policy)),
            metrics: Arc::new(Metrics::default()),
            policy_source: None,
            data_dir: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            http_tls: None,
        }
    }

    /// [`Collector::with_http_tls`] where a configuration is given.
    #[must_use]
    pub fn with_http_tls_opt(self, config: Option<Arc<rustls::ServerConfig>>) -> Self {
        match config {
            Some(c) => self.with_http_tls(c),
            None => self,
        }
    }

    /// Serves the HTTP listener over TLS with `config` (see [`http_tls_config`]).
    #[must_use]
    pub fn with_http_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.http_tls = Some(config);
        self
    }

    /// Sets [`Collector::shutdown_grace`].
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: std::time::Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets the data directory (export key); by default the embedded store's directory.
    #[must_use]
    pub fn with_data_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Reloads the policy when its file, tenant file or screening lists change (checked every 2 s, and
    /// at once on SIGHUP). A file that does not load keeps the running policy; the refusal is logged and
    /// audited with the reason, and so is every reload with the new digest.
    #[must_use]
    pub fn with_policy_source(mut self, source: crate::policy::PolicySource) -> Self {
        self.policy_source = Some(source);
        self
    }

    async fn watch_policy(self, mut shutdown: watch::Receiver<bool>) {
        let Some(source) = self.policy_source.clone() else { return };
        let watched = |p: &Policy| {
            let mut v = vec![source.path.clone()];
            v.extend(p.sources().iter().cloned());
            v
        };
        let current = self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut paths = watched(&current);
        let mut last = crate::policy::stamp(&paths);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = shutdown.wait_for(|v| *v) => return,
            };
            let now_stamp = crate::policy::stamp(&paths);
            if !forced && now_stamp == last {
                continue;
            }
            last = now_stamp;
            let src = source.clone();
            let loaded = tokio::task::spawn_blocking(move || src.load()).await;
            let store = self.store.clone();
            let now = crate::now_ms();
            match loaded {
                Ok(Ok(p)) => {
                    let old =
                        self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).digest().to_string();
                    paths = watched(&p);
                    last = crate::policy::stamp(&paths);
                    if p.digest() != old {
                        info!(policy = %p.digest(), previous = %old, "policy reloaded");
                        let (detail, digest) =
                            (format!("{} (was {old})", source.path.display()), p.digest().to_string());
                        let _ = tokio::task::spawn_blocking(move || {
                            store.audit(now, "collector", "policy.reload", &digest, &detail)
                        })
                        .await;
                        *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = p;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "policy not reloaded; the running policy stays in force");
                    let (target, detail) = (source.path.display().to_string(), e.to_string());
                    let _ = tokio::task::spawn_blocking(move || {
                        store.audit(now, "collector", "policy.reload-refused", &target, &detail)
                    })
                    .await;
                }
                Err(e) => tracing::error!(error = %e, "policy reload task failed"),
            }
        }
    }

    /// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` turns true. With `tls`, gRPC is TLS
    /// (and mTLS where it names a client CA).
    ///
    /// # Errors
    /// [`ServeError`] when either server fails, or the TLS material is unusable.
    pub async fn serve(
        &self,
        grpc: TcpListener,
        http: TcpListener,
        tls: Option<&GrpcTls>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        let grpc_addr = grpc.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let http_addr = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(grpc = %grpc_addr, http = %http_addr, store = %self.store.location(), "collector serving");
        let ingest = Ingest::new(self.store.clone(), self.policy.clone(), self.metrics.clone())
            .map_err(|e| ServeError::Grpc {
                addr: grpc_addr.clone(),
                reason: format!("cannot start the commit thread: {e}"),
            })?
            .with_shutdown(shutdown.clone());
        let revocations = tokio::spawn(ingest.clone().watch_revocations());
        let svc = CollectorServer::new(ingest)
            .max_decoding_message_size(gpuattest_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(gpuattest_proto::MAX_MESSAGE_BYTES);
        let mut s1 = shutdown.clone();
        let shutdown_for_monitor = shutdown.clone();
        let grpc_router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            // A peer that answers no keep-alive ping for this long is gone: its connection (and slot) freed.
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_service(svc);
        let stop_grpc = async move {
            let _ = s1.wait_for(|v| *v).await;
        };
        // TLS is done here rather than by tonic, so that a failed handshake is logged with its peer
        // and reason (an operator debugging mTLS sees why a node is refused).
        let grpc_task: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match tls {
            Some(t) => {
                let cfg = t.server_config().map_err(|reason| ServeError::Grpc {
                    addr: grpc_addr.clone(),
                    reason: format!("TLS set-up: {reason}"),
                })?;
                let incoming = tls_incoming(grpc, MAX_GRPC_CONNECTIONS, tokio_rustls::TlsAcceptor::from(cfg));
                Box::pin(grpc_router.serve_with_incoming_shutdown(incoming, stop_grpc))
            }
            None => Box::pin(
                grpc_router.serve_with_incoming_shutdown(limited_incoming(grpc, MAX_GRPC_CONNECTIONS), stop_grpc),
            ),
        };
        let data_dir = match (&self.data_dir, self.store.location()) {
            (Some(d), _) => d.clone(),
            (None, crate::store::Location::File(p)) => p.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
            (None, crate::store::Location::Postgres(_)) => crate::config::DEFAULT_DATA.into(),
        };
        let export_key = crate::export::ExportKey::load_or_create(&data_dir)
            .map_err(|reason| ServeError::Http { addr: http_addr.clone(), reason })?;
        let state = HttpState::new(self.store.clone(), self.metrics.clone(), Arc::new(export_key), self.policy.clone());
        // Stops with this function (its connection, and so its election, released).
        let _sequencer =
            crate::store::Sequencer::start(self.store.clone(), crate::http::head_signer(&state)).map_err(|e| {
                ServeError::Http { addr: http_addr.clone(), reason: format!("cannot start the sequencer: {e}") }
            })?;
        let app = router(state);
        let http_task = serve_http(http, app, self.http_tls.clone(), shutdown.clone());
        let shutdown_for_monitor_grace = shutdown_for_monitor.clone();
        let monitor = self.clone().watch_silence(shutdown_for_monitor.clone());
        tokio::spawn(self.clone().watch_location(shutdown_for_monitor.clone()));
        let reload = self.clone().watch_policy(shutdown_for_monitor);
        let all = async { tokio::join!(grpc_task, http_task, monitor, reload) };
        tokio::pin!(all);
        let mut stop = shutdown_for_monitor_grace;
        let grace = self.shutdown_grace;
        let (g, h, (), ()) = tokio::select! {
            r = &mut all => r,
            () = async { stopped(&mut stop).await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_s = grace.as_secs_f64(), streams = self.metrics.streams_active(), "shutdown grace passed with connections still open; stopping anyway (unacknowledged reports are resent by their agents)");
                revocations.abort();
                return Ok(());
            }
        };
        revocations.abort();
        info!("collector stopped");
        g.map_err(|e| ServeError::Grpc { addr: grpc_addr, reason: e.to_string() })?;
        h.map_err(|e| ServeError::Http { addr: http_addr, reason: e.to_string() })
    }
}

/// One HTTP/1.1 connection with the header-read timeout, drained on shutdown.
async fn serve_http_conn<IO>(
    io: IO,
    svc: hyper_util::service::TowerToHyperService<axum::Router>,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_DRAIN, conn).await;
        }
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone), holding no guard across the wait.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await.map(|_| ());
}

/// HTTP connections served at once; further clients wait in the listen queue.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// A request's headers, and the next request on an idle keep-alive connection, must arrive within
/// this; a client that sends half a request is cut off (slowloris).
pub const HTTP_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// On shutdown, how long open HTTP connections get to finish the request in hand.
pub const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `app` on `listener`: HTTP/1.1 (over TLS with `tls`), a header-read timeout, at most
/// [`MAX_HTTP_CONNECTIONS`] connections, until `shutdown` turns true.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: say so, back off, keep serving.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_http_conn(stream, svc, stop).await,
                Some(a) => {
                    let peer = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                    match tokio::time::timeout(HTTP_HEADER_TIMEOUT, a.accept(stream)).await {
                        Ok(Ok(tls)) => serve_http_conn(tls, svc, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, reason = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(HTTP_DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    Ok(())
}

//! Running the collector: gRPC ingest and the HTTP side on listeners handed in from outside (port 0 in
//! tests and the demo), until the shutdown signal.

use std::sync::{Arc, RwLock};

use gpuattest_proto::pb::collector_server::CollectorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

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
}

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

    /// A collector over a store and policy.
    pub fn new(store: Arc<Store>, policy: Policy) -> Self {
        Collector { store, policy: Arc::new(RwLock::new(policy)), metrics: Arc::new(Metrics::default()) }
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
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        let grpc_addr = grpc.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let http_addr = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(grpc = %grpc_addr, http = %http_addr, store = %self.store.path().display(), "collector serving");
        let ingest = Ingest::new(self.store.clone(), self.policy.clone(), self.metrics.clone());
        let svc = CollectorServer::new(ingest)
            .max_decoding_message_size(gpuattest_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(gpuattest_proto::MAX_MESSAGE_BYTES);
        let mut s1 = shutdown.clone();
        let shutdown_for_monitor = shutdown.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = tls {
            let mut cfg = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem));
            if let Some(ca) = &t.client_ca_pem {
                cfg = cfg
                    .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                    .client_auth_optional(!t.require_client_cert);
            }
            builder = builder
                .tls_config(cfg)
                .map_err(|e| ServeError::Grpc { addr: grpc_addr.clone(), reason: format!("TLS set-up: {e}") })?;
        }
        let grpc_task = builder
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
                let _ = s1.wait_for(|v| *v).await;
            });
        let data_dir = self.store.path().parent().map(std::path::Path::to_path_buf).unwrap_or_default();
        let export_key = crate::export::ExportKey::load_or_create(&data_dir)
            .map_err(|reason| ServeError::Http { addr: http_addr.clone(), reason })?;
        let app = router(HttpState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            export_key: Arc::new(export_key),
            policy: self.policy.clone(),
        });
        let http_task = axum::serve(http, app).with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        });
        let monitor = self.clone().watch_silence(shutdown_for_monitor);
        let (g, h, ()) = tokio::join!(grpc_task, http_task, monitor);
        g.map_err(|e| ServeError::Grpc { addr: grpc_addr, reason: e.to_string() })?;
        h.map_err(|e| ServeError::Http { addr: http_addr, reason: e.to_string() })
    }
}

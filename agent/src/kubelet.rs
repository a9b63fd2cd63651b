//! Optional Kubernetes enrichment: the kubelet's pod list turns a pod UID from a cgroup path into the
//! pod's namespace, name, labels, service account and owner. Off by default (`kubelet_url`).
//!
//! The kubelet is the node's own API server, but what it returns is written by tenants (names, labels),
//! so the body is bounded, parsed into fixed types, and trimmed: a label key or value beyond
//! Kubernetes' own limits, or labels beyond [`MAX_LABELS`], are dropped. The bearer token is read from
//! its file on every fetch (projected tokens rotate) and never logged. Plaintext `http://` is accepted
//! only to loopback (the read-only port), as for collectors.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Largest pod-list body read (a node with 250 pods answers with a few MB).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Labels kept per pod.
pub const MAX_LABELS: usize = 64;
/// Longest label key kept (Kubernetes: 253-character prefix, `/`, 63-character name).
pub const MAX_LABEL_KEY: usize = 317;
/// Longest label value kept (Kubernetes: 63).
pub const MAX_LABEL_VALUE: usize = 63;
/// A pod UID the cache does not know triggers a refresh at most this often.
pub const MISS_REFRESH: Duration = Duration::from_secs(5);
/// Connect, read and write timeout of one fetch.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What the kubelet says about one pod.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Labels (bounded, see the module docs).
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: Option<String>,
    /// The controlling owner, `Kind/name` (a Job, ReplicaSet, StatefulSet, PyTorchJob ...).
    pub owner: Option<String>,
}

/// Looks pods up by UID. The kubelet is one implementation; tests may pass a fixed map.
pub trait PodDirectory: Send {
    /// The pod with this UID, if the directory knows it.
    fn pod(&mut self, uid: &str) -> Option<PodInfo>;
}

/// Settings of the kubelet client.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// `https://127.0.0.1:10250/pods` (authenticated port) or `http://127.0.0.1:10255/pods`.
    pub url: String,
    /// Bearer token file (the agent's service-account token).
    pub token_file: Option<PathBuf>,
    /// CA that signed the kubelet's serving certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Accept any kubelet certificate (self-signed serving certificates); the connection is still
    /// encrypted, but not authenticated.
    pub insecure_skip_tls_verify: bool,
    /// How long a fetched pod list is used.
    pub refresh: Duration,
}

/// A kubelet pod-list client with a cache.
pub struct Kubelet {
    cfg: KubeletConfig,
    host: String,
    port: u16,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    pods: HashMap<String, PodInfo>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    /// The last fetch error, for `inspect` and the log.
    pub last_error: Option<String>,
}

impl Kubelet {
    /// Validates the URL and TLS settings; connects lazily.
    ///
    /// # Errors
    /// One line naming the setting that is wrong.
    pub fn new(cfg: KubeletConfig) -> Result<Kubelet, String> {
        let uri = crate::transport::check_address(&cfg.url).map_err(|e| format!("kubelet_url: {e}"))?;
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/pods", |p| p.as_str()).to_string();
        let tls = if https { Some(Arc::new(tls_config(&cfg)?)) } else { None };
        Ok(Kubelet {
            cfg,
            host,
            port,
            path,
            tls,
            pods: HashMap::new(),
            fetched_at: None,
            attempted_at: None,
            last_error: None,
        })
    }

    fn refresh(&mut self) {
        self.attempted_at = Some(Instant::now());
        match self.fetch().and_then(|body| parse_pod_list(&body)) {
            Ok(pods) => {
                self.pods = pods;
                self.fetched_at = Some(Instant::now());
                self.last_error = None;
            }
            Err(e) => {
                // Keep the last good list: a pod's namespace does not change while it runs.
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(kubelet = %self.cfg.url, "kubelet pod list: {e}");
                }
                self.last_error = Some(e);
            }
        }
    }

    fn fetch(&self) -> Result<Vec<u8>, String> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port))
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("cannot resolve {}", self.host))?;
        let tcp = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        let mut request = format!("GET {} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n", self.path, self.host);
        if let Some(f) = &self.cfg.token_file {
            let token = crate::files::read_bounded(f, 64 * 1024)
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("cannot read kubelet_token_file {}", f.display()))?;
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let raw = match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("kubelet host {}: {e}", self.host))?;
                let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
                exchange(rustls::StreamOwned::new(conn, tcp), request.as_bytes())?
            }
            None => exchange(tcp, request.as_bytes())?,
        };
        parse_response(&raw)
    }
}

impl PodDirectory for Kubelet {
    fn pod(&mut self, uid: &str) -> Option<PodInfo> {
        let stale = self.fetched_at.is_none_or(|t| t.elapsed() >= self.cfg.refresh);
        let may_retry = self.attempted_at.is_none_or(|t| t.elapsed() >= MISS_REFRESH);
        if (stale || !self.pods.contains_key(uid)) && may_retry {
            self.refresh();
        }
        self.pods.get(uid).cloned()
    }
}

/// Sends the request and reads the whole response (HTTP/1.0: the server closes when done), bounded.
fn exchange(mut s: impl Read + Write, request: &[u8]) -> Result<Vec<u8>, String> {
    s.write_all(request).and_then(|()| s.flush()).map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    let limit = (MAX_BODY_BYTES + 64 * 1024) as u64;
    match s.take(limit + 1).read_to_end(&mut raw) {
        Ok(_) => {}
        // Servers that close TLS without close_notify: what arrived is complete if it parses.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(format!("reading the response: {e}")),
    }
    if raw.len() as u64 > limit {
        return Err(format!("the response is larger than {MAX_BODY_BYTES} bytes"));
    }
    Ok(raw)
}

/// Splits an HTTP/1.x response into status and body; anything but 200 is an error naming the status.
///
/// # Errors
/// Malformed responses, non-200 statuses, chunked bodies that do not decode.
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header in the response")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the response header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).ok_or_else(|| format!("bad status line `{status}`"))?;
    match code {
        "200" => {}
        "401" | "403" => {
            return Err(format!(
                "the kubelet answered {code}: the token may not read pods (grant nodes/proxy get, or set kubelet_token_file)"
            ));
        }
        _ => return Err(format!("the kubelet answered `{}`", status.chars().take(80).collect::<String>())),
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = &raw[end + 4..];
    if chunked { dechunk(body) } else { Ok(body.to_vec()) }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = body.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&body[..nl]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| format!("bad chunk size `{}`", size_text.chars().take(20).collect::<String>()))?;
        body = &body[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > body.len() || out.len() + size > MAX_BODY_BYTES {
            return Err("truncated or oversized chunked body".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).ok_or("truncated chunked body")?;
    }
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "ownerReferences")]
    owners: Vec<Owner>,
}

#[derive(Deserialize)]
struct Owner {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Deserialize, Default)]
struct Spec {
    #[serde(default, rename = "serviceAccountName")]
    service_account: Option<String>,
}

fn bounded(s: &str, max: usize) -> Option<String> {
    (s.len() <= max && !s.chars().any(char::is_control)).then(|| s.to_string())
}

/// Parses a kubelet `/pods` body (a v1 PodList) into pods by UID.
///
/// # Errors
/// When the body is not a pod list.
pub fn parse_pod_list(body: &[u8]) -> Result<HashMap<String, PodInfo>, String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!("the pod list is larger than {MAX_BODY_BYTES} bytes"));
    }
    let list: PodList = serde_json::from_slice(body).map_err(|e| format!("not a pod list: {e}"))?;
    let mut pods = HashMap::new();
    for p in list.items {
        let m = p.metadata;
        let (Some(uid), Some(name), Some(namespace)) =
            (bounded(&m.uid, 64), bounded(&m.name, 253), bounded(&m.namespace, 63))
        else {
            continue;
        };
        if uid.is_empty() {
            continue;
        }
        let labels = m
            .labels
            .iter()
            .filter_map(|(k, v)| Some((bounded(k, MAX_LABEL_KEY)?, bounded(v, MAX_LABEL_VALUE)?)))
            .take(MAX_LABELS)
            .collect();
        let owner = m
            .owners
            .iter()
            .find(|o| o.controller)
            .or(m.owners.first())
            .and_then(|o| bounded(&format!("{}/{}", o.kind, o.name), 400));
        let service_account = p.spec.service_account.as_deref().and_then(|s| bounded(s, 253));
        pods.insert(uid.to_ascii_lowercase(), PodInfo { namespace, name, labels, service_account, owner });
    }
    Ok(pods)
}

fn tls_config(cfg: &KubeletConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if cfg.insecure_skip_tls_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let ca = cfg.ca.as_ref().ok_or(
        "kubelet_ca is needed for an https:// kubelet (the cluster CA, e.g. the service account's ca.crt), or set kubelet_insecure_skip_tls_verify",
    )?;
    let pem = crate::files::read_bounded(ca, 1024 * 1024)
        .ok_or_else(|| format!("cannot read kubelet_ca {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| format!("kubelet_ca {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("kubelet_ca {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("kubelet_ca {} holds no certificate", ca.display()));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any server certificate but still checks the handshake signature with it (so the peer holds
/// the key of the certificate it sent). Only with `kubelet_insecure_skip_tls_verify`.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"kind":"PodList","apiVersion":"v1","items":[
      {"metadata":{"name":"train-0","namespace":"team-a","uid":"2A7F3C1E-9b4d-4e8a-b6c5-0d1e2f3a4b5c",
        "labels":{"app":"llm-train","kueue.x-k8s.io/queue-name":"gpu"},
        "ownerReferences":[{"kind":"PyTorchJob","name":"llm-ft","controller":true}]},
       "spec":{"serviceAccountName":"trainer"}},
      {"metadata":{"name":"no-uid","namespace":"x"}},
      {"metadata":{"name":"evil","namespace":"x","uid":"u2","labels":{"ok":"1","bad":"line\nbreak"}}}
    ]}"#;

    #[test]
    fn pod_list_is_parsed_by_uid() {
        let pods = parse_pod_list(LIST.as_bytes()).expect("parse");
        assert_eq!(pods.len(), 2, "a pod without a uid is skipped");
        let p = &pods["2a7f3c1e-9b4d-4e8a-b6c5-0d1e2f3a4b5c"];
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("team-a", "train-0"));
        assert_eq!(p.service_account.as_deref(), Some("trainer"));
        assert_eq!(p.owner.as_deref(), Some("PyTorchJob/llm-ft"));
        assert_eq!(p.labels["kueue.x-k8s.io/queue-name"], "gpu");
        assert_eq!(pods["u2"].labels.len(), 1, "a label with a control character is dropped");
    }

    #[test]
    fn hostile_pod_lists_are_refused_or_trimmed() {
        assert!(parse_pod_list(b"not json").is_err());
        assert!(parse_pod_list(b"{\"items\": 5}").is_err());
        assert!(parse_pod_list(&vec![b'['; 100_000]).is_err(), "deep nesting is refused, not a stack overflow");
        assert!(parse_pod_list(&vec![b' '; MAX_BODY_BYTES + 1]).expect_err("huge").contains("larger"));
        let many: BTreeMap<String, String> = (0..500).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let long_value = "v".repeat(MAX_LABEL_VALUE + 1);
        let body = serde_json::json!({"items": [{"metadata": {"uid": "u", "name": "n", "namespace": "ns",
            "labels": many}}, {"metadata": {"uid": "w", "name": "n", "namespace": "ns", "labels": {"k": long_value}}}]});
        let pods = parse_pod_list(body.to_string().as_bytes()).expect("parse");
        assert_eq!(pods["u"].labels.len(), MAX_LABELS);
        assert!(pods["w"].labels.is_empty());
        let body =
            serde_json::json!({"items": [{"metadata": {"uid": "u", "name": "n".repeat(300), "namespace": "ns"}}]});
        assert!(parse_pod_list(body.to_string().as_bytes()).expect("parse").is_empty(), "over-long name skipped");
    }

    #[test]
    fn responses_are_checked_and_chunked_bodies_decoded() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").expect("ok"), b"{}");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("chunked"), b"{\"a\":1}");
        assert!(parse_response(b"HTTP/1.1 403 Forbidden\r\n\r\n").expect_err("403").contains("nodes/proxy"));
        assert!(parse_response(b"HTTP/1.1 500 Oops\r\n\r\n").expect_err("500").contains("500"));
        assert!(parse_response(b"garbage").is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nab";
        assert!(parse_response(bad).is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad).is_err());
    }

    #[test]
    fn configuration_errors_name_the_setting() {
        let cfg = |url: &str| KubeletConfig {
            url: url.into(),
            token_file: None,
            ca: None,
            insecure_skip_tls_verify: false,
            refresh: Duration::from_secs(30),
        };
        assert!(Kubelet::new(cfg("http://10.0.0.1:10255/pods")).err().expect("plaintext").contains("kubelet_url"));
        assert!(Kubelet::new(cfg("https://127.0.0.1:10250/pods")).err().expect("no ca").contains("kubelet_ca"));
        assert!(Kubelet::new(cfg("http://127.0.0.1:10255/pods")).is_ok());
        let mut insecure = cfg("https://127.0.0.1:10250/pods");
        insecure.insecure_skip_tls_verify = true;
        assert!(Kubelet::new(insecure).is_ok());
    }

    #[test]
    fn an_unreachable_kubelet_leaves_processes_unenriched_and_says_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut k = Kubelet::new(KubeletConfig {
            url: format!("http://127.0.0.1:{port}/pods"),
            token_file: None,
            ca: None,
            insecure_skip_tls_verify: false,
            refresh: Duration::from_secs(30),
        })
        .expect("config");
        assert_eq!(k.pod("u"), None);
        assert!(k.last_error.as_deref().is_some_and(|e| e.contains("connect")), "{:?}", k.last_error);
    }
}

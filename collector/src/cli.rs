//! The commands behind the thin `gpuattest-collector` binary. Each returns `Ok` or a [`CliError`]
//! carrying the exit code: 64 usage, 78 configuration, 1 runtime failure.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::Policy;
use crate::server::Collector;
use crate::store::Store;
use crate::{demo, render, tokens};

/// A failed command: one line for stderr, and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// The line.
    pub message: String,
}

/// Usage error (64).
pub fn usage(m: impl std::fmt::Display) -> CliError {
    CliError { code: 64, message: m.to_string() }
}

/// Configuration error (78).
pub fn config(m: impl std::fmt::Display) -> CliError {
    CliError { code: 78, message: m.to_string() }
}

/// Runtime failure (1).
pub fn runtime(m: impl std::fmt::Display) -> CliError {
    CliError { code: 1, message: m.to_string() }
}

type Result<T = ()> = std::result::Result<T, CliError>;

/// Writes to stdout; a closed pipe (`... | head`) ends the output quietly instead of panicking.
fn out(text: &str) -> Result {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(runtime(format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result {
    out(&format!("{}\n", serde_json::to_string_pretty(v).map_err(runtime)?))
}

fn open(data: &Path) -> Result<Arc<Store>> {
    Store::open(data).map(Arc::new).map_err(config)
}

fn runtime_rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(runtime)
}

/// Refuses `--database` until the shared store exists, in one line that says what to do.
///
/// # Errors
/// Always a configuration error when `database` is set.
pub fn check_database(database: Option<&str>) -> Result {
    match database {
        None => Ok(()),
        Some(db) => Err(config(format!(
            "--database {}://...: the PostgreSQL store is not in this build yet; omit --database to use the embedded store in --data",
            db.split("://").next().unwrap_or("")
        ))),
    }
}

/// `token create`.
///
/// # Errors
/// Usage errors for a bad `--ttl` or a customer token without a tenant.
pub fn token_create(data: &Path, role: tokens::Role, tenant: Option<&str>, ttl: Option<&str>, json: bool) -> Result {
    let ttl = ttl.map(gpuattest_proto::units::parse_duration).transpose().map_err(|e| usage(format!("--ttl: {e}")))?;
    let store = open(data)?;
    let t = tokens::mint(&store, role, tenant, ttl, "cli", crate::now_ms()).map_err(usage)?;
    if json {
        print_json(&serde_json::json!({"token": t, "role": role.as_str(), "tenant": tenant}))
    } else {
        out(&format!("{t}\n"))
    }
}

/// `hosts list`.
///
/// # Errors
/// When the store cannot be read.
pub fn hosts_list(data: &Path, json: bool) -> Result {
    let h = open(data)?.hosts(None).map_err(runtime)?;
    if json {
        return print_json(&h);
    }
    out(&render::hosts(&h))
}

/// `hosts revoke HOST_ID --reason TEXT`: refuse the host's reports and streams from now on.
///
/// # Errors
/// When there is no such (unrevoked) host.
pub fn hosts_revoke(data: &Path, host_id: &str, reason: &str) -> Result {
    if reason.trim().is_empty() {
        return Err(usage("--reason is required: say why the host is revoked"));
    }
    if open(data)?.revoke_host(host_id, "cli", reason, crate::now_ms()).map_err(runtime)? {
        out(&format!("host {host_id} revoked\n"))
    } else {
        Err(usage(format!("no enrolled, unrevoked host {host_id}; see `hosts list`")))
    }
}

/// `flags list`.
///
/// # Errors
/// When the store cannot be read.
pub fn flags_list(data: &Path, json: bool) -> Result {
    let f = open(data)?.flags(None).map_err(runtime)?;
    if json {
        return print_json(&f);
    }
    out(&render::flags(&f))
}

/// `reports verify`: exit 1 when any stored report fails.
///
/// # Errors
/// When the store cannot be read, or any report fails verification.
pub fn reports_verify(data: &Path, json: bool) -> Result {
    let v = open(data)?.verify_all().map_err(runtime)?;
    if json {
        print_json(&v)?;
    } else {
        let mut text = format!(
            "{} reports checked: {} valid, {} invalid, {} chain breaks\n",
            v.checked,
            v.valid,
            v.invalid.len(),
            v.chain_breaks
        );
        for i in &v.invalid {
            text.push_str(&format!("  {} seq {}: {}\n", i.host_id, i.seq, i.reason));
        }
        out(&text)?;
    }
    if v.invalid.is_empty() && v.chain_breaks == 0 {
        Ok(())
    } else {
        Err(runtime(format!("{} stored reports failed verification, {} chain breaks", v.invalid.len(), v.chain_breaks)))
    }
}

/// TLS options of `serve`.
#[derive(Debug, Default, Clone)]
pub struct TlsArgs {
    /// Server certificate (PEM).
    pub cert: Option<std::path::PathBuf>,
    /// Server key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// Client CA (PEM) for mTLS.
    pub client_ca: Option<std::path::PathBuf>,
    /// Refuse agents without a client certificate.
    pub require_client_cert: bool,
}

fn read_pem(p: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(p).map_err(|e| config(format!("{}: {e}", p.display())))?;
    if bytes.len() > 1 << 20 || !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(config(format!("{} is not a PEM file of at most 1 MiB", p.display())));
    }
    Ok(bytes)
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback()) || addr.starts_with("localhost:")
}

fn grpc_tls(grpc_listen: &str, t: &TlsArgs) -> Result<Option<crate::server::GrpcTls>> {
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Ok(Some(crate::server::GrpcTls {
            cert_pem: read_pem(c)?,
            key_pem: read_pem(k)?,
            client_ca_pem: t.client_ca.as_deref().map(read_pem).transpose()?,
            require_client_cert: t.require_client_cert,
        })),
        (None, None) if t.client_ca.is_some() || t.require_client_cert => {
            Err(config("--client-ca and --require-client-cert need --tls-cert and --tls-key"))
        }
        (None, None) if !is_loopback(grpc_listen) => Err(config(format!(
            "refusing plaintext gRPC on {grpc_listen}: agents off this host need TLS; pass --tls-cert and --tls-key, or listen on 127.0.0.1"
        ))),
        (None, None) => Ok(None),
        _ => Err(config("--tls-cert and --tls-key go together")),
    }
}

/// `serve`: prints `listening grpc=ADDR http=ADDR` on stdout once both listeners are bound.
///
/// # Errors
/// Configuration errors for the store, policy or TLS material; runtime errors for listeners and
/// servers.
pub fn serve(data: &Path, grpc_listen: &str, http_listen: &str, tls: &TlsArgs, check_config: bool) -> Result {
    let store = open(data)?;
    let policy = Policy::load_from_data(data).map_err(config)?;
    let tls = grpc_tls(grpc_listen, tls)?;
    if check_config {
        println!("configuration is valid (store {}, policy {})", store.path().display(), policy.digest());
        return Ok(());
    }
    runtime_rt()?.block_on(async move {
        let grpc = tokio::net::TcpListener::bind(grpc_listen)
            .await
            .map_err(|e| runtime(format!("cannot listen on {grpc_listen} (gRPC): {e}")))?;
        let http = tokio::net::TcpListener::bind(http_listen)
            .await
            .map_err(|e| runtime(format!("cannot listen on {http_listen} (HTTP): {e}")))?;
        let addr = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!("listening grpc={} http={}", addr(&grpc), addr(&http));
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::logging::shutdown_signal().await;
            let _ = tx.send(true);
        });
        Collector::new(store, policy).serve(grpc, http, tls.as_ref(), rx).await.map_err(runtime)
    })
}

/// `demo`.
///
/// # Errors
/// Usage errors for a bad interval; runtime errors from the demo.
pub fn demo(data: &Path, seconds: Option<u64>, http_listen: String, interval: &str) -> Result {
    let interval = match gpuattest_proto::units::parse_duration(interval) {
        Ok(i) if !i.is_zero() => i,
        Ok(_) => return Err(usage("--interval must be more than 0")),
        Err(e) => return Err(usage(format!("--interval: {e}"))),
    };
    let opts = demo::DemoOptions {
        data: data.to_path_buf(),
        duration: seconds.map(Duration::from_secs),
        http_listen,
        interval,
    };
    runtime_rt()?.block_on(demo::run(opts)).map_err(runtime)
}

//! The commands behind the thin `gpuattest-collector` binary. Each returns `Ok` or a [`CliError`]
//! carrying the exit code: 64 usage, 78 configuration, 1 runtime failure.

use std::path::Path;
use std::sync::Arc;

use crate::policy::Policy;
use crate::server::Collector;
use crate::store::Store;
use crate::{render, tokens};

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

pub mod evidence;
pub mod location;
mod records;
mod screen;

pub use evidence::attestation_verify;
pub use records::{ExportArgs, backup, export, export_key, log_consistency, log_head, log_verify_consistency, verify};
pub use screen::{evaluate_model, screen_bench, screen_check};

/// A command's outcome: its exit code and line on failure.
pub type Result<T = ()> = std::result::Result<T, CliError>;

/// Writes to stdout; a closed pipe (`... | head`) ends the output quietly instead of panicking.
pub fn out(text: &str) -> Result {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(runtime(format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

/// Prints one JSON document on stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result {
    out(&format!("{}\n", serde_json::to_string_pretty(v).map_err(runtime)?))
}

/// Where a command finds its store and files: `--data` (keys, policy, the embedded store) and, for the
/// shared store, `--database`.
#[derive(Debug, Clone)]
pub struct Place {
    /// `--data`.
    pub data: std::path::PathBuf,
    /// `--database` (a `postgres://` URL), else the embedded store in `data`.
    pub database: Option<String>,
    /// `--data` (or `GPUATTEST_DATA`) was given; otherwise `data` is the default `./gpuattest-data`,
    /// and a command other than `serve` and `demo` refuses to create a store there.
    pub data_given: bool,
}

fn open(at: &Place) -> Result<Arc<Store>> {
    if !at.data_given && at.database.is_none() && !at.data.join("gpuattest.db").exists() {
        return Err(config(format!(
            "no store in {}: pass --data DIR (env GPUATTEST_DATA), the collector's data directory, or --database URL",
            at.data.display()
        )));
    }
    Store::open_at(&at.data, at.database.as_deref()).map(Arc::new).map_err(config)
}

/// A multi-threaded runtime for one command.
pub fn runtime_rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(runtime)
}

/// `token create`.
///
/// # Errors
/// Usage errors for a bad `--ttl` or a customer token without a tenant.
pub fn token_create(
    at: &Place,
    role: tokens::Role,
    tenant: Option<&str>,
    ttl: Option<&str>,
    uses: u32,
    site: Option<crate::store::Site>,
    json: bool,
) -> Result {
    if site.is_some() && role != tokens::Role::Enroll {
        return Err(usage("--site-lat/--site-lon belong to enroll tokens: the hosts they enroll are registered there"));
    }
    let ttl = ttl.map(gpuattest_proto::units::parse_duration).transpose().map_err(|e| usage(format!("--ttl: {e}")))?;
    let store = open(at)?;
    // Where the policy names a tenant file, a token is only for a tenant in it (a typo would mint
    // credentials for a tenant no screening or mapping knows).
    if let Some(t) = tenant {
        let source = crate::policy::PolicySource { path: at.data.join("policy.toml"), explicit: false };
        if let Ok(policy) = source.load()
            && policy.knows_tenant(t) == Some(false)
        {
            return Err(usage(format!(
                "--tenant {t:?} is not in the policy's tenant file; add it there first (or check the spelling)"
            )));
        }
    }
    let t = tokens::mint(&store, role, tenant, ttl, uses, "cli", crate::now_ms()).map_err(usage)?;
    let id = gpuattest_proto::hex(&tokens::hash(&t)[..6]);
    if let Some(site) = &site {
        store.set_token_site(&id, site).map_err(|e| usage(e.to_string()))?;
    }
    if json {
        print_json(
            &serde_json::json!({"token": t, "id": id, "role": role.as_str(), "tenant": tenant, "max_uses": uses}),
        )
    } else {
        out(&format!("{t}\n"))
    }
}

/// `token list`: every token's id, role, tenant, lifetime and use (never the token or its hash).
///
/// # Errors
/// Configuration errors for the store.
pub fn token_list(at: &Place, json: bool) -> Result {
    let tokens = open(at)?.tokens().map_err(runtime)?;
    if json {
        return print_json(&tokens);
    }
    let mut text = String::from("ID            ROLE      TENANT            EXPIRES                   USES  STATE\n");
    for t in &tokens {
        text.push_str(&format!(
            "{:<13} {:<9} {:<17} {:<25} {:>2}/{:<2} {}\n",
            t.id,
            t.role,
            t.tenant.as_deref().unwrap_or("-"),
            t.expires_at,
            t.uses,
            t.max_uses,
            if t.revoked_at.is_some() { "revoked" } else { "live" }
        ));
    }
    out(&text)
}

/// `token revoke ID`: the token (by the id `token create --json` printed) stops working at once.
///
/// # Errors
/// Usage error when there is no such live token.
pub fn token_revoke(at: &Place, id: &str) -> Result {
    if open(at)?.revoke_token(id, "cli", crate::now_ms()).map_err(runtime)? {
        out(&format!("token {id} revoked\n"))
    } else {
        Err(usage(format!("no live token with id {id}")))
    }
}

/// `hosts list`.
///
/// # Errors
/// When the store cannot be read.
pub fn hosts_list(at: &Place, json: bool) -> Result {
    let store = open(at)?;
    let mut h = store.hosts(None).map_err(runtime)?;
    let policy = crate::policy::PolicySource { path: at.data.join("policy.toml"), explicit: false }
        .load()
        .unwrap_or_else(|_| crate::policy::Policy::builtin());
    crate::location::annotate_hosts(&store, policy.location(), &mut h, crate::now_ms()).map_err(runtime)?;
    if json {
        return print_json(&h);
    }
    out(&render::hosts(&h))
}

/// `hosts revoke HOST_ID --reason TEXT`: refuse the host's reports and streams from now on.
///
/// # Errors
/// When there is no such (unrevoked) host.
pub fn hosts_revoke(at: &Place, host_id: &str, reason: &str) -> Result {
    if reason.trim().is_empty() {
        return Err(usage("--reason is required: say why the host is revoked"));
    }
    if open(at)?.revoke_host(host_id, "cli", reason, crate::now_ms()).map_err(runtime)? {
        out(&format!("host {host_id} revoked\n"))
    } else {
        Err(usage(format!("no enrolled, unrevoked host {host_id}; see `hosts list`")))
    }
}

/// `flags list`.
///
/// # Errors
/// When the store cannot be read.
pub fn flags_list(at: &Place, json: bool) -> Result {
    let f = open(at)?.flags(None).map_err(runtime)?;
    if json {
        return print_json(&f);
    }
    out(&render::flags(&f))
}

/// `jobs list`: jobs across hosts with their verdict and compute, operation estimates at the policy's
/// assumed efficiency.
///
/// # Errors
/// When the store or policy cannot be read.
pub fn jobs_list(at: &Place, tenant: Option<&str>, limit: usize, json: bool) -> Result {
    let policy = Policy::load_from_data(&at.data).map_err(config)?;
    let jobs: Vec<_> =
        open(at)?.jobs(tenant, limit).map_err(runtime)?.into_iter().map(|j| policy.estimate(j)).collect();
    if json {
        return print_json(&jobs);
    }
    out(&render::jobs(&jobs))
}

/// `jobs show KEY`.
///
/// # Errors
/// Usage error for an unknown job.
pub fn jobs_show(at: &Place, key: &str, json: bool) -> Result {
    let policy = Policy::load_from_data(&at.data).map_err(config)?;
    let Some(j) = open(at)?.job(key).map_err(runtime)? else {
        return Err(usage(format!("no job {key}; `gpuattest-collector jobs list` shows the jobs")));
    };
    let j = policy.estimate(j);
    if json {
        return print_json(&j);
    }
    out(&render::job(&j))
}

/// `audit`: the audit log, newest first.
///
/// # Errors
/// When the store cannot be read.
pub fn audit(at: &Place, limit: u32, json: bool) -> Result {
    let rows = open(at)?.audit_log(limit).map_err(runtime)?;
    if json {
        return print_json(&rows);
    }
    let mut s = String::new();
    for a in &rows {
        s.push_str(&format!("{}  {:<14} {:<24} {:<20} {}\n", a.at, a.actor, a.action, a.target, a.detail));
    }
    out(if s.is_empty() { "the audit log is empty\n" } else { &s })
}

/// `policy reevaluate`.
///
/// # Errors
/// Configuration errors for the policy; usage errors for `--since`; runtime errors for the store.
pub fn policy_reevaluate(at: &Place, policy: Option<&Path>, since: Option<&str>, json: bool) -> Result {
    let source = crate::policy::PolicySource {
        path: policy.map_or_else(|| at.data.join("policy.toml"), Path::to_path_buf),
        explicit: policy.is_some(),
    };
    let policy = source.load().map_err(config)?;
    let now = crate::now_ms();
    let since = since
        .map(|s| crate::export::statement::parse_time(s, now))
        .transpose()
        .map_err(|e| usage(format!("--since: {e}")))?
        .unwrap_or(0);
    let o = crate::reevaluate::run(&*open(at)?, &policy, since, now).map_err(runtime)?;
    if json {
        return print_json(&o);
    }
    out(&format!(
        "re-evaluated {} reports under policy {}: {} flags raised or updated, {} open flags no longer raised{}\n",
        o.reports,
        o.policy_digest,
        o.raised_or_updated,
        o.no_longer_raised.len(),
        if o.no_longer_raised.is_empty() {
            String::new()
        } else {
            format!(" (ids {:?}; marked, not closed: a reviewer decides)", o.no_longer_raised)
        }
    ))
}

/// `reports verify`: exit 1 when any stored report fails.
///
/// # Errors
/// When the store cannot be read, or any report fails verification.
pub fn reports_verify(at: &Place, json: bool) -> Result {
    let v = open(at)?.verify_all().map_err(runtime)?;
    if json {
        print_json(&v)?;
    } else {
        let mut text = format!(
            "{} reports checked: {} valid, {} invalid, {} chain breaks; transparency log: {} sequenced, {} not yet sequenced{}\n",
            v.checked,
            v.valid,
            v.invalid.len(),
            v.chain_breaks,
            v.sequenced,
            v.unsequenced,
            if v.unlogged > 0 { format!(", {} missing from the log", v.unlogged) } else { String::new() }
        );
        for i in &v.invalid {
            text.push_str(&format!("  {} seq {}: {}\n", i.host_id, i.seq, i.reason));
        }
        out(&text)?;
    }
    if v.invalid.is_empty() && v.chain_breaks == 0 && v.unlogged == 0 {
        Ok(())
    } else {
        Err(runtime(format!(
            "{} stored reports failed verification, {} chain breaks, {} missing from the transparency log",
            v.invalid.len(),
            v.chain_breaks,
            v.unlogged
        )))
    }
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback()) || addr.starts_with("localhost:")
}

fn grpc_tls(grpc_listen: &str, t: &crate::config::TlsConfig) -> Result<Option<crate::server::GrpcTls>> {
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => {
            let tls = crate::server::GrpcTls {
                cert_pem: read_pem(c)?,
                key_pem: read_pem(k)?,
                client_ca_pem: t.client_ca.as_deref().map(read_pem).transpose()?,
                require_client_cert: t.require_client_cert,
            };
            // Checked now, so --check-config and a start both fail with the reason (exit 78).
            tls.server_config().map_err(config)?;
            Ok(Some(tls))
        }
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

/// `serve`: prints `listening grpc=ADDR http=ADDR` on stdout once both listeners are bound. With
/// `check_config`, validates the file, store, policy and TLS material and exits.
///
/// # Errors
/// Configuration errors for the file, store, policy or TLS material; runtime errors for listeners
/// and servers.
pub fn serve(flags: crate::config::ServeFlags, config_file: Option<&Path>, check_config: bool) -> Result {
    let file = config_file.map(crate::config::FileConfig::load).transpose().map_err(config)?;
    let s = crate::config::ServeSettings::merge(flags, file).map_err(config)?;
    let source = crate::policy::PolicySource {
        path: s.policy.clone().unwrap_or_else(|| s.data.join("policy.toml")),
        explicit: s.policy.is_some(),
    };
    let policy = source.load().map_err(config)?;
    let tls = grpc_tls(&s.grpc_listen, &s.tls)?;
    let http_tls = match &s.http_tls {
        Some((c, k)) => Some(crate::server::http_tls_config(&read_pem(c)?, &read_pem(k)?).map_err(config)?),
        None => {
            if !is_loopback(&s.http_listen) {
                tracing::warn!(listen = %s.http_listen, "the review UI and API are served without TLS off loopback; bearer tokens cross the network in the clear unless a TLS proxy fronts this listener (--http-tls-cert/--http-tls-key)");
            }
            None
        }
    };
    // A check creates nothing: with no embedded store yet, it checks that one can be created.
    if check_config && s.database.is_none() && !s.data.join("gpuattest.db").exists() {
        let mut dir = s.data.as_path();
        while !dir.exists() {
            dir = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        }
        let meta = std::fs::metadata(dir).map_err(|e| config(format!("{}: {e}", dir.display())))?;
        if !meta.is_dir() || meta.permissions().readonly() {
            return Err(config(format!(
                "--data {}: {} is not a writable directory, so the store cannot be created",
                s.data.display(),
                dir.display()
            )));
        }
        println!(
            "configuration is valid (no store yet: {} is created at the first start; policy {})",
            s.data.join("gpuattest.db").display(),
            policy.digest()
        );
        return Ok(());
    }
    let store = open(&Place { data: s.data.clone(), database: s.database.clone(), data_given: true })?;
    if check_config {
        println!("configuration is valid (store {}, policy {})", store.location(), policy.digest());
        return Ok(());
    }
    let (grpc_listen, http_listen) = (s.grpc_listen, s.http_listen);
    runtime_rt()?.block_on(async move {
        let grpc = tokio::net::TcpListener::bind(&grpc_listen)
            .await
            .map_err(|e| runtime(format!("cannot listen on {grpc_listen} (gRPC): {e}")))?;
        let http = tokio::net::TcpListener::bind(&http_listen)
            .await
            .map_err(|e| runtime(format!("cannot listen on {http_listen} (HTTP): {e}")))?;
        let addr = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        // The contract's start-up line on stdout (tests and scripts read the ports from it); in JSON
        // mode it is a JSON object like every other line.
        if crate::logging::json_mode() {
            println!("{}", serde_json::json!({"level": "INFO", "fields": {"message": "listening", "grpc": addr(&grpc), "http": addr(&http)}, "target": "gpuattest_collector"}));
        } else {
            println!("listening grpc={} http={}", addr(&grpc), addr(&http));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::logging::shutdown_signal().await;
            let _ = tx.send(true);
        });
        Collector::new(store, policy)
            .with_policy_source(source)
            .with_data_dir(s.data.clone())
            .with_shutdown_grace(s.shutdown_grace)
            .with_http_tls_opt(http_tls)
            .serve(grpc, http, tls.as_ref(), rx)
            .await
            .map_err(runtime)
    })
}

/// `flags show ID`: one flag with its evidence and the audit trail of decisions on it.
///
/// # Errors
/// Usage error when there is no such flag.
pub fn flags_show(at: &Place, id: i64, json: bool) -> Result {
    let store = open(at)?;
    let flag =
        store.flag(id, None).map_err(runtime)?.ok_or_else(|| usage(format!("no flag {id}; see `flags list`")))?;
    let decisions: Vec<crate::store::AuditRow> = store
        .flag_history(id)
        .map_err(runtime)?
        .into_iter()
        .filter(|a| matches!(a.action.as_str(), "flag.confirmed" | "flag.dismissed" | "flag.escalated"))
        .collect();
    if json {
        return print_json(&serde_json::json!({"flag": flag, "decisions": decisions}));
    }
    let mut text = format!(
        "flag {}  {}  {}  {}\nhost    {}\ntenant  {}\njob     {}\nseen    {} .. {} ({} reports, seq {}..{})\npolicy  {}\n\n{}\n\nevidence:\n{}\n",
        flag.id,
        flag.severity.to_uppercase(),
        flag.rule,
        flag.status,
        flag.host_id,
        flag.tenant.as_deref().unwrap_or("-"),
        flag.job,
        flag.created_at,
        flag.updated_at,
        flag.occurrences,
        flag.first_seq,
        flag.last_seq,
        flag.policy_digest,
        flag.summary,
        serde_json::to_string_pretty(&flag.evidence).unwrap_or_default()
    );
    for d in decisions.iter().rev() {
        text.push_str(&format!("decision {}  {}  by {}: {}\n", d.at, d.action, d.actor, d.detail));
    }
    out(&text)
}

/// `flags decide ID --decision confirm|dismiss|escalate --reason TEXT`, audited as the CLI.
///
/// # Errors
/// Usage errors for an unknown decision, an empty reason, or no such flag.
pub fn flags_decide(at: &Place, id: i64, decision: &str, reason: &str) -> Result {
    let status = match decision {
        "confirm" => "confirmed",
        "dismiss" => "dismissed",
        "escalate" => "escalated",
        other => return Err(usage(format!("--decision {other:?}: use confirm, dismiss or escalate"))),
    };
    if reason.trim().is_empty() || reason.len() > 4096 {
        return Err(usage("--reason is required (1 to 4096 characters)"));
    }
    match open(at)?.decide_flag(id, status, "cli", reason.trim(), crate::now_ms()).map_err(runtime)? {
        Some(()) => out(&format!("flag {id} {status}\n")),
        None => Err(usage(format!("no flag {id}; see `flags list`"))),
    }
}

fn read_pem(p: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(p).map_err(|e| config(format!("{}: {e}", p.display())))?;
    if bytes.len() > 1 << 20 || !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(config(format!("{} is not a PEM file of at most 1 MiB", p.display())));
    }
    Ok(bytes)
}

fn read_bounded_text(p: &Path, what: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(p).map_err(|e| usage(format!("{what} {}: {e}", p.display())))?;
    if meta.len() > crate::export::MAX_EXPORT_BYTES {
        return Err(usage(format!("{what} {} is larger than {} bytes", p.display(), crate::export::MAX_EXPORT_BYTES)));
    }
    std::fs::read(p).map_err(|e| usage(format!("{what} {}: {e}", p.display())))
}

//! The store: hosts, tokens, signed reports (verbatim, beside their decoded fields), flags and the audit
//! log. The embedded default is SQLite in `--data DIR`; `--database postgres://...` shares one PostgreSQL
//! database between collector replicas. Both have the same versioned, append-only migrations (one file
//! per version and backend) and run the same SQL through [`db::Db`].
//!
//! Every write that belongs together happens in one transaction: a report, its decoded rows, the host's
//! new sequence position and the flags it raised commit together or not at all, so a rejected or failed
//! report never changes what is stored.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gpuattest_proto::pb;
use serde::Serialize;

use crate::timefmt::rfc3339;
use crate::verify::SigningKey;

pub mod db;
mod evidence;
mod group;
mod jobs;
mod location;
pub mod pgtls;
mod review;
pub mod scratch;
pub use evidence::{GpuEvidenceState, HostEvidence, MovedDevice};
pub use group::{GroupCommitter, MAX_BATCH};
pub use jobs::{CommitContext, MovedGpu};
pub use location::{LandmarkRow, Measurement, Site};
pub use review::{ReportCheck, ReportRef, TimelinePoint};

use db::{Db, DbError, Row, params};

/// The migrations, in order, for SQLite. Never edit a shipped one; append.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("migration2.sql"),
    include_str!("migration3.sql"),
    include_str!("migration4.sql"),
    include_str!("migration5.sql"),
    include_str!("migration6.sql"),
    include_str!("migration7.sql"),
    include_str!("migration8.sql"),
];

/// The same migrations for PostgreSQL: the same tables, columns and keys, in its types.
const PG_MIGRATIONS: &[&str] = &[
    include_str!("pg/schema.sql"),
    include_str!("pg/migration2.sql"),
    include_str!("pg/migration3.sql"),
    include_str!("pg/migration4.sql"),
    include_str!("pg/migration5.sql"),
    include_str!("pg/migration6.sql"),
    include_str!("pg/migration7.sql"),
    include_str!("pg/migration8.sql"),
];

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the store at {path}: {source}; check --data (env GPUATTEST_DATA) and its permissions")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The backend's error.
        source: DbError,
    },
    /// The shared database could not be reached.
    #[error(
        "cannot connect to the shared store {url}: {source}; check --database (env GPUATTEST_DATABASE), that PostgreSQL is up and that the user may connect"
    )]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The backend's error.
        source: DbError,
    },
    /// The `--database` URL is not one this build takes.
    #[error("--database {url}: {reason}")]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The database was written by a newer gpuattest.
    #[error(
        "the store at {path} has schema version {found}, newer than this collector knows ({known}); upgrade gpuattest-collector"
    )]
    TooNew {
        /// The database path or URL.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A query failed.
    #[error("store: {what}: {source}")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The backend's error.
        source: DbError,
    },
    /// An enrollment was refused.
    #[error("{0}")]
    Refused(String),
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn sql(what: &'static str) -> impl FnOnce(DbError) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

impl From<DbError> for StoreError {
    fn from(source: DbError) -> Self {
        StoreError::Sql { what: "store", source }
    }
}

/// A token to insert (only its hash is kept).
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Short public id.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// `enroll`, `reviewer`, `operator`, `customer`.
    pub role: String,
    /// Tenant binding.
    pub tenant: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// Who minted it.
    pub created_by: String,
    /// How many hosts an enroll token may enroll (1 for every other role).
    pub max_uses: u32,
}

/// A stored token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    /// Short public id.
    pub id: String,
    /// Role.
    pub role: String,
    /// Tenant binding.
    pub tenant: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms of the last enrollment made with it.
    pub used_at: Option<i64>,
    /// Enrollments made with it.
    pub uses: i64,
    /// Enrollments it allows.
    pub max_uses: i64,
    /// Unix ms, for revoked tokens.
    pub revoked_at: Option<i64>,
}

/// What `token list` shows of a token (never its hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    /// Short public id (for `token revoke`).
    pub id: String,
    /// Role.
    pub role: String,
    /// Tenant binding.
    pub tenant: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Last enrollment made with it, RFC 3339.
    pub last_used_at: Option<String>,
    /// RFC 3339, for revoked tokens.
    pub revoked_at: Option<String>,
    /// Enrollments made with it.
    pub uses: u64,
    /// Enrollments it allows.
    pub max_uses: u64,
    /// Who minted it.
    pub created_by: String,
}

/// An enrolled host.
#[derive(Debug, Clone)]
pub struct HostRow {
    /// Host id.
    pub host_id: String,
    /// Hostname at enrollment.
    pub hostname: String,
    /// Tenant the host serves.
    pub tenant: Option<String>,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// SHA-256 of the key.
    pub key_id: Vec<u8>,
    /// Highest stored sequence number.
    pub last_seq: u64,
    /// Revoked at (Unix ms).
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// SHA-256 of the public key of the client certificate it enrolled with (mTLS), if any.
    pub client_key: Option<Vec<u8>>,
}

/// One host on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGauge {
    /// Host id.
    pub host_id: String,
    /// Tenant it was enrolled for.
    pub tenant: Option<String>,
    /// When its last stored report arrived, Unix ms.
    pub last_report_ms: Option<i64>,
    /// Sequence numbers missing and not covered by a signed gap record.
    pub gaps: u64,
}

/// What `hosts list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    /// Host id.
    pub host_id: String,
    /// Hostname.
    pub hostname: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Highest stored sequence number.
    pub last_seq: u64,
    /// Distinct reports stored.
    pub reports: u64,
    /// Sequence numbers between 1 and `last_seq` with no stored report that no signed gap record
    /// accounts for: unexplained loss.
    pub gaps: u64,
    /// Missing sequence numbers the agent accounted for with signed gap records (spool overflow or
    /// damage).
    pub recorded_gaps: u64,
    /// Last report received (RFC 3339).
    pub last_seen: Option<String>,
    /// Enrolled at (RFC 3339).
    pub enrolled_at: String,
    /// Revoked.
    pub revoked: bool,
    /// Each GPU's attestation evidence state (filled by `hosts list` and the hosts API).
    pub gpu_evidence: Vec<GpuEvidenceState>,
    /// The location verdict (filled by `hosts list` and the hosts API).
    pub location: Option<serde_json::Value>,
}

/// A verified, decoded report to commit.
#[derive(Debug)]
pub struct IncomingReport<'a> {
    /// The verified signed report (its `report` bytes are stored verbatim).
    pub signed: &'a pb::SignedReport,
    /// The decoded report.
    pub decoded: &'a pb::UsageReport,
    /// Unix ms.
    pub received_at: i64,
    /// The report carries a nonce this collector issued on the live stream.
    pub nonce_fresh: bool,
    /// The tenant of each process (index-aligned with `decoded.processes`) under the policy's mapping;
    /// missing entries fall back to the host's tenant.
    pub process_tenants: &'a [Option<String>],
    /// The policy re-opens a decided flag on any new occurrence (not only on evidence of a new kind).
    pub reopen_decided: bool,
    /// Each GPU's attestation evidence, checked before the commit.
    pub evidence: &'a [crate::evidence::GpuEvidence],
}

/// The policy's judgement of a report, run inside its commit.
/// It may run twice: when a batch falls back to committing each report in its own savepoint.
pub type FlagsFor = Box<dyn Fn(&pb::UsageReport, &ChainPosition, &CommitContext) -> Vec<NewFlag> + Send>;

/// A verified report waiting for a group commit: owned, so it can cross to the committing thread.
pub struct PendingCommit {
    /// Host.
    pub host_id: String,
    /// The signed report (bytes stored verbatim).
    pub signed: pb::SignedReport,
    /// Its decoding.
    pub decoded: pb::UsageReport,
    /// Unix ms.
    pub received_at: i64,
    /// Carries this stream's nonce.
    pub nonce_fresh: bool,
    /// Tenant per process.
    pub process_tenants: Vec<Option<String>>,
    /// See [`IncomingReport::reopen_decided`].
    pub reopen_decided: bool,
    /// See [`IncomingReport::evidence`].
    pub evidence: Vec<crate::evidence::GpuEvidence>,
    /// The policy's flags for it.
    pub flags_for: FlagsFor,
}

/// Where the host's chain stood when a report arrived, for integrity rules.
#[derive(Debug, Clone)]
pub struct ChainPosition {
    /// Highest sequence number stored before this report.
    pub last_seq: u64,
    /// SHA-256 of that report's bytes.
    pub last_hash: Option<Vec<u8>>,
}

/// The outcome of committing a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Stored; the flags raised are counted.
    Stored {
        /// Flags inserted or updated.
        flags: usize,
    },
    /// This (host, seq) is already stored: a replay.
    Duplicate,
    /// The sequence number is behind the host's position but not stored.
    Behind {
        /// The host's position.
        last_seq: u64,
    },
    /// The host is unknown or revoked.
    HostGone,
    /// Signed by a key the host no longer holds for this sequence number (retired before it, or
    /// never the host's).
    KeyRetired {
        /// The last sequence number the key may sign, where it is a retired key of the host.
        through: Option<u64>,
    },
}

/// A flag to raise or update.
#[derive(Debug, Clone)]
pub struct NewFlag {
    /// Rule id.
    pub rule: String,
    /// `low`, `medium`, `high`, `critical`.
    pub severity: String,
    /// The job the flag is about (one open flag per rule, host and job).
    pub job_key: String,
    /// A sentence for reviewers.
    pub summary: String,
    /// Process, where one is concerned.
    pub pid: Option<u32>,
    /// GPUs concerned.
    pub gpu_uuids: Vec<String>,
    /// What matched, as JSON.
    pub evidence: serde_json::Value,
    /// Digest of the policy that raised it.
    pub policy_digest: String,
    /// For a job that spans hosts: the host the flag lives on (the job's first), so the job has one
    /// flag per rule. `None`: the reporting host.
    pub job_host: Option<String>,
    /// The job's tenant where the policy's mapping says so. `None`: the host's tenant.
    pub tenant: Option<String>,
}

/// A stored flag.
#[derive(Debug, Clone, Serialize)]
pub struct FlagRow {
    /// Flag id.
    pub id: i64,
    /// Rule id.
    pub rule: String,
    /// Severity.
    pub severity: String,
    /// `open`, `confirmed`, `dismissed`, `escalated`.
    pub status: String,
    /// Host.
    pub host_id: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Summary for reviewers.
    pub summary: String,
    /// Job key.
    pub job: String,
    /// Process.
    pub pid: Option<u32>,
    /// GPUs.
    pub gpu_uuids: Vec<String>,
    /// Evidence.
    pub evidence: serde_json::Value,
    /// Policy digest.
    pub policy_digest: String,
    /// First report that raised it.
    pub first_seq: u64,
    /// Latest report that matched.
    pub last_seq: u64,
    /// Reports that matched.
    pub occurrences: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Who is working on it.
    pub assignee: Option<String>,
    /// Occurrences since the last decision (counted once a flag has been decided).
    pub after_decision: u64,
    /// Times new evidence re-opened it after a decision.
    pub reopened: u64,
    /// When it last re-opened, RFC 3339.
    pub reopened_at: Option<String>,
}

/// What re-verifying the stored reports found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifySummary {
    /// Reports read.
    pub checked: u64,
    /// Reports whose signature verifies over the stored bytes.
    pub valid: u64,
    /// Consecutive stored reports whose hash chain does not link.
    pub chain_breaks: u64,
    /// Reports that failed, with why.
    pub invalid: Vec<InvalidReport>,
}

/// A stored report that failed re-verification.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidReport {
    /// Host.
    pub host_id: String,
    /// Sequence number.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// A stored report selected for an export.
#[derive(Debug, Clone)]
pub struct ExportRow {
    /// Host.
    pub host_id: String,
    /// Hostname.
    pub hostname: String,
    /// Sequence number.
    pub seq: u64,
    /// The signed report as stored.
    pub signed: pb::SignedReport,
    /// Its index in the transparency log.
    pub log_index: u64,
}

/// An audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Entry id.
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    /// Who (token id or `cli`).
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Detail.
    pub detail: String,
}

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded SQLite file.
    File(PathBuf),
    /// A shared PostgreSQL database (the URL as shown: without its password).
    Postgres(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => f.write_str(u),
        }
    }
}

/// Read-only connections per store (PostgreSQL: per replica, beside its one writing connection).
pub const READERS: usize = 4;

/// The store, on either backend.
pub struct Store {
    /// Writes, and reads inside write transactions.
    conn: Mutex<Db>,
    /// Reads outside transactions (the review UI, the API, exports): [`READERS`] read-only
    /// connections, so they do not queue behind the group commit, and one long read (an export) does
    /// not hold up the others. They see committed data only.
    readers: Vec<Mutex<Db>>,
    /// Where a read waits when every reader is busy.
    next_reader: std::sync::atomic::AtomicUsize,
    location: Location,
    /// Stops the embedded store's checkpoint thread when the store is dropped.
    checkpointer: Option<Checkpointer>,
}

/// Copies the embedded store's write-ahead log into the database file on a thread of its own (PASSIVE:
/// it never blocks the writer). Left to SQLite, the checkpoint runs inside whichever commit crosses
/// 1,000 log pages: a fifth of the commit thread's time under load.
///
/// A PASSIVE checkpoint never lets the log start over while commits keep coming (the writer only
/// wraps to the start of a fully copied log), so under sustained ingest the log would grow without
/// bound: 1.3 GB in 12 seconds of the benchmark. Once the log holds more than [`WAL_RESTART_BYTES`],
/// the thread catches up and asks the writer ([`Store::restart_wal_if_asked`]) to finish the copy
/// between two commits: with no commit running, that checkpoint completes, so the next commit writes
/// from the start of the file again, and `journal_size_limit` trims the file. A RESTART checkpoint
/// would do the same but wait (on the busy handler) for readers, up to the busy timeout, holding back
/// every commit meanwhile; the writer's PASSIVE one leaves a log that a long read still needs for the
/// next round.
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set by the thread when the log should start over; taken by the writer.
    restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The write-ahead log size past which the checkpoint thread makes the log start over.
const WAL_RESTART_BYTES: i64 = 256 << 20;

/// Frames the writer's checkpoint may be left to copy (1 MiB of 4 KiB pages): commits wait while it runs.
const RESTART_BEHIND_FRAMES: i64 = 256;

/// One checkpoint in `mode`: the frames in the log and those not yet copied into the database file
/// (-1 each when the store is not in WAL mode).
fn checkpoint(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        let (log, done) = (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?);
        Ok((log, log - done))
    })
}

impl Checkpointer {
    fn start(path: &Path, restart_bytes: i64) -> rusqlite::Result<Checkpointer> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_size_limit", restart_bytes)?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let restart_frames = restart_bytes / page_size.max(512);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let restart = std::sync::Arc::new(AtomicBool::new(false));
        let ask = restart.clone();
        let thread = std::thread::Builder::new()
            .name("gpuattest-checkpoint".into())
            .spawn(move || {
                let tick = std::time::Duration::from_millis(100);
                let mut waited = std::time::Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited < std::time::Duration::from_millis(500) {
                        continue;
                    }
                    waited = std::time::Duration::ZERO;
                    let mut r = checkpoint(&conn, "PASSIVE");
                    // Before asking the writer, catch up with the commits made meanwhile, so its
                    // checkpoint (during which commits wait) copies little.
                    for _ in 0..4 {
                        match r {
                            Ok((log, behind)) if log > restart_frames && behind > RESTART_BEHIND_FRAMES => {
                                r = checkpoint(&conn, "PASSIVE");
                            }
                            _ => break,
                        }
                    }
                    match r {
                        Ok((log, _)) => ask.store(log > restart_frames, Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e, "store checkpoint failed; will retry"),
                    }
                }
                let _ = checkpoint(&conn, "PASSIVE");
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer { stop, restart, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.location).finish()
    }
}

/// Whether every host `config` names is a Unix socket or a loopback address (where no network sees
/// the traffic).
fn local_hosts(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let addrs_local = config.get_hostaddrs().iter().all(std::net::IpAddr::is_loopback);
    let hosts_local = config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        Host::Unix(_) => true,
    });
    if config.get_hostaddrs().is_empty() { hosts_local } else { addrs_local }
}

/// A `postgres://` URL with its password replaced and its query (which may carry one) dropped, for
/// messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "(not a URL)".into() };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path = tail.split('?').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{path}"),
            None => format!("{scheme}://{user}@{host}{path}"),
        },
        None => format!("{scheme}://{authority}{path}"),
    }
}

impl Store {
    /// Opens (creating if needed) the embedded store in `data_dir`, and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the directory or database cannot be opened, [`StoreError::TooNew`]
    /// when a newer collector wrote it.
    pub fn open(data_dir: &Path) -> Result<Store> {
        Store::open_sqlite(data_dir, WAL_RESTART_BYTES)
    }

    /// [`Store::open`], with the log made to start over past `wal_restart_bytes`.
    fn open_sqlite(data_dir: &Path, wal_restart_bytes: i64) -> Result<Store> {
        let path = data_dir.join("gpuattest.db");
        let open_err = |source: rusqlite::Error| StoreError::Open { path: path.clone(), source: source.into() };
        private_file(data_dir, &path)
            .map_err(|e| StoreError::Open { path: path.clone(), source: DbError::Value(e) })?;
        let conn = rusqlite::Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        // Keep the hot pages in SQLite's own cache (64 MiB) rather than re-reading them from the OS,
        // and the per-report savepoints' statement journals in memory rather than in temp files.
        conn.pragma_update(None, "cache_size", -65_536).map_err(open_err)?;
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(open_err)?;
        // Checkpoints run on their own thread (Checkpointer), not inside commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", wal_restart_bytes).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(128);
        let mut db = Db::Sqlite(conn);
        migrate(&mut db, MIGRATIONS, &path)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = rusqlite::Connection::open(&path).map_err(open_err)?;
            reader.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_err)?;
            reader.pragma_update(None, "query_only", "ON").map_err(open_err)?;
            reader.pragma_update(None, "cache_size", -16_384).map_err(open_err)?;
            reader.set_prepared_statement_cache_capacity(64);
            readers.push(Mutex::new(Db::Sqlite(reader)));
        }
        let checkpointer = Checkpointer::start(&path, wal_restart_bytes).map_err(open_err)?;
        Ok(Store {
            conn: Mutex::new(db),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            checkpointer: Some(checkpointer),
            location: Location::File(path),
        })
    }

    /// Connects to a shared PostgreSQL store (`postgres://user[:password]@host[:port]/database`, with
    /// libpq's parameters such as `?options=-csearch_path%3Dgpuattest`), and applies pending migrations
    /// once across replicas starting together.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`], [`StoreError::Connect`], [`StoreError::TooNew`].
    pub fn connect(url: &str) -> Result<Store> {
        let shown = redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::BadUrl {
                url: shown,
                reason: "only postgres:// URLs are taken; omit --database for the embedded store in --data".into(),
            });
        }
        let (plain_url, transport) =
            pgtls::split_url(url).map_err(|reason| StoreError::BadUrl { url: shown.clone(), reason })?;
        let config: tokio_postgres::Config =
            plain_url.parse().map_err(|e: tokio_postgres::Error| StoreError::BadUrl {
                url: shown.clone(),
                reason: format!("{e}; the form is postgres://user[:password]@host[:port]/database"),
            })?;
        if matches!(transport, pgtls::Transport::Plain) && !local_hosts(&config) {
            tracing::warn!(
                database = %shown,
                "the connection to PostgreSQL is not encrypted; add sslmode=verify-full&sslrootcert=/path/to/ca.pem \
                 unless the network to it is private"
            );
        }
        let pg = db::Pg::connect(config.clone(), transport.clone())
            .map_err(|source| StoreError::Connect { url: shown.clone(), source })?;
        let mut db = Db::Pg(Box::new(pg));
        db.lock_migrations(true).map_err(sql("take the migration lock"))?;
        let migrated = migrate(&mut db, PG_MIGRATIONS, Path::new(&shown));
        let unlocked = db.lock_migrations(false).map_err(sql("release the migration lock"));
        migrated?;
        unlocked?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let mut reader = Db::Pg(Box::new(
                db::Pg::connect(config.clone(), transport.clone())
                    .map_err(|source| StoreError::Connect { url: shown.clone(), source })?,
            ));
            reader.batch("SET default_transaction_read_only = on").map_err(sql("make the reader read-only"))?;
            readers.push(Mutex::new(reader));
        }
        Ok(Store {
            conn: Mutex::new(db),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            checkpointer: None,
            location: Location::Postgres(shown),
        })
    }

    /// Opens the shared store when `database` is given, else the embedded one in `data_dir`.
    ///
    /// # Errors
    /// As [`Store::open`] and [`Store::connect`].
    pub fn open_at(data_dir: &Path, database: Option<&str>) -> Result<Store> {
        match database {
            Some(url) => Store::connect(url),
            None => Store::open(data_dir),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Db> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A free reader, or (all busy) the next one in turn, waited for.
    fn reader(&self) -> std::sync::MutexGuard<'_, Db> {
        use std::sync::TryLockError;
        for r in &self.readers {
            match r.try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the store is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Writes a consistent copy of the whole embedded store to `dest` (a new file) while the collector
    /// runs: one read transaction, so reports committed meanwhile are either wholly in it or not at all.
    ///
    /// # Errors
    /// [`StoreError::Sql`] when `dest` exists or cannot be written; [`StoreError::Refused`] on
    /// PostgreSQL, whose own tools (pg_dump, base backups) back it up.
    pub fn backup_into(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_str().ok_or_else(|| StoreError::Refused("the backup path must be UTF-8".into()))?;
        let mut conn = self.conn();
        if conn.is_postgres() {
            return Err(StoreError::Refused(
                "the shared store is backed up with PostgreSQL's tools (pg_dump or base backups); `backup` copies the embedded store".into(),
            ));
        }
        // Created 0600 first: VACUUM INTO writes into an existing empty file with its mode.
        let dest_path = Path::new(dest);
        if let Some(dir) = dest_path.parent() {
            private_file(dir, dest_path).map_err(StoreError::Refused)?;
        }
        conn.execute("VACUUM INTO ?1", params![dest]).map_err(sql("back up the store"))?;
        Ok(())
    }

    /// Every token, newest first (hashes are never returned).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn tokens(&self) -> Result<Vec<TokenSummary>> {
        self.reader()
            .rows(
                "SELECT id, role, tenant, created_at, expires_at, used_at, revoked_at, uses, max_uses, created_by \
                 FROM tokens ORDER BY created_at DESC, id",
                params![],
                |r| {
                    Ok(TokenSummary {
                        id: r.get(0)?,
                        role: r.get(1)?,
                        tenant: r.get(2)?,
                        created_at: rfc3339(r.get(3)?),
                        expires_at: rfc3339(r.get(4)?),
                        last_used_at: r.get::<Option<i64>>(5)?.map(rfc3339),
                        revoked_at: r.get::<Option<i64>>(6)?.map(rfc3339),
                        uses: r.u64(7)?,
                        max_uses: r.u64(8)?,
                        created_by: r.get(9)?,
                    })
                },
            )
            .map_err(sql("list tokens"))
    }

    /// Inserts a token (by hash) and audits it.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn insert_token(&self, t: &NewToken) -> Result<()> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        tx.execute(
            "INSERT INTO tokens (id, hash, role, tenant, created_at, expires_at, created_by, max_uses) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![&t.id, &t.hash, &t.role, &t.tenant, t.created_at, t.expires_at, &t.created_by, t.max_uses],
        )
        .map_err(sql("insert token"))?;
        audit_tx(
            &mut tx,
            t.created_at,
            &t.created_by,
            "token.create",
            &t.id,
            &format!("role={} tenant={} max_uses={}", t.role, t.tenant.as_deref().unwrap_or("-"), t.max_uses),
        )?;
        tx.commit().map_err(sql("commit token"))
    }

    /// Revokes a token by its public id; returns `false` when there is no such live token.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn revoke_token(&self, id: &str, actor: &str, now: i64) -> Result<bool> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute("UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL", params![now, id])
            .map_err(sql("revoke token"))?;
        if n == 1 {
            audit_tx(&mut tx, now, actor, "token.revoke", id, "")?;
        }
        tx.commit().map_err(sql("commit token revocation"))?;
        Ok(n == 1)
    }

    /// Looks a token up by its hash.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>> {
        token_row(&mut self.reader(), hash)
    }

    /// Consumes a one-time enrollment token and pins `public_key` to a new host, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Refused`] with a reason the agent can act on: unknown, used, expired or revoked
    /// token; key already enrolled.
    #[allow(clippy::too_many_arguments)]
    pub fn enroll(
        &self,
        token_hash: &[u8],
        public_key: &[u8],
        key_id: &[u8],
        hostname: &str,
        machine_id: &str,
        facts_json: &str,
        now: i64,
    ) -> Result<HostRow> {
        self.enroll_bound(token_hash, public_key, key_id, hostname, machine_id, facts_json, None, now)
    }

    /// [`Store::enroll`], binding the host to `client_key` (SHA-256 of the public key of the client
    /// certificate it enrolled over mTLS): its streams must present that key. A key another live host
    /// is bound to is refused: two nodes sharing one certificate could not be told apart.
    ///
    /// # Errors
    /// As [`Store::enroll`], and [`StoreError::Refused`] for a client key already bound.
    #[allow(clippy::too_many_arguments)] // The enrollment's facts, each from the request; a struct would only rename them.
    pub fn enroll_bound(
        &self,
        token_hash: &[u8],
        public_key: &[u8],
        key_id: &[u8],
        hostname: &str,
        machine_id: &str,
        facts_json: &str,
        client_key: Option<&[u8]>,
        now: i64,
    ) -> Result<HostRow> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let Some(TokenRow { id: token_id, role, tenant, expires_at, used_at, uses, max_uses, revoked_at }) =
            token_row(&mut tx, token_hash)?
        else {
            return Err(StoreError::Refused(
                "unknown enroll token; mint one with `gpuattest-collector token create --role enroll`".into(),
            ));
        };
        if role != "enroll" {
            return Err(StoreError::Refused(format!("token {token_id} has role {role}, not enroll")));
        }
        if let Some(at) = used_at.filter(|_| uses >= max_uses) {
            audit_tx(
                &mut tx,
                now,
                "agent",
                "enroll.refused",
                &token_id,
                &format!("token used up ({uses} of {max_uses}, last at {}); host {hostname}", rfc3339(at)),
            )?;
            tx.commit().map_err(sql("commit refusal"))?;
            return Err(StoreError::Refused(if max_uses == 1 {
                format!("enroll token {token_id} was already used at {}; mint a new one", rfc3339(at))
            } else {
                format!("enroll token {token_id} has enrolled all {max_uses} hosts it allows; mint a new one")
            }));
        }
        if revoked_at.is_some() {
            return Err(StoreError::Refused(format!("enroll token {token_id} is revoked; mint a new one")));
        }
        if expires_at <= now {
            return Err(StoreError::Refused(format!(
                "enroll token {token_id} expired at {}; mint a new one",
                rfc3339(expires_at)
            )));
        }
        let existing: Option<String> = tx
            .row("SELECT host_id FROM hosts WHERE key_id = ?1", params![key_id], |r| r.get(0))
            .map_err(sql("look up key"))?;
        if let Some(h) = existing {
            return Err(StoreError::Refused(format!(
                "this key is already enrolled as host {h}; re-enrolling a known host needs an operator's action"
            )));
        }
        if let Some(ck) = client_key {
            let bound: Option<String> = tx
                .row(
                    "SELECT host_id FROM hosts WHERE client_key_sha256 = ?1 AND revoked_at IS NULL",
                    params![ck],
                    |r| r.get(0),
                )
                .map_err(sql("look up client key"))?;
            if let Some(h) = bound {
                audit_tx(
                    &mut tx,
                    now,
                    "agent",
                    "enroll.refused",
                    &token_id,
                    &format!("client certificate key bound to {h}; host {hostname}"),
                )?;
                tx.commit().map_err(sql("commit refusal"))?;
                return Err(StoreError::Refused(format!(
                    "this client certificate's key is already bound to host {h}: give each node a certificate (and key) of its own"
                )));
            }
        }
        // The same machine (machine id and hostname) enrolling again with a new key is a re-enrollment:
        // it needs an operator's action, so a stolen token cannot quietly take over a host's identity.
        if !machine_id.is_empty() {
            let known: Option<String> = tx
                .row(
                    "SELECT host_id FROM hosts WHERE machine_id = ?1 AND hostname = ?2 AND revoked_at IS NULL",
                    params![machine_id, hostname],
                    |r| r.get(0),
                )
                .map_err(sql("look up machine"))?;
            if let Some(h) = known {
                audit_tx(
                    &mut tx,
                    now,
                    "agent",
                    "enroll.refused",
                    &token_id,
                    &format!("re-enrollment of {h} without operator action"),
                )?;
                tx.commit().map_err(sql("commit refusal"))?;
                return Err(StoreError::Refused(format!(
                    "machine {machine_id} ({hostname}) is already enrolled as host {h}; an operator must revoke it first (`gpuattest-collector hosts revoke {h} --reason ...`)"
                )));
            }
        }
        let host_id = new_host_id(hostname, key_id);
        tx.execute(
            "INSERT INTO hosts (host_id, hostname, machine_id, tenant, public_key, key_id, enrolled_at, enroll_token_id, facts, client_key_sha256) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![&host_id, hostname, machine_id, &tenant, public_key, key_id, now, &token_id, facts_json, client_key],
        )
        .map_err(sql("insert host"))?;
        tx.execute("UPDATE tokens SET used_at = ?1, uses = uses + 1 WHERE id = ?2", params![now, &token_id])
            .map_err(sql("mark token used"))?;
        audit_tx(&mut tx, now, &format!("token:{token_id}"), "host.enroll", &host_id, &format!("hostname={hostname}"))?;
        tx.commit().map_err(sql("commit enrollment"))?;
        Ok(HostRow {
            host_id,
            hostname: hostname.to_string(),
            tenant,
            public_key: public_key.to_vec(),
            key_id: key_id.to_vec(),
            last_seq: 0,
            revoked_at: None,
            revoked_reason: None,
            client_key: client_key.map(<[u8]>::to_vec),
        })
    }

    /// One host.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn host(&self, host_id: &str) -> Result<Option<HostRow>> {
        self.reader()
            .row(
                "SELECT host_id, hostname, tenant, public_key, key_id, last_seq, revoked_at, revoked_reason, client_key_sha256 FROM hosts WHERE host_id = ?1",
                params![host_id],
                |r| {
                    Ok(HostRow {
                        host_id: r.get(0)?,
                        hostname: r.get(1)?,
                        tenant: r.get(2)?,
                        public_key: r.get(3)?,
                        key_id: r.get(4)?,
                        last_seq: r.u64(5)?,
                        revoked_at: r.get(6)?,
                        revoked_reason: r.get(7)?,
                        client_key: r.get(8)?,
                    })
                },
            )
            .map_err(sql("look up host"))
    }

    /// Every host with its report accounting, optionally only one tenant's.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn hosts(&self, tenant: Option<&str>) -> Result<Vec<HostSummary>> {
        let mut conn = self.reader();
        let mut hosts = conn
            .rows(
                "SELECT h.host_id, h.hostname, h.tenant, h.last_seq, \
                   (SELECT COUNT(*) FROM reports r WHERE r.host_id = h.host_id), h.last_seen, h.enrolled_at, h.revoked_at \
                 FROM hosts h WHERE (CAST(?1 AS TEXT) IS NULL OR h.tenant = ?1) ORDER BY h.hostname, h.host_id",
                params![tenant],
                |r| {
                    let last_seq = r.u64(3)?;
                    let reports = r.u64(4)?;
                    Ok(HostSummary {
                        host_id: r.get(0)?,
                        hostname: r.get(1)?,
                        tenant: r.get(2)?,
                        last_seq,
                        reports,
                        gaps: last_seq.saturating_sub(reports),
                        recorded_gaps: 0,
                        last_seen: r.get::<Option<i64>>(5)?.map(rfc3339),
                        enrolled_at: rfc3339(r.get(6)?),
                        revoked: r.get::<Option<i64>>(7)?.is_some(),
                        gpu_evidence: Vec::new(),
                        location: None,
                    })
                },
            )
            .map_err(sql("list hosts"))?;
        for h in hosts.iter_mut().filter(|h| h.gaps > 0) {
            let recorded = recorded_missing(&mut conn, &h.host_id)?;
            h.recorded_gaps = recorded.min(h.gaps);
            h.gaps -= h.recorded_gaps;
        }
        Ok(hosts)
    }

    /// Commits a verified report with the flags `flags_for` computes from the host's chain position,
    /// all in one transaction. A duplicate or out-of-order report changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Sql`]; nothing is stored then.
    pub fn commit_report(
        &self,
        host_id: &str,
        incoming: &IncomingReport<'_>,
        flags_for: impl FnOnce(&ChainPosition, &CommitContext) -> Vec<NewFlag>,
    ) -> Result<Commit> {
        let mut conn = self.conn();
        let c = {
            let mut tx = conn.write().map_err(sql("begin"))?;
            let c = commit_one(&mut tx, host_id, incoming, flags_for)?;
            if matches!(c, Commit::Stored { .. }) {
                tx.commit().map_err(sql("commit report"))?;
            }
            c
        };
        self.restart_wal_if_asked(&mut conn);
        Ok(c)
    }

    /// Commits several reports in one transaction (one fsync). Results are in the order given. First
    /// all of them together, with no savepoints (a refused report writes nothing before it is refused);
    /// if any fails, that is rolled back and the batch is committed again with each report in its own
    /// savepoint, so one failing report leaves the others as they are. If the final commit fails, every
    /// report it would have stored fails with it.
    pub fn commit_batch(&self, items: Vec<PendingCommit>) -> Vec<Result<Commit>> {
        let mut conn = self.conn();
        let results = match batch_together(&mut conn, &items) {
            Some(results) => results,
            None => batch_isolated(&mut conn, &items),
        };
        self.restart_wal_if_asked(&mut conn);
        results
    }

    /// Makes the embedded store's write-ahead log start over when the checkpoint thread asked for it
    /// (see [`Checkpointer`]); called by the writer between commits.
    fn restart_wal_if_asked(&self, conn: &mut Db) {
        let Some(c) = &self.checkpointer else { return };
        if !c.restart.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let started = std::time::Instant::now();
        if let Db::Sqlite(sqlite) = conn {
            // PASSIVE: with this connection the writer, nothing can commit meanwhile, so it copies
            // the whole log unless a reader still needs part of it; it never waits for one.
            match checkpoint(sqlite, "PASSIVE") {
                Ok((frames, behind)) => {
                    tracing::debug!(
                        frames,
                        behind,
                        took_ms = started.elapsed().as_millis() as u64,
                        "store log restarted"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "store checkpoint (restart of the log) failed; will retry"),
            }
        }
    }

    /// Replaces a host's key with `new_public_key`, retiring the current one: reports up to
    /// `valid_through_seq` still verify against it. Idempotent when the new key is already current.
    ///
    /// # Errors
    /// [`StoreError::Refused`] when the host is unknown or revoked, or the new key belongs to another
    /// host.
    pub fn rotate_key(
        &self,
        host_id: &str,
        new_public_key: &[u8],
        valid_through_seq: u64,
        now: i64,
    ) -> Result<Vec<u8>> {
        let new_key_id = gpuattest_proto::key_id(new_public_key).to_vec();
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let current: Option<(Vec<u8>, Vec<u8>, Option<i64>)> = tx
            .row("SELECT public_key, key_id, revoked_at FROM hosts WHERE host_id = ?1", params![host_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(sql("read host key"))?;
        let Some((old_pk, old_id, revoked)) = current else {
            return Err(StoreError::Refused(format!("host {host_id} is not enrolled")));
        };
        if revoked.is_some() {
            return Err(StoreError::Refused(format!("host {host_id} is revoked")));
        }
        if old_id == new_key_id {
            return Ok(new_key_id);
        }
        let taken: Option<String> = tx
            .row("SELECT host_id FROM hosts WHERE key_id = ?1", params![&new_key_id], |r| r.get(0))
            .map_err(sql("check new key"))?;
        if let Some(other) = taken {
            return Err(StoreError::Refused(format!("the new key is already enrolled as host {other}")));
        }
        tx.execute(
            "INSERT INTO host_keys (host_id, key_id, public_key, valid_through_seq, retired_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
            params![host_id, &old_id, &old_pk, valid_through_seq, now],
        )
        .map_err(sql("retire key"))?;
        tx.execute(
            "UPDATE hosts SET public_key = ?1, key_id = ?2 WHERE host_id = ?3",
            params![new_public_key, &new_key_id, host_id],
        )
        .map_err(sql("install key"))?;
        audit_tx(
            &mut tx,
            now,
            &format!("host:{host_id}"),
            "host.rotate-key",
            host_id,
            &format!(
                "{} -> {} (old key valid through seq {valid_through_seq})",
                gpuattest_proto::hex(&old_id),
                gpuattest_proto::hex(&new_key_id)
            ),
        )?;
        tx.commit().map_err(sql("commit rotation"))?;
        Ok(new_key_id)
    }

    /// The key `host_id` holds under `key_id` now: its current key, or a retired one with the last
    /// sequence number it may sign. Read at every check, never cached by a stream.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn signing_key(&self, host_id: &str, key_id: &[u8]) -> Result<Option<SigningKey>> {
        signing_key(&mut self.reader(), host_id, key_id)
    }

    /// Up to `limit` leaf hashes after the first `skip`, in log order (the leaves a frontier of `skip`
    /// leaves has not seen). Log indexes are dense from 1, so this is a range read on the key.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_leaves_after(&self, skip: u64, limit: u64) -> Result<Vec<[u8; 32]>> {
        self.reader()
            .rows(
                "SELECT leaf_hash FROM log_leaves WHERE idx > ?1 ORDER BY idx LIMIT ?2",
                params![skip as i64, limit as i64],
                |r| {
                    let v: Vec<u8> = r.get(0)?;
                    Ok(v.try_into().unwrap_or([0u8; 32]))
                },
            )
            .map_err(sql("read log leaves"))
    }

    /// Leaves in the transparency log (its indexes are dense from 1).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_size(&self) -> Result<u64> {
        self.reader()
            .row("SELECT COALESCE(MAX(idx), 0) FROM log_leaves", params![], |r| r.u64(0))
            .map_err(sql("read log size"))
            .map(Option::unwrap_or_default)
    }

    /// A remembered perfect subtree root of the log (see `export::merkle::Stored`).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_subtree(&self, level: u32, index: u64) -> Result<Option<[u8; 32]>> {
        self.reader()
            .row(
                "SELECT hash FROM log_subtrees WHERE level = ?1 AND idx = ?2",
                params![i64::from(level), index as i64],
                |r| {
                    let v: Vec<u8> = r.get(0)?;
                    Ok(<[u8; 32]>::try_from(v.as_slice()).ok())
                },
            )
            .map_err(sql("read log subtree"))
            .map(Option::flatten)
    }

    /// Remembers perfect subtree roots of the log (level, index, root); known ones are kept as they are.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn put_log_subtrees(&self, subtrees: &[(u32, u64, [u8; 32])]) -> Result<()> {
        if subtrees.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        for chunk in subtrees.chunks(500) {
            let mut ps = Vec::with_capacity(3 * chunk.len());
            for (level, index, hash) in chunk {
                ps.extend_from_slice(params![i64::from(*level), *index as i64, hash.as_slice()]);
            }
            tx.defer_values(
                "INSERT INTO log_subtrees (level, idx, hash) VALUES ",
                3,
                " ON CONFLICT (level, idx) DO NOTHING",
                &ps,
            )
            .map_err(sql("remember log subtrees"))?;
        }
        tx.commit().map_err(sql("commit log subtrees"))
    }

    /// The first `size` leaf hashes of the transparency log (all of them for `None`).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_leaves(&self, size: Option<u64>) -> Result<Vec<[u8; 32]>> {
        self.reader()
            .rows(
                "SELECT leaf_hash FROM log_leaves ORDER BY idx LIMIT ?1",
                params![size.unwrap_or(i64::MAX as u64)],
                |r| {
                    let v: Vec<u8> = r.get(0)?;
                    let mut h = [0u8; 32];
                    if v.len() == 32 {
                        h.copy_from_slice(&v);
                    }
                    Ok(h)
                },
            )
            .map_err(sql("read log"))
    }

    /// Records a signed tree head.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn record_head(&self, size: u64, root: &[u8], signature: &[u8], now: i64) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO log_heads (tree_size, root_hash, signature, signed_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![size, root, signature, now],
            )
            .map_err(sql("record tree head"))?;
        Ok(())
    }

    /// A tenant's stored reports in a period, oldest first, with each one's log index:
    /// (host id, hostname, seq, signed report, log index).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn reports_for_export(&self, tenant: &str, since: i64, until: i64) -> Result<Vec<ExportRow>> {
        self.reader()
            .rows(
                "SELECT r.host_id, h.hostname, r.seq, r.report, r.signature, r.key_id, l.idx - 1 \
                 FROM reports r JOIN hosts h ON h.host_id = r.host_id \
                 JOIN log_leaves l ON l.host_id = r.host_id AND l.seq = r.seq \
                 WHERE h.tenant = ?1 AND r.window_end >= ?2 AND r.window_end < ?3 ORDER BY r.host_id, r.seq",
                params![tenant, since, until],
                |r| {
                    Ok(ExportRow {
                        host_id: r.get(0)?,
                        hostname: r.get(1)?,
                        seq: r.u64(2)?,
                        signed: pb::SignedReport { report: r.get(3)?, signature: r.get(4)?, key_id: r.get(5)? },
                        log_index: r.u64(6)?,
                    })
                },
            )
            .map_err(sql("read reports for export"))
    }

    /// Revokes a host: its streams and reports are refused from now on. Returns `false` when there is no
    /// such host.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn revoke_host(&self, host_id: &str, actor: &str, reason: &str, now: i64) -> Result<bool> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute(
                "UPDATE hosts SET revoked_at = ?1, revoked_reason = ?2 WHERE host_id = ?3 AND revoked_at IS NULL",
                params![now, reason, host_id],
            )
            .map_err(sql("revoke host"))?;
        if n == 1 {
            audit_tx(&mut tx, now, actor, "host.revoke", host_id, reason)?;
        }
        tx.commit().map_err(sql("commit revocation"))?;
        Ok(n == 1)
    }

    /// Open flags counted by (severity, rule), for `/metrics`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn open_flag_counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.reader()
            .rows(
                "SELECT severity, rule, COUNT(*) FROM flags WHERE status = 'open' GROUP BY severity, rule ORDER BY severity, rule",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.u64(2)?)),
            )
            .map_err(sql("count open flags"))
    }

    /// Every host not revoked, with its last report and unexplained gaps, for `/metrics`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn host_gauges(&self) -> Result<Vec<HostGauge>> {
        let mut conn = self.reader();
        let mut hosts = conn
            .rows(
                "SELECT h.host_id, h.tenant, h.last_seen, h.last_seq, \
                   (SELECT COUNT(*) FROM reports r WHERE r.host_id = h.host_id) \
                 FROM hosts h WHERE h.revoked_at IS NULL ORDER BY h.host_id",
                params![],
                |r| {
                    Ok(HostGauge {
                        host_id: r.get(0)?,
                        tenant: r.get(1)?,
                        last_report_ms: r.get(2)?,
                        gaps: r.u64(3)?.saturating_sub(r.u64(4)?),
                    })
                },
            )
            .map_err(sql("read host gauges"))?;
        for h in hosts.iter_mut().filter(|h| h.gaps > 0) {
            h.gaps -= recorded_missing(&mut conn, &h.host_id)?.min(h.gaps);
        }
        Ok(hosts)
    }

    /// Checks that the store answers a query (readiness): the embedded file, or the shared database.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn ping(&self) -> Result<()> {
        self.reader()
            .row("SELECT COUNT(*) FROM schema_migrations", params![], |r| r.get::<i64>(0))
            .map_err(sql("ping"))?;
        Ok(())
    }

    /// Hosts revoked at or after `since` (Unix ms, the revoking clock): (host id, reason).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn revoked_since(&self, since: i64) -> Result<Vec<(String, String)>> {
        self.reader()
            .rows(
                "SELECT host_id, COALESCE(revoked_reason, '') FROM hosts WHERE revoked_at >= ?1",
                params![since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql("read revocations"))
    }

    /// Hosts (not revoked, with a known interval) whose last report is older than `intervals` times
    /// their interval: (host id, hostname, last seen, last seq).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn silent_hosts(&self, now: i64, intervals: u32) -> Result<Vec<(String, String, i64, u64)>> {
        self.reader()
            .rows(
                "SELECT host_id, hostname, last_seen, last_seq FROM hosts \
                 WHERE revoked_at IS NULL AND interval_ms IS NOT NULL AND last_seen IS NOT NULL \
                   AND last_seen < ?1 - interval_ms * ?2",
                params![now, intervals],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.u64(3)?)),
            )
            .map_err(sql("find silent hosts"))
    }

    /// Raises (or updates) a flag outside a report, e.g. for silence.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn raise_flag(&self, host_id: &str, seq: u64, now: i64, f: &NewFlag) -> Result<()> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let tenant: Option<String> = tx
            .row("SELECT tenant FROM hosts WHERE host_id = ?1", params![host_id], |r| r.get::<Option<String>>(0))
            .map_err(sql("read tenant"))?
            .flatten();
        upsert_flag(&mut tx, host_id, tenant.as_deref(), seq, now, f, false)?;
        tx.commit().map_err(sql("commit flag"))
    }

    /// (host, seq) of every report received at or after `since` (Unix ms), in order.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn report_keys(&self, since: i64) -> Result<Vec<(String, u64)>> {
        self.reader()
            .rows(
                "SELECT host_id, seq FROM reports WHERE received_at >= ?1 ORDER BY host_id, seq",
                params![since],
                |r| Ok((r.get(0)?, r.u64(1)?)),
            )
            .map_err(sql("read reports"))
    }

    /// Adds `key: value` to a flag's evidence (a note such as a re-evaluation's), leaving the rest.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn annotate_flag(&self, id: i64, key: &str, value: &serde_json::Value) -> Result<()> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let evidence: Option<String> = tx
            .row("SELECT evidence FROM flags WHERE id = ?1", params![id], |r| r.get(0))
            .map_err(sql("read flag evidence"))?;
        let Some(evidence) = evidence else { return Ok(()) };
        let mut ev: serde_json::Value = serde_json::from_str(&evidence).unwrap_or_else(|_| serde_json::json!({}));
        if !ev.is_object() {
            ev = serde_json::json!({ "evidence": ev });
        }
        if let Some(o) = ev.as_object_mut() {
            o.insert(key.to_string(), value.clone());
        }
        tx.execute("UPDATE flags SET evidence = ?2 WHERE id = ?1", params![id, &ev.to_string()])
            .map_err(sql("annotate flag"))?;
        tx.commit().map_err(sql("commit annotation"))
    }

    /// The stored signed report of (host, seq).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn signed_report(&self, host_id: &str, seq: u64) -> Result<Option<pb::SignedReport>> {
        self.reader()
            .row(
                "SELECT report, signature, key_id FROM reports WHERE host_id = ?1 AND seq = ?2",
                params![host_id, seq],
                |r| Ok(pb::SignedReport { report: r.get(0)?, signature: r.get(1)?, key_id: r.get(2)? }),
            )
            .map_err(sql("read report"))
    }

    /// Re-verifies every stored report against its host's pinned key, and the hash chain between
    /// consecutive stored reports, from the stored bytes alone.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn verify_all(&self) -> Result<VerifySummary> {
        let mut summary = VerifySummary::default();
        let mut prev: Option<(String, u64, [u8; 32])> = None;
        self.reader()
            .for_each(
                "SELECT r.host_id, r.seq, r.report, r.signature, r.key_id, \
                   CASE WHEN r.key_id = h.key_id THEN h.public_key ELSE k.public_key END, \
                   CASE WHEN r.key_id = h.key_id THEN NULL ELSE k.valid_through_seq END \
                 FROM reports r JOIN hosts h ON h.host_id = r.host_id \
                 LEFT JOIN host_keys k ON k.host_id = r.host_id AND k.key_id = r.key_id ORDER BY r.host_id, r.seq",
                params![],
                |r| {
                    let host_id: String = r.get(0)?;
                    let seq = r.u64(1)?;
                    let signed = pb::SignedReport { report: r.get(2)?, signature: r.get(3)?, key_id: r.get(4)? };
                    let key = r.get::<Option<Vec<u8>>>(5)?.map(|public_key| SigningKey {
                        public_key,
                        valid_through: r.get::<Option<i64>>(6).ok().flatten().map(|v| v.max(0) as u64),
                    });
                    summary.checked += 1;
                    let problem = match crate::verify::report(key.as_ref(), &signed, &host_id, Some(seq)) {
                        Err(p) => Some(p.to_string()),
                        Ok(rep) => {
                            if let Some((ph, ps, phash)) = &prev
                                && *ph == host_id
                                && *ps + 1 == seq
                                && rep.prev_report_sha256 != phash.as_slice()
                            {
                                summary.chain_breaks += 1;
                            }
                            None
                        }
                    };
                    match problem {
                        None => summary.valid += 1,
                        Some(reason) => {
                            summary.invalid.push(InvalidReport { host_id: host_id.clone(), seq, reason });
                        }
                    }
                    prev = Some((host_id, seq, gpuattest_proto::sha256(&signed.report)));
                    Ok(())
                },
            )
            .map_err(sql("read reports"))?;
        Ok(summary)
    }

    /// Flags, newest first, optionally one tenant's.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn flags(&self, tenant: Option<&str>) -> Result<Vec<FlagRow>> {
        self.reader()
            .rows(
                concat!(
                    flag_columns!(),
                    " WHERE (CAST(?1 AS TEXT) IS NULL OR tenant = ?1) \
                 ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END, id"
                ),
                params![tenant],
                flag_row,
            )
            .map_err(sql("list flags"))
    }

    /// One flag by id, if it exists (and belongs to `tenant` when one is given).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn flag(&self, id: i64, tenant: Option<&str>) -> Result<Option<FlagRow>> {
        self.reader()
            .row(
                concat!(flag_columns!(), " WHERE id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR tenant = ?2)"),
                params![id, tenant],
                flag_row,
            )
            .map_err(sql("read flag"))
    }

    /// The audit entries about one flag (decisions, assignments), newest first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn flag_history(&self, id: i64) -> Result<Vec<AuditRow>> {
        self.reader()
            .rows(
                "SELECT id, at, actor, action, target, detail FROM audit WHERE target = ?1 ORDER BY id DESC",
                params![&format!("flag:{id}")],
                audit_row,
            )
            .map_err(sql("read flag history"))
    }

    /// Records a reviewer's decision on a flag and audits it. Returns the flag's tenant, or `None` when
    /// there is no such flag.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn decide_flag(&self, id: i64, status: &str, actor: &str, reason: &str, now: i64) -> Result<Option<()>> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute(
                "UPDATE flags SET status = ?1, updated_at = ?2, after_decision = 0 WHERE id = ?3",
                params![status, now, id],
            )
            .map_err(sql("decide flag"))?;
        if n == 0 {
            return Ok(None);
        }
        audit_tx(&mut tx, now, actor, &format!("flag.{status}"), &format!("flag:{id}"), reason)?;
        tx.commit().map_err(sql("commit decision"))?;
        Ok(Some(()))
    }

    /// Appends to the audit log.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn audit(&self, at: i64, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        audit_tx(&mut self.conn(), at, actor, action, target, detail)
    }

    /// The audit log, newest first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>> {
        self.reader()
            .rows(
                "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
                params![limit],
                audit_row,
            )
            .map_err(sql("read audit"))
    }
}

/// What a transparency-log leaf commits to: host id, NUL, sequence number (big-endian), and the SHA-256
/// of the report's signed bytes. Verifiers rebuild it from an export's subject.
pub fn log_leaf_data(host_id: &str, seq: u64, report_sha256: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(host_id.len() + 41);
    v.extend_from_slice(host_id.as_bytes());
    v.push(0);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(report_sha256);
    v
}

/// Missing sequence numbers of a host that its signed gap records account for: the union of the
/// recorded ranges, less the reports in them that did arrive.
fn recorded_missing(conn: &mut Db, host_id: &str) -> Result<u64> {
    let ranges = conn
        .rows(
            "SELECT first_seq, last_seq FROM gap_records WHERE host_id = ?1 ORDER BY first_seq",
            params![host_id],
            |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
        )
        .map_err(sql("read gap records"))?;
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some((_, end)) if a <= *end + 1 => *end = (*end).max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut total = 0u64;
    for (a, b) in merged {
        let stored: i64 = conn
            .row(
                "SELECT COUNT(*) FROM reports WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3",
                params![host_id, a, b],
                |r| r.get(0),
            )
            .map_err(sql("count recorded range"))?
            .unwrap_or(0);
        total += (b - a + 1 - stored).max(0) as u64;
    }
    Ok(total)
}

/// The key `host_id` holds under `key_id` (see [`Store::signing_key`]), inside any transaction.
fn signing_key(conn: &mut Db, host_id: &str, key_id: &[u8]) -> Result<Option<SigningKey>> {
    conn.row(
        "SELECT public_key, CAST(NULL AS BIGINT) FROM hosts WHERE host_id = ?1 AND key_id = ?2 \
         UNION ALL SELECT public_key, valid_through_seq FROM host_keys WHERE host_id = ?1 AND key_id = ?2",
        params![host_id, key_id],
        |r| Ok(SigningKey { public_key: r.get(0)?, valid_through: r.get::<Option<i64>>(1)?.map(|v| v.max(0) as u64) }),
    )
    .map_err(sql("read signing key"))
}

/// A host's chain position and standing, read inside the report transaction.
struct HostPosition {
    last_seq: i64,
    last_hash: Option<Vec<u8>>,
    revoked: bool,
    tenant: Option<String>,
    /// This (host, seq) is already stored.
    stored: bool,
    /// The host's current key id.
    key_id: Vec<u8>,
}

fn token_row(conn: &mut Db, hash: &[u8]) -> Result<Option<TokenRow>> {
    conn.row(
        "SELECT id, role, tenant, expires_at, used_at, revoked_at, uses, max_uses FROM tokens WHERE hash = ?1",
        params![hash],
        |r| {
            Ok(TokenRow {
                id: r.get(0)?,
                role: r.get(1)?,
                tenant: r.get(2)?,
                expires_at: r.get(3)?,
                used_at: r.get(4)?,
                revoked_at: r.get(5)?,
                uses: r.get(6)?,
                max_uses: r.get(7)?,
            })
        },
    )
    .map_err(sql("look up token"))
}

fn audit_tx(tx: &mut Db, at: i64, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at, actor, action, target, detail],
    )
    .map_err(sql("audit"))?;
    Ok(())
}

/// What a flag's evidence is about, for telling new evidence of another kind from more of the same:
/// the rule and, where the evidence has them, the model's developer and family, the tenant and the
/// threshold crossed. Process ids, hosts and counts are not part of it.
fn flag_kind(f: &NewFlag) -> String {
    let mut kind = f.rule.clone();
    for key in ["developer", "family", "tenant", "threshold"] {
        if let Some(v) = f.evidence.get(key).filter(|v| !v.is_null()) {
            kind.push('|');
            kind.push_str(&v.to_string());
        }
    }
    kind
}

/// Raises a flag or adds an occurrence to it. A flag a reviewer has decided keeps its decision for
/// more of the same evidence, counting it in `after_decision`; evidence of another kind (or, with
/// `reopen_any`, any new occurrence) re-opens it, so a decision never silently absorbs what it did
/// not decide on.
fn upsert_flag(
    tx: &mut Db,
    host_id: &str,
    tenant: Option<&str>,
    seq: u64,
    now: i64,
    f: &NewFlag,
    reopen_any: bool,
) -> Result<()> {
    let gpus = serde_json::to_string(&f.gpu_uuids).unwrap_or_default();
    let evidence = f.evidence.to_string();
    tx.defer(
        "INSERT INTO flags (rule, severity, host_id, tenant, job_key, summary, pid, gpu_uuids, evidence, policy_digest, first_seq, last_seq, occurrences, created_at, updated_at, kind) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, 1, ?12, ?12, ?13) \
         ON CONFLICT (rule, host_id, job_key) DO UPDATE SET \
           status = CASE WHEN flags.status <> 'open' AND (?14 = 1 OR flags.kind <> excluded.kind) THEN 'open' ELSE flags.status END, \
           reopened = flags.reopened + CASE WHEN flags.status <> 'open' AND (?14 = 1 OR flags.kind <> excluded.kind) THEN 1 ELSE 0 END, \
           reopened_at = CASE WHEN flags.status <> 'open' AND (?14 = 1 OR flags.kind <> excluded.kind) THEN excluded.updated_at ELSE flags.reopened_at END, \
           after_decision = flags.after_decision + CASE WHEN flags.status <> 'open' OR flags.reopened > 0 THEN 1 ELSE 0 END, \
           kind = excluded.kind, \
           last_seq = excluded.last_seq, occurrences = flags.occurrences + 1, updated_at = excluded.updated_at, \
           evidence = excluded.evidence, gpu_uuids = excluded.gpu_uuids, policy_digest = excluded.policy_digest, \
           summary = excluded.summary, \
           severity = CASE WHEN (CASE excluded.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END) \
                             > (CASE flags.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END) \
                           THEN excluded.severity ELSE flags.severity END",
        params![
            &f.rule,
            &f.severity,
            f.job_host.as_deref().unwrap_or(host_id),
            f.tenant.as_deref().or(tenant),
            &f.job_key,
            &f.summary,
            f.pid,
            &gpus,
            &evidence,
            &f.policy_digest,
            seq,
            now,
            &flag_kind(f),
            i64::from(reopen_any)
        ],
    )
    .map_err(sql("upsert flag"))?;
    Ok(())
}

fn incoming(item: &PendingCommit) -> IncomingReport<'_> {
    IncomingReport {
        signed: &item.signed,
        decoded: &item.decoded,
        received_at: item.received_at,
        nonce_fresh: item.nonce_fresh,
        process_tenants: &item.process_tenants,
        reopen_decided: item.reopen_decided,
        evidence: &item.evidence,
    }
}

/// The whole batch in one transaction without savepoints; `None`, with everything rolled back, at the
/// first error (or a failed commit).
fn batch_together(conn: &mut Db, items: &[PendingCommit]) -> Option<Vec<Result<Commit>>> {
    let mut tx = conn.write().ok()?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let c =
            commit_one(&mut tx, &item.host_id, &incoming(item), |pos, ctx| (item.flags_for)(&item.decoded, pos, ctx));
        results.push(Ok(c.ok()?));
    }
    tx.commit().ok()?;
    Some(results)
}

/// The batch with each report in its own savepoint.
fn batch_isolated(conn: &mut Db, items: &[PendingCommit]) -> Vec<Result<Commit>> {
    let mut tx = match conn.write() {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            return items.iter().map(|_| Err(StoreError::Refused(format!("begin a batch: {msg}")))).collect();
        }
    };
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let r = tx.savepoint(|db| {
            let c =
                commit_one(db, &item.host_id, &incoming(item), |pos, ctx| (item.flags_for)(&item.decoded, pos, ctx))?;
            let keep = matches!(c, Commit::Stored { .. });
            Ok::<_, StoreError>((c, keep))
        });
        results.push(r);
    }
    if let Err(e) = tx.commit() {
        let msg = e.to_string();
        for r in &mut results {
            if matches!(r, Ok(Commit::Stored { .. })) {
                *r = Err(StoreError::Refused(format!("commit the batch: {msg}")));
            }
        }
    }
    results
}

/// The body of a report commit, inside a transaction or savepoint the caller owns. Writes nothing
/// unless it returns [`Commit::Stored`].
fn commit_one(
    tx: &mut Db,
    host_id: &str,
    incoming: &IncomingReport<'_>,
    flags_for: impl FnOnce(&ChainPosition, &CommitContext) -> Vec<NewFlag>,
) -> Result<Commit> {
    let r = incoming.decoded;
    let seq = r.seq as i64;
    let host = tx
        .row(
            "SELECT last_seq, last_hash, revoked_at, tenant, \
               (SELECT COUNT(*) FROM reports WHERE host_id = ?1 AND seq = ?2), key_id FROM hosts WHERE host_id = ?1",
            params![host_id, seq],
            |row| {
                Ok(HostPosition {
                    last_seq: row.get(0)?,
                    last_hash: row.get(1)?,
                    revoked: row.get::<Option<i64>>(2)?.is_some(),
                    tenant: row.get(3)?,
                    stored: row.get::<i64>(4)? > 0,
                    key_id: row.get(5)?,
                })
            },
        )
        .map_err(sql("read host position"))?;
    let Some(HostPosition { last_seq, last_hash, revoked, tenant, stored, key_id }) = host else {
        return Ok(Commit::HostGone);
    };
    if revoked {
        return Ok(Commit::HostGone);
    }
    // The key's standing now, inside this transaction: a rotation committed after the report was
    // verified (or after its stream opened) still bites.
    if incoming.signed.key_id != key_id {
        match signing_key(tx, host_id, &incoming.signed.key_id)?.and_then(|k| k.valid_through) {
            Some(through) if r.seq <= through => {}
            through => return Ok(Commit::KeyRetired { through }),
        }
    }
    if stored {
        return Ok(Commit::Duplicate);
    }
    if seq <= last_seq {
        return Ok(Commit::Behind { last_seq: last_seq as u64 });
    }
    let position = ChainPosition { last_seq: last_seq as u64, last_hash };
    let hash = gpuattest_proto::sha256(&incoming.signed.report);
    tx.defer(
        "INSERT INTO reports (host_id, seq, report, signature, key_id, report_sha256, received_at, agent_time, window_start, window_end, nonce_fresh) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            host_id,
            seq,
            &incoming.signed.report,
            &incoming.signed.signature,
            &incoming.signed.key_id,
            &hash,
            incoming.received_at,
            r.agent_time_unix_ms,
            r.window_start_unix_ms,
            r.window_end_unix_ms,
            incoming.nonce_fresh
        ],
    )
    .map_err(sql("insert report"))?;
    // Several rows per statement: fewer statements on the commit path, fewer round trips' worth of
    // work on PostgreSQL.
    let mut ps = Vec::with_capacity(13 * r.gpus.len());
    for gpu in &r.gpus {
        ps.extend_from_slice(params![
            host_id,
            seq,
            gpu.index,
            &gpu.uuid,
            &gpu.serial,
            &gpu.name,
            &gpu.pci_bus_id,
            gpu.memory_total_bytes,
            gpu.memory_used_bytes,
            gpu.utilization_gpu_pct,
            gpu.power_mw,
            gpu.energy_mj,
            gpu.lost
        ]);
    }
    tx.defer_values(
        "INSERT INTO report_gpus (host_id, seq, gpu_index, uuid, serial, name, pci_bus_id, memory_total, memory_used, util_gpu, power_mw, energy_mj, lost) VALUES ",
        13,
        " ON CONFLICT DO NOTHING",
        &ps,
    )
    .map_err(sql("insert gpus"))?;
    let gpu_lists: Vec<String> =
        r.processes.iter().map(|p| serde_json::to_string(&p.gpu_uuids).unwrap_or_default()).collect();
    let mut ps = Vec::with_capacity(11 * r.processes.len());
    for (proc_, gpus) in r.processes.iter().zip(&gpu_lists) {
        ps.extend_from_slice(params![
            host_id,
            seq,
            proc_.pid,
            proc_.start_time_ticks,
            gpus,
            &proc_.cmdline,
            &proc_.container_id,
            &proc_.pod_uid,
            &proc_.slurm_job_id,
            proc_.uid,
            &proc_.exe
        ]);
    }
    tx.defer_values(
        "INSERT INTO report_processes (host_id, seq, pid, start_time, gpu_uuids, cmdline, container_id, pod_uid, slurm_job_id, uid, exe) VALUES ",
        11,
        " ON CONFLICT DO NOTHING",
        &ps,
    )
    .map_err(sql("insert processes"))?;
    // The interval comes from the signed report (bounded), never from the stream's unauthenticated
    // opening message; 0 (an older agent) keeps what is stored.
    let interval = crate::verify::bounded_interval(r.interval_ms).map(|v| v as i64);
    tx.defer(
        "UPDATE hosts SET last_seq = ?1, last_hash = ?2, last_seen = ?3, interval_ms = COALESCE(?5, interval_ms) WHERE host_id = ?4",
        params![seq, &hash, incoming.received_at, host_id, interval],
    )
    .map_err(sql("advance host"))?;
    // Log indexes are dense and in commit order: the write lock orders every appender, replicas included.
    let leaf = crate::export::merkle::leaf_hash(&log_leaf_data(host_id, r.seq, &hash));
    tx.defer(
        "INSERT INTO log_leaves (idx, host_id, seq, leaf_hash) \
         VALUES ((SELECT COALESCE(MAX(idx), 0) + 1 FROM log_leaves), ?1, ?2, ?3)",
        params![host_id, seq, &leaf],
    )
    .map_err(sql("append to the transparency log"))?;
    if let Some(g) = &r.gap
        && g.first_seq <= g.last_seq
        && g.last_seq < r.seq
    {
        let reason: String = g.reason.chars().take(512).collect();
        tx.defer(
            "INSERT INTO gap_records (host_id, record_seq, first_seq, last_seq, reason) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![host_id, seq, g.first_seq, g.last_seq, &reason],
        )
        .map_err(sql("record gap"))?;
    }
    let (jobs, moved) =
        jobs::account(tx, host_id, tenant.as_deref(), incoming.process_tenants, r, incoming.received_at)?;
    let moved_devices = evidence::record(tx, host_id, r, incoming.evidence, incoming.received_at)?;
    let flags = flags_for(&position, &CommitContext { jobs, moved_gpus: moved, moved_devices });
    for f in &flags {
        upsert_flag(tx, host_id, tenant.as_deref(), r.seq, incoming.received_at, f, incoming.reopen_decided)?;
    }
    Ok(Commit::Stored { flags: flags.len() })
}

fn audit_row(r: &Row<'_>) -> Result<AuditRow, DbError> {
    Ok(AuditRow {
        id: r.get(0)?,
        at: rfc3339(r.get(1)?),
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: r.get(5)?,
    })
}

/// The columns [`flag_row`] reads, in order.
macro_rules! flag_columns {
    () => {
        "SELECT id, rule, severity, status, host_id, tenant, summary, job_key, pid, gpu_uuids, evidence, \
         policy_digest, first_seq, last_seq, occurrences, created_at, updated_at, assignee, after_decision, reopened, \
         reopened_at FROM flags"
    };
}
use flag_columns;

fn flag_row(r: &Row<'_>) -> Result<FlagRow, DbError> {
    Ok(FlagRow {
        id: r.get(0)?,
        rule: r.get(1)?,
        severity: r.get(2)?,
        status: r.get(3)?,
        host_id: r.get(4)?,
        tenant: r.get(5)?,
        summary: r.get(6)?,
        job: r.get(7)?,
        pid: r.get(8)?,
        gpu_uuids: serde_json::from_str(&r.get::<String>(9)?).unwrap_or_default(),
        evidence: serde_json::from_str(&r.get::<String>(10)?).unwrap_or_default(),
        policy_digest: r.get(11)?,
        first_seq: r.u64(12)?,
        last_seq: r.u64(13)?,
        occurrences: r.u64(14)?,
        created_at: rfc3339(r.get(15)?),
        updated_at: rfc3339(r.get(16)?),
        assignee: r.get(17)?,
        after_decision: r.u64(18)?,
        reopened: r.u64(19)?,
        reopened_at: r.get::<Option<i64>>(20)?.map(rfc3339),
    })
}

/// Makes `dir` (0700, where it does not exist) and `file` in it readable by the owner alone: created
/// 0600 where missing, tightened to 0600 where group or others could read it. SQLite gives its log and
/// shared-memory files the database file's mode, so they follow.
fn private_file(dir: &Path, file: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(file) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 && meta.is_file() => {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot make {} private (0600): {e}", file.display()))
        }
        Ok(_) => Ok(()),
        Err(_) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .map(drop)
            .map_err(|e| format!("cannot create {}: {e}", file.display())),
    }
}

/// `<hostname>-<first 6 hex of key id>`, sanitised: readable in flags, unique per key.
fn new_host_id(hostname: &str, key_id: &[u8]) -> String {
    let clean: String =
        hostname.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').take(48).collect();
    let base = if clean.is_empty() { "host".to_string() } else { clean };
    format!("{base}-{}", gpuattest_proto::hex(&key_id[..key_id.len().min(3)]))
}

fn migrate(db: &mut Db, migrations: &[&str], path: &Path) -> Result<()> {
    db.batch("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .map_err(sql("create migrations table"))?;
    let version = |db: &mut Db| -> Result<i64> {
        db.row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", params![], |r| r.get(0))
            .map_err(sql("read schema version"))
            .map(Option::unwrap_or_default)
    };
    let current = version(db)?;
    let known = migrations.len() as i64;
    if current > known {
        return Err(StoreError::TooNew { path: path.to_path_buf(), found: current, known });
    }
    for (i, m) in migrations.iter().enumerate().skip(current as usize) {
        let mut tx = db.write().map_err(sql("begin migration"))?;
        // Another process may have migrated between our read and the lock.
        if version(&mut tx)? > i as i64 {
            continue;
        }
        tx.batch(m).map_err(sql("apply migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![i as i64 + 1, crate::now_ms()],
        )
        .map_err(sql("record migration"))?;
        tx.commit().map_err(sql("commit migration"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

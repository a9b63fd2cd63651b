//! Opening a store: the embedded SQLite file (private, WAL, its checkpoint thread) or a shared PostgreSQL database, the migrations, backups and the health check.

use super::*;

/// The migrations, in order, for SQLite. Never edit a shipped one; append.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("migration2.sql"),
    include_str!("migration3.sql"),
    include_str!("migration4.sql"),
    include_str!("migration5.sql"),
    include_str!("migration6.sql"),
    include_str!("migration7.sql"),
    include_str!("migration8.sql"),
    include_str!("migration9.sql"),
    include_str!("migration10.sql"),
    include_str!("migration11.sql"),
];

/// The same migrations for PostgreSQL: the same tables, columns and keys, in its types.
pub(super) const PG_MIGRATIONS: &[&str] = &[
    include_str!("pg/schema.sql"),
    include_str!("pg/migration2.sql"),
    include_str!("pg/migration3.sql"),
    include_str!("pg/migration4.sql"),
    include_str!("pg/migration5.sql"),
    include_str!("pg/migration6.sql"),
    include_str!("pg/migration7.sql"),
    include_str!("pg/migration8.sql"),
    include_str!("pg/migration9.sql"),
    include_str!("pg/migration10.sql"),
    include_str!("pg/migration11.sql"),
];

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
pub(super) struct Checkpointer {
    pub(super) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set by the thread when the log should start over; taken by the writer.
    pub(super) restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

/// The write-ahead log size past which the checkpoint thread makes the log start over.
pub(super) const WAL_RESTART_BYTES: i64 = 256 << 20;

/// Frames the writer's checkpoint may be left to copy (1 MiB of 4 KiB pages): commits wait while it runs.
pub(super) const RESTART_BEHIND_FRAMES: i64 = 256;

/// One checkpoint in `mode`: the frames in the log and those not yet copied into the database file
/// (-1 each when the store is not in WAL mode).
pub(super) fn checkpoint(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        let (log, done) = (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?);
        Ok((log, log - done))
    })
}

impl Checkpointer {
    pub(super) fn start(path: &Path, restart_bytes: i64) -> rusqlite::Result<Checkpointer> {
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
            .name(super::CHECKPOINT_THREAD.into())
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

/// Whether every host `config` names is a Unix socket or a loopback address (where no network sees
/// the traffic).
pub(super) fn local_hosts(config: &tokio_postgres::Config) -> bool {
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

/// Makes `dir` (0700, where it does not exist) and `file` in it readable by the owner alone: created
/// 0600 where missing, tightened to 0600 where group or others could read it. SQLite gives its log and
/// shared-memory files the database file's mode, so they follow.
pub(super) fn private_file(dir: &Path, file: &Path) -> Result<(), String> {
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

pub(super) fn migrate(db: &mut Db, migrations: &[&str], path: &Path) -> Result<()> {
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
    pub(super) fn open_sqlite(data_dir: &Path, wal_restart_bytes: i64) -> Result<Store> {
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
            running: Mutex::default(),
            known_jobs: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
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
            running: Mutex::default(),
            known_jobs: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
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
}

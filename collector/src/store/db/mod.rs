//! The two backends behind one small, synchronous interface: the embedded SQLite file (the default) and
//! a shared PostgreSQL database (`--database postgres://...`). The store writes its SQL once, in the
//! subset both speak, with numbered parameters `?1`, `?2`, ... (rewritten to `$1`, `$2` for PostgreSQL).
//!
//! Write transactions: SQLite's `BEGIN IMMEDIATE` takes the database's write lock, so there every
//! writer is serial. On PostgreSQL a transaction says what orders it ([`Lock`]): a report commit locks
//! only its hosts' rows (replicas commit different hosts' reports in parallel); the transparency log's
//! sequencer takes the log's advisory lock; the rare administrative writes (enrollment, rotation,
//! revocation, decisions, migrations) take one store-wide advisory lock among themselves.
//!
//! The PostgreSQL client is tokio-postgres, its connection driven on a thread of its own; the store
//! waits on the client's futures with a plain thread-parking executor, so it works the same from a
//! blocking thread, a test, or (as SQLite does) briefly from inside the runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use futures_util::StreamExt;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

mod pg;
mod values;

pub use pg::Pg;
use pg::*;
pub(crate) use values::params;
use values::*;
pub use values::{FromCol, P, Row};

/// The advisory lock key administrative PostgreSQL write transactions take ("gpuattst" in ASCII).
const WRITE_LOCK: i64 = 0x6770_7561_7474_7374;
/// The advisory lock held while migrating, so replicas starting together migrate once.
const MIGRATE_LOCK: i64 = WRITE_LOCK + 1;
/// The advisory lock a sequencing transaction takes: log indexes are assigned by one transaction at a
/// time, whichever replica runs it. Keyed by the schema, as stores sharing a database (one schema
/// each) have logs of their own.
const LOG_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('gpuattest-log:' || current_schema(), 0))";
/// The session-level advisory lock the elected sequencer holds on its own connection (per schema, as
/// [`LOG_LOCK`]); PostgreSQL releases it when that connection ends (the replica died, or its network
/// did), and another replica takes it.
const SEQUENCER_LOCK: Sql =
    "SELECT pg_try_advisory_lock(hashtextextended('gpuattest-sequencer:' || current_schema(), 0))";

/// What orders a write transaction on PostgreSQL (SQLite: every writer is serial anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// The store-wide advisory lock: administrative writes, serial among themselves.
    Store,
    /// The transparency log's advisory lock: the sequencer.
    Log,
    /// No advisory lock: the transaction locks the rows it depends on (`SELECT .. FOR UPDATE`, in a
    /// fixed order), so transactions on other rows run in parallel.
    Rows,
}
/// Longest a PostgreSQL statement may run before the server cancels it.
const STATEMENT_TIMEOUT_MS: u32 = 60_000;

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite's error.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error (with the server's message where there is one).
    #[error("{}", pg_message(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// A value of the wrong type or range.
    #[error("{0}")]
    Value(String),
    /// The PostgreSQL connection was lost inside a transaction: everything it wrote is gone with it,
    /// and nothing of it may be reported as stored.
    #[error("the PostgreSQL connection was lost inside a transaction; nothing of it was stored")]
    LostTransaction,
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A connection to either backend.
pub enum Db {
    /// The embedded store.
    Sqlite(rusqlite::Connection),
    /// The shared store.
    Pg(Box<Pg>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Db::Sqlite",
            Db::Pg(_) => "Db::Pg",
        })
    }
}

/// SQL text the store passes: static for the statement caches, or built once at run time.
pub type Sql = &'static str;

/// The most rows one [`values_sql`] statement inserts; callers chunk longer lists, so at most this
/// many variants of each statement are ever built.
pub const MAX_ROWS: usize = 16;

/// `prefix`, then `rows` groups of `cols` numbered parameters (`(?1, ?2), (?3, ?4)`), then `suffix`:
/// one statement inserting several rows. Built once per statement and row count, and kept for the
/// life of the process like the literal statements (bounded by [`MAX_ROWS`] per statement).
///
/// # Panics
/// When `rows` is 0 or above [`MAX_ROWS`] (a caller's bug).
pub fn values_sql(prefix: &'static str, cols: usize, rows: usize, suffix: &'static str) -> Sql {
    use std::sync::{Mutex, OnceLock};
    /// (prefix's address, suffix's address, rows) -> the statement.
    type Built = HashMap<(usize, usize, usize), Sql>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    assert!((1..=MAX_ROWS).contains(&rows), "values_sql: {rows} rows");
    // By prefix and suffix: two statements may share one prefix (identical literals are one string)
    // and differ in their ON CONFLICT clause.
    let key = (prefix.as_ptr() as usize, suffix.as_ptr() as usize, rows);
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    built.entry(key).or_insert_with(|| {
        let groups: Vec<String> = (0..rows)
            .map(|r| {
                let ps: Vec<String> = (1..=cols).map(|c| format!("?{}", r * cols + c)).collect();
                format!("({})", ps.join(", "))
            })
            .collect();
        Box::leak(format!("{prefix}{}{suffix}", groups.join(", ")).into_boxed_str())
    })
}

impl Db {
    /// Runs a statement; the number of rows it changed.
    ///
    /// # Errors
    /// The backend's error.
    pub fn execute(&mut self, sql: Sql, params: &[P<'_>]) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params))? as u64),
            Db::Pg(pg) => {
                let st = pg.statement(sql)?;
                Ok(block_on(pg.client.execute(&st, &pg_params(params)))?)
            }
        }
    }

    /// A write whose row count is not needed: on PostgreSQL it is queued and sent with the next
    /// statement as one pipeline (the report commit's dozens of inserts cost a few round trips, not
    /// one each); on SQLite, in-process, it runs at once. Its error, if any, surfaces at that next
    /// statement, inside the same transaction.
    ///
    /// # Errors
    /// The backend's error (SQLite), or preparing the statement (PostgreSQL).
    pub fn defer(&mut self, sql: Sql, params: &[P<'_>]) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => self.execute(sql, params).map(|_| ()),
            Db::Pg(pg) => {
                let st = if let Some(st) = pg.statements.get(sql) { st.clone() } else { pg.statement(sql)? };
                pg.pending.push((st, params.iter().map(Owned::of).collect()));
                Ok(())
            }
        }
    }

    /// [`Db::defer`] for rows of `cols` values each (`params` holds them one row after another):
    /// `prefix` (`INSERT INTO t (..) VALUES `) with up to [`MAX_ROWS`] rows per statement, then `suffix`
    /// (`ON CONFLICT ..`). An upsert's rows must have distinct keys: PostgreSQL refuses a statement
    /// that would update one row twice.
    ///
    /// # Errors
    /// As [`Db::defer`].
    ///
    /// # Panics
    /// When `params` is not a whole number of rows (a caller's bug).
    pub fn defer_values(
        &mut self,
        prefix: &'static str,
        cols: usize,
        suffix: &'static str,
        params: &[P<'_>],
    ) -> Result<(), DbError> {
        assert!(
            cols > 0 && params.len().is_multiple_of(cols),
            "defer_values: {} values in rows of {cols}",
            params.len()
        );
        for chunk in params.chunks(cols * MAX_ROWS) {
            self.defer(values_sql(prefix, cols, chunk.len() / cols, suffix), chunk)?;
        }
        Ok(())
    }

    /// Marks a PostgreSQL write transaction open or ended: while one is open, a lost connection is an
    /// error, never silently replaced (the statements after it would each commit on their own, and a
    /// COMMIT on a fresh connection "succeeds" with nothing to commit).
    fn in_transaction(&mut self, open: bool) {
        if let Db::Pg(pg) = self {
            pg.in_tx = open;
            pg.lost = false;
        }
    }

    /// Drops deferred writes that were not sent (before a rollback, which undoes them anyway).
    fn discard(&mut self) {
        if let Db::Pg(pg) = self {
            pg.pending.clear();
        }
    }

    /// Rolls back to the report savepoint. Deferred statements are sent first (their errors do not
    /// matter: the rollback undoes them), so the savepoint itself has been made.
    fn undo_savepoint(&mut self) -> Result<(), DbError> {
        if let Db::Pg(pg) = self {
            let _ = pg.flush();
        }
        self.batch("ROLLBACK TO SAVEPOINT report; RELEASE SAVEPOINT report")
    }

    /// Calls `f` on each row, in order, without holding them all in memory.
    ///
    /// # Errors
    /// The backend's error, or the first error `f` returns.
    pub fn for_each(
        &mut self,
        sql: Sql,
        params: &[P<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        match self {
            Db::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params))?;
                while let Some(r) = rows.next()? {
                    f(&Row::Sqlite(r))?;
                }
                Ok(())
            }
            Db::Pg(pg) if !pg.pending.is_empty() => {
                for r in pg.query_after_writes(sql, params)? {
                    f(&Row::Pg(&r))?;
                }
                Ok(())
            }
            Db::Pg(pg) => {
                let st = pg.statement(sql)?;
                let stream = block_on(pg.client.query_raw(&st, pg_params(params)))?;
                let mut stream = std::pin::pin!(stream);
                while let Some(r) = block_on(stream.next()) {
                    f(&Row::Pg(&r?))?;
                }
                Ok(())
            }
        }
    }

    /// Every row, mapped.
    ///
    /// # Errors
    /// As [`Db::for_each`].
    pub fn rows<T>(
        &mut self,
        sql: Sql,
        params: &[P<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut out = Vec::new();
        self.for_each(sql, params, |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    ///
    /// # Errors
    /// As [`Db::for_each`].
    pub fn row<T>(
        &mut self,
        sql: Sql,
        params: &[P<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        match self {
            Db::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params))?;
                rows.next()?.map(|r| f(&Row::Sqlite(r))).transpose()
            }
            Db::Pg(pg) => {
                let rows = pg.query_after_writes(sql, params)?;
                rows.first().map(|r| f(&Row::Pg(r))).transpose()
            }
        }
    }

    /// Several statements without parameters (DDL, transaction control).
    ///
    /// # Errors
    /// The backend's error.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Pg(pg) => Ok(block_on(pg.live()?.batch_execute(sql))?),
        }
    }

    /// Begins an administrative write transaction, serialised with every other one of this store
    /// (other replicas included): [`Lock::Store`]. Dropped without [`Tx::commit`], it rolls back.
    ///
    /// # Errors
    /// The backend's error (SQLite: busy beyond the timeout).
    pub fn write(&mut self) -> Result<Tx<'_>, DbError> {
        self.write_under(Lock::Store)
    }

    /// Begins a write transaction ordered by `lock` (see [`Lock`]). Dropped without [`Tx::commit`], it
    /// rolls back.
    ///
    /// # Errors
    /// The backend's error (SQLite: busy beyond the timeout).
    pub fn write_under(&mut self, lock: Lock) -> Result<Tx<'_>, DbError> {
        let begun = match self {
            Db::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE").map_err(DbError::from),
            Db::Pg(pg) => pg.live().and_then(|client| {
                let begin = match lock {
                    Lock::Store => format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"),
                    Lock::Log => format!("BEGIN; {LOG_LOCK}"),
                    Lock::Rows => "BEGIN".to_string(),
                };
                Ok(block_on(client.batch_execute(&begin))?)
            }),
        };
        if let Err(e) = begun {
            // BEGIN may have succeeded and the lock not (a timeout): never leave a transaction open.
            self.discard();
            let _ = self.batch("ROLLBACK");
            return Err(e);
        }
        self.in_transaction(true);
        Ok(Tx { db: self, open: true })
    }

    /// Takes the migration lock (PostgreSQL; SQLite's migration transactions are exclusive already).
    ///
    /// # Errors
    /// The backend's error.
    pub fn lock_migrations(&mut self, lock: bool) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Pg(pg) => {
                let f = if lock { "pg_advisory_lock" } else { "pg_advisory_unlock" };
                Ok(block_on(pg.live()?.batch_execute(&format!("SELECT {f}({MIGRATE_LOCK})")))?)
            }
        }
    }

    /// Holds (or takes, if it is free) the sequencer's session-level advisory lock on PostgreSQL:
    /// `true` while this connection's session holds it, which makes this replica the store's
    /// sequencer. Asked again on a connection that was replaced after a loss, it answers for the new
    /// session, so a stale holder learns it lost the election. SQLite: always `true` (one process
    /// writes an embedded store).
    ///
    /// # Errors
    /// The backend's error.
    pub fn hold_sequencer_lock(&mut self) -> Result<bool, DbError> {
        match self {
            Db::Sqlite(_) => Ok(true),
            // Session-level advisory locks stack (a counter per session, freed with the session);
            // the sequencer asks about once a second.
            Db::Pg(_) => Ok(self.row(SEQUENCER_LOCK, params![], |r| r.get::<i64>(0))?.is_some_and(|held| held != 0)),
        }
    }

    /// A second connection to the same PostgreSQL database, with its own session (`None` for SQLite,
    /// whose store has one writer), named `application_name` in `pg_stat_activity`.
    ///
    /// # Errors
    /// Connecting.
    pub fn another(&self, application_name: &str) -> Option<Result<Db, DbError>> {
        match self {
            Db::Sqlite(_) => None,
            Db::Pg(pg) => {
                let mut config = pg.config.clone();
                config.application_name(application_name);
                Some(Pg::connect(config, pg.transport.clone()).map(|p| Db::Pg(Box::new(p))))
            }
        }
    }

    /// Which backend.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Pg(_))
    }
}

/// A write transaction; rolls back unless committed.
pub struct Tx<'a> {
    db: &'a mut Db,
    open: bool,
}

impl Tx<'_> {
    /// Commits.
    ///
    /// # Errors
    /// The backend's error; nothing is stored then.
    pub fn commit(mut self) -> Result<(), DbError> {
        self.open = false;
        let committed = self.db.batch("COMMIT");
        self.db.in_transaction(false);
        if committed.is_err() {
            // A deferred write failed before COMMIT was sent, or COMMIT failed: end the transaction, so
            // the connection is usable for the next one.
            self.db.discard();
            let _ = self.db.batch("ROLLBACK");
        }
        committed
    }

    /// Runs `f` in a savepoint: its writes stay when it returns `Ok(true)`, and are undone (leaving the
    /// transaction usable) when it returns `Ok(false)` or an error.
    ///
    /// # Errors
    /// `f`'s error, or the backend's.
    pub fn savepoint<T, E: From<DbError>>(&mut self, f: impl FnOnce(&mut Db) -> Result<(T, bool), E>) -> Result<T, E> {
        // Sent with the body's first statements (and the release with the next report's).
        self.db.defer("SAVEPOINT report", params![])?;
        match f(self.db) {
            Ok((v, true)) => {
                // The body's deferred writes must succeed before it counts as kept: their errors would
                // otherwise surface inside the next savepoint.
                if let Db::Pg(pg) = &mut *self.db
                    && let Err(e) = pg.flush()
                {
                    self.db.undo_savepoint()?;
                    return Err(e.into());
                }
                self.db.defer("RELEASE SAVEPOINT report", params![])?;
                Ok(v)
            }
            Ok((v, false)) => {
                self.db.undo_savepoint()?;
                Ok(v)
            }
            Err(e) => {
                self.db.undo_savepoint()?;
                Err(e)
            }
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.db.discard();
            self.db.in_transaction(false);
            let _ = self.db.batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dollar;

    /// A connection killed inside a transaction: later statements must fail, not run one by one on a
    /// fresh connection (each committing on its own), and COMMIT must fail, not "succeed" there.
    #[test]
    fn a_connection_lost_inside_a_transaction_fails_the_transaction() {
        use super::{Db, DbError, Pg};
        let Some(scratch) = crate::tools::scratch::ScratchSchema::or_skip("lost transaction") else { return };
        let config = scratch.url.parse().expect("url");
        let mut db = Db::Pg(Box::new(Pg::connect(config, crate::store::pgtls::Transport::Plain).expect("connect")));
        db.batch("CREATE TABLE lost_tx (n BIGINT NOT NULL)").expect("table");
        let mut tx = db.write().expect("begin");
        tx.execute("INSERT INTO lost_tx (n) VALUES (1)", &[]).expect("insert");
        // The server ends this session (as a failover or an operator's pg_terminate_backend would).
        assert!(tx.batch("SELECT pg_terminate_backend(pg_backend_pid())").is_err());
        let after = tx.execute("INSERT INTO lost_tx (n) VALUES (2)", &[]);
        assert!(after.is_err(), "{after:?}");
        let committed = tx.commit();
        assert!(
            matches!(committed, Err(DbError::LostTransaction)),
            "nothing of it may be reported stored: {committed:?}"
        );
        let n: Vec<i64> = db.rows("SELECT COUNT(*) FROM lost_tx", &[], |r| r.get(0)).expect("count");
        assert_eq!(n, vec![0], "no statement of the lost transaction ran on its own");
        db.batch("INSERT INTO lost_tx (n) VALUES (3)").expect("the store goes on");
    }

    #[test]
    fn multi_row_statements_number_every_parameter() {
        const P: &str = "INSERT INTO t (a, b) VALUES ";
        assert_eq!(super::values_sql(P, 2, 1, ""), "INSERT INTO t (a, b) VALUES (?1, ?2)");
        let two = super::values_sql(P, 2, 2, " ON CONFLICT DO NOTHING");
        assert_eq!(two, "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4) ON CONFLICT DO NOTHING");
        assert!(std::ptr::eq(two, super::values_sql(P, 2, 2, " ON CONFLICT DO NOTHING")), "built once");
        // One prefix, another suffix: another statement, not the first one's.
        assert_eq!(
            super::values_sql(P, 2, 2, " ON CONFLICT (a) DO UPDATE SET b = excluded.b"),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
        );
    }

    #[test]
    fn numbered_parameters_become_dollar_parameters() {
        assert_eq!(dollar("SELECT a FROM t WHERE b = ?1 AND c = ?12"), "SELECT a FROM t WHERE b = $1 AND c = $12");
        assert_eq!(dollar("SELECT '?' , x ?"), "SELECT '?' , x ?");
    }
}

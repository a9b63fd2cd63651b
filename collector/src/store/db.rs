//! The two backends behind one small, synchronous interface: the embedded SQLite file (the default) and
//! a shared PostgreSQL database (`--database postgres://...`). The store writes its SQL once, in the
//! subset both speak, with numbered parameters `?1`, `?2`, ... (rewritten to `$1`, `$2` for PostgreSQL).
//!
//! Write transactions are serialised the same way on both: SQLite's `BEGIN IMMEDIATE` takes the
//! database's write lock; on PostgreSQL every write transaction takes one transaction-scoped advisory
//! lock, so several collector replicas append to the hash chains and the transparency log in one order.
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

/// The advisory lock key every PostgreSQL write transaction takes ("gpuattst" in ASCII).
const WRITE_LOCK: i64 = 0x6770_7561_7474_7374;
/// The advisory lock held while migrating, so replicas starting together migrate once.
const MIGRATE_LOCK: i64 = WRITE_LOCK + 1;
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

/// A parameter value. Integers travel as 64-bit on both backends (every integer column is 64-bit).
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    /// NULL.
    Null,
    /// An integer.
    I(i64),
    /// A float.
    F(f64),
    /// Text.
    T(&'a str),
    /// Bytes.
    B(&'a [u8]),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for P<'_> {
            fn from(v: $t) -> Self {
                P::I(i64::from(v))
            }
        }
    )*};
}
from_int!(i64, i32, u32, u16, u8, bool);

impl From<u64> for P<'_> {
    /// Values above `i64::MAX` (never produced by the agent) are clamped rather than wrapped.
    fn from(v: u64) -> Self {
        P::I(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for P<'_> {
    fn from(v: usize) -> Self {
        P::I(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for P<'_> {
    fn from(v: f64) -> Self {
        P::F(v)
    }
}
impl<'a> From<&'a str> for P<'a> {
    fn from(v: &'a str) -> Self {
        P::T(v)
    }
}
impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::T(v)
    }
}
impl<'a> From<&'a [u8]> for P<'a> {
    fn from(v: &'a [u8]) -> Self {
        P::B(v)
    }
}
impl<'a> From<&'a Vec<u8>> for P<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        P::B(v)
    }
}
impl<'a, const N: usize> From<&'a [u8; N]> for P<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        P::B(v)
    }
}
impl<'a> From<&'a Option<String>> for P<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(P::Null, P::T)
    }
}
impl<'a, T: Into<P<'a>>> From<Option<T>> for P<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(P::Null, Into::into)
    }
}

/// Parameters for a statement: `params![a, b, c]`.
macro_rules! params {
    () => { &[] as &[$crate::store::db::P<'_>] };
    ($($e:expr),+ $(,)?) => { &[$($crate::store::db::P::from($e)),+] as &[$crate::store::db::P<'_>] };
}
pub(crate) use params;

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            P::Null => ValueRef::Null,
            P::I(v) => ValueRef::Integer(v),
            P::F(v) => ValueRef::Real(v),
            P::T(v) => ValueRef::Text(v.as_bytes()),
            P::B(v) => ValueRef::Blob(v),
        }))
    }
}

impl ToSql for P<'_> {
    /// Encodes for the type the server inferred, so `?1` works against BIGINT, INTEGER, BOOLEAN or
    /// DOUBLE PRECISION alike.
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            P::Null => Ok(IsNull::Yes),
            P::I(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            P::F(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ => Err(format!("a float cannot be sent as {ty}").into()),
            },
            P::T(v) => match *ty {
                Type::JSONB => {
                    // jsonb's binary form: a version byte, then the text.
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSON | Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(format!("text cannot be sent as {ty}").into()),
            },
            P::B(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A parameter kept until a pipelined write is sent.
#[derive(Debug, Clone)]
enum Owned {
    Null,
    I(i64),
    F(f64),
    T(String),
    B(Vec<u8>),
}

impl Owned {
    fn of(p: &P<'_>) -> Owned {
        match *p {
            P::Null => Owned::Null,
            P::I(v) => Owned::I(v),
            P::F(v) => Owned::F(v),
            P::T(v) => Owned::T(v.to_string()),
            P::B(v) => Owned::B(v.to_vec()),
        }
    }

    fn borrow(&self) -> P<'_> {
        match self {
            Owned::Null => P::Null,
            Owned::I(v) => P::I(*v),
            Owned::F(v) => P::F(*v),
            Owned::T(v) => P::T(v),
            Owned::B(v) => P::B(v),
        }
    }
}

/// A value read from a row.
pub trait FromCol: Sized {
    /// From a SQLite row.
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError>;
    /// From a PostgreSQL row.
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError>;
}

fn pg_int(r: &tokio_postgres::Row, i: usize) -> Result<Option<i64>, DbError> {
    let ty = r.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| DbError::Value(format!("no column {i}")))?;
    Ok(match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?,
        Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(i64::from),
        Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(i64::from),
        Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(i64::from),
        other => return Err(DbError::Value(format!("column {i} is {other}, not an integer"))),
    })
}

fn pg_float(r: &tokio_postgres::Row, i: usize) -> Result<Option<f64>, DbError> {
    let ty = r.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| DbError::Value(format!("no column {i}")))?;
    Ok(match ty {
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?,
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(f64::from),
        _ => pg_int(r, i)?.map(|v| v as f64),
    })
}

impl FromCol for Option<i64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        pg_int(r, i)
    }
}
impl FromCol for Option<f64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        pg_float(r, i)
    }
}
impl FromCol for Option<String> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        Ok(r.try_get(i)?)
    }
}
impl FromCol for Option<Vec<u8>> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        Ok(r.try_get(i)?)
    }
}
impl FromCol for Option<u32> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Option::<i64>::sqlite(r, i)?.map(narrow).transpose()
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        pg_int(r, i)?.map(narrow).transpose()
    }
}

fn narrow(v: i64) -> Result<u32, DbError> {
    u32::try_from(v).map_err(|_| DbError::Value(format!("{v} does not fit in 32 bits")))
}

macro_rules! not_null {
    ($($t:ty),*) => {$(
        impl FromCol for $t {
            fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
                Option::<$t>::sqlite(r, i)?.ok_or_else(|| DbError::Value(format!("column {i} is NULL")))
            }
            fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
                Option::<$t>::pg(r, i)?.ok_or_else(|| DbError::Value(format!("column {i} is NULL")))
            }
        }
    )*};
}
not_null!(i64, f64, String, Vec<u8>, u32);

/// One row, of either backend.
pub enum Row<'r> {
    /// SQLite.
    Sqlite(&'r rusqlite::Row<'r>),
    /// PostgreSQL.
    Pg(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `i` as `T`.
    ///
    /// # Errors
    /// [`DbError`] when the column is missing, NULL where `T` is not an `Option`, or of another type.
    pub fn get<T: FromCol>(&self, i: usize) -> Result<T, DbError> {
        match self {
            Row::Sqlite(r) => T::sqlite(r, i),
            Row::Pg(r) => T::pg(r, i),
        }
    }

    /// Column `i` as an unsigned sequence number or count.
    ///
    /// # Errors
    /// As [`Row::get`]; a negative value is an error.
    pub fn u64(&self, i: usize) -> Result<u64, DbError> {
        let v: i64 = self.get(i)?;
        u64::try_from(v).map_err(|_| DbError::Value(format!("column {i} is negative ({v})")))
    }
}

/// A connection to either backend.
pub enum Db {
    /// The embedded store.
    Sqlite(rusqlite::Connection),
    /// The shared store.
    Pg(Box<Pg>),
}

/// A PostgreSQL connection with its prepared statements and the writes waiting to be pipelined.
pub struct Pg {
    config: tokio_postgres::Config,
    transport: super::pgtls::Transport,
    client: tokio_postgres::Client,
    statements: HashMap<&'static str, tokio_postgres::Statement>,
    pending: Vec<(tokio_postgres::Statement, Vec<Owned>)>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Db::Sqlite",
            Db::Pg(_) => "Db::Pg",
        })
    }
}

/// Runs `f` to completion on this thread, parking between polls. The futures are tokio-postgres
/// client calls: channel sends and receives to the connection task on its own thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Connects with `tls`, hands the client over `tx`, and drives the connection until it ends.
async fn drive<T>(
    config: &tokio_postgres::Config,
    tls: T,
    tx: std::sync::mpsc::SyncSender<Result<tokio_postgres::Client, DbError>>,
) where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send,
{
    match config.connect(tls).await {
        Ok((client, connection)) => {
            let _ = tx.send(Ok(client));
            if let Err(e) = connection.await {
                tracing::warn!(error = %pg_message(&e), "PostgreSQL connection ended");
            }
        }
        Err(e) => {
            let _ = tx.send(Err(DbError::Pg(e)));
        }
    }
}

/// `?N` to `$N`. The store's SQL has no `?` inside string literals.
fn dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl Pg {
    /// Connects, with the connection driven on a thread of its own.
    ///
    /// # Errors
    /// The server's or the network's error.
    pub fn connect(mut config: tokio_postgres::Config, transport: super::pgtls::Transport) -> Result<Pg, DbError> {
        if config.get_application_name().is_none() {
            // How a database administrator tells the collectors' sessions apart in pg_stat_activity.
            config.application_name("gpuattest-collector");
        }
        if config.get_connect_timeout().is_none() {
            // An unreachable server is one clear error in seconds, not a TCP timeout minutes later.
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        match &transport {
            super::pgtls::Transport::Plain => config.ssl_mode(tokio_postgres::config::SslMode::Disable),
            super::pgtls::Transport::Tls { required: true, .. } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require)
            }
            super::pgtls::Transport::Tls { required: false, .. } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Prefer)
            }
        };
        let client = Self::spawn(&config, &transport)?;
        Ok(Pg { config, transport, client, statements: HashMap::new(), pending: Vec::new() })
    }

    fn spawn(
        config: &tokio_postgres::Config,
        transport: &super::pgtls::Transport,
    ) -> Result<tokio_postgres::Client, DbError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let config = config.clone();
        let transport = transport.clone();
        std::thread::Builder::new()
            .name("gpuattest-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(DbError::Value(format!("cannot start the PostgreSQL thread: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    match transport {
                        super::pgtls::Transport::Plain => drive(&config, tokio_postgres::NoTls, tx).await,
                        super::pgtls::Transport::Tls { connector, .. } => drive(&config, connector, tx).await,
                    }
                });
            })
            .map_err(|e| DbError::Value(format!("cannot start the PostgreSQL thread: {e}")))?;
        let client = rx.recv().map_err(|_| DbError::Value("the PostgreSQL thread stopped".into()))??;
        block_on(client.batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}")))?;
        Ok(client)
    }

    /// Sends the deferred writes as one pipeline (one round trip), in order; the first error wins.
    fn flush(&mut self) -> Result<(), DbError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pipeline(None).map(drop)
    }

    /// Runs a query after the deferred writes, in the same pipeline: one round trip for both, where
    /// sending the writes first cost one of its own (a report's commit reads four times).
    fn query_after_writes(&mut self, sql: Sql, params: &[P<'_>]) -> Result<Vec<tokio_postgres::Row>, DbError> {
        if self.pending.is_empty() || self.client.is_closed() {
            let st = self.statement(sql)?;
            return Ok(block_on(self.client.query(&st, &pg_params(params)))?);
        }
        let st = self.cached(sql)?;
        self.pipeline(Some((&st, params)))
    }

    /// The deferred writes, in order, then `read` if given, as one pipeline (each call is queued on
    /// the connection when first polled); the first write error wins, then the read's.
    fn pipeline(
        &mut self,
        read: Option<(&tokio_postgres::Statement, &[P<'_>])>,
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let pending = std::mem::take(&mut self.pending);
        let owned: Vec<Vec<P<'_>>> = pending.iter().map(|(_, ps)| ps.iter().map(Owned::borrow).collect()).collect();
        let client = &self.client;
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = owned.iter().map(|ps| pg_params(ps)).collect();
        let writes = futures_util::future::try_join_all(
            pending.iter().zip(&refs).map(|((st, _), ps)| client.execute(st, ps.as_slice())),
        );
        match read {
            None => {
                block_on(writes)?;
                Ok(Vec::new())
            }
            Some((st, params)) => {
                let (written, rows) =
                    block_on(futures_util::future::join(writes, client.query(st, &pg_params(params))));
                written?;
                Ok(rows?)
            }
        }
    }

    /// A lost connection (server restart, failover) is replaced before the next statement; writes
    /// deferred before it are sent first.
    fn live(&mut self) -> Result<&tokio_postgres::Client, DbError> {
        self.flush()?;
        if self.client.is_closed() {
            tracing::warn!("PostgreSQL connection lost; reconnecting");
            self.client = Self::spawn(&self.config, &self.transport)?;
            self.statements.clear();
        }
        Ok(&self.client)
    }

    fn statement(&mut self, sql: &'static str) -> Result<tokio_postgres::Statement, DbError> {
        self.live()?;
        self.cached(sql)
    }

    fn cached(&mut self, sql: &'static str) -> Result<tokio_postgres::Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = block_on(self.client.prepare(&dollar(sql)))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

fn pg_params<'p>(params: &'p [P<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
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
    static BUILT: OnceLock<Mutex<HashMap<(usize, usize), Sql>>> = OnceLock::new();
    assert!((1..=MAX_ROWS).contains(&rows), "values_sql: {rows} rows");
    let key = (prefix.as_ptr() as usize, rows);
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

    /// Begins a write transaction, serialised with every other writer of this store (other replicas
    /// included). Dropped without [`Tx::commit`], it rolls back.
    ///
    /// # Errors
    /// The backend's error (SQLite: busy beyond the timeout).
    pub fn write(&mut self) -> Result<Tx<'_>, DbError> {
        let begun = match self {
            Db::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE").map_err(DbError::from),
            Db::Pg(pg) => pg.live().and_then(|client| {
                Ok(block_on(client.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")))?)
            }),
        };
        if let Err(e) = begun {
            // BEGIN may have succeeded and the lock not (a timeout): never leave a transaction open.
            self.discard();
            let _ = self.batch("ROLLBACK");
            return Err(e);
        }
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
            let _ = self.db.batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dollar;

    #[test]
    fn multi_row_statements_number_every_parameter() {
        const P: &str = "INSERT INTO t (a, b) VALUES ";
        assert_eq!(super::values_sql(P, 2, 1, ""), "INSERT INTO t (a, b) VALUES (?1, ?2)");
        let two = super::values_sql(P, 2, 2, " ON CONFLICT DO NOTHING");
        assert_eq!(two, "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4) ON CONFLICT DO NOTHING");
        assert!(std::ptr::eq(two, super::values_sql(P, 2, 2, " ON CONFLICT DO NOTHING")), "built once");
    }

    #[test]
    fn numbered_parameters_become_dollar_parameters() {
        assert_eq!(dollar("SELECT a FROM t WHERE b = ?1 AND c = ?12"), "SELECT a FROM t WHERE b = $1 AND c = $12");
        assert_eq!(dollar("SELECT '?' , x ?"), "SELECT '?' , x ?");
    }
}

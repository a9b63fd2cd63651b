//! The PostgreSQL connection: its client on a thread of its own, prepared statements, pipelined
//! writes, and the parking executor the synchronous store waits with.

use super::*;

/// A PostgreSQL connection with its prepared statements and the writes waiting to be pipelined.
pub struct Pg {
    pub(super) config: tokio_postgres::Config,
    pub(super) transport: crate::store::pgtls::Transport,
    pub(super) client: tokio_postgres::Client,
    pub(super) statements: HashMap<&'static str, tokio_postgres::Statement>,
    pub(super) pending: Vec<(tokio_postgres::Statement, Vec<Owned>)>,
    /// A write transaction is open (see `Db::in_transaction`).
    pub(super) in_tx: bool,
    /// The open transaction's connection was lost: every statement until it ends fails.
    pub(super) lost: bool,
}

/// Runs `f` to completion on this thread, parking between polls. The futures are tokio-postgres
/// client calls: channel sends and receives to the connection task on its own thread.
pub(super) fn block_on<F: Future>(f: F) -> F::Output {
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
pub(super) fn dollar(sql: &str) -> String {
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
    pub fn connect(
        mut config: tokio_postgres::Config,
        transport: crate::store::pgtls::Transport,
    ) -> Result<Pg, DbError> {
        if config.get_application_name().is_none() {
            // How a database administrator tells the collectors' sessions apart in pg_stat_activity.
            config.application_name("gpuattest-collector");
        }
        if config.get_connect_timeout().is_none() {
            // An unreachable server is one clear error in seconds, not a TCP timeout minutes later.
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        match &transport {
            crate::store::pgtls::Transport::Plain => config.ssl_mode(tokio_postgres::config::SslMode::Disable),
            crate::store::pgtls::Transport::Tls { required: true, .. } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require)
            }
            crate::store::pgtls::Transport::Tls { required: false, .. } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Prefer)
            }
        };
        let client = Self::spawn(&config, &transport)?;
        Ok(Pg { config, transport, client, statements: HashMap::new(), pending: Vec::new(), in_tx: false, lost: false })
    }

    pub(super) fn spawn(
        config: &tokio_postgres::Config,
        transport: &crate::store::pgtls::Transport,
    ) -> Result<tokio_postgres::Client, DbError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let config = config.clone();
        let transport = transport.clone();
        std::thread::Builder::new()
            .name(crate::store::PG_THREAD.into())
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
                        crate::store::pgtls::Transport::Plain => drive(&config, tokio_postgres::NoTls, tx).await,
                        crate::store::pgtls::Transport::Tls { connector, .. } => drive(&config, connector, tx).await,
                    }
                });
            })
            .map_err(|e| DbError::Value(format!("cannot start the PostgreSQL thread: {e}")))?;
        let client = rx.recv().map_err(|_| DbError::Value("the PostgreSQL thread stopped".into()))??;
        block_on(client.batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}")))?;
        Ok(client)
    }

    /// Sends the deferred writes as one pipeline (one round trip), in order; the first error wins.
    pub(super) fn flush(&mut self) -> Result<(), DbError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pipeline(None).map(drop)
    }

    /// Runs a query after the deferred writes, in the same pipeline: one round trip for both, where
    /// sending the writes first cost one of its own (a report's commit reads four times).
    pub(super) fn query_after_writes(
        &mut self,
        sql: Sql,
        params: &[P<'_>],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        if self.pending.is_empty() || self.client.is_closed() {
            let st = self.statement(sql)?;
            return Ok(block_on(self.client.query(&st, &pg_params(params)))?);
        }
        let st = self.cached(sql)?;
        self.pipeline(Some((&st, params)))
    }

    /// The deferred writes, in order, then `read` if given, as one pipeline (each call is queued on
    /// the connection when first polled); the first write error wins, then the read's.
    pub(super) fn pipeline(
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
    pub(super) fn live(&mut self) -> Result<&tokio_postgres::Client, DbError> {
        if self.in_tx && self.lost {
            self.pending.clear();
            return Err(DbError::LostTransaction);
        }
        self.flush()?;
        if self.client.is_closed() {
            tracing::warn!("PostgreSQL connection lost; reconnecting");
            self.client = Self::spawn(&self.config, &self.transport)?;
            self.statements.clear();
            if self.in_tx {
                // The transaction died with the connection: none of its statements may run on the new
                // one outside any transaction, and its COMMIT must not "succeed" there.
                self.lost = true;
                self.pending.clear();
                return Err(DbError::LostTransaction);
            }
        }
        Ok(&self.client)
    }

    pub(super) fn statement(&mut self, sql: &'static str) -> Result<tokio_postgres::Statement, DbError> {
        self.live()?;
        self.cached(sql)
    }

    pub(super) fn cached(&mut self, sql: &'static str) -> Result<tokio_postgres::Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = block_on(self.client.prepare(&dollar(sql)))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

pub(super) fn pg_params<'p>(params: &'p [P<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

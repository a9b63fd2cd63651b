//! The commit: a verified report, its decoded rows, the host's new position, its queued log leaf, job accounting, evidence and flags, in one transaction (one report, or a group of them).

use super::*;

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

/// A host's chain position and standing, read inside the report transaction.
pub(super) struct HostPosition {
    last_seq: i64,
    last_hash: Option<Vec<u8>>,
    revoked: bool,
    tenant: Option<String>,
    /// This (host, seq) is already stored.
    stored: bool,
    /// The host's current key id.
    key_id: Vec<u8>,
}

pub(super) fn incoming(item: &PendingCommit) -> IncomingReport<'_> {
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

/// Begins a report transaction: no store-wide lock; on PostgreSQL the hosts' rows are locked at once,
/// in host order (so two replicas' batches never wait on each other in a circle), and held to the
/// commit: a host's reports commit one transaction at a time, in its sequence order, while other hosts'
/// reports commit beside them on any replica. (SQLite: `BEGIN IMMEDIATE`, serial anyway.)
pub(super) fn begin_reports<'a>(conn: &'a mut Db, hosts: &[&str]) -> Result<db::Tx<'a>, DbError> {
    let mut tx = conn.write_under(db::Lock::Rows)?;
    if tx.is_postgres() {
        let mut hosts: Vec<&str> = hosts.to_vec();
        hosts.sort_unstable();
        hosts.dedup();
        tx.rows(
            "SELECT host_id FROM hosts WHERE host_id = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(?1 AS jsonb)))) \
             ORDER BY host_id FOR UPDATE",
            params![&serde_json::to_string(&hosts).unwrap_or_default()],
            |_| Ok(()),
        )?;
    }
    Ok(tx)
}

fn batch_hosts(items: &[PendingCommit]) -> Vec<&str> {
    items.iter().map(|i| i.host_id.as_str()).collect()
}

/// The whole batch in one transaction without savepoints; `None`, with everything rolled back, at the
/// first error (or a failed commit).
pub(super) fn batch_together(conn: &mut Db, items: &[PendingCommit]) -> Option<Vec<Result<Commit>>> {
    let mut tx = begin_reports(conn, &batch_hosts(items)).ok()?;
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
pub(super) fn batch_isolated(conn: &mut Db, items: &[PendingCommit]) -> Vec<Result<Commit>> {
    let mut tx = match begin_reports(conn, &batch_hosts(items)) {
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
pub(super) fn commit_one(
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
    // Nothing per GPU or process is stored beside the verbatim bytes: what reads them (the review
    // timeline) decodes a bounded window of the host's reports.
    // The interval comes from the signed report (bounded), never from the stream's unauthenticated
    // opening message; 0 (an older agent) keeps what is stored.
    let interval = crate::verify::bounded_interval(r.interval_ms).map(|v| v as i64);
    tx.defer(
        "UPDATE hosts SET last_seq = ?1, last_hash = ?2, last_seen = ?3, interval_ms = COALESCE(?5, interval_ms) WHERE host_id = ?4",
        params![seq, &hash, incoming.received_at, host_id, interval],
    )
    .map_err(sql("advance host"))?;
    // Queued for the transparency log: the sequencer gives it its index (see `log::sequence`), so no
    // commit waits on another host's for a log position.
    let leaf = crate::merkle::leaf_hash(&log_leaf_data(host_id, r.seq, &hash));
    tx.defer("INSERT INTO log_queue (host_id, seq, leaf_hash) VALUES (?1, ?2, ?3)", params![host_id, seq, &leaf])
        .map_err(sql("queue for the transparency log"))?;
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

impl Store {
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
            let mut tx = begin_reports(&mut conn, &[host_id]).map_err(sql("begin"))?;
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
    pub(super) fn restart_wal_if_asked(&self, conn: &mut Db) {
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
}

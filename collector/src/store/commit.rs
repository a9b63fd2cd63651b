//! The commit: a verified report, its decoded rows, the host's new position, its queued log leaf, job accounting, evidence and flags, in one transaction (one report, or a group of them).

use super::rows::{BatchRows, HostMove, HostPosition, IncomingRef, ReportRow, write_rows};
use super::*;

/// A verified, decoded report to commit.
#[derive(Debug, Clone)]
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
///
/// The same statement reads the locked hosts' positions (returned, by host; empty on SQLite), so a
/// batch need not read each report's host again.
pub(super) fn begin_reports<'a>(
    conn: &'a mut Db,
    hosts: &[&str],
) -> Result<(db::Tx<'a>, std::collections::HashMap<String, HostPosition>), DbError> {
    let mut tx = conn.write_under(db::Lock::Rows)?;
    let mut positions = std::collections::HashMap::new();
    if tx.is_postgres() {
        // Every statement of a report transaction finds rows by key (`= ANY` of a batch's keys). On a
        // table of a few hundred rows the planner otherwise scans it whole and compares each row with
        // each key (a sixth of the database's CPU in the benchmark): index probes only, for this
        // transaction. Sent with the first read.
        tx.defer("SET LOCAL enable_seqscan = off", params![])?;
        let mut hosts: Vec<&str> = hosts.to_vec();
        hosts.sort_unstable();
        hosts.dedup();
        tx.for_each(
            concat!(
                "SELECT host_id, last_seq, last_hash, revoked_at, tenant, key_id, gpu_energy FROM hosts WHERE host_id",
                keys_in!(pg),
                " ORDER BY host_id FOR UPDATE"
            ),
            params![&serde_json::to_string(&hosts).unwrap_or_default()],
            |row| {
                let position = HostPosition {
                    last_seq: row.get(1)?,
                    last_hash: row.get(2)?,
                    revoked: row.get::<Option<i64>>(3)?.is_some(),
                    tenant: row.get(4)?,
                    stored: false,
                    key_id: row.get(5)?,
                    gpu_energy: row.get(6)?,
                };
                positions.insert(row.get(0)?, position);
                Ok(())
            },
        )?;
    }
    Ok((tx, positions))
}

/// Which of the batch's (host, seq) are stored already (PostgreSQL). Only a report at or behind its
/// host's position can be (a replay after a lost acknowledgement), so in the usual batch there is
/// nothing to look up; the rest are looked up one key at a time through the reports primary key.
/// (Joined to the batch's keys as a whole, the planner hashed the entire reports table for every
/// batch: 82 rows read per report after 8 s of the benchmark, and growing with the table.)
fn stored_already(
    tx: &mut Db,
    items: &[PendingCommit],
    hosts: &std::collections::HashMap<String, HostPosition>,
) -> Result<std::collections::HashSet<(String, i64)>, DbError> {
    let keys: Vec<serde_json::Value> = items
        .iter()
        .filter(|i| hosts.get(&i.host_id).is_some_and(|h| i.decoded.seq as i64 <= h.last_seq))
        .map(|i| serde_json::json!({"h": i.host_id, "s": i.decoded.seq as i64}))
        .collect();
    let mut found = std::collections::HashSet::new();
    if keys.is_empty() {
        return Ok(found);
    }
    // OFFSET 0 keeps the subquery from being pulled up into a join: one primary-key probe per key.
    tx.for_each(
        "SELECT r.host_id, r.seq FROM jsonb_to_recordset(CAST(?1 AS jsonb)) AS k(h text, s bigint) \
         CROSS JOIN LATERAL (SELECT host_id, seq FROM reports WHERE host_id = k.h AND seq = k.s OFFSET 0) r",
        params![&serde_json::Value::Array(keys).to_string()],
        |row| {
            found.insert((row.get(0)?, row.get(1)?));
            Ok(())
        },
    )?;
    Ok(found)
}

fn batch_hosts(items: &[PendingCommit]) -> Vec<&str> {
    items.iter().map(|i| i.host_id.as_str()).collect()
}

/// The parts of `i` its report row keeps.
fn incoming_ref<'a>(i: &IncomingReport<'a>) -> IncomingRef<'a> {
    IncomingRef { signed: i.signed, decoded: i.decoded, received_at: i.received_at, nonce_fresh: i.nonce_fresh }
}

/// The whole batch in one transaction without savepoints; `None`, with everything rolled back, at the
/// first error (or a failed commit).
pub(super) fn batch_together(store: &Store, conn: &mut Db, items: &[PendingCommit]) -> Option<Vec<Result<Commit>>> {
    let (mut tx, hosts) = begin_reports(conn, &batch_hosts(items)).ok()?;
    // PostgreSQL: the hosts' positions and which reports are stored already are read once for the
    // batch, and the report rows go in a few multi-row statements at the end (SQLite, in-process,
    // reads and writes report by report).
    let mut rows = if tx.is_postgres() {
        let stored_before = stored_already(&mut tx, items, &hosts).ok()?;
        Some(BatchRows { hosts, stored_before, ..BatchRows::default() })
    } else {
        None
    };
    let mut running = store.running_for(&mut tx);
    let mut known = rows.is_some().then(|| store.known_jobs());
    let group: Vec<(&str, IncomingReport<'_>)> = items.iter().map(|i| (i.host_id.as_str(), incoming(i))).collect();
    let (results, accounting) = commit_reports(
        &mut tx,
        &group,
        |i, pos, ctx| (items[i].flags_for)(&items[i].decoded, pos, ctx),
        rows.as_mut(),
        running.as_mut().map(|(r, _)| &mut **r),
        known.as_deref(),
    )
    .ok()?;
    if let Some(rows) = &rows {
        rows.write(&mut tx).ok()?;
    }
    tx.commit().ok()?;
    if let Some((r, stamp)) = &mut running {
        r.absorb(accounting, *stamp);
    } else if let Some(k) = &mut known {
        k.absorb(&accounting);
    }
    Some(results.into_iter().map(Ok).collect())
}

/// The batch with each report in its own savepoint.
pub(super) fn batch_isolated(conn: &mut Db, items: &[PendingCommit]) -> Vec<Result<Commit>> {
    let mut tx = match begin_reports(conn, &batch_hosts(items)) {
        Ok((tx, _)) => tx,
        Err(e) => {
            let msg = e.to_string();
            return items.iter().map(|_| Err(StoreError::Refused(format!("begin a batch: {msg}")))).collect();
        }
    };
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let r = tx.savepoint(|db| {
            let one = [(item.host_id.as_str(), incoming(item))];
            let c =
                commit_reports(db, &one, |_, pos, ctx| (item.flags_for)(&item.decoded, pos, ctx), None, None, None)?
                    .0
                    .pop()
                    .unwrap_or(Commit::HostGone);
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

/// A group of reports committed together, inside a transaction or savepoint the caller owns: each is
/// checked against its host's position (and the group's reports before it) and its row written; then
/// the stored ones are accounted together (see [`account`](super::account): read once, applied in order,
/// written once), their attestation evidence recorded and the policy's flags for each kept. Results are
/// in the order given; a report writes nothing unless its result is [`Commit::Stored`].
///
/// With `running` (the embedded store's running state, current for this transaction), the accounting
/// reads from it what it holds; the caller passes the returned accounting to
/// [`account::Running::absorb`] once the transaction has committed.
pub(super) fn commit_reports<'a>(
    tx: &mut Db,
    items: &[(&'a str, IncomingReport<'a>)],
    mut flags_for: impl FnMut(usize, &ChainPosition, &CommitContext) -> Vec<NewFlag>,
    mut batch: Option<&mut BatchRows<'a>>,
    running: Option<&mut account::Running>,
    known: Option<&account::KnownJobs>,
) -> Result<(Vec<Commit>, account::Accounting)> {
    let mut results = Vec::with_capacity(items.len());
    // The stored ones: their index, chain position and host tenant.
    let mut ready = Vec::new();
    for (i, (host_id, incoming)) in items.iter().enumerate() {
        match place(tx, host_id, incoming, batch.as_deref_mut())? {
            Placed::Refused(c) => results.push(c),
            Placed::Stored { position, tenant, gpu_energy } => {
                results.push(Commit::Stored { flags: 0 });
                ready.push((i, position, tenant, gpu_energy));
            }
        }
    }
    let accounted: Vec<jobs::JobReport<'_>> = ready
        .iter()
        .map(|(i, _, tenant, _)| {
            let (host_id, incoming) = &items[*i];
            jobs::JobReport {
                host_id,
                tenant: tenant.as_deref(),
                process_tenants: incoming.process_tenants,
                report: incoming.decoded,
                received_at: incoming.received_at,
            }
        })
        .collect();
    // Each host's counters before the group: those of the host's first report in it (a later one's
    // are the reports' before it, which the accounting has in memory).
    let mut counters = std::collections::HashMap::new();
    for (i, _, _, gpu_energy) in &ready {
        counters.entry(items[*i].0).or_insert(gpu_energy.as_deref());
    }
    let mut accounting = account::Accounting::load(tx, &accounted, &counters, running, known)?;
    for ((i, position, tenant, _), jr) in ready.iter().zip(&accounted) {
        let (host_id, incoming) = &items[*i];
        let r = incoming.decoded;
        let (jobs, moved_gpus) = accounting.apply(jr);
        let moved_devices = evidence::record(tx, host_id, r, incoming.evidence, incoming.received_at)?;
        let flags = flags_for(*i, position, &CommitContext { jobs, moved_gpus, moved_devices });
        for f in &flags {
            upsert_flag(tx, host_id, tenant.as_deref(), r.seq, incoming.received_at, f, incoming.reopen_decided)?;
        }
        results[*i] = Commit::Stored { flags: flags.len() };
    }
    accounting.write(tx)?;
    Ok((results, accounting))
}

/// Where [`place`] put a report.
enum Placed {
    /// Not stored, and why.
    Refused(Commit),
    /// Its row is written (or added to the batch's rows): it is stored once the group commits.
    Stored {
        /// The host's chain before it.
        position: ChainPosition,
        /// The host's tenant.
        tenant: Option<String>,
        /// The GPUs' energy counters in the host's report before it, as stored.
        gpu_energy: Option<String>,
    },
}

/// Checks a report against its host's position and key, and writes its row, the host's new position,
/// its queued log leaf and its gap record, unless it is refused.
fn place<'a>(
    tx: &mut Db,
    host_id: &'a str,
    incoming: &IncomingReport<'a>,
    batch: Option<&mut BatchRows<'a>>,
) -> Result<Placed> {
    let r = incoming.decoded;
    let seq = r.seq as i64;
    let preloaded = batch.as_deref().and_then(|b| {
        let mut h = b.hosts.get(host_id)?.clone();
        h.stored = b.stored_before.contains(&(host_id.to_string(), seq));
        Some(h)
    });
    let host = match preloaded {
        Some(h) => Some(h),
        None => tx
            .row(
                "SELECT last_seq, last_hash, revoked_at, tenant, \
               (SELECT COUNT(*) FROM reports WHERE host_id = ?1 AND seq = ?2), key_id, gpu_energy FROM hosts WHERE host_id = ?1",
                params![host_id, seq],
                |row| {
                    Ok(HostPosition {
                        last_seq: row.get(0)?,
                        last_hash: row.get(1)?,
                        revoked: row.get::<Option<i64>>(2)?.is_some(),
                        tenant: row.get(3)?,
                        stored: row.get::<i64>(4)? > 0,
                        key_id: row.get(5)?,
                        gpu_energy: row.get(6)?,
                    })
                },
            )
            .map_err(sql("read host position"))?,
    };
    let Some(HostPosition { mut last_seq, mut last_hash, revoked, tenant, mut stored, key_id, gpu_energy }) = host
    else {
        return Ok(Placed::Refused(Commit::HostGone));
    };
    // Reports earlier in this batch are not written yet: where they took the host counts.
    if let Some(b) = batch.as_deref() {
        if let Some((s, h)) = b.positions.get(host_id) {
            (last_seq, last_hash) = (*s, Some(h.to_vec()));
        }
        stored |= b.stored.contains(&(host_id, seq));
    }
    if revoked {
        return Ok(Placed::Refused(Commit::HostGone));
    }
    // The key's standing now, inside this transaction: a rotation committed after the report was
    // verified (or after its stream opened) still bites.
    if incoming.signed.key_id != key_id {
        match signing_key(tx, host_id, &incoming.signed.key_id)?.and_then(|k| k.valid_through) {
            Some(through) if r.seq <= through => {}
            through => return Ok(Placed::Refused(Commit::KeyRetired { through })),
        }
    }
    if stored {
        return Ok(Placed::Refused(Commit::Duplicate));
    }
    if seq <= last_seq {
        return Ok(Placed::Refused(Commit::Behind { last_seq: last_seq as u64 }));
    }
    let position = ChainPosition { last_seq: last_seq as u64, last_hash };
    let hash = gpuattest_proto::sha256(&incoming.signed.report);
    // The interval comes from the signed report (bounded), never from the stream's unauthenticated
    // opening message; 0 (an older agent) keeps what is stored.
    let interval = crate::verify::bounded_interval(r.interval_ms).map(|v| v as i64);
    // Queued for the transparency log: the sequencer gives it its index (see `sequencer`), so no
    // commit waits on another host's for a log position.
    let leaf = crate::merkle::leaf_hash(&log_leaf_data(host_id, r.seq, &hash));
    // Nothing per GPU or process is stored beside the verbatim bytes: what reads them (the review
    // timeline) decodes a bounded window of the host's reports.
    let row = ReportRow { host_id, incoming: incoming_ref(incoming), hash, interval, leaf };
    match batch {
        Some(b) => b.add(row),
        None => write_rows(tx, std::slice::from_ref(&row), &[HostMove::of(&row)])?,
    }
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
    Ok(Placed::Stored { position, tenant, gpu_energy })
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
        let mut conn = self.writer();
        let c = {
            let (mut tx, _) = begin_reports(&mut conn, &[host_id]).map_err(sql("begin"))?;
            let mut running = self.running_for(&mut tx);
            let mut flags_for = Some(flags_for);
            let items = [(host_id, incoming.clone())];
            let (mut results, accounting) = commit_reports(
                &mut tx,
                &items,
                |_, pos, ctx| flags_for.take().map_or_else(Vec::new, |f| f(pos, ctx)),
                None,
                running.as_mut().map(|(r, _)| &mut **r),
                None,
            )?;
            let c = results.pop().unwrap_or(Commit::HostGone);
            if matches!(c, Commit::Stored { .. }) {
                tx.commit().map_err(sql("commit report"))?;
                if let Some((r, stamp)) = &mut running {
                    r.absorb(accounting, *stamp);
                }
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
        let mut conn = self.writer();
        let results = match batch_together(self, &mut conn, &items) {
            Some(results) => results,
            None => {
                // The savepoint path does not keep the running state: it starts over from the database.
                self.running().forget();
                batch_isolated(&mut conn, &items)
            }
        };
        self.restart_wal_if_asked(&mut conn);
        results
    }

    /// The embedded store's running accounting state, checked against this transaction (see
    /// [`account::Running`]) and the stamp to keep it under; `None` on PostgreSQL. Held to the commit.
    fn running_for(&self, tx: &mut Db) -> Option<(std::sync::MutexGuard<'_, account::Running>, (i64, u64))> {
        if tx.is_postgres() {
            return None;
        }
        let mut running = self.running();
        // Changes when another connection (another process, a reader never) commits.
        match tx.row("PRAGMA data_version", params![], |r| r.get::<i64>(0)) {
            Ok(Some(version)) => {
                let stamp = (version, self.generation.load(std::sync::atomic::Ordering::Acquire));
                running.check(stamp);
                Some((running, stamp))
            }
            _ => {
                running.forget();
                None
            }
        }
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

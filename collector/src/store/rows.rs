//! What a stored report writes beside its accounting: its row (the signed bytes, verbatim), its host's
//! new position in its chain and its queued transparency-log leaf; and a batch's rows, written together
//! in a few multi-row statements before it commits.

use gpuattest_proto::pb;

use super::db::{Db, params};
use super::sightings::counters_json;
use super::{Result, sql};

/// A host's chain position and standing, read inside the report transaction.
#[derive(Clone)]
pub(super) struct HostPosition {
    pub(super) last_seq: i64,
    pub(super) last_hash: Option<Vec<u8>>,
    pub(super) revoked: bool,
    pub(super) tenant: Option<String>,
    /// This (host, seq) is already stored.
    pub(super) stored: bool,
    /// The host's current key id.
    pub(super) key_id: Vec<u8>,
    /// The GPUs' energy counters in the host's latest report (JSON; see [`super::sightings::counters_json`]).
    pub(super) gpu_energy: Option<String>,
}

/// What a stored report writes beside its accounting: its row, its host's new position, its queued
/// log leaf.
pub(super) struct ReportRow<'a> {
    pub(super) host_id: &'a str,
    pub(super) incoming: IncomingRef<'a>,
    pub(super) hash: [u8; 32],
    pub(super) interval: Option<i64>,
    pub(super) leaf: [u8; 32],
}

/// The parts of an [`IncomingReport`] a report row keeps.
#[derive(Clone, Copy)]
pub(super) struct IncomingRef<'a> {
    pub(super) signed: &'a pb::SignedReport,
    pub(super) decoded: &'a pb::UsageReport,
    pub(super) received_at: i64,
    pub(super) nonce_fresh: bool,
}

/// A batch's report rows, written together before it commits (PostgreSQL: a few multi-row statements
/// per batch instead of three statements per report), and where its reports have taken each host.
#[derive(Default)]
pub(super) struct BatchRows<'a> {
    /// The batch's hosts as read (and locked) when it began.
    pub(super) hosts: std::collections::HashMap<String, HostPosition>,
    /// Its (host, seq) already stored when it began.
    pub(super) stored_before: std::collections::HashSet<(String, i64)>,
    pub(super) rows: Vec<ReportRow<'a>>,
    pub(super) positions: std::collections::HashMap<&'a str, (i64, [u8; 32])>,
    pub(super) stored: std::collections::HashSet<(&'a str, i64)>,
}

impl<'a> BatchRows<'a> {
    pub(super) fn add(&mut self, row: ReportRow<'a>) {
        let seq = row.incoming.decoded.seq as i64;
        self.positions.insert(row.host_id, (seq, row.hash));
        self.stored.insert((row.host_id, seq));
        self.rows.push(row);
    }

    /// Writes the rows: reports and queued leaves in batch order, each host's last position once.
    pub(super) fn write(&self, tx: &mut Db) -> Result<()> {
        // Latest first: a host's move is its last report's (built once per host), with the latest
        // interval any of its reports gave.
        let mut last: std::collections::BTreeMap<&str, HostMove<'_>> = Default::default();
        for r in self.rows.iter().rev() {
            match last.entry(r.host_id) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let m = e.get_mut();
                    m.interval = m.interval.or(r.interval);
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(HostMove::of(r));
                }
            }
        }
        write_rows(tx, &self.rows, &last.into_values().collect::<Vec<_>>())
    }
}

/// A host's new position after a report: its sequence number and hash, when it arrived, its interval.
#[derive(Clone)]
pub(super) struct HostMove<'a> {
    pub(super) host: &'a str,
    pub(super) seq: i64,
    pub(super) hash: [u8; 32],
    pub(super) seen: i64,
    pub(super) interval: Option<i64>,
    /// Its report's GPU energy counters, kept for the energy of its next report.
    pub(super) energy: String,
}

impl<'a> HostMove<'a> {
    pub(super) fn of(r: &ReportRow<'a>) -> Self {
        HostMove {
            host: r.host_id,
            seq: r.incoming.decoded.seq as i64,
            hash: r.hash,
            seen: r.incoming.received_at,
            interval: r.interval,
            energy: counters_json(r.incoming.decoded),
        }
    }
}

/// Inserts `rows` (reports, then their queued leaves) and moves each host of `hosts` to its new
/// position: several rows per statement.
pub(super) fn write_rows(tx: &mut Db, rows: &[ReportRow<'_>], hosts: &[HostMove<'_>]) -> Result<()> {
    let mut ps = Vec::with_capacity(11 * rows.len());
    for row in rows {
        let (i, r) = (&row.incoming, row.incoming.decoded);
        ps.extend_from_slice(params![
            row.host_id,
            r.seq as i64,
            &i.signed.report,
            &i.signed.signature,
            &i.signed.key_id,
            row.hash.as_slice(),
            i.received_at,
            r.agent_time_unix_ms,
            r.window_start_unix_ms,
            r.window_end_unix_ms,
            i.nonce_fresh
        ]);
    }
    tx.defer_values(
        "INSERT INTO reports (host_id, seq, report, signature, key_id, report_sha256, received_at, agent_time, window_start, window_end, nonce_fresh) VALUES ",
        11,
        "",
        &ps,
    )
    .map_err(sql("insert reports"))?;
    let mut ps = Vec::with_capacity(3 * rows.len());
    for row in rows {
        ps.extend_from_slice(params![row.host_id, row.incoming.decoded.seq as i64, row.leaf.as_slice()]);
    }
    tx.defer_values("INSERT INTO log_queue (host_id, seq, leaf_hash) VALUES ", 3, "", &ps)
        .map_err(sql("queue for the transparency log"))?;
    if let [m] = hosts {
        tx.defer(
            "UPDATE hosts SET last_seq = ?1, last_hash = ?2, last_seen = ?3, interval_ms = COALESCE(?5, interval_ms), \
               gpu_energy = ?6 WHERE host_id = ?4",
            params![m.seq, m.hash.as_slice(), m.seen, m.host, m.interval, &m.energy],
        )
        .map_err(sql("advance host"))?;
    } else if !hosts.is_empty() {
        // Every host of the batch in one statement (PostgreSQL only: SQLite writes report by report).
        let moved: Vec<serde_json::Value> = hosts
            .iter()
            .map(|m| {
                serde_json::json!({"host_id": m.host, "seq": m.seq, "hash": gpuattest_proto::hex(&m.hash),
                    "seen": m.seen, "interval_ms": m.interval, "energy": m.energy})
            })
            .collect();
        tx.defer(
            "UPDATE hosts AS h SET last_seq = v.seq, last_hash = decode(v.hash, 'hex'), last_seen = v.seen, \
               interval_ms = COALESCE(v.interval_ms, h.interval_ms), gpu_energy = v.energy \
             FROM jsonb_to_recordset(CAST(?1 AS jsonb)) AS v(host_id text, seq bigint, hash text, seen bigint, interval_ms bigint, energy text) \
             WHERE h.host_id = v.host_id",
            params![&serde_json::Value::Array(moved).to_string()],
        )
        .map_err(sql("advance hosts"))?;
    }
    Ok(())
}

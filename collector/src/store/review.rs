//! What the review UI shows beside a flag: the signed reports behind it (each re-verifiable on demand),
//! the job's GPU utilisation and energy over time across hosts, and who is working on it.

use gpuattest_proto::pb;
use serde::Serialize;

use super::db::{Db, DbError, Row, params};
use super::{Result, Store, audit_tx, sql};
use crate::timefmt::rfc3339;

/// Most points in one timeline.
pub const MAX_TIMELINE_POINTS: usize = 4000;
/// Most hosts one job's timeline draws (those it used most recently).
pub const MAX_TIMELINE_HOSTS: usize = 16;

/// The newest `want` rows of `host_id` with `seq` in `seqs`, newest first: `sql` selects a host's rows
/// in a sequence range (`?1` host, `?2`..`?3` the range, `ORDER BY seq DESC`), and is asked for windows
/// just wide enough, widening past gaps, so each read is bounded by `want` whatever plan the database
/// picks (on PostgreSQL, `ORDER BY .. LIMIT` over the whole range was planned as a scan and sort of all
/// the host's reports while the table's statistics lagged: 1 s for a host with 100,000 reports).
fn newest<T>(
    conn: &mut Db,
    sql_text: super::db::Sql,
    host_id: &str,
    seqs: (u64, u64),
    want: usize,
    mut map: impl FnMut(&Row<'_>) -> std::result::Result<T, DbError>,
) -> std::result::Result<Vec<T>, DbError> {
    let (first, mut hi) = (seqs.0.max(1), seqs.1);
    let mut out = Vec::new();
    let mut width = want as u64;
    while out.len() < want && hi >= first && width > 0 {
        let lo = hi.saturating_sub(width - 1).max(first);
        let rows = conn.rows(sql_text, params![host_id, lo, hi], &mut map)?;
        let missing = want - out.len();
        out.extend(rows.into_iter().take(missing));
        if lo == first {
            break;
        }
        hi = lo - 1;
        width = width.saturating_mul(2);
    }
    Ok(out)
}

/// One host's part of a job's timeline.
#[derive(Default)]
struct HostSpan {
    /// Each GPU's first and last time seen in the job.
    gpus: std::collections::BTreeMap<String, (i64, i64)>,
    /// The earliest and latest of those.
    first: i64,
    last: i64,
    /// The job's first and last sequence numbers on the host, when every GPU's are known.
    seqs: Option<(i64, i64)>,
}

impl HostSpan {
    fn add(&mut self, gpu: String, seen: (i64, i64), seqs: Option<(i64, i64)>) {
        let first_gpu = self.gpus.is_empty();
        self.first = if first_gpu { seen.0 } else { self.first.min(seen.0) };
        self.last = if first_gpu { seen.1 } else { self.last.max(seen.1) };
        self.seqs = match (first_gpu, self.seqs, seqs) {
            (true, _, s) => s,
            (false, Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            _ => None,
        };
        self.gpus.insert(gpu, seen);
    }
}

/// The GPU samples of one stored report (its verbatim bytes) for the GPUs `wanted` picks.
fn points_of(host_id: &str, t: i64, report: &[u8], wanted: impl Fn(&str) -> bool, out: &mut Vec<TimelinePoint>) {
    let Ok(r) = <pb::UsageReport as prost::Message>::decode(report) else { return };
    for g in r.gpus.into_iter().filter(|g| !g.lost && wanted(&g.uuid)) {
        out.push(TimelinePoint {
            host_id: host_id.to_string(),
            gpu_uuid: g.uuid,
            t,
            util: g.utilization_gpu_pct,
            power_mw: g.power_mw,
            energy_mj: g.energy_mj.map(|e| e as i64),
        });
    }
}

/// A stored report, by reference.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportRef {
    /// Host.
    pub host_id: String,
    /// Sequence number.
    pub seq: u64,
    /// When the collector accepted it (RFC 3339).
    pub received_at: String,
    /// SHA-256 of the signed bytes, hex.
    pub report_sha256: String,
    /// The signing key's id, hex.
    pub key_id: String,
}

/// One GPU sample in a job's timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimelinePoint {
    /// Host.
    pub host_id: String,
    /// GPU.
    pub gpu_uuid: String,
    /// End of the report window, Unix ms (agent clock).
    pub t: i64,
    /// GPU utilisation, %.
    pub util: Option<u32>,
    /// Power, mW.
    pub power_mw: Option<u32>,
    /// The energy counter, mJ.
    pub energy_mj: Option<i64>,
}

/// The result of re-verifying one stored report now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportCheck {
    /// Host.
    pub host_id: String,
    /// Sequence number.
    pub seq: u64,
    /// The signature holds over the stored bytes with the host's key (or the retired key that was
    /// valid for this sequence number), and the bytes say this host and sequence number.
    pub valid: bool,
    /// Why not, when not.
    pub problem: Option<String>,
    /// It names the stored previous report's hash (`None` for the first, or when that one is missing).
    pub chains_to_previous: Option<bool>,
    /// SHA-256 of the signed bytes, hex.
    pub report_sha256: String,
    /// The signed bytes, base64 (what an auditor re-verifies independently).
    pub report_base64: String,
    /// The Ed25519 signature, base64.
    pub signature_base64: String,
    /// The decoded report, for reading.
    pub decoded: Option<serde_json::Value>,
    /// Each GPU's attestation verdict, as checked when the report arrived.
    pub gpu_evidence: Vec<crate::evidence::GpuEvidence>,
}

impl Store {
    /// The newest `limit` reports of `host_id` with sequence numbers in `first..=last`.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn report_refs(&self, host_id: &str, first: u64, last: u64, limit: usize) -> Result<Vec<ReportRef>> {
        newest(
            &mut self.reader(),
            "SELECT host_id, seq, received_at, report_sha256, key_id FROM reports \
             WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq DESC",
            host_id,
            (first, last),
            limit,
            |r| {
                Ok(ReportRef {
                    host_id: r.get(0)?,
                    seq: r.u64(1)?,
                    received_at: rfc3339(r.get(2)?),
                    report_sha256: gpuattest_proto::hex(&r.get::<Vec<u8>>(3)?),
                    key_id: gpuattest_proto::hex(&r.get::<Vec<u8>>(4)?),
                })
            },
        )
        .map_err(sql("list reports"))
    }

    /// The GPU samples of a job across its hosts (newest [`MAX_TIMELINE_POINTS`]), oldest first; for a
    /// flag with no job, `gpus` on `host_id` over its sequence range. Derived on read from the signed
    /// reports' verbatim bytes (nothing per GPU is stored beside them): a bounded window of each host's
    /// newest reports, decoded.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn timeline(
        &self,
        job_key: &str,
        host_id: &str,
        gpus: &[String],
        seqs: (u64, u64),
    ) -> Result<Vec<TimelinePoint>> {
        use std::collections::BTreeMap;
        let mut conn = self.reader();
        // Which GPUs of which hosts the job used, when, and where in each host's chain: job_usage's key
        // leads with job_key.
        let mut hosts: BTreeMap<String, HostSpan> = BTreeMap::new();
        conn.for_each(
            "SELECT host_id, gpu_uuid, first_seen, last_seen, first_seq, last_seq FROM job_usage WHERE job_key = ?1",
            params![job_key],
            |r| {
                let seqs = r.get::<Option<i64>>(4)?.zip(r.get::<Option<i64>>(5)?);
                hosts.entry(r.get(0)?).or_default().add(r.get(1)?, (r.get(2)?, r.get(3)?), seqs);
                Ok(())
            },
        )
        .map_err(sql("job timeline"))?;
        let mut points = Vec::new();
        if !hosts.is_empty() {
            // The hosts the job used most recently, at most MAX_TIMELINE_HOSTS of them.
            let mut order: Vec<(&String, &HostSpan)> = hosts.iter().collect();
            order.sort_by_key(|(_, span)| std::cmp::Reverse(span.last));
            order.truncate(MAX_TIMELINE_HOSTS);
            let per_host = MAX_TIMELINE_POINTS / order.len();
            for (h, span) in order {
                let reports = (per_host / span.gpus.len().max(1)).max(1);
                let rows: Vec<(i64, Vec<u8>)> = match span.seqs {
                    // The primary key (host_id, seq): the newest reports of the job's range, bounded.
                    Some((lo, hi)) => newest(
                        &mut conn,
                        "SELECT window_end, report FROM reports WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq DESC",
                        h,
                        (lo.max(0) as u64, hi.max(0) as u64),
                        reports,
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    ),
                    // Usage recorded before job_usage kept sequence numbers: reports_by_host_time.
                    None => conn.rows(
                        "SELECT window_end, report FROM reports WHERE host_id = ?1 AND window_end BETWEEN ?2 AND ?3 \
                         ORDER BY window_end DESC LIMIT ?4",
                        params![h, span.first, span.last, reports],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    ),
                }
                .map_err(sql("job timeline reports"))?;
                for (t, bytes) in rows {
                    points_of(
                        h,
                        t,
                        &bytes,
                        |uuid| span.gpus.get(uuid).is_some_and(|(f, l)| (*f..=*l).contains(&t)),
                        &mut points,
                    );
                }
            }
        } else if !gpus.is_empty() {
            let gpus: Vec<&String> = gpus.iter().take(16).collect();
            // The primary key (host_id, seq): the newest reports of the flag's range, bounded.
            let rows: Vec<(i64, Vec<u8>)> = newest(
                &mut conn,
                "SELECT window_end, report FROM reports WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq DESC",
                host_id,
                seqs,
                MAX_TIMELINE_POINTS / gpus.len(),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql("gpu timeline"))?;
            for (t, bytes) in rows {
                points_of(host_id, t, &bytes, |uuid| gpus.iter().any(|g| g.as_str() == uuid), &mut points);
            }
        }
        points.sort_by(|a, b| {
            a.t.cmp(&b.t).then_with(|| a.host_id.cmp(&b.host_id)).then_with(|| a.gpu_uuid.cmp(&b.gpu_uuid))
        });
        Ok(points)
    }

    /// Assigns a flag to a person (empty: unassigned), audited. `None` when there is no such flag.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn assign_flag(&self, id: i64, assignee: &str, actor: &str, now: i64) -> Result<Option<()>> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let value = (!assignee.is_empty()).then_some(assignee);
        let n = tx
            .execute("UPDATE flags SET assignee = ?1, updated_at = ?2 WHERE id = ?3", params![value, now, id])
            .map_err(sql("assign flag"))?;
        if n == 0 {
            return Ok(None);
        }
        audit_tx(
            &mut tx,
            now,
            actor,
            "flag.assign",
            &format!("flag:{id}"),
            if assignee.is_empty() { "(unassigned)" } else { assignee },
        )?;
        tx.commit().map_err(sql("commit assignment"))?;
        Ok(Some(()))
    }

    /// Re-verifies one stored report now: signature, identity, and its link to the previous report.
    /// `None` when it is not stored.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn check_report(&self, host_id: &str, seq: u64) -> Result<Option<ReportCheck>> {
        use base64::Engine;
        let Some(signed) = self.signed_report(host_id, seq)? else { return Ok(None) };
        let key = self.signing_key(host_id, &signed.key_id)?;
        let verdict = crate::verify::report(key.as_ref(), &signed, host_id, Some(seq));
        let problem = verdict.as_ref().err().map(ToString::to_string);
        // Shown for reading even when invalid, so a reviewer sees what the bad bytes claim.
        let decoded = <pb::UsageReport as prost::Message>::decode(signed.report.as_slice()).ok();
        let prev: Option<Vec<u8>> = if seq > 1 {
            self.reader()
                .row(
                    "SELECT report_sha256 FROM reports WHERE host_id = ?1 AND seq = ?2",
                    params![host_id, seq - 1],
                    |r| r.get(0),
                )
                .map_err(sql("read previous report"))?
        } else {
            None
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Some(ReportCheck {
            host_id: host_id.to_string(),
            seq,
            valid: problem.is_none(),
            problem,
            chains_to_previous: match (&decoded, prev) {
                (Some(r), Some(p)) => Some(r.prev_report_sha256 == p),
                _ => None,
            },
            report_sha256: gpuattest_proto::hex(&gpuattest_proto::sha256(&signed.report)),
            report_base64: b64.encode(&signed.report),
            signature_base64: b64.encode(&signed.signature),
            decoded: decoded.map(|r| crate::report_view::report_json(&r)),
            gpu_evidence: self.report_evidence(host_id, seq)?,
        }))
    }
}

//! What the review UI shows beside a flag: the signed reports behind it (each re-verifiable on demand),
//! the job's GPU utilisation and energy over time across hosts, and who is working on it.

use gpuattest_proto::pb;
use serde::Serialize;

use super::db::params;
use super::{Result, Store, audit_tx, sql};
use crate::timefmt::rfc3339;

/// Most points in one timeline.
pub const MAX_TIMELINE_POINTS: usize = 4000;
/// Most hosts one job's timeline draws (those it used most recently).
pub const MAX_TIMELINE_HOSTS: usize = 16;

/// One host's part of a job's timeline: each GPU's (first, last) seen, then the earliest and latest.
type HostWindows = (std::collections::BTreeMap<String, (i64, i64)>, i64, i64);

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
        self.reader()
            .rows(
                "SELECT host_id, seq, received_at, report_sha256, key_id FROM reports \
                 WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq DESC LIMIT ?4",
                params![host_id, first, last, limit],
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
        // Which GPUs of which hosts the job used, and when: job_usage's key leads with job_key.
        let usage: Vec<(String, String, i64, i64)> = conn
            .rows(
                "SELECT host_id, gpu_uuid, first_seen, last_seen FROM job_usage WHERE job_key = ?1",
                params![job_key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(sql("job timeline"))?;
        // Per host: its GPUs' windows, and the span of them.
        let mut hosts: BTreeMap<String, HostWindows> = BTreeMap::new();
        for (h, uuid, first, last) in usage {
            let e = hosts.entry(h).or_insert_with(|| (BTreeMap::new(), i64::MAX, i64::MIN));
            e.0.insert(uuid, (first, last));
            e.1 = e.1.min(first);
            e.2 = e.2.max(last);
        }
        let mut points = Vec::new();
        if !hosts.is_empty() {
            // The hosts the job used most recently, at most MAX_TIMELINE_HOSTS of them.
            let mut order: Vec<(&String, &HostWindows)> = hosts.iter().collect();
            order.sort_by_key(|(_, (_, _, last))| std::cmp::Reverse(*last));
            order.truncate(MAX_TIMELINE_HOSTS);
            let per_host = MAX_TIMELINE_POINTS / order.len();
            for (h, (windows, first, last)) in order {
                let reports = (per_host / windows.len().max(1)).max(1);
                // reports_by_host_time (host_id, window_end): the host's newest reports in the job's span.
                let rows: Vec<(i64, Vec<u8>)> = conn
                    .rows(
                        "SELECT window_end, report FROM reports WHERE host_id = ?1 AND window_end BETWEEN ?2 AND ?3 \
                         ORDER BY window_end DESC LIMIT ?4",
                        params![h, *first, *last, reports],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(sql("job timeline reports"))?;
                for (t, bytes) in rows {
                    points_of(
                        h,
                        t,
                        &bytes,
                        |uuid| windows.get(uuid).is_some_and(|(f, l)| (*f..=*l).contains(&t)),
                        &mut points,
                    );
                }
            }
        } else if !gpus.is_empty() {
            let gpus: Vec<&String> = gpus.iter().take(16).collect();
            // The primary key (host_id, seq): the newest reports of the flag's range.
            let rows: Vec<(i64, Vec<u8>)> = conn
                .rows(
                    "SELECT window_end, report FROM reports WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3 \
                     ORDER BY seq DESC LIMIT ?4",
                    params![host_id, seqs.0, seqs.1, MAX_TIMELINE_POINTS / gpus.len()],
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

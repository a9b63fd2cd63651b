//! What the review UI shows beside a flag: the signed reports behind it (each re-verifiable on demand),
//! the job's GPU utilisation and energy over time across hosts, and who is working on it.

use gpuattest_proto::pb;
use serde::Serialize;

use super::db::{DbError, Row, params};
use super::{Result, Store, audit_tx, sql};
use crate::timefmt::rfc3339;

/// Most points in one timeline.
pub const MAX_TIMELINE_POINTS: usize = 4000;

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
    /// flag with no job, `gpus` on `host_id` over its sequence range.
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
        let mut conn = self.reader();
        let map = |r: &Row<'_>| -> std::result::Result<TimelinePoint, DbError> {
            Ok(TimelinePoint {
                host_id: r.get(0)?,
                gpu_uuid: r.get(1)?,
                t: r.get(2)?,
                util: r.get(3)?,
                power_mw: r.get(4)?,
                energy_mj: r.get(5)?,
            })
        };
        let mut points: Vec<TimelinePoint> = conn
            .rows(
                "SELECT g.host_id, g.uuid, r.window_end, g.util_gpu, g.power_mw, g.energy_mj \
                     FROM job_usage j \
                     JOIN reports r ON r.host_id = j.host_id AND r.window_end BETWEEN j.first_seen AND j.last_seen \
                     JOIN report_gpus g ON g.host_id = r.host_id AND g.seq = r.seq AND g.uuid = j.gpu_uuid \
                     WHERE j.job_key = ?1 \
                     ORDER BY r.window_end DESC LIMIT ?2",
                params![job_key, MAX_TIMELINE_POINTS],
                map,
            )
            .map_err(sql("job timeline"))?;
        if points.is_empty() && !gpus.is_empty() {
            const GPU_TIMELINE: &str = "SELECT g.host_id, g.uuid, r.window_end, g.util_gpu, g.power_mw, g.energy_mj \
                     FROM report_gpus g JOIN reports r ON r.host_id = g.host_id AND r.seq = g.seq \
                     WHERE g.host_id = ?1 AND g.uuid = ?2 AND g.seq BETWEEN ?3 AND ?4 \
                     ORDER BY g.seq DESC LIMIT ?5";
            for u in gpus.iter().take(16) {
                let rows = conn
                    .rows(GPU_TIMELINE, params![host_id, u, seqs.0, seqs.1, MAX_TIMELINE_POINTS / 16], map)
                    .map_err(sql("gpu timeline"))?;
                points.extend(rows);
            }
        }
        points.sort_by(|a, b| a.t.cmp(&b.t).then_with(|| a.gpu_uuid.cmp(&b.gpu_uuid)));
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

//! GPU attestation evidence: the nonces issued to each host, each GPU's verdict per report, and where
//! each device identity was last proven (migration 7).

use serde::Serialize;

use super::db::{Db, params};
use super::{Result, Store, sql};
use crate::evidence::{GpuEvidence, NonceStanding, State};

/// A device identity proven on another host than before: the chip moved.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MovedDevice {
    /// The device serial from its certificate.
    pub device_serial: String,
    /// Its GPU UUID now.
    pub gpu_uuid: String,
    /// The host that proved it before.
    pub from_host: String,
    /// The UUID it had there.
    pub from_gpu_uuid: String,
    /// When that host last proved it, Unix ms.
    pub from_last_seen: i64,
}

/// A GPU's latest evidence on a host.
#[derive(Debug, Clone, Serialize)]
pub struct HostEvidence {
    /// The report it came with.
    pub seq: u64,
    /// The verdict.
    #[serde(flatten)]
    pub evidence: GpuEvidence,
}

/// A GPU's evidence state as `hosts list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GpuEvidenceState {
    /// The GPU, from the host's latest report.
    pub gpu_uuid: String,
    /// `verified`, `failed`, `missing`, `awaiting` (CC on, no evidence yet), `not_in_cc_mode` or
    /// `not_supported` (the driver cannot say).
    pub state: String,
    /// Why, for a failure or missing evidence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The report that carried the evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The device identity proven.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_serial: Option<String>,
}

impl Store {
    /// A host's report `seq`, decoded (`None` when absent or undecodable).
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn decoded_report(&self, host_id: &str, seq: u64) -> Result<Option<gpuattest_proto::pb::UsageReport>> {
        use prost::Message;
        Ok(self
            .signed_report(host_id, seq)?
            .and_then(|s| gpuattest_proto::pb::UsageReport::decode(s.report.as_slice()).ok()))
    }

    /// Each GPU of the host's `latest` report with its latest evidence state.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn gpu_evidence_states(
        &self,
        host_id: &str,
        latest: Option<&gpuattest_proto::pb::UsageReport>,
    ) -> Result<Vec<GpuEvidenceState>> {
        let Some(r) = latest else { return Ok(Vec::new()) };
        let cc = r.confidential_compute.clone().unwrap_or_default();
        let evidence = self.host_evidence(host_id)?;
        Ok(r.gpus
            .iter()
            .map(|g| {
                let e = evidence.iter().find(|e| e.evidence.gpu_uuid == g.uuid);
                let state = match (cc.enabled, e) {
                    (Some(true), Some(e)) => e.evidence.state.as_str(),
                    (Some(true), None) => "awaiting",
                    (Some(false), _) => "not_in_cc_mode",
                    (None, _) => "not_supported",
                };
                GpuEvidenceState {
                    gpu_uuid: g.uuid.clone(),
                    state: state.into(),
                    reasons: e.map(|e| e.evidence.reasons.clone()).unwrap_or_default(),
                    seq: e.map(|e| e.seq),
                    device_serial: e.and_then(|e| e.evidence.device_serial.clone()),
                }
            })
            .collect())
    }

    /// Records a nonce issued to `host_id` on a stream, before the agent sees it.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn issue_nonce(&self, host_id: &str, nonce: &[u8], now: i64) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO attestation_nonces (nonce, host_id, issued_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![nonce, host_id, now],
            )
            .map_err(sql("record nonce"))?;
        Ok(())
    }

    /// Where `nonce` stands for `host_id`: issued to it (when, and the report that used it), or not.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn nonce_standing(&self, host_id: &str, nonce: &[u8]) -> Result<NonceStanding> {
        let row = self
            .reader()
            .row(
                "SELECT issued_at, used_seq FROM attestation_nonces WHERE nonce = ?1 AND host_id = ?2",
                params![nonce, host_id],
                |r| Ok((r.get::<i64>(0)?, r.get::<Option<i64>>(1)?)),
            )
            .map_err(sql("read nonce"))?;
        Ok(match row {
            Some((at, used)) => NonceStanding::Issued { at, used_by: used.map(|s| s.max(0) as u64) },
            None => NonceStanding::Unknown,
        })
    }

    /// Each GPU's latest evidence on `host_id` (one row per GPU), for `hosts list` and the review page.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn host_evidence(&self, host_id: &str) -> Result<Vec<HostEvidence>> {
        // Reads the host's rows by the primary key's prefix; a host has one set per nonce (hourly).
        let rows = self
            .reader()
            .rows(
                "SELECT seq, detail FROM gpu_evidence e WHERE host_id = ?1 AND seq = \
                   (SELECT MAX(seq) FROM gpu_evidence x WHERE x.host_id = e.host_id AND x.gpu_uuid = e.gpu_uuid) \
                 ORDER BY gpu_uuid",
                params![host_id],
                |r| Ok((r.u64(0)?, r.get::<String>(1)?)),
            )
            .map_err(sql("read host evidence"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, d)| serde_json::from_str(&d).ok().map(|evidence| HostEvidence { seq, evidence }))
            .collect())
    }

    /// The evidence that came with one report.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn report_evidence(&self, host_id: &str, seq: u64) -> Result<Vec<GpuEvidence>> {
        let rows = self
            .reader()
            .rows(
                "SELECT detail FROM gpu_evidence WHERE host_id = ?1 AND seq = ?2 ORDER BY gpu_uuid",
                params![host_id, seq as i64],
                |r| r.get::<String>(0),
            )
            .map_err(sql("read report evidence"))?;
        Ok(rows.iter().filter_map(|d| serde_json::from_str(d).ok()).collect())
    }
}

/// Inside a report's commit: marks its nonce used, keeps each GPU's verdict, and moves each proven
/// device identity to this host, returning those proven elsewhere before.
pub(super) fn record(
    tx: &mut Db,
    host_id: &str,
    r: &gpuattest_proto::pb::UsageReport,
    evidence: &[GpuEvidence],
    at: i64,
) -> Result<Vec<MovedDevice>> {
    if evidence.is_empty() {
        return Ok(Vec::new());
    }
    let seq = r.seq as i64;
    if !r.attestations.is_empty() {
        tx.defer(
            "UPDATE attestation_nonces SET used_seq = ?3 WHERE nonce = ?1 AND host_id = ?2 AND used_seq IS NULL",
            params![&r.collector_nonce, host_id, seq],
        )
        .map_err(sql("use nonce"))?;
    }
    let mut moved = Vec::new();
    for e in evidence {
        let detail = serde_json::to_string(e).unwrap_or_default();
        tx.defer(
            "INSERT INTO gpu_evidence (host_id, seq, gpu_uuid, state, device_serial, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT DO NOTHING",
            params![host_id, seq, &e.gpu_uuid, e.state.as_str(), &e.device_serial, &detail],
        )
        .map_err(sql("record evidence"))?;
        let Some(serial) = e.device_serial.as_deref().filter(|_| e.state == State::Verified) else { continue };
        let before = tx
            .row(
                "SELECT host_id, gpu_uuid, last_seen FROM gpu_devices WHERE device_serial = ?1",
                params![serial],
                |row| Ok((row.get::<String>(0)?, row.get::<String>(1)?, row.get::<i64>(2)?)),
            )
            .map_err(sql("read device"))?;
        match before {
            Some((from_host, from_gpu_uuid, from_last_seen)) => {
                if from_host != host_id {
                    moved.push(MovedDevice {
                        device_serial: serial.to_string(),
                        gpu_uuid: e.gpu_uuid.clone(),
                        from_host,
                        from_gpu_uuid,
                        from_last_seen,
                    });
                }
                tx.defer(
                    "UPDATE gpu_devices SET host_id = ?2, gpu_uuid = ?3, last_seen = ?4, \
                       first_seen = CASE WHEN host_id = ?2 THEN first_seen ELSE ?4 END WHERE device_serial = ?1",
                    params![serial, host_id, &e.gpu_uuid, at],
                )
                .map_err(sql("move device"))?;
            }
            None => tx
                .defer(
                    "INSERT INTO gpu_devices (device_serial, host_id, gpu_uuid, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![serial, host_id, &e.gpu_uuid, at],
                )
                .map_err(sql("record device"))?,
        }
    }
    Ok(moved)
}

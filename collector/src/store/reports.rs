//! Stored reports as evidence: the signed bytes back, re-verification of every report, and the rows an export covers.

use super::*;

/// What re-verifying the stored reports found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifySummary {
    /// Reports read.
    pub checked: u64,
    /// Reports whose signature verifies over the stored bytes.
    pub valid: u64,
    /// Consecutive stored reports whose hash chain does not link.
    pub chain_breaks: u64,
    /// Reports that failed, with why.
    pub invalid: Vec<InvalidReport>,
    /// Leaves in the transparency log.
    pub sequenced: u64,
    /// Reports stored and acknowledged, waiting for the sequencer to give them a log index.
    pub unsequenced: u64,
    /// Reports neither in the log nor queued for it: `checked - sequenced - unsequenced` (0 unless
    /// the store was damaged).
    pub unlogged: u64,
}

/// A stored report that failed re-verification.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidReport {
    /// Host.
    pub host_id: String,
    /// Sequence number.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// A stored report selected for an export.
#[derive(Debug, Clone)]
pub struct ExportRow {
    /// Host.
    pub host_id: String,
    /// Hostname.
    pub hostname: String,
    /// Sequence number.
    pub seq: u64,
    /// The signed report as stored.
    pub signed: pb::SignedReport,
    /// Its index in the transparency log; `None` while it waits for the sequencer.
    pub log_index: Option<u64>,
}

impl Store {
    /// A tenant's stored reports in a period, oldest first, with each one's log index:
    /// (host id, hostname, seq, signed report, log index).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn reports_for_export(&self, tenant: &str, since: i64, until: i64) -> Result<Vec<ExportRow>> {
        self.reader()
            .rows(
                "SELECT r.host_id, h.hostname, r.seq, r.report, r.signature, r.key_id, l.idx - 1 \
                 FROM reports r JOIN hosts h ON h.host_id = r.host_id \
                 LEFT JOIN log_leaves l ON l.host_id = r.host_id AND l.seq = r.seq \
                 WHERE h.tenant = ?1 AND r.window_end >= ?2 AND r.window_end < ?3 ORDER BY r.host_id, r.seq",
                params![tenant, since, until],
                |r| {
                    Ok(ExportRow {
                        host_id: r.get(0)?,
                        hostname: r.get(1)?,
                        seq: r.u64(2)?,
                        signed: pb::SignedReport { report: r.get(3)?, signature: r.get(4)?, key_id: r.get(5)? },
                        log_index: r.get::<Option<i64>>(6)?.map(|i| i as u64),
                    })
                },
            )
            .map_err(sql("read reports for export"))
    }

    /// (host, seq) of every report received at or after `since` (Unix ms), in order.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn report_keys(&self, since: i64) -> Result<Vec<(String, u64)>> {
        self.reader()
            .rows(
                "SELECT host_id, seq FROM reports WHERE received_at >= ?1 ORDER BY host_id, seq",
                params![since],
                |r| Ok((r.get(0)?, r.u64(1)?)),
            )
            .map_err(sql("read reports"))
    }

    /// The stored signed report of (host, seq).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn signed_report(&self, host_id: &str, seq: u64) -> Result<Option<pb::SignedReport>> {
        self.reader()
            .row(
                "SELECT report, signature, key_id FROM reports WHERE host_id = ?1 AND seq = ?2",
                params![host_id, seq],
                |r| Ok(pb::SignedReport { report: r.get(0)?, signature: r.get(1)?, key_id: r.get(2)? }),
            )
            .map_err(sql("read report"))
    }

    /// Re-verifies every stored report against its host's pinned key, and the hash chain between
    /// consecutive stored reports, from the stored bytes alone.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn verify_all(&self) -> Result<VerifySummary> {
        let mut summary = VerifySummary::default();
        let mut prev: Option<(String, u64, [u8; 32])> = None;
        self.reader()
            .for_each(
                "SELECT r.host_id, r.seq, r.report, r.signature, r.key_id, \
                   CASE WHEN r.key_id = h.key_id THEN h.public_key ELSE k.public_key END, \
                   CASE WHEN r.key_id = h.key_id THEN NULL ELSE k.valid_through_seq END \
                 FROM reports r JOIN hosts h ON h.host_id = r.host_id \
                 LEFT JOIN host_keys k ON k.host_id = r.host_id AND k.key_id = r.key_id ORDER BY r.host_id, r.seq",
                params![],
                |r| {
                    let host_id: String = r.get(0)?;
                    let seq = r.u64(1)?;
                    let signed = pb::SignedReport { report: r.get(2)?, signature: r.get(3)?, key_id: r.get(4)? };
                    let key = r.get::<Option<Vec<u8>>>(5)?.map(|public_key| SigningKey {
                        public_key,
                        valid_through: r.get::<Option<i64>>(6).ok().flatten().map(|v| v.max(0) as u64),
                    });
                    summary.checked += 1;
                    let problem = match crate::verify::report(key.as_ref(), &signed, &host_id, Some(seq)) {
                        Err(p) => Some(p.to_string()),
                        Ok(rep) => {
                            if let Some((ph, ps, phash)) = &prev
                                && *ph == host_id
                                && *ps + 1 == seq
                                && rep.prev_report_sha256 != phash.as_slice()
                            {
                                summary.chain_breaks += 1;
                            }
                            None
                        }
                    };
                    match problem {
                        None => summary.valid += 1,
                        Some(reason) => {
                            summary.invalid.push(InvalidReport { host_id: host_id.clone(), seq, reason });
                        }
                    }
                    prev = Some((host_id, seq, gpuattest_proto::sha256(&signed.report)));
                    Ok(())
                },
            )
            .map_err(sql("read reports"))?;
        // Both counts in one snapshot-free pair of reads: a pass between them moves leaves from the
        // queue to the log, so the queue is read first (a leaf can then be counted twice, never lost).
        summary.unsequenced = self.unsequenced()?;
        summary.sequenced = self.log_size()?;
        summary.unlogged = summary.checked.saturating_sub(summary.sequenced + summary.unsequenced);
        Ok(summary)
    }
}

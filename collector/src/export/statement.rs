//! Building the in-toto statement for one tenant and period from stored, signed evidence.
//!
//! Subjects are the reports summarised (`gpuattest:report:<host>:<seq>` with the SHA-256 of the signed
//! report bytes). The predicate holds the period, hosts and GPUs, GPU-hours and energy, jobs with their
//! launch evidence and models, flags and their decisions, the policy digest, and the transparency-log
//! tree head with an inclusion proof per subject. Redaction drops command lines and paths; the
//! signatures and proofs, which cover report digests, still verify.

use std::collections::BTreeMap;

use gpuattest_proto::pb;
use prost::Message;
use serde_json::{Value, json};

use super::{ExportKey, PREDICATE_TYPE, STATEMENT_TYPE, merkle};
use crate::store::Store;
use crate::timefmt::rfc3339;

/// Subject name of a report.
pub fn subject_name(host_id: &str, seq: u64) -> String {
    format!("gpuattest:report:{host_id}:{seq}")
}

/// Parses a subject name back into (host id, seq).
pub fn parse_subject(name: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix("gpuattest:report:")?;
    let (host, seq) = rest.rsplit_once(':')?;
    Some((host.to_string(), seq.parse().ok()?))
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Tenant.
    pub tenant: String,
    /// Period start, Unix ms (inclusive).
    pub since: i64,
    /// Period end, Unix ms (exclusive).
    pub until: i64,
    /// Drop command lines and paths.
    pub redact: bool,
}

#[derive(Default)]
struct HostAcc {
    hostname: String,
    reports: u64,
    first_seq: u64,
    last_seq: u64,
    gpus: BTreeMap<String, (String, String)>,
    gpu_ms: u128,
    energy: BTreeMap<String, (u64, u64)>,
    /// Each GPU's attestation verdicts in the period: (report seq, verdict).
    evidence: Vec<Value>,
}

/// A host's location verdict with the signed records behind it.
fn location_json(
    store: &Store,
    policy: &crate::policy::Policy,
    host_id: &str,
    landmarks: &[crate::store::LandmarkRow],
) -> Result<Value, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let measurements = store.measurements(host_id).map_err(|e| e.to_string())?;
    let site = store.site(host_id).map_err(|e| e.to_string())?;
    let lp = policy.location();
    let gpus_attest = store.has_attesting_gpus(host_id).map_err(|e| e.to_string())?;
    let v = crate::location::verdict(lp, site.as_ref(), landmarks, &measurements, gpus_attest, crate::now_ms());
    let records: Vec<Value> = measurements
        .iter()
        .filter_map(|m| {
            let l = landmarks.iter().find(|l| l.name == m.landmark)?;
            Some(json!({"landmark": l.name, "lat": l.lat, "lon": l.lon, "landmark_public_key": gpuattest_proto::hex(&l.public_key),
                "kind": m.kind, "gpu_model": m.gpu_model,
                "record": b64.encode(&m.record), "signature": b64.encode(&m.signature)}))
        })
        .collect();
    Ok(json!({"verdict": v.verdict, "precision_km": v.precision_km, "reason": v.reason, "site": v.site,
        "landmarks": v.landmarks, "gpu_landmarks": v.gpu_landmarks, "relay_suspected": v.relay_suspected,
        "gpus_attest": gpus_attest, "records": records,
        "policy": {"tolerance_km": lp.tolerance_km, "min_landmarks": lp.min_landmarks, "processing_floor_us": lp.processing_floor_us,
                   "gpu_attestation_floor_us": lp.gpu_attestation_floor_us}}))
}

/// The store as the log tree's source of leaves and remembered subtrees.
struct StoreSubtrees<'a> {
    store: &'a Store,
    learned: Vec<(u32, u64, merkle::Hash)>,
}

impl merkle::SubtreeSource for StoreSubtrees<'_> {
    fn leaves(&mut self, start: u64, count: u64) -> Result<Vec<merkle::Hash>, String> {
        self.store.log_leaves_after(start, count).map_err(|e| e.to_string())
    }
    fn known(&mut self, level: u32, index: u64) -> Result<Option<merkle::Hash>, String> {
        self.store.log_subtree(level, index).map_err(|e| e.to_string())
    }
    fn learned(&mut self, level: u32, index: u64, hash: merkle::Hash) {
        self.learned.push((level, index, hash));
    }
}

/// Most reports one export holds: a bound on the work one request can ask for (a year of one host at
/// a 10 s interval is 3.2 million; exports are per period, so a long history is several exports).
pub const MAX_EXPORT_REPORTS: usize = 1_000_000;

/// Builds the statement. `progress` is called with (done, total) as reports are processed.
///
/// # Errors
/// A sentence when the store cannot be read or the period holds no report of the tenant.
pub fn build(
    store: &Store,
    key: &ExportKey,
    req: &ExportRequest,
    policy: &crate::policy::Policy,
    mut progress: impl FnMut(usize, usize),
) -> Result<Value, String> {
    // What is queued for the log is sequenced first, so the export proves every report committed so
    // far; one committed after this pass is listed as unsequenced, not left out.
    store.sequence_pending().map_err(|e| e.to_string())?;
    let rows = store.reports_for_export(&req.tenant, req.since, req.until).map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Err(format!(
            "tenant {:?} has no stored reports between {} and {}",
            req.tenant,
            rfc3339(req.since),
            rfc3339(req.until)
        ));
    }
    if rows.len() > MAX_EXPORT_REPORTS {
        return Err(format!(
            "tenant {:?} has {} reports between {} and {}, more than one export holds ({MAX_EXPORT_REPORTS}); export a shorter period",
            req.tenant,
            rows.len(),
            rfc3339(req.since),
            rfc3339(req.until)
        ));
    }
    // The tree from remembered subtrees: each inclusion proof is O(log n) lookups; subtrees no export
    // needed before are computed now, once, and remembered for every later one.
    let size = store.log_size().map_err(|e| e.to_string())?;
    let mut tree = merkle::Stored::new(StoreSubtrees { store, learned: Vec::new() });
    let root = tree.root(size)?;
    let head = key.sign_head(size, &root);
    let _ = store.record_head(size, &root, head.signature.as_bytes(), crate::now_ms());

    let mut subjects = Vec::with_capacity(rows.len());
    let mut inclusion = Vec::with_capacity(rows.len());
    let mut hosts: BTreeMap<String, HostAcc> = BTreeMap::new();
    let mut jobs: BTreeMap<String, Value> = BTreeMap::new();
    let total = rows.len();
    let mut unsequenced = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if i % 1000 == 0 {
            progress(i, total);
        }
        let digest = gpuattest_proto::sha256(&row.signed.report);
        let subject =
            json!({"name": subject_name(&row.host_id, row.seq), "digest": {"sha256": gpuattest_proto::hex(&digest)}});
        match row.log_index.filter(|&i| i < size) {
            Some(index) => {
                subjects.push(subject);
                let path: Vec<String> =
                    tree.inclusion_proof(index, size)?.iter().map(|h| gpuattest_proto::hex(h)).collect();
                inclusion.push(json!({"index": index, "path": path}));
            }
            // Committed and acknowledged, not yet in the log: named, with no proof to check.
            None => unsequenced.push(subject),
        }
        let Ok(r) = pb::UsageReport::decode(row.signed.report.as_slice()) else { continue };
        let h = hosts.entry(row.host_id.clone()).or_default();
        h.hostname.clone_from(&row.hostname);
        h.reports += 1;
        h.first_seq = if h.first_seq == 0 { row.seq } else { h.first_seq.min(row.seq) };
        h.last_seq = h.last_seq.max(row.seq);
        if !r.attestations.is_empty() {
            for e in store.report_evidence(&row.host_id, row.seq).map_err(|e| e.to_string())? {
                h.evidence.push(json!({"report_seq": row.seq, "gpu_uuid": e.gpu_uuid, "state": e.state,
                    "failure": e.failure, "reasons": e.reasons, "device_serial": e.device_serial, "hwmodel": e.hwmodel,
                    "driver_version": e.driver_version, "vbios_version": e.vbios_version, "checks": e.checks}));
            }
        }
        let window = (r.window_end_unix_ms - r.window_start_unix_ms).max(0) as u128;
        for g in &r.gpus {
            h.gpus.entry(g.uuid.clone()).or_insert_with(|| (g.serial.clone(), g.name.clone()));
            if !g.processes.is_empty() {
                h.gpu_ms += window;
            }
            if let Some(e) = g.energy_mj {
                let slot = h.energy.entry(g.uuid.clone()).or_insert((e, e));
                slot.0 = slot.0.min(e);
                slot.1 = slot.1.max(e);
            }
        }
        for p in &r.processes {
            let job = crate::compute::job_identity(&row.host_id, Some(&req.tenant), p);
            let key = format!("{}|{job}", row.host_id);
            let entry = jobs.entry(key).or_insert_with(|| {
                let launch = p.launch.clone().unwrap_or_default();
                // The job's verdict from its behaviour, as judged at export time; the launcher is only
                // what the process calls itself.
                let judged = store.job(&job).ok().flatten().map(|j| j.verdict);
                json!({
                    "job": job,
                    "host_id": row.host_id,
                    "pid": p.pid,
                    "cmdline": if req.redact { Value::Null } else { json!(p.cmdline) },
                    "container_id": p.container_id,
                    "pod_uid": p.pod_uid,
                    "slurm_job_id": p.slurm_job_id,
                    "launch": {"kind": launch.kind, "framework": launch.framework, "world_size": launch.world_size},
                    "verdict": judged.as_ref().map_or("unknown", |v| v.kind.as_str()),
                    "verdict_confidence": judged.as_ref().map(|v| v.confidence),
                    "verdict_reasons": judged.as_ref().map(|v| v.reasons.clone()),
                    "verdict_tenant_controlled": judged.as_ref().map(|v| v.tenant_controlled.clone()),
                    "models": p.models.iter().map(|m| {
                        let fp = json!({
                            "format": m.format, "header_sha256": m.header_sha256, "name": m.name, "organization": m.organization,
                            "architecture": m.architecture, "model_type": m.model_type, "parameter_count": m.parameter_count,
                            "base_models": m.base_models, "metadata": m.metadata,
                        });
                        let v = policy.evaluate_model(&fp);
                        json!({
                            "path": if req.redact { Value::Null } else { json!(m.path) },
                            "format": m.format, "header_sha256": m.header_sha256, "name": m.name,
                            "architecture": m.architecture, "model_type": m.model_type, "parameter_count": m.parameter_count,
                            "verdict": {"family": v.family, "developer": v.developer, "developer_country": v.developer_country,
                                        "restricted": v.restricted, "severity": v.severity, "confidence": v.confidence},
                        })
                    }).collect::<Vec<_>>(),
                    "gpu_uuids": p.gpu_uuids,
                    "first_seen": rfc3339(r.window_end_unix_ms),
                    "reports": 0,
                })
            });
            entry["last_seen"] = json!(rfc3339(r.window_end_unix_ms));
            entry["reports"] = json!(entry["reports"].as_u64().unwrap_or(0) + 1);
        }
    }
    progress(total, total);
    let mut total_gpu_hours = 0.0;
    let mut total_kwh = 0.0;
    let landmarks = store.landmarks().map_err(|e| e.to_string())?;
    let mut locations = BTreeMap::new();
    for id in hosts.keys() {
        locations.insert(id.clone(), location_json(store, policy, id, &landmarks)?);
    }
    let hosts_json: Vec<Value> = hosts
        .iter()
        .map(|(id, h)| {
            let gpu_hours = h.gpu_ms as f64 / 3_600_000.0;
            let kwh = h.energy.values().map(|(a, b)| (b - a) as f64).sum::<f64>() / 3.6e9;
            total_gpu_hours += gpu_hours;
            total_kwh += kwh;
            json!({
                "host_id": id, "hostname": h.hostname, "reports": h.reports, "first_seq": h.first_seq, "last_seq": h.last_seq,
                "gpus": h.gpus.iter().map(|(u, (s, n))| json!({"uuid": u, "serial": s, "name": n})).collect::<Vec<_>>(),
                "gpu_hours": gpu_hours, "energy_kwh": kwh,
                // The GPUs' own attestation evidence, verified at ingest (state per GPU per report).
                "gpu_evidence": h.evidence,
                // The landmarks' signed measurements behind the location verdict, so an auditor can check
                // each signature and recompute the verdict (`verify` does).
                "location": locations.remove(id),
            })
        })
        .collect();
    let flags: Vec<Value> = store
        .flags(Some(&req.tenant))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| hosts.contains_key(&f.host_id))
        .map(|f| json!({"id": f.id, "rule": f.rule, "severity": f.severity, "status": f.status, "host_id": f.host_id, "summary": f.summary, "updated_at": f.updated_at}))
        .collect();
    // Remembered for later exports; failing to remember costs only time, never the export.
    let learned = tree.into_source().learned;
    if let Err(e) = store.put_log_subtrees(&learned) {
        tracing::warn!(error = %e, subtrees = learned.len(), "log subtrees not remembered; the next export computes them again");
    }
    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "tenant": req.tenant,
            "period": {"since": rfc3339(req.since), "until": rfc3339(req.until)},
            "generated_at": rfc3339(crate::now_ms()),
            "export_key_id": key.key_id(),
            "redacted": req.redact,
            "hosts": hosts_json,
            "totals": {"reports": total, "gpu_hours": total_gpu_hours, "energy_kwh": total_kwh},
            "jobs": jobs.into_values().collect::<Vec<_>>(),
            "flags": flags,
            "policy_digest": policy.digest(),
            "screening_lists": policy.screening_lists(),
            "transparency": {
                "log": "RFC 6962 Merkle tree of every accepted report's leaf (host id, NUL, seq big-endian, report sha256)",
                "tree_size": size,
                "root_hash": head.root_hash,
                "tree_head_signature": head.signature,
                "inclusion": inclusion,
                // Reports stored but not yet given a log index when the export was built (the
                // sequencer runs apart from the commit); not among the subjects.
                "unsequenced": unsequenced,
            },
        },
    }))
}

/// Re-exported where the export's callers look for it.
pub use gpuattest_proto::units::parse_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        assert_eq!(parse_subject(&subject_name("gpu-node-01-abc", 42)), Some(("gpu-node-01-abc".into(), 42)));
        assert_eq!(parse_subject("report:x:1"), None);
    }
}

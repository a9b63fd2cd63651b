//! The host rules: location verdicts, GPU attestation evidence, silence.

use gpuattest_proto::pb;
use serde_json::json;

use super::*;

impl Policy {
    /// The flag for a host whose location is still not verified long after it enrolled.
    pub fn location_unverified_flag(&self, hostname: &str, v: &crate::location::Verdict) -> NewFlag {
        NewFlag {
            rule: "location-unverified".into(),
            severity: Severity::Medium.as_str().into(),
            job_key: "location".into(),
            summary: format!(
                "{hostname}: location not verified {} after enrollment: {}",
                self.location.unverified_after, v.reason
            ),
            pid: None,
            gpu_uuids: Vec::new(),
            evidence: json!({"location": v}),
            policy_digest: self.digest.clone(),
            job_host: None,
            tenant: None,
        }
    }

    /// The flag for a host that has gone silent.
    pub fn silence_flag(&self, hostname: &str, last_seen: i64, now: i64) -> NewFlag {
        NewFlag {
            rule: "host-silent".into(),
            severity: Severity::Medium.as_str().into(),
            job_key: format!("silent-since:{last_seen}"),
            summary: format!(
                "{hostname} has sent no report since {} ({} s): agent stopped, host down, or evidence suppressed",
                crate::timefmt::rfc3339(last_seen),
                (now - last_seen) / 1000
            ),
            pid: None,
            gpu_uuids: Vec::new(),
            evidence: json!({"last_seen": crate::timefmt::rfc3339(last_seen), "checked_at": crate::timefmt::rfc3339(now)}),
            policy_digest: self.digest.clone(),
            job_host: None,
            tenant: None,
        }
    }

    /// Flags for a host's location: `location-inconsistent` (high) when a landmark's disc excludes its
    /// registered site, `location-relay-suspected` (high) instead when only GPU-bound discs exclude it
    /// (the host key answers from the site, the chips cannot); `location-record-invalid` (medium) for records that are forged, another host's,
    /// or from an unregistered landmark.
    pub fn location_flags(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        v: &crate::location::Verdict,
        refused: &[String],
    ) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        let flag = |rule: &str, severity: Severity, summary: String, evidence: serde_json::Value| NewFlag {
            rule: rule.into(),
            severity: severity.as_str().into(),
            job_key: "location".into(),
            summary,
            pid: None,
            gpu_uuids: Vec::new(),
            evidence,
            policy_digest: self.digest.clone(),
            job_host: None,
            tenant: None,
        };
        if let Some(why) = &v.relay_suspected {
            flags.push(flag(
                "location-relay-suspected",
                Severity::High,
                format!("{}: a relay is suspected: {why}", host.hostname),
                json!({"location": v, "report_seq": report.seq}),
            ));
        } else if v.verdict == "inconsistent" {
            flags.push(flag(
                "location-inconsistent",
                Severity::High,
                format!("{}: not where it is registered: {}", host.hostname, v.reason),
                json!({"location": v, "report_seq": report.seq}),
            ));
        }
        if !refused.is_empty() {
            flags.push(flag(
                "location-record-invalid",
                Severity::Medium,
                format!("{}: location records refused: {}", host.hostname, refused.join("; ")),
                json!({"refused": refused, "report_seq": report.seq}),
            ));
        }
        flags
    }

    /// Flags for a report's GPU evidence: evidence that fails to verify or was replayed, contradicts the
    /// report, or differs from the golden values (high); a GPU in confidential-computing mode without
    /// evidence (medium).
    pub fn evidence_flags(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        evidence: &[crate::evidence::GpuEvidence],
    ) -> Vec<NewFlag> {
        use crate::evidence::{Failure, State};
        evidence
            .iter()
            .filter(|e| e.state != State::Verified)
            .map(|e| {
                let (rule, severity, what) = match (e.state, e.failure) {
                    (State::Missing, _) => ("gpu-evidence-missing", Severity::Medium, "sent no attestation evidence"),
                    (_, Some(Failure::Contradicts)) => {
                        ("gpu-evidence-mismatch", Severity::High, "attests to something other than the report says")
                    }
                    (_, Some(Failure::Golden)) => {
                        ("gpu-evidence-golden", Severity::High, "measures differently from the golden values")
                    }
                    _ => ("gpu-evidence-failed", Severity::High, "sent attestation evidence that does not verify"),
                };
                NewFlag {
                    rule: rule.into(),
                    severity: severity.as_str().into(),
                    job_key: format!("gpu:{}", e.gpu_uuid),
                    summary: format!("{}: GPU {} {what}: {}", host.hostname, e.gpu_uuid, e.reasons.join("; ")),
                    pid: None,
                    gpu_uuids: vec![e.gpu_uuid.clone()],
                    evidence: json!({"gpu_evidence": e, "report_seq": report.seq}),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                    tenant: None,
                }
            })
            .collect()
    }
}

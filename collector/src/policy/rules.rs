//! The report rules: what a signed report, its commit and its jobs raise (model developers and
//! screening, accelerators, clock skew, the chain of reports, GPU changes, compute thresholds).

use gpuattest_proto::pb;
use serde_json::json;

use super::*;

impl Policy {
    /// The rules that need only the report itself (models, accelerators, tenant findings, GPU change
    /// events, clock skew). Ingest runs these on its verifying threads, outside the commit.
    pub fn report_flags(&self, host: &HostContext<'_>, report: &pb::UsageReport, receipt: Receipt) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        for p in &report.processes {
            // What the command line names, and what the weight files it has open say they are.
            let mut hits: Vec<(&ModelPattern, String, String)> = self
                .match_cmdline(&p.cmdline)
                .into_iter()
                .map(|(pat, m)| (pat, m, "command line".to_string()))
                .collect();
            for m in &p.models {
                let names: Vec<&str> = [m.name.as_deref(), m.metadata.get("general.basename").map(String::as_str)]
                    .into_iter()
                    .flatten()
                    .collect();
                for n in names {
                    for (pat, model) in self.match_cmdline(n) {
                        if !hits.iter().any(|(hp, _, _)| hp.pattern == pat.pattern) {
                            hits.push((pat, model, format!("model file {}", m.path)));
                        }
                    }
                }
            }
            for (pattern, model, source) in hits {
                let job_key = crate::compute::job_identity(host.host_id, self.tenant_of(p, host.tenant).as_deref(), p);
                flags.push(NewFlag {
                    job_host: None,
                    tenant: self.tenant_of(p, host.tenant),
                    rule: "model-developer".into(),
                    severity: pattern.severity.as_str().into(),
                    job_key,
                    summary: format!(
                        "pid {} on {} ({}) runs {} — {} model by {} ({}){}",
                        p.pid,
                        host.hostname,
                        gpu_list(&p.gpu_uuids),
                        model,
                        pattern.family,
                        pattern.developer,
                        pattern.country,
                        pattern.listing.as_ref().map(|l| format!("; {l}")).unwrap_or_default()
                    ),
                    pid: Some(p.pid),
                    gpu_uuids: p.gpu_uuids.clone(),
                    evidence: json!({
                        "matched": model,
                        "source": source,
                        "pattern": pattern.pattern,
                        "family": pattern.family,
                        "developer": pattern.developer,
                        "developer_country": pattern.country,
                        "listing": pattern.listing,
                        "cmdline": p.cmdline,
                        "models": p.models.iter().map(|m| json!({
                            "path": m.path, "format": m.format, "header_sha256": m.header_sha256,
                            "architecture": m.architecture, "model_type": m.model_type, "name": m.name,
                            "parameter_count": m.parameter_count,
                        })).collect::<Vec<_>>(),
                        "container_id": p.container_id,
                        "pod_uid": p.pod_uid,
                        "slurm_job_id": p.slurm_job_id,
                        "pod": p.pod.as_ref().map(|k| json!({"namespace": k.namespace, "name": k.name, "owner": k.owner})),
                        "report_seq": report.seq,
                    }),
                    policy_digest: self.digest.clone(),
                });
            }
        }
        // What the weight files themselves are, by the registry (names, tokenizers, config
        // signatures, header hashes): a renamed or re-packaged model is still recognised.
        for p in &report.processes {
            for m in &p.models {
                let v = self.evaluate_model(&crate::registry::fingerprint_json(m));
                if v.severity == Severity::None || v.family == "unknown" {
                    continue;
                }
                // Weak identification (a path alone, a shared architecture) is worth a look, not an alarm.
                let severity = if v.confidence < 0.5 { Severity::Low } else { v.severity };
                let job_key = crate::compute::job_identity(host.host_id, self.tenant_of(p, host.tenant).as_deref(), p);
                flags.push(NewFlag {
                    rule: "model-developer".into(),
                    severity: severity.as_str().into(),
                    job_key: job_key.clone(),
                    // The path stays in the evidence: summaries travel in redacted exports.
                    summary: format!(
                        "pid {} on {} ({}) has {} {} weights open: a {} model by {} ({}), {:.0}% confidence",
                        p.pid,
                        host.hostname,
                        gpu_list(&p.gpu_uuids),
                        if m.format.is_empty() { "model" } else { m.format.as_str() },
                        display_name(m.name.as_deref()),
                        v.family,
                        v.developer.as_deref().unwrap_or("?"),
                        v.developer_country.as_deref().unwrap_or("?"),
                        v.confidence * 100.0
                    ),
                    pid: Some(p.pid),
                    gpu_uuids: p.gpu_uuids.clone(),
                    evidence: json!({
                        "source": format!("model file {}", m.path),
                        "family": v.family,
                        "developer": v.developer,
                        "developer_country": v.developer_country,
                        "registry": v,
                        "model": crate::registry::fingerprint_json(m),
                        "cmdline": p.cmdline,
                        "report_seq": report.seq,
                    }),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                    tenant: self.tenant_of(p, host.tenant),
                });
            }
        }
        for a in &report.accelerators {
            if let Some((_, v)) = self.accelerator_vendors.iter().find(|(id, _)| *id == a.vendor_id) {
                flags.push(NewFlag {
                    rule: "foreign-accelerator".into(),
                    severity: v.severity.as_str().into(),
                    job_key: format!("pci:{}", a.pci_address),
                    summary: format!("{} has a {} {} at PCI {}: {}", host.hostname, v.name, a.product, a.pci_address, v.reason),
                    pid: None,
                    gpu_uuids: Vec::new(),
                    evidence: json!({"pci_address": a.pci_address, "vendor_id": a.vendor_id, "device_id": a.device_id, "product": a.product, "report_seq": report.seq}),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                tenant: None,
                });
            }
        }
        let mut tenants: std::collections::BTreeSet<String> =
            report.processes.iter().filter_map(|p| self.tenant_of(p, host.tenant)).collect();
        tenants.extend(host.tenant.map(str::to_string));
        for t in &tenants {
            for f in self.findings.get(t).into_iter().flatten() {
                flags.push(NewFlag {
                    rule: f.rule.clone(),
                    severity: f.severity.as_str().into(),
                    job_key: format!("tenant:{t}"),
                    summary: f.summary.clone(),
                    pid: None,
                    gpu_uuids: Vec::new(),
                    evidence: f.evidence.clone(),
                    policy_digest: self.digest.clone(),
                    // One flag per tenant and rule, whichever host its jobs run on.
                    job_host: Some(format!("tenant:{t}")),
                    tenant: Some(t.clone()),
                });
            }
        }
        flags.extend(self.gpu_change_flags(host, report));
        let skew = report.agent_time_unix_ms - receipt.received_at;
        if receipt.nonce_fresh && skew.abs() > self.integrity.max_clock_skew_ms {
            flags.push(NewFlag {
                rule: "clock-skew".into(),
                severity: Severity::Medium.as_str().into(),
                job_key: "clock".into(),
                summary: format!(
                    "{}: the agent's clock is {} s {} the collector's (limit {} s); report times from this host are unreliable",
                    host.hostname,
                    skew.abs() / 1000,
                    if skew > 0 { "ahead of" } else { "behind" },
                    self.integrity.max_clock_skew_ms / 1000
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({"agent_time_unix_ms": report.agent_time_unix_ms, "received_at_unix_ms": receipt.received_at, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        flags
    }

    /// The rules that need the store's view at commit time (chain position, job totals, GPU
    /// locations), added to `flags` from [`Policy::report_flags`]. A job that spans hosts gets one flag
    /// per rule: it lives on the host that first reported the job.
    pub fn commit_flags(
        &self,
        host: &HostContext<'_>,
        report: &pb::UsageReport,
        pos: &ChainPosition,
        ctx: &CommitContext,
        mut flags: Vec<NewFlag>,
    ) -> Vec<NewFlag> {
        for f in flags.iter_mut().filter(|f| f.rule == "model-developer") {
            if let Some(j) = ctx.jobs.iter().find(|j| j.job_key == f.job_key) {
                f.job_host = j.hosts.first().cloned();
                if let Some(o) = f.evidence.as_object_mut() {
                    o.insert("job".into(), json!({"verdict": j.verdict, "gpu_hours": j.gpu_hours, "hosts": j.hosts}));
                }
            }
        }
        flags.extend(self.chain_flags(host, report, pos));
        flags.extend(self.compute_flags(&ctx.jobs));
        for m in &ctx.moved_gpus {
            flags.push(NewFlag {
                rule: "gpu-moved".into(),
                severity: Severity::High.as_str().into(),
                job_key: format!("gpu:{}", m.uuid),
                summary: format!(
                    "GPU {} (serial {}) was reported by host {} until {} and is now on {}: a chip that moves between hosts is a diversion signal; confirm the move was authorised",
                    m.uuid,
                    m.serial,
                    m.from_host,
                    crate::timefmt::rfc3339(m.from_last_seen),
                    host.hostname
                ),
                pid: None,
                gpu_uuids: vec![m.uuid.clone()],
                evidence: json!({"gpu_uuid": m.uuid, "serial": m.serial, "previous_serial": m.previous_serial,
                    "from_host": m.from_host, "from_last_seen": crate::timefmt::rfc3339(m.from_last_seen),
                    "to_host": host.host_id, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        for m in &ctx.moved_devices {
            flags.push(NewFlag {
                rule: "gpu-evidence-moved".into(),
                severity: Severity::High.as_str().into(),
                job_key: format!("device:{}", m.device_serial),
                summary: format!(
                    "the GPU with device identity {} (proven by its own NVIDIA certificate) was on host {} as {} until {} and now attests on {} as {}: the chip moved; confirm the move was authorised",
                    m.device_serial,
                    m.from_host,
                    m.from_gpu_uuid,
                    crate::timefmt::rfc3339(m.from_last_seen),
                    host.hostname,
                    m.gpu_uuid
                ),
                pid: None,
                gpu_uuids: vec![m.gpu_uuid.clone()],
                evidence: json!({"device_serial": m.device_serial, "gpu_uuid": m.gpu_uuid, "from_host": m.from_host,
                    "from_gpu_uuid": m.from_gpu_uuid, "from_last_seen": crate::timefmt::rfc3339(m.from_last_seen),
                    "to_host": host.host_id, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
                tenant: None,
            });
        }
        flags
    }

    /// A job whose operations reached a threshold: one flag per job, at the highest threshold reached.
    fn compute_flags(&self, jobs: &[JobSummary]) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        for j in jobs {
            let j = self.estimate(j.clone());
            let (figure, what) = if self.compute.compare_estimate {
                (j.ops_estimate, "estimated")
            } else {
                (j.ops_upper_bound, "at most")
            };
            let Some(t) = self.compute.thresholds.iter().rev().find(|t| figure >= t.operations) else {
                continue;
            };
            flags.push(NewFlag {
                rule: "compute-threshold".into(),
                severity: t.severity.as_str().into(),
                job_key: j.job_key.clone(),
                summary: format!(
                    "job {} ({}, {:.0}% confidence) has used {what} {:.2e} operations (threshold {:.0e}) over {:.1} GPU-hours on {} GPUs across {} hosts",
                    j.job_key,
                    j.verdict.kind,
                    j.verdict.confidence * 100.0,
                    figure,
                    t.operations,
                    j.gpu_hours,
                    j.gpus,
                    j.hosts.len()
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({
                    "threshold": t.operations,
                    "ops_upper_bound": j.ops_upper_bound,
                    "ops_estimate": j.ops_estimate,
                    "assumed_efficiency": self.compute.assumed_efficiency,
                    "gpu_hours": j.gpu_hours,
                    "energy_joules": j.energy_joules,
                    "hosts": j.hosts,
                    "verdict": j.verdict,
                }),
                policy_digest: self.digest.clone(),
                job_host: j.hosts.first().cloned(),
                tenant: j.tenant.clone(),
            });
        }
        flags
    }

    /// The agent's change events: a GPU removed, lost, swapped under the same UUID, or added.
    fn gpu_change_flags(&self, host: &HostContext<'_>, report: &pb::UsageReport) -> Vec<NewFlag> {
        report
            .events
            .iter()
            .filter_map(|e| {
                let (severity, what) = match e.kind.as_str() {
                    "gpu_serial_changed" => {
                        (Severity::High, "reports a different serial under the same UUID: a swapped board or a spoofed identity")
                    }
                    "gpu_disappeared" => (Severity::Medium, "is no longer on the host: removed, or hidden from the driver"),
                    "gpu_lost" => (Severity::Medium, "fell off the bus (NVML: GPU is lost): failed hardware, or tampering"),
                    "gpu_appeared" => (Severity::Low, "appeared on the host"),
                    _ => return None,
                };
                Some(NewFlag {
                    rule: "gpu-change".into(),
                    severity: severity.as_str().into(),
                    job_key: format!("{}:{}", e.kind, e.gpu_uuid),
                    summary: format!("{}: GPU {} {what}{}", host.hostname, e.gpu_uuid, if e.detail.is_empty() { String::new() } else { format!(" ({})", e.detail) }),
                    pid: None,
                    gpu_uuids: vec![e.gpu_uuid.clone()],
                    evidence: json!({"event": e.kind, "gpu_uuid": e.gpu_uuid, "detail": e.detail, "report_seq": report.seq}),
                    policy_digest: self.digest.clone(),
                    job_host: None,
                    tenant: None,
                })
            })
            .collect()
    }

    fn chain_flags(&self, host: &HostContext<'_>, report: &pb::UsageReport, pos: &ChainPosition) -> Vec<NewFlag> {
        let mut flags = Vec::new();
        if report.seq > pos.last_seq + 1 {
            let (first, last) = (pos.last_seq + 1, report.seq - 1);
            flags.push(NewFlag {
                rule: "sequence-gap".into(),
                severity: Severity::Medium.as_str().into(),
                job_key: format!("seq:{first}-{last}"),
                summary: format!("{}: reports {first} to {last} never reached the collector", host.hostname),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({"missing_first": first, "missing_last": last, "report_seq": report.seq}),
                policy_digest: self.digest.clone(),
                job_host: None,
                tenant: None,
            });
        }
        if let Some(g) = &report.gap {
            flags.push(NewFlag {
                rule: "sequence-gap".into(),
                severity: Severity::Medium.as_str().into(),
                job_key: format!("seq:{}-{}", g.first_seq, g.last_seq),
                summary: format!(
                    "{}: the agent dropped reports {} to {} before delivery ({})",
                    host.hostname, g.first_seq, g.last_seq, g.reason
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({"missing_first": g.first_seq, "missing_last": g.last_seq, "agent_gap_record": report.seq, "reason": g.reason}),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        let expected = pos.last_hash.as_deref().unwrap_or(&[]);
        if report.seq == pos.last_seq + 1 && pos.last_seq > 0 && report.prev_report_sha256 != expected {
            flags.push(NewFlag {
                rule: "chain-break".into(),
                severity: Severity::High.as_str().into(),
                job_key: format!("seq:{}", report.seq),
                summary: format!(
                    "{}: report {} does not chain to report {} (previous-report hash differs): history was rewritten or a second agent uses this key",
                    host.hostname, report.seq, pos.last_seq
                ),
                pid: None,
                gpu_uuids: Vec::new(),
                evidence: json!({
                    "report_seq": report.seq,
                    "prev_report_sha256": gpuattest_proto::hex(&report.prev_report_sha256),
                    "stored_hash": gpuattest_proto::hex(expected),
                }),
                policy_digest: self.digest.clone(),
                job_host: None,
            tenant: None,
            });
        }
        flags
    }
}

/// A model name fit for a summary: a Hugging Face id as it is, a local path cut to its last part (a
/// file's `_name_or_path` may be a directory on the tenant's disk).
pub(super) fn display_name(name: Option<&str>) -> &str {
    match name {
        None | Some("") => "unnamed",
        Some(n) if n.starts_with('/') || n.matches('/').count() > 1 => {
            n.rsplit('/').find(|p| !p.is_empty()).unwrap_or("unnamed")
        }
        Some(n) => n,
    }
}

/// `GPU-a` / `GPU-a, GPU-b` / `GPU-a and 7 more GPUs`: short enough for a table row.
fn gpu_list(uuids: &[String]) -> String {
    match uuids {
        [] => "no GPU".into(),
        [one] => one.clone(),
        [a, b] => format!("{a}, {b}"),
        [first, rest @ ..] => format!("{first} and {} more GPUs", rest.len()),
    }
}

//! Human-readable tables for the CLI (the default output; `--json` prints the rows instead).

use std::fmt::Write;

use crate::store::{FlagRow, HostSummary};

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

/// The flags table.
pub fn flags(rows: &[FlagRow]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return "no flags\n".into();
    }
    let _ = writeln!(
        s,
        "{:<5} {:<9} {:<20} {:<10} {:<22} {:<14} SUMMARY",
        "ID", "SEVERITY", "RULE", "STATUS", "HOST", "TENANT"
    );
    for f in rows {
        let _ = writeln!(
            s,
            "{:<5} {:<9} {:<20} {:<10} {:<22} {:<14} {}",
            f.id,
            f.severity.to_uppercase(),
            f.rule,
            f.status,
            clip(&f.host_id, 22),
            clip(f.tenant.as_deref().unwrap_or("-"), 14),
            f.summary
        );
    }
    s
}

/// The hosts table.
pub fn hosts(rows: &[HostSummary]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return "no hosts enrolled\n".into();
    }
    let _ = writeln!(
        s,
        "{:<24} {:<16} {:<14} {:>8} {:>8} {:>5} {:>8}  LAST SEEN",
        "HOST", "HOSTNAME", "TENANT", "LAST_SEQ", "REPORTS", "GAPS", "RECORDED"
    );
    for h in rows {
        let _ = writeln!(
            s,
            "{:<24} {:<16} {:<14} {:>8} {:>8} {:>5} {:>8}  {}{}",
            clip(&h.host_id, 24),
            clip(&h.hostname, 16),
            clip(h.tenant.as_deref().unwrap_or("-"), 14),
            h.last_seq,
            h.reports,
            h.gaps,
            h.recorded_gaps,
            h.last_seen.as_deref().unwrap_or("never"),
            if h.revoked { "  (revoked)" } else { "" }
        );
        // GPU evidence: counted by state, then each GPU that failed or sent none, with why.
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for e in &h.gpu_evidence {
            *counts.entry(e.state.as_str()).or_default() += 1;
        }
        if !counts.is_empty() {
            let text: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(s, "    GPU evidence: {}", text.join(", "));
        }
        for e in h.gpu_evidence.iter().filter(|e| e.state == "failed" || e.state == "missing") {
            let _ = writeln!(s, "      {} {}: {}", e.gpu_uuid, e.state, e.reasons.join("; "));
        }
        if let Some(l) = &h.location
            && l["verdict"] != "unregistered"
        {
            let _ = writeln!(
                s,
                "    location: {} ({})",
                l["verdict"].as_str().unwrap_or_default(),
                l["reason"].as_str().unwrap_or_default()
            );
        }
    }
    s
}

/// `jobs list`.
pub fn jobs(rows: &[crate::compute::JobSummary]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return "no jobs yet\n".into();
    }
    let _ = writeln!(
        s,
        "{:<40} {:<16} {:<14} {:>5} {:>5} {:>10} {:>10} {:>10}",
        "JOB", "KIND", "TENANT", "HOSTS", "GPUS", "GPU-HOURS", "OPS<=", "OPS~"
    );
    for j in rows {
        let _ = writeln!(
            s,
            "{:<40} {:<16} {:<14} {:>5} {:>5} {:>10.3} {:>10.2e} {:>10.2e}",
            clip(&j.job_key, 40),
            format!("{} {:.0}%", j.verdict.kind, j.verdict.confidence * 100.0),
            clip(j.tenant.as_deref().unwrap_or("-"), 14),
            j.hosts.len(),
            j.gpus,
            j.gpu_hours,
            j.ops_upper_bound,
            j.ops_estimate
        );
    }
    s
}

/// `jobs show`.
pub fn job(j: &crate::compute::JobSummary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "job {}", j.job_key);
    let _ = writeln!(s, "  tenant       {}", j.tenant.as_deref().unwrap_or("-"));
    let _ = writeln!(s, "  hosts        {}", j.hosts.join(", "));
    let _ = writeln!(s, "  gpus         {}", j.gpus);
    let _ = writeln!(s, "  gpu-hours    {:.3}", j.gpu_hours);
    let _ = writeln!(s, "  energy       {:.1} kJ", j.energy_joules / 1000.0);
    let _ = writeln!(s, "  operations   at most {:.3e}; estimated {:.3e}", j.ops_upper_bound, j.ops_estimate);
    if j.unknown_peak_gpu_seconds > 0.0 {
        let _ = writeln!(
            s,
            "               ({:.0} GPU-seconds on GPUs whose peak is unknown are not counted)",
            j.unknown_peak_gpu_seconds
        );
    }
    let _ = writeln!(
        s,
        "  seen         {} to {}",
        crate::timefmt::rfc3339(j.first_seen),
        crate::timefmt::rfc3339(j.last_seen)
    );
    let _ = writeln!(s, "  verdict      {} ({:.0}% confidence)", j.verdict.kind, j.verdict.confidence * 100.0);
    for r in &j.verdict.reasons {
        let _ = writeln!(s, "    - {r}");
    }
    s
}

/// A decoded report as JSON for reviewers (the signed bytes stay the evidence; this is for reading).
pub fn report_json(r: &gpuattest_proto::pb::UsageReport) -> serde_json::Value {
    use serde_json::json;
    json!({
        "host_id": r.host_id,
        "seq": r.seq,
        "prev_report_sha256": gpuattest_proto::hex(&r.prev_report_sha256),
        "window": {"start": crate::timefmt::rfc3339(r.window_start_unix_ms), "end": crate::timefmt::rfc3339(r.window_end_unix_ms)},
        "agent_time": crate::timefmt::rfc3339(r.agent_time_unix_ms),
        "host": r.host.as_ref().map(|h| json!({"hostname": h.hostname, "kernel": h.kernel, "agent_version": h.agent_version,
            "gpu_source": h.gpu_source, "driver_version": h.driver_version})),
        "gpus": r.gpus.iter().map(|g| json!({
            "index": g.index, "uuid": g.uuid, "serial": g.serial, "name": g.name, "pci_bus_id": g.pci_bus_id,
            "utilization_gpu_pct": g.utilization_gpu_pct, "memory_used_bytes": g.memory_used_bytes,
            "power_mw": g.power_mw, "energy_mj": g.energy_mj, "lost": g.lost,
            "fabric": g.fabric.as_ref().map(|f| json!({"cluster_uuid": f.cluster_uuid, "clique_id": f.clique_id, "state": f.state})),
            "processes": g.processes.iter().map(|p| json!({"pid": p.pid, "used_memory_bytes": p.used_memory_bytes})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "processes": r.processes.iter().map(|p| json!({
            "pid": p.pid, "gpu_uuids": p.gpu_uuids, "cmdline": p.cmdline, "user": p.user, "exe": p.exe,
            "container_id": p.container_id, "pod_uid": p.pod_uid, "slurm_job_id": p.slurm_job_id,
            "pod": p.pod.as_ref().map(|k| json!({"namespace": k.namespace, "name": k.name, "owner": k.owner, "service_account": k.service_account})),
            "launch": p.launch.as_ref().map(|l| json!({"kind": l.kind, "framework": l.framework, "world_size": l.world_size, "rank": l.rank})),
            "writing": p.writing,
            "models": p.models.iter().map(|m| json!({"path": m.path, "format": m.format, "header_sha256": m.header_sha256,
                "name": m.name, "architecture": m.architecture, "parameter_count": m.parameter_count})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "accelerators": r.accelerators.iter().map(|a| json!({"pci_address": a.pci_address, "vendor": a.vendor, "product": a.product,
            "vendor_id": format!("0x{:04x}", a.vendor_id), "device_id": format!("0x{:04x}", a.device_id)})).collect::<Vec<_>>(),
        "events": r.events.iter().map(|e| json!({"kind": e.kind, "gpu_uuid": e.gpu_uuid, "detail": e.detail})).collect::<Vec<_>>(),
        "gap": r.gap.as_ref().map(|g| json!({"first_seq": g.first_seq, "last_seq": g.last_seq, "reason": g.reason})),
        "confidential_compute": r.confidential_compute.as_ref().map(|c| json!({"enabled": c.enabled,
            "accepting_work": c.accepting_work, "unavailable": c.unavailable})),
        "attestations": r.attestations.iter().map(|a| json!({
            "gpu_uuid": a.gpu_uuid, "nonce": gpuattest_proto::hex(&a.nonce),
            "bound_to_this_report_nonce": !a.nonce.is_empty() && a.nonce == r.collector_nonce,
            "report_bytes": a.report.len(), "report_sha256": gpuattest_proto::hex(&gpuattest_proto::sha256(&a.report)),
            "cec_report_bytes": a.cec_report.len(), "cert_chain_bytes": a.cert_chain.len(),
            "attestation_cert_chain_bytes": a.attestation_cert_chain.len(), "error": a.error,
        })).collect::<Vec<_>>(),
    })
}

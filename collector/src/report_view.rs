//! A decoded report as JSON for reading (the review page, `reports show`): every field a reviewer
//! needs, nothing re-encoded. Below the store, which shows it beside each signed report.

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
            "telemetry": g.telemetry.as_ref().map(telemetry_json),
        })).collect::<Vec<_>>(),
        "processes": r.processes.iter().map(|p| json!({
            "pid": p.pid, "gpu_uuids": p.gpu_uuids, "cmdline": p.cmdline, "user": p.user, "exe": p.exe,
            "container_id": p.container_id, "pod_uid": p.pod_uid, "slurm_job_id": p.slurm_job_id,
            "pod": p.pod.as_ref().map(|k| json!({"namespace": k.namespace, "name": k.name, "owner": k.owner, "service_account": k.service_account})),
            "launch": p.launch.as_ref().map(|l| json!({"kind": l.kind, "framework": l.framework, "world_size": l.world_size, "rank": l.rank})),
            "writing": p.writing,
            "large_writes": p.large_writes.iter().map(|w| json!({"path": w.path, "size_bytes": w.size_bytes,
                "modified": crate::timefmt::rfc3339(w.modified_unix_ms), "fs_type": w.fs_type})).collect::<Vec<_>>(),
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
        "landmark_answers": r.landmark_answers.iter().map(|a| json!({"landmark": a.landmark, "answers": a.answers,
            "max_answer_us": a.max_answer_us, "mean_answer_us": a.total_answer_us / u64::from(a.answers.max(1))})).collect::<Vec<_>>(),
    })
}

/// Metric names as reviewers read them (the protobuf enum's, lower case).
fn metric_name(m: i32) -> String {
    gpuattest_proto::pb::Metric::try_from(m)
        .map_or_else(|_| format!("metric_{m}"), |m| m.as_str_name().to_ascii_lowercase())
}

/// One GPU's window statistics, in the wire units (utilisation in 0.1 %, power in 0.1 W, clocks in
/// MHz, throughput in KB/s, periods in ms, strengths in 0.001).
fn telemetry_json(t: &gpuattest_proto::pb::GpuTelemetry) -> serde_json::Value {
    use serde_json::json;
    json!({
        "sample_ms": t.sample_ms, "samples": t.samples,
        "memory_used_trend_bytes_per_s": t.memory_used_trend_bytes_per_s,
        "unavailable": t.unavailable.iter().map(|m| metric_name(*m)).collect::<Vec<_>>(),
        "series": t.series.iter().map(|s| json!({"metric": metric_name(s.metric), "mean": s.mean, "min": s.min,
            "max": s.max, "stddev": s.stddev, "period_ms": s.period_ms, "period_strength": s.period_strength,
            "history": s.history})).collect::<Vec<_>>(),
    })
}

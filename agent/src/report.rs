//! Turning an observation into a signed, chained usage report.

use gpuattest_proto::pb;
use prost::Message;

use crate::observe::{ModelFingerprint, Observation};

/// The chain position and context of a report.
#[derive(Debug, Clone, Default)]
pub struct ReportContext {
    /// Host id from enrollment.
    pub host_id: String,
    /// This report's sequence number.
    pub seq: u64,
    /// SHA-256 of the previous report's bytes (empty for seq 1).
    pub prev_report_sha256: Vec<u8>,
    /// Start of the observation window, Unix ms.
    pub window_start_unix_ms: i64,
    /// Agent clock at signing, Unix ms.
    pub agent_time_unix_ms: i64,
    /// Latest collector nonce.
    pub collector_nonce: Vec<u8>,
    /// Set on a gap record.
    pub gap: Option<pb::Gap>,
    /// The observation interval, ms (signed, so the collector's silence rule can trust it).
    pub interval_ms: u64,
    /// Landmark measurement records received since the last report.
    pub location_records: Vec<pb::SignedLocationRecord>,
    /// How fast this agent answered each landmark since the last report.
    pub landmark_answers: Vec<pb::LandmarkAnswers>,
}

fn fingerprint(m: &ModelFingerprint) -> pb::ModelFingerprint {
    pb::ModelFingerprint {
        path: m.path.clone(),
        format: m.format.clone(),
        header_sha256: m.header_sha256.clone(),
        tensor_count: m.tensor_count,
        parameter_count: m.parameter_count,
        architecture: m.architecture.clone(),
        model_type: m.model_type.clone(),
        name: m.name.clone(),
        organization: m.organization.clone(),
        base_models: m.base_models.clone(),
        dtypes: m.dtypes.clone(),
        metadata: m.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        size_bytes: m.size_bytes,
    }
}

/// A GPU's attestation as the wire carries it.
pub fn attestation(a: &crate::gpu::Attestation) -> pb::GpuAttestation {
    pb::GpuAttestation {
        gpu_uuid: a.gpu_uuid.clone(),
        nonce: a.nonce.clone(),
        report: a.report.clone(),
        cec_report: a.cec_report.clone(),
        cert_chain: a.cert_chain.clone(),
        attestation_cert_chain: a.attestation_cert_chain.clone(),
        error: a.error.clone().unwrap_or_default(),
    }
}

/// A window's statistics in wire units (rounded to whole units; negative values cannot occur).
fn telemetry(t: &crate::telemetry::Telemetry) -> pb::GpuTelemetry {
    let whole = |x: f64| x.round().clamp(0.0, f64::from(u32::MAX)) as u32;
    pb::GpuTelemetry {
        sample_ms: t.sample_ms,
        samples: t.samples,
        series: t
            .series
            .iter()
            .map(|s| pb::SeriesStats {
                metric: s.metric.map_or(0, crate::telemetry::Metric::wire),
                mean: whole(s.mean),
                min: whole(s.min),
                max: whole(s.max),
                stddev: whole(s.stddev),
                period_ms: s.period_ms,
                period_strength: whole(s.period_strength * 1000.0),
                history: s.history,
            })
            .collect(),
        memory_used_trend_bytes_per_s: t.memory_used_trend_bytes_per_s,
        unavailable: t.unavailable.iter().map(|m| m.wire()).collect(),
    }
}

/// Builds the protobuf report for an observation.
pub fn build(obs: &Observation, ctx: &ReportContext) -> pb::UsageReport {
    pb::UsageReport {
        host_id: ctx.host_id.clone(),
        seq: ctx.seq,
        prev_report_sha256: ctx.prev_report_sha256.clone(),
        window_start_unix_ms: ctx.window_start_unix_ms,
        window_end_unix_ms: obs.observed_at_unix_ms,
        agent_time_unix_ms: ctx.agent_time_unix_ms,
        collector_nonce: ctx.collector_nonce.clone(),
        host: Some(pb::HostInfo {
            hostname: obs.host.hostname.clone(),
            machine_id: obs.host.machine_id.clone(),
            kernel: obs.host.kernel.clone(),
            agent_version: obs.host.agent_version.clone(),
            gpu_source: obs.gpu_source.clone(),
            driver_version: obs.driver_version.clone().unwrap_or_default(),
            cuda_driver_version: obs.cuda_driver_version.clone().unwrap_or_default(),
        }),
        gpus: obs
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                serial: g.serial.clone(),
                name: g.name.clone(),
                pci_bus_id: g.pci_bus_id.clone(),
                memory_total_bytes: g.memory_total_bytes,
                memory_used_bytes: g.memory_used_bytes,
                utilization_gpu_pct: g.utilization_gpu_pct,
                utilization_memory_pct: g.utilization_memory_pct,
                power_mw: g.power_mw,
                energy_mj: g.energy_mj,
                processes: g.processes.iter().map(usage).collect(),
                board_part_number: g.board_part_number.clone().unwrap_or_default(),
                brand: g.brand.clone().unwrap_or_default(),
                architecture: g.architecture.clone().unwrap_or_default(),
                vbios_version: g.vbios_version.clone().unwrap_or_default(),
                compute_capability: g.compute_capability.clone().unwrap_or_default(),
                temperature_c: g.temperature_c,
                clock_graphics_mhz: g.clock_graphics_mhz,
                clock_sm_mhz: g.clock_sm_mhz,
                clock_memory_mhz: g.clock_memory_mhz,
                mig_enabled: g.mig_enabled,
                mig_devices: g
                    .mig_devices
                    .iter()
                    .map(|m| pb::MigDevice {
                        index: m.index,
                        uuid: m.uuid.clone(),
                        memory_total_bytes: m.memory_total_bytes,
                        processes: m.processes.iter().map(usage).collect(),
                    })
                    .collect(),
                process_utilization: g
                    .process_utilization
                    .iter()
                    .map(|u| pb::ProcessUtilization { pid: u.pid, sm_pct: u.sm_pct, memory_pct: u.memory_pct })
                    .collect(),
                accounting: g
                    .accounting
                    .iter()
                    .map(|a| pb::ProcessAccounting {
                        pid: a.pid,
                        gpu_util_pct: a.gpu_util_pct,
                        memory_util_pct: a.memory_util_pct,
                        max_memory_bytes: a.max_memory_bytes,
                        time_ms: a.time_ms,
                    })
                    .collect(),
                unavailable: g
                    .unavailable
                    .iter()
                    .map(|u| pb::FieldError { field: u.field.clone(), reason: u.reason.clone() })
                    .collect(),
                lost: g.lost,
                fabric: g.fabric.as_ref().map(|f| pb::GpuFabric {
                    cluster_uuid: f.cluster_uuid.clone(),
                    clique_id: f.clique_id,
                    state: u32::from(f.state),
                    status: f.status,
                }),
                telemetry: g.telemetry.as_ref().map(telemetry),
            })
            .collect(),
        processes: obs
            .processes
            .iter()
            .map(|p| pb::GpuProcess {
                pid: p.pid,
                gpu_uuids: p.gpu_uuids.clone(),
                cmdline: p.cmdline.clone(),
                container_id: p.container_id.clone(),
                pod_uid: p.pod_uid.clone(),
                slurm_job_id: p.slurm_job_id.clone(),
                models: p.models.iter().map(fingerprint).collect(),
                uid: p.uid,
                exe: p.exe.clone().unwrap_or_default(),
                start_time_ticks: p.start_time_ticks,
                cgroups: p.cgroups.clone(),
                env: p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                launch: Some(pb::Launch {
                    kind: p.launch.kind.clone(),
                    framework: p.launch.framework.clone(),
                    world_size: p.launch.world_size,
                    rank: p.launch.rank,
                    local_rank: p.launch.local_rank,
                }),
                writing: p.writing.clone(),
                large_writes: p
                    .large_writes
                    .iter()
                    .map(|w| pb::OpenWrite {
                        path: w.path.clone(),
                        size_bytes: w.size_bytes,
                        modified_unix_ms: w.modified_unix_ms,
                        fs_type: w.fs_type.clone(),
                    })
                    .collect(),
                user: p.user.clone().unwrap_or_default(),
                pod: p.pod.as_ref().map(|k| pb::KubernetesPod {
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    labels: k.labels.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
                    service_account: k.service_account.clone().unwrap_or_default(),
                    owner: k.owner.clone().unwrap_or_default(),
                }),
                model_errors: p
                    .model_errors
                    .iter()
                    .map(|e| pb::FieldError { field: e.path.clone(), reason: e.error.clone() })
                    .collect(),
            })
            .collect(),
        accelerators: obs
            .accelerators
            .iter()
            .map(|a| pb::Accelerator {
                pci_address: a.pci_address.clone(),
                vendor_id: u32::from(a.vendor_id),
                device_id: u32::from(a.device_id),
                vendor: a.vendor.clone(),
                product: a.product.clone(),
                class_code: a.class,
            })
            .collect(),
        events: obs
            .events
            .iter()
            .map(|e| pb::Event { kind: e.kind.clone(), gpu_uuid: e.gpu_uuid.clone(), detail: e.detail.clone() })
            .collect(),
        gap: ctx.gap.clone(),
        confidential_compute: Some(pb::ConfidentialCompute {
            enabled: obs.confidential_compute.enabled,
            accepting_work: obs.confidential_compute.accepting_work,
            unavailable: obs.confidential_compute.unavailable.clone().unwrap_or_default(),
        }),
        attestations: obs.attestations.iter().map(attestation).collect(),
        interval_ms: ctx.interval_ms,
        location_records: ctx.location_records.clone(),
        landmark_answers: ctx.landmark_answers.clone(),
    }
}

fn usage(p: &crate::gpu::GpuProcessUsage) -> pb::GpuProcessUsage {
    pb::GpuProcessUsage { pid: p.pid, used_memory_bytes: p.used_memory_bytes, mps: p.mps }
}

/// Encodes and signs a report. Returns the encoded `SignedReport` and the SHA-256 of the report bytes
/// (the next report's `prev_report_sha256`).
pub fn sign(key: &ring::signature::Ed25519KeyPair, report: &pb::UsageReport) -> (Vec<u8>, [u8; 32]) {
    let bytes = report.encode_to_vec();
    let hash = gpuattest_proto::sha256(&bytes);
    let signed = gpuattest_proto::sign_report(key, bytes);
    (signed.encode_to_vec(), hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    #[test]
    fn signed_report_verifies_and_decodes() {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
        let obs = Observation { observed_at_unix_ms: 2000, ..Default::default() };
        let ctx = ReportContext { host_id: "h1".into(), seq: 7, window_start_unix_ms: 1000, ..Default::default() };
        let (bytes, hash) = sign(&key, &build(&obs, &ctx));
        let signed = pb::SignedReport::decode(bytes.as_slice()).expect("decode");
        gpuattest_proto::verify_report(key.public_key().as_ref(), &signed).expect("verify");
        assert_eq!(gpuattest_proto::sha256(&signed.report), hash);
        let r = pb::UsageReport::decode(signed.report.as_slice()).expect("decode report");
        assert_eq!((r.seq, r.window_start_unix_ms, r.window_end_unix_ms), (7, 1000, 2000));
    }

    #[test]
    fn the_kubernetes_pod_travels_in_the_report() {
        let pod = crate::kubelet::PodInfo {
            namespace: "team-a".into(),
            name: "train-0".into(),
            labels: [("app".to_string(), "llm".to_string())].into(),
            service_account: Some("trainer".into()),
            owner: Some("PyTorchJob/ft".into()),
        };
        let obs = Observation {
            processes: vec![
                crate::observe::ProcessObservation { pid: 1, pod: Some(pod), ..Default::default() },
                crate::observe::ProcessObservation { pid: 2, ..Default::default() },
            ],
            ..Default::default()
        };
        let r = build(&obs, &ReportContext::default());
        let p = r.processes[0].pod.as_ref().expect("pod");
        assert_eq!((p.namespace.as_str(), p.name.as_str(), p.owner.as_str()), ("team-a", "train-0", "PyTorchJob/ft"));
        assert_eq!(p.labels["app"], "llm");
        assert!(r.processes[1].pod.is_none(), "no pod without enrichment");
    }
}

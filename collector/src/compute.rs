//! Jobs: who a GPU process works for across hosts, how much compute it used, and whether it trains or
//! serves a model. Pure functions over report fields and accumulated evidence; the store keeps the
//! running totals (`job_usage`, `jobs`) and the policy turns them into flags.
//!
//! Operations are estimated, never measured: NVML's utilisation is the share of time a kernel ran, so
//! `upper bound = Σ utilisation × peak dense BF16 throughput × time` (a busy GPU cannot do more), and
//! `estimate = upper bound × assumed efficiency` (model FLOPs utilisation while busy; 0.4 by default,
//! typical of large training runs). Both are reported; thresholds compare the upper bound unless the
//! policy says otherwise, so that a job is never under-counted.

use gpuattest_proto::pb;
use serde::Serialize;

pub use crate::classify::{JobEvidence, Verdict, classify};

/// Peak dense BF16 tensor throughput of a GPU model, with where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuPeak {
    /// Substring of the NVML product name, matched case-insensitively; the first match wins, so more
    /// specific names come first.
    pub name_contains: &'static str,
    /// Dense (not 2:4 sparse) BF16 tensor TFLOPS.
    pub bf16_dense_tflops: f64,
    /// Datasheet the figure comes from (sparse figures halved).
    pub source: &'static str,
}

/// The built-in table. Datasheets quote BF16 "with sparsity"; dense is half of that.
pub const GPU_PEAKS: &[GpuPeak] = &[
    GpuPeak {
        name_contains: "GB200",
        bf16_dense_tflops: 2500.0,
        source: "NVIDIA GB200 NVL72 datasheet (5 PF sparse per GPU)",
    },
    GpuPeak {
        name_contains: "B200",
        bf16_dense_tflops: 2250.0,
        source: "NVIDIA DGX B200 datasheet (4.5 PF sparse per GPU)",
    },
    GpuPeak {
        name_contains: "B100",
        bf16_dense_tflops: 1750.0,
        source: "NVIDIA Blackwell B100 specifications (3.5 PF sparse)",
    },
    GpuPeak {
        name_contains: "H200 NVL",
        bf16_dense_tflops: 835.5,
        source: "NVIDIA H200 datasheet, NVL (1,671 TF sparse)",
    },
    GpuPeak { name_contains: "H200", bf16_dense_tflops: 989.5, source: "NVIDIA H200 datasheet, SXM (1,979 TF sparse)" },
    GpuPeak {
        name_contains: "H100 NVL",
        bf16_dense_tflops: 835.5,
        source: "NVIDIA H100 datasheet, NVL (1,671 TF sparse)",
    },
    GpuPeak {
        name_contains: "H100 PCIe",
        bf16_dense_tflops: 756.5,
        source: "NVIDIA H100 datasheet, PCIe (1,513 TF sparse)",
    },
    GpuPeak { name_contains: "H100", bf16_dense_tflops: 989.5, source: "NVIDIA H100 datasheet, SXM (1,979 TF sparse)" },
    GpuPeak {
        name_contains: "H800 PCIe",
        bf16_dense_tflops: 756.5,
        source: "NVIDIA H800 PCIe (H100 PCIe compute, 1,513 TF sparse)",
    },
    GpuPeak {
        name_contains: "H800",
        bf16_dense_tflops: 989.5,
        source: "NVIDIA H800 SXM (H100 SXM compute, 1,979 TF sparse)",
    },
    GpuPeak { name_contains: "H20", bf16_dense_tflops: 148.0, source: "NVIDIA H20 specifications (296 TF sparse)" },
    GpuPeak { name_contains: "A100", bf16_dense_tflops: 312.0, source: "NVIDIA A100 datasheet (624 TF sparse)" },
    GpuPeak { name_contains: "A800", bf16_dense_tflops: 312.0, source: "NVIDIA A800 (A100 compute, 624 TF sparse)" },
    GpuPeak { name_contains: "L40S", bf16_dense_tflops: 362.05, source: "NVIDIA L40S datasheet (733 TF sparse)" },
    GpuPeak { name_contains: "L40", bf16_dense_tflops: 181.05, source: "NVIDIA L40 datasheet (362 TF sparse)" },
    GpuPeak { name_contains: "L20", bf16_dense_tflops: 119.5, source: "NVIDIA L20 specifications (239 TF sparse)" },
    GpuPeak { name_contains: "L4", bf16_dense_tflops: 121.0, source: "NVIDIA L4 datasheet (242 TF sparse)" },
    GpuPeak { name_contains: "A30", bf16_dense_tflops: 165.0, source: "NVIDIA A30 datasheet (330 TF sparse)" },
    GpuPeak { name_contains: "A10", bf16_dense_tflops: 125.0, source: "NVIDIA A10 datasheet (250 TF sparse)" },
];

/// The peak for an NVML product name, if the table knows the model.
pub fn peak_for(name: &str) -> Option<&'static GpuPeak> {
    let lower = name.to_ascii_lowercase();
    GPU_PEAKS.iter().find(|p| lower.contains(&p.name_contains.to_ascii_lowercase()))
}

/// The job a process belongs to: `TENANT|IDENTITY`, where the identity spans hosts where the evidence
/// allows (see [`scheduler_identity`]) and the tenant is the process's (see `tenants::tenant_of`), empty
/// for none. Scoping by tenant is what keeps two customers apart: scheduler job ids, rendezvous ids and
/// namespaces repeat across customers and some come from the process's own environment, so without
/// the tenant any customer could join (or bury its evidence in) another's job.
pub fn job_identity(host_id: &str, tenant: Option<&str>, p: &pb::GpuProcess) -> String {
    format!("{}|{}", tenant.unwrap_or_default(), scheduler_identity(host_id, p))
}

/// A job's identity within one tenant: a Slurm job (per cluster), a torchrun rendezvous, a Kubernetes
/// controller (Job, PyTorchJob, StatefulSet ...), then the pod, the container, and finally the process
/// itself on its host.
pub fn scheduler_identity(host_id: &str, p: &pb::GpuProcess) -> String {
    let env = |k: &str| p.env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(j) = p.slurm_job_id.as_deref().or_else(|| env("SLURM_JOB_ID")) {
        return match env("SLURM_CLUSTER_NAME") {
            Some(c) => format!("slurm:{c}/{j}"),
            None => format!("slurm:{j}"),
        };
    }
    if let Some(run) = env("TORCHELASTIC_RUN_ID").filter(|r| *r != "none") {
        return match (env("MASTER_ADDR"), env("MASTER_PORT")) {
            (Some(a), Some(port)) => format!("torchrun:{run}@{a}:{port}"),
            _ => format!("torchrun:{run}"),
        };
    }
    if let Some(pod) = &p.pod
        && !pod.owner.is_empty()
    {
        return format!("k8s:{}/{}", pod.namespace, pod.owner);
    }
    if let Some(u) = &p.pod_uid {
        return format!("pod:{u}");
    }
    if let Some(c) = &p.container_id {
        return format!("container:{c}");
    }
    format!("pid:{host_id}/{}:{}", p.pid, p.start_time_ticks.unwrap_or(0))
}

/// A job's totals across hosts and GPUs, as the policy and reviewers see them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobSummary {
    /// Job identity, `TENANT|IDENTITY` (see [`job_identity`]).
    pub job_key: String,
    /// Tenant of the hosts it ran on (first seen).
    pub tenant: Option<String>,
    /// Hosts.
    pub hosts: Vec<String>,
    /// Distinct GPUs.
    pub gpus: u64,
    /// GPU-hours (wall time × GPUs).
    pub gpu_hours: f64,
    /// Energy of its GPUs, joules (shared GPUs split evenly).
    pub energy_joules: f64,
    /// Upper bound of operations (see the module docs).
    pub ops_upper_bound: f64,
    /// Operations at the assumed efficiency.
    pub ops_estimate: f64,
    /// GPU-seconds on GPUs whose peak the table does not know (not in the operation counts).
    pub unknown_peak_gpu_seconds: f64,
    /// First and last report times, Unix ms.
    pub first_seen: i64,
    /// Last.
    pub last_seen: i64,
    /// Training or inference.
    pub verdict: Verdict,
    /// The evidence behind the verdict.
    pub evidence: JobEvidence,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_prefer_the_specific_name() {
        assert_eq!(peak_for("NVIDIA H100 80GB HBM3").map(|p| p.bf16_dense_tflops), Some(989.5));
        assert_eq!(peak_for("NVIDIA H100 PCIe").map(|p| p.bf16_dense_tflops), Some(756.5));
        assert_eq!(peak_for("NVIDIA L40S").map(|p| p.bf16_dense_tflops), Some(362.05));
        assert_eq!(peak_for("NVIDIA L4").map(|p| p.bf16_dense_tflops), Some(121.0));
        assert_eq!(peak_for("NVIDIA A100-SXM4-80GB").map(|p| p.bf16_dense_tflops), Some(312.0));
        assert_eq!(peak_for("NVIDIA H20").map(|p| p.bf16_dense_tflops), Some(148.0));
        assert!(peak_for("Tesla K80").is_none());
    }

    fn process(env: &[(&str, &str)]) -> pb::GpuProcess {
        pb::GpuProcess {
            pid: 7,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn job_identity_spans_hosts_where_the_evidence_allows() {
        let id = scheduler_identity;
        assert_eq!(id("h", &process(&[("SLURM_JOB_ID", "88"), ("SLURM_CLUSTER_NAME", "c1")])), "slurm:c1/88");
        assert_eq!(
            id(
                "h",
                &process(&[("TORCHELASTIC_RUN_ID", "ft-1"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")])
            ),
            "torchrun:ft-1@10.0.0.1:29500"
        );
        assert_eq!(id("h", &process(&[("TORCHELASTIC_RUN_ID", "none")])), "pid:h/7:0");
        let mut p = process(&[]);
        p.pod_uid = Some("u1".into());
        assert_eq!(id("h", &p), "pod:u1");
        p.pod = Some(pb::KubernetesPod { namespace: "ns".into(), owner: "PyTorchJob/ft".into(), ..Default::default() });
        assert_eq!(id("h", &p), "k8s:ns/PyTorchJob/ft");
    }

    #[test]
    fn finding_1_job_keys_are_scoped_by_tenant() {
        let p = process(&[("SLURM_JOB_ID", "777")]);
        assert_eq!(job_identity("h", Some("acme"), &p), "acme|slurm:777");
        assert_ne!(job_identity("h", Some("acme"), &p), job_identity("g", Some("globex"), &p));
        assert_eq!(job_identity("h", None, &p), "|slurm:777");
    }
}

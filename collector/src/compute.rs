//! Jobs: who a GPU process works for across hosts, how much compute it used, and whether it trains or
//! serves a model. Pure functions over report fields and accumulated evidence; the store keeps the
//! running totals (`job_usage`, `jobs`) and the policy turns them into flags.
//!
//! Operations are estimated, never measured: NVML's utilisation is the share of time a kernel ran, so
//! `upper bound = Σ utilisation × peak dense BF16 throughput × time` (a busy GPU cannot do more), and
//! `estimate = upper bound × assumed efficiency` (model FLOPs utilisation while busy; 0.4 by default,
//! typical of large training runs). Both are reported; thresholds compare the upper bound unless the
//! policy says otherwise, so that a job is never under-counted.

use std::collections::BTreeMap;

use gpuattest_proto::pb;
use serde::{Deserialize, Serialize};

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

/// Evidence accumulated for a job across its reports, kept as JSON in `jobs.evidence`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobEvidence {
    /// Launchers and inference servers seen, with the kind the agent gave each (`torchrun: training`).
    #[serde(default)]
    pub launchers: BTreeMap<String, String>,
    /// Largest distributed world size seen.
    #[serde(default)]
    pub max_world_size: u32,
    /// Checkpoint-like files written (a few, for the reviewer).
    #[serde(default)]
    pub checkpoint_writes: Vec<String>,
    /// Hosts the job ran on.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Largest parameter count of a model file the job had open.
    #[serde(default)]
    pub max_model_parameters: u64,
    /// Largest GPU memory one process of the job used, bytes.
    #[serde(default)]
    pub max_process_memory: u64,
    /// Per-report utilisation samples of the job's GPUs: count, sum, sum of squares (for the mean and
    /// the coefficient of variation).
    #[serde(default)]
    pub util_samples: u64,
    /// Σ utilisation.
    #[serde(default)]
    pub util_sum: f64,
    /// Σ utilisation².
    #[serde(default)]
    pub util_sq_sum: f64,
    /// Model names the job had open or named.
    #[serde(default)]
    pub models: Vec<String>,
}

/// Most entries kept in each evidence list.
const MAX_LIST: usize = 16;

fn push_bounded(v: &mut Vec<String>, s: &str) {
    if v.len() < MAX_LIST && !v.iter().any(|x| x == s) {
        v.push(s.chars().take(512).collect());
    }
}

impl JobEvidence {
    /// Adds what one process in one report says.
    pub fn add_process(&mut self, host_id: &str, p: &pb::GpuProcess, gpu_utils: &[u32]) {
        push_bounded(&mut self.hosts, host_id);
        if let Some(l) = &p.launch {
            if !l.framework.is_empty() && self.launchers.len() < MAX_LIST {
                self.launchers.insert(l.framework.clone(), l.kind.clone());
            }
            self.max_world_size = self.max_world_size.max(l.world_size.unwrap_or(0));
        }
        for w in &p.writing {
            push_bounded(&mut self.checkpoint_writes, w);
        }
        for m in &p.models {
            self.max_model_parameters = self.max_model_parameters.max(m.parameter_count);
            if let Some(n) = m.name.as_deref().or(m.architecture.as_deref()) {
                push_bounded(&mut self.models, n);
            }
        }
        for u in gpu_utils {
            let u = f64::from(*u);
            self.util_samples += 1;
            self.util_sum += u;
            self.util_sq_sum += u * u;
        }
    }

    /// Records a process's GPU memory.
    pub fn add_memory(&mut self, bytes: u64) {
        self.max_process_memory = self.max_process_memory.max(bytes);
    }

    fn util_stats(&self) -> Option<(f64, f64)> {
        if self.util_samples < 5 {
            return None;
        }
        let n = self.util_samples as f64;
        let mean = self.util_sum / n;
        let var = (self.util_sq_sum / n - mean * mean).max(0.0);
        Some((mean, if mean > 0.0 { var.sqrt() / mean } else { 0.0 }))
    }
}

/// Training, inference or unknown, with a confidence and the reasons.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `training`, `inference` or `unknown`.
    pub kind: String,
    /// 0 to 1.
    pub confidence: f64,
    /// Sentences a reviewer can check against the evidence.
    pub reasons: Vec<String>,
}

/// Weighs the evidence. Each signal adds to one side; the verdict is the side with more weight, its
/// confidence that side's share. No signal, or a tie: unknown.
pub fn classify(e: &JobEvidence) -> Verdict {
    let (mut train, mut infer) = (0.0f64, 0.0f64);
    let mut reasons = Vec::new();
    for (framework, kind) in &e.launchers {
        match kind.as_str() {
            "training" => {
                train += 3.0;
                reasons.push(format!("launched by {framework}, a training launcher or framework (+3 training)"));
            }
            "inference" => {
                infer += 3.0;
                reasons.push(format!("runs {framework}, an inference server (+3 inference)"));
            }
            _ => {}
        }
    }
    if let Some(w) = e.checkpoint_writes.first() {
        train += 2.0;
        reasons.push(format!(
            "writes checkpoint-like files ({w}{}) (+2 training)",
            if e.checkpoint_writes.len() > 1 {
                format!(" and {} more", e.checkpoint_writes.len() - 1)
            } else {
                String::new()
            }
        ));
    }
    if e.hosts.len() > 1 && !e.launchers.values().any(|k| k == "inference") {
        train += 1.0;
        reasons.push(format!("spans {} hosts without an inference server (+1 training)", e.hosts.len()));
    }
    let serves = e.launchers.values().any(|k| k == "inference");
    if serves && e.max_model_parameters > 0 {
        reasons
            .push("GPU memory not weighed: inference servers pre-allocate most of it for their KV cache".to_string());
    } else if e.max_model_parameters > 0 && e.max_process_memory > 0 {
        let per_param = e.max_process_memory as f64 / e.max_model_parameters as f64;
        if per_param >= 8.0 {
            train += 2.0;
            reasons.push(format!(
                "{:.1} bytes of GPU memory per model parameter in one process: room for gradients and optimizer state (+2 training)",
                per_param
            ));
        } else if per_param <= 4.0 {
            infer += 1.0;
            reasons.push(format!(
                "{:.1} bytes of GPU memory per model parameter: weights and cache only (+1 inference)",
                per_param
            ));
        }
    }
    if let Some((mean, cv)) = e.util_stats() {
        if mean >= 70.0 && cv < 0.25 {
            train += 1.0;
            reasons.push(format!(
                "steady high utilisation (mean {mean:.0}%, variation {cv:.2} over {} samples) (+1 training)",
                e.util_samples
            ));
        } else if cv >= 0.5 {
            infer += 1.0;
            reasons.push(format!(
                "bursty utilisation (mean {mean:.0}%, variation {cv:.2} over {} samples): request-driven (+1 inference)",
                e.util_samples
            ));
        }
    }
    let total = train + infer;
    let (kind, side) = if total == 0.0 || train == infer {
        ("unknown", 0.0)
    } else if train > infer {
        ("training", train)
    } else {
        ("inference", infer)
    };
    if reasons.is_empty() {
        reasons.push("no launcher, checkpoint, memory or utilisation evidence yet".into());
    }
    Verdict {
        kind: kind.into(),
        confidence: if total == 0.0 { 0.0 } else { (side / total * 100.0).round() / 100.0 },
        reasons,
    }
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

    #[test]
    fn verdicts_explain_themselves() {
        let mut e = JobEvidence::default();
        assert_eq!(classify(&e).kind, "unknown");
        e.launchers.insert("torchrun".into(), "training".into());
        e.checkpoint_writes.push("/ckpt/step-100.safetensors".into());
        e.hosts = vec!["a".into(), "b".into()];
        for _ in 0..10 {
            e.util_samples += 1;
            e.util_sum += 95.0;
            e.util_sq_sum += 95.0 * 95.0;
        }
        let v = classify(&e);
        assert_eq!(v.kind, "training");
        assert!((v.confidence - 1.0).abs() < f64::EPSILON, "{v:?}");
        assert_eq!(v.reasons.len(), 4, "{v:?}");

        let mut i = JobEvidence::default();
        i.launchers.insert("vllm".into(), "inference".into());
        for u in [100.0, 0.0, 0.0, 0.0, 0.0, 100.0, 0.0, 0.0, 0.0, 0.0] {
            i.util_samples += 1;
            i.util_sum += u;
            i.util_sq_sum += u * u;
        }
        // vLLM takes 90% of an 80 GB GPU for an 8B model: not optimizer state.
        i.max_model_parameters = 8_000_000_000;
        i.max_process_memory = 72_000_000_000;
        let v = classify(&i);
        assert_eq!(v.kind, "inference", "{v:?}");
        assert!((v.confidence - 1.0).abs() < f64::EPSILON, "{v:?}");
        assert!(v.reasons.iter().any(|r| r.contains("bursty")), "{v:?}");
        assert!(v.reasons.iter().any(|r| r.contains("KV cache")), "{v:?}");
        // Without a server, the same memory per parameter says training.
        let mut unknown_launcher = i.clone();
        unknown_launcher.launchers.clear();
        let v = classify(&unknown_launcher);
        assert!(v.reasons.iter().any(|r| r.contains("bytes of GPU memory per model parameter")), "{v:?}");
    }
}

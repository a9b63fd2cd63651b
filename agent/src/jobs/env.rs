//! The environment allow-list. A process environment is full of secrets (API keys, database URLs,
//! cloud credentials); only these names, which say which job and which ranks a process belongs to, ever
//! leave the host, and their values are still redacted and bounded.

use std::collections::BTreeMap;

/// Exact names kept. Nothing else is read into memory beyond the split.
pub const ALLOWED: &[&str] = &[
    // Slurm
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_ACCOUNT",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_USER",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_STEP_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_CLUSTER_NAME",
    // Kubernetes (downward API conventions and the pod hostname)
    "HOSTNAME",
    "POD_NAME",
    "POD_NAMESPACE",
    "KUBERNETES_POD_NAME",
    "KUBERNETES_NAMESPACE",
    // torch.distributed / torchrun
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    // NCCL
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "NCCL_P2P_LEVEL",
    "NCCL_NET",
    "NCCL_ALGO",
    // CUDA / NVIDIA container runtime
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_MPS_PIPE_DIRECTORY",
    // JAX, DeepSpeed, Accelerate
    "JAX_PROCESS_COUNT",
    "JAX_PROCESS_ID",
    "JAX_COORDINATOR_ADDRESS",
    "DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_MIXED_PRECISION",
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_USE_FSDP",
    // Hugging Face offline switches (say where weights come from)
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
];

/// Largest environ file read.
pub const MAX_ENVIRON_BYTES: usize = 256 * 1024;

/// Keeps only allow-listed variables from a raw `/proc/<pid>/environ`, values redacted and clipped.
pub fn filter(raw: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in raw.split(|b| *b == 0).take(16_384) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else { continue };
        let Ok(name) = std::str::from_utf8(&entry[..eq]) else { continue };
        if !ALLOWED.contains(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(&entry[eq + 1..]);
        let value: String = super::redact::redact_argv(&[value.into_owned()]).chars().take(256).collect();
        out.insert(name.to_string(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_names_leave() {
        let raw = b"PATH=/usr/bin\0AWS_SECRET_ACCESS_KEY=abc\0HF_TOKEN=hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\0WORLD_SIZE=16\0RANK=3\0\
SLURM_JOB_ID=4242\0DATABASE_URL=postgres://u:p@h/db\0VLLM_API_KEY=k\0MASTER_ADDR=10.0.0.1\0garbage\0=x\0";
        let env = filter(raw);
        assert_eq!(
            env.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["MASTER_ADDR", "RANK", "SLURM_JOB_ID", "WORLD_SIZE"]
        );
        let all = format!("{env:?}");
        for secret in ["abc", "hf_x", "postgres", "VLLM"] {
            assert!(!all.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn allowed_values_are_still_redacted_and_bounded() {
        let mut raw = b"SLURM_JOB_NAME=hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345\0HOSTNAME=".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 10_000));
        let env = filter(&raw);
        assert_eq!(env["SLURM_JOB_NAME"], "[REDACTED]");
        assert_eq!(env["HOSTNAME"].len(), 256);
    }
}

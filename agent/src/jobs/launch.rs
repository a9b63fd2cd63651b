//! Launch evidence: which launcher or inference server started a process, with the distributed size
//! and rank it was given. Evidence for the training-or-inference verdict, never a verdict itself.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the command line and allowed environment say about how a process was launched.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Launch {
    /// `training`, `inference`, or empty when nothing known was recognised.
    pub kind: String,
    /// The launcher or server recognised (`torchrun`, `deepspeed`, `vllm`, ...).
    pub framework: String,
    /// Processes in the distributed job.
    pub world_size: Option<u32>,
    /// This process's global rank.
    pub rank: Option<u32>,
    /// This process's rank on the host.
    pub local_rank: Option<u32>,
}

/// (needle in the command line, framework, kind). Checked in order; the first match wins.
const KNOWN: &[(&str, &str, &str)] = &[
    ("vllm.entrypoints", "vllm", "inference"),
    ("vllm serve", "vllm", "inference"),
    ("sglang.launch_server", "sglang", "inference"),
    ("text-generation-launcher", "tgi", "inference"),
    ("text-generation-server", "tgi", "inference"),
    ("tritonserver", "triton", "inference"),
    ("trtllm-serve", "tensorrt-llm", "inference"),
    ("tensorrt_llm.serve", "tensorrt-llm", "inference"),
    ("llama-server", "llama.cpp", "inference"),
    ("ollama", "ollama", "inference"),
    ("lmdeploy serve", "lmdeploy", "inference"),
    ("torch.distributed.run", "torchrun", "training"),
    ("torch.distributed.launch", "torchrun", "training"),
    ("torchrun", "torchrun", "training"),
    ("deepspeed", "deepspeed", "training"),
    ("accelerate launch", "accelerate", "training"),
    ("accelerate-launch", "accelerate", "training"),
    ("pretrain_gpt", "megatron", "training"),
    ("megatron", "megatron", "training"),
    ("nemo", "nemo", "training"),
    ("colossalai run", "colossalai", "training"),
    ("jax.distributed", "jax", "training"),
];

fn num(env: &BTreeMap<String, String>, keys: &[&str]) -> Option<u32> {
    keys.iter().find_map(|k| env.get(*k).and_then(|v| v.trim().parse().ok()))
}

/// Recognises the launcher from a (redacted) command line and the allowed environment.
pub fn detect(cmdline: &str, env: &BTreeMap<String, String>) -> Launch {
    let lower = cmdline.to_ascii_lowercase();
    let (framework, kind) =
        KNOWN.iter().find(|(needle, _, _)| lower.contains(needle)).map_or(("", ""), |(_, f, k)| (*f, *k));
    let mut l = Launch {
        kind: kind.into(),
        framework: framework.into(),
        world_size: num(env, &["WORLD_SIZE", "SLURM_NTASKS", "JAX_PROCESS_COUNT"]),
        rank: num(env, &["RANK", "SLURM_PROCID", "JAX_PROCESS_ID"]),
        local_rank: num(env, &["LOCAL_RANK", "SLURM_LOCALID"]),
    };
    // torchrun sets WORLD_SIZE in its workers: a distributed launch with no known server is training
    // evidence, but only evidence.
    if l.framework.is_empty() && l.world_size.is_some_and(|w| w > 1) {
        l.framework = "torch.distributed".into();
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn launchers_and_servers() {
        let e = env(&[("WORLD_SIZE", "16"), ("RANK", "9"), ("LOCAL_RANK", "1")]);
        let l = detect("python3 -m torch.distributed.run --nproc-per-node=8 train.py", &e);
        assert_eq!(
            (l.kind.as_str(), l.framework.as_str(), l.world_size, l.rank, l.local_rank),
            ("training", "torchrun", Some(16), Some(9), Some(1))
        );
        assert_eq!(detect("python3 -m vllm.entrypoints.openai.api_server --model x", &env(&[])).kind, "inference");
        assert_eq!(detect("/usr/bin/llama-server -m /m/q4.gguf", &env(&[])).framework, "llama.cpp");
        assert_eq!(detect("deepspeed --num_gpus 8 train.py", &env(&[])).framework, "deepspeed");
        let plain = detect("python3 train.py", &env(&[("WORLD_SIZE", "2")]));
        assert_eq!((plain.kind.as_str(), plain.framework.as_str()), ("", "torch.distributed"));
        assert_eq!(detect("python3 notebook.py", &env(&[("WORLD_SIZE", "x")])), Launch::default());
    }
}

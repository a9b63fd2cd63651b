#!/usr/bin/env python3
"""Writes the labelled workload suite: tests/workloads/suite/<name>.json, one file per scenario.

Each scenario is what a real job shows a gpuattest agent: per host, the GPUs' 1 Hz counter traces
(simulator `samples`, played at `sample_ms`), and the job's processes: command lines, environment, the
model files they hold open, the files they write (size and rewrite cadence), and which GPUs they use
with how much memory. The integration test `workloads.rs` starts those processes for real, plays the
traces through the simulated NVML library, and compares the collector's verdicts with the labels.

The traces are modelled on how the workloads behave, not on the classifier: a training step is
compute followed by a gradient all-reduce (an NVLink or PCIe burst), repeated; request-driven serving is
bursts at random arrival times; offline batch inference is steady and bandwidth-bound. Seeds are fixed,
so the files are reproducible: `python3 tests/workloads/make.py` rewrites them identically.

Usage: python3 tests/workloads/make.py [OUT_DIR]
"""

import json
import math
import os
import random
import sys

GIB = 1 << 30
LOOP = 60  # samples per trace loop (1 minute at 1 Hz)


def clamp(x, lo, hi):
    return max(lo, min(hi, x))


def sample(rng, util, mem_ratio, link=0, pcie=0, mem_bytes=0, clock=1980, power_idle=90, power_busy=690):
    util = clamp(util + rng.gauss(0, 1.5), 0, 100)
    s = {
        "util_pct": int(round(util)),
        "mem_util_pct": int(round(clamp(util * mem_ratio + rng.gauss(0, 1.5), 0, 100))),
        "power_w": round(power_idle + (power_busy - power_idle) * util / 100 + rng.gauss(0, 4), 1),
        "sm_clock_mhz": clock,
        "pcie_tx_kbps": int(max(0, pcie + rng.gauss(0, 2000))),
        "pcie_rx_kbps": int(max(0, pcie * 0.9 + rng.gauss(0, 2000))),
        "nvlink_tx_kbps": int(max(0, link + rng.gauss(0, 5000))),
        "nvlink_rx_kbps": int(max(0, link * 0.95 + rng.gauss(0, 5000))),
    }
    if mem_bytes:
        s["memory_used_bytes"] = int(mem_bytes + rng.gauss(0, 64 << 20))
    return s


def train_trace(rng, step_s, compute=0.6, hi=97, lo=25, link="nvlink", peak_kbps=40_000_000, mem_ratio=0.38,
                cap=None, mem_bytes=0, phase=0.0):
    """Training steps: compute at `hi`, then the all-reduce (`lo` on the SMs, a burst on the link)."""
    out = []
    for t in range(LOOP):
        pos = ((t + phase) % step_s) / step_s
        computing = pos < compute
        util = hi if computing else lo
        if cap:
            util = min(util * cap / 100, cap)
        burst = 0 if computing else peak_kbps
        base = peak_kbps * 0.02
        out.append(sample(rng, util, mem_ratio,
                          link=(burst or base) if link == "nvlink" else 0,
                          pcie=(burst or base) if link == "pcie" else 20_000,
                          mem_bytes=mem_bytes, clock=1755 if cap else 1980))
    return out


def serve_trace(rng, rate=0.35, mean_len=2.0, hi=92, mem_ratio=0.85, link_kbps=0, mem_bytes=0):
    """Request-driven serving: requests arrive at random (Poisson, `rate` per second) and keep the
    GPU busy for an exponential time; between them it idles."""
    out, busy_left = [], 0.0
    for _ in range(LOOP):
        if rng.random() < rate:
            busy_left += rng.expovariate(1 / mean_len)
        share = min(1.0, busy_left)
        busy_left = max(0.0, busy_left - 1.0)
        util = 3 + (hi - 3) * share * rng.uniform(0.7, 1.0)
        out.append(sample(rng, util, mem_ratio, link=link_kbps * share, pcie=30_000 * share, mem_bytes=mem_bytes))
    return out


def steady_trace(rng, level=94, jitter=2.5, mem_ratio=0.82, link_kbps=0, mem_bytes=0):
    """Offline batch work: continuously fed, steady and busy."""
    return [sample(rng, level + rng.gauss(0, jitter), mem_ratio, link=link_kbps, pcie=25_000, mem_bytes=mem_bytes)
            for _ in range(LOOP)]


def rl_trace(rng, gen_s=20, train_s=10, step_s=2, peak_kbps=30_000_000):
    """RL fine-tuning: a generation phase (decode, bandwidth-bound), then policy updates in steps."""
    out, cycle = [], gen_s + train_s
    for t in range(LOOP):
        c = t % cycle
        if c < gen_s:
            out.append(sample(rng, 70 + rng.gauss(0, 6), 0.85, link=2_000_000, pcie=20_000))
        else:
            computing = ((c - gen_s) % step_s) < step_s * 0.5
            out.append(sample(rng, 97 if computing else 25, 0.38, link=0 if computing else peak_kbps, pcie=20_000))
    return out


def proc(argv0, args, gpus, mem_gib, env=None, model=None, write=None):
    p = {"argv0": argv0, "args": args, "gpus": gpus, "used_memory_bytes": int(mem_gib * GIB), "env": env or {}}
    if model:
        p["model_parameters"] = model
    if write:
        p["write"] = write
    return p


def torchrun_env(run, rank, world, master="10.0.0.1"):
    return {"TORCHELASTIC_RUN_ID": run, "MASTER_ADDR": master, "MASTER_PORT": "29500",
            "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank % 4)}


def ckpt(path, gib, every_s):
    return {"path": path, "bytes": int(gib * GIB), "every_ms": int(every_s * 1000)}


def host(traces, processes):
    return {"gpus": [{"samples": t} for t in traces], "processes": processes}


def scenarios():
    s = []

    def add(name, label, evasion, description, hosts):
        s.append({"name": name, "label": label, "evasion": evasion, "description": description,
                  "sample_ms": 1000, "hosts": hosts})

    def rng(name):
        return random.Random(name)

    # ---- ordinary training ------------------------------------------------------------------------
    r = rng("pretrain-2hosts")
    hosts = []
    for h in range(2):
        procs = [proc("python3", ["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=4", "pretrain_gpt.py",
                                  "--tensor-model-parallel-size", "4"], [g], 71,
                      env=torchrun_env("pt-7", h * 4 + g, 8), model=7_000_000_000,
                      write=ckpt("checkpoints/iter_0001000/mp_rank_0%d.pt" % g, 3, 20) if h == 0 else None)
                 for g in range(4)]
        hosts.append(host([train_trace(r, 4) for _ in range(4)], procs))
    add("pretrain-dp-tp-2-hosts", "training", False,
        "Megatron-style pre-training, tensor parallel in each host, data parallel across two", hosts)

    r = rng("pretrain-deepspeed")
    add("pretrain-deepspeed-4-gpus", "training", False, "DeepSpeed ZeRO-3 pre-training on one host",
        [host([train_trace(r, 5, compute=0.7) for _ in range(4)],
              [proc("python3", ["/usr/local/bin/deepspeed", "--num_gpus", "4", "train.py", "--zero-stage", "3"],
                    [g], 66, env={"WORLD_SIZE": "4", "RANK": str(g)}, model=3_000_000_000,
                    write=ckpt("/ckpt/global_step200/zero_pp_rank_%d_mp_rank_00_optim_states.pt" % g, 1.5, 30))
               for g in range(4)])])

    r = rng("finetune-full")
    add("full-fine-tune-2-gpus", "training", False, "Full fine-tuning with accelerate, DDP over NVLink",
        [host([train_trace(r, 3, peak_kbps=60_000_000) for _ in range(2)],
              [proc("accelerate-launch", ["--multi_gpu", "finetune.py", "--model", "Qwen/Qwen2.5-3B"], [g], 58,
                    env={"WORLD_SIZE": "2", "RANK": str(g)}, model=3_000_000_000,
                    write=ckpt("/out/checkpoint-500/model.safetensors", 6, 25))
               for g in range(2)])])

    r = rng("lora-1")
    add("lora-fine-tune-1-gpu", "training", False, "LoRA on a frozen 8B base, one GPU, adapters saved often",
        [host([train_trace(r, 2, compute=0.75, link=None, mem_bytes=21 * GIB)],
              [proc("python3", ["train_lora.py", "--base", "meta-llama/Llama-3.1-8B", "--r", "16"], [0], 20,
                    model=8_000_000_000, write=ckpt("/out/adapter_model.safetensors", 0.08, 15))])])

    r = rng("lora-ddp")
    add("lora-fine-tune-ddp-2-gpus", "training", False, "LoRA with peft on two GPUs, gradients over PCIe",
        [host([train_trace(r, 3, link="pcie", peak_kbps=9_000_000) for _ in range(2)],
              [proc("python3", ["-m", "torch.distributed.run", "--nproc-per-node=2", "sft_lora.py"], [g], 24,
                    env=torchrun_env("lora-2", g, 2), model=8_000_000_000,
                    write=ckpt("/out/adapter/adapter_model.bin", 0.1, 20) if g == 0 else None)
               for g in range(2)])])

    r = rng("rl")
    add("rl-generate-then-train", "training", False, "GRPO-style RL: generation rollouts, then policy updates",
        [host([rl_trace(r) for _ in range(2)],
              [proc("python3", ["-m", "verl.trainer.main_ppo", "algorithm=grpo"], [0, 1], 70,
                    env={"WORLD_SIZE": "2"}, model=1_500_000_000,
                    write=ckpt("/ckpt/actor/global_step_10/model.pt", 3, 30))])])

    r = rng("pretrain-pcie")
    hosts = []
    for h in range(2):
        hosts.append(host([train_trace(r, 6, link="pcie", peak_kbps=12_000_000, compute=0.55) for _ in range(2)],
                          [proc("python3", ["-m", "torch.distributed.run", "--nnodes=2", "train.py"], [g], 40,
                                env=torchrun_env("l40s-1", h * 2 + g, 4, "10.0.1.1"), model=1_000_000_000,
                                write=ckpt("/ckpt/step_%d.pt" % g, 2, 30) if h == 0 else None)
                           for g in range(2)]))
    add("pretrain-pcie-2-hosts", "training", False, "Data-parallel training over PCIe and the network (no NVLink)",
        hosts)

    r = rng("fsdp")
    add("fsdp-fine-tune-4-gpus", "training", False, "FSDP fine-tuning of a 13B model on one host",
        [host([train_trace(r, 5, compute=0.65, peak_kbps=80_000_000) for _ in range(4)],
              [proc("torchrun", ["--nproc-per-node=4", "fsdp_finetune.py"], [g], 76,
                    env=torchrun_env("fsdp-4", g, 4), model=13_000_000_000,
                    write=ckpt("/ckpt/fsdp/__%d_0.distcp" % g, 4, 25))
               for g in range(4)])])

    # ---- ordinary inference -----------------------------------------------------------------------
    r = rng("vllm-tp2")
    add("online-serving-vllm-tp2", "inference", False, "vLLM OpenAI server, tensor parallel over two GPUs",
        [host([serve_trace(r, link_kbps=8_000_000) for _ in range(2)],
              [proc("python3", ["-m", "vllm.entrypoints.openai.api_server", "--model", "meta-llama/Llama-3.1-8B-Instruct",
                                "--tensor-parallel-size", "2"], [0, 1], 72, model=8_000_000_000)])])

    r = rng("llama-server")
    add("online-serving-llama-cpp", "inference", False, "llama.cpp server, one GPU, light traffic",
        [host([serve_trace(r, rate=0.2, mean_len=1.5)],
              [proc("/usr/bin/llama-server", ["-m", "/models/qwen2.5-7b-q4.gguf", "--port", "8080"], [0], 9,
                    model=7_000_000_000)])])

    r = rng("sglang-busy")
    add("online-serving-sglang-busy", "inference", False, "SGLang under heavy traffic: rarely idle",
        [host([serve_trace(r, rate=0.7, mean_len=3.0) for _ in range(2)],
              [proc("python3", ["-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-14B-Instruct", "--tp", "2"],
                    [0, 1], 74, model=14_000_000_000)])])

    r = rng("batch-vllm")
    add("offline-batch-inference-vllm", "inference", False,
        "vLLM offline batch generation over a dataset: steady, busy, bandwidth-bound",
        [host([steady_trace(r) for _ in range(2)],
              [proc("python3", ["batch_generate.py", "--engine", "vllm", "--input", "prompts.jsonl"], [g], 70,
                    model=8_000_000_000)
               for g in range(2)])])

    r = rng("batch-hf")
    add("offline-batch-inference-compute-heavy", "inference", False,
        "Batch scoring with long prompts: prefill-heavy, less bandwidth-bound",
        [host([steady_trace(r, level=91, jitter=3.5, mem_ratio=0.55)],
              [proc("python3", ["score.py", "--batch-size", "64"], [0], 30, model=7_000_000_000)])])

    r = rng("embed-batch")
    add("embedding-batch-job", "inference", False, "Embedding a corpus in batches",
        [host([steady_trace(r, level=86, jitter=4, mem_ratio=0.5)],
              [proc("python3", ["embed_corpus.py", "--model", "BAAI/bge-large-en-v1.5"], [0], 6,
                    model=335_000_000)])])

    r = rng("embed-service")
    add("embedding-service-tei", "inference", False, "Text Embeddings Inference service, request-driven",
        [host([serve_trace(r, rate=0.45, mean_len=1.2, hi=75, mem_ratio=0.6)],
              [proc("text-embeddings-router", ["--model-id", "BAAI/bge-m3", "--port", "80"], [0], 12,
                    model=568_000_000)])])

    r = rng("triton")
    add("online-serving-triton", "inference", False, "Triton with TensorRT-LLM, two model instances",
        [host([serve_trace(r, rate=0.3, mean_len=2.5) for _ in range(2)],
              [proc("tritonserver", ["--model-repository=/models"], [0, 1], 60, model=8_000_000_000)])])

    # ---- evasions: training that hides -----------------------------------------------------------
    r = rng("renamed")
    add("evasion-renamed-launcher", "training", True,
        "Training whose launcher is renamed `python serve.py`, no torch environment, checkpoints named cache",
        [host([train_trace(r, 4) for _ in range(4)],
              [proc("python3", ["serve.py", "--port", "8000"], [g], 71, model=7_000_000_000,
                    write=ckpt("/var/cache/app/cache-%d.bin" % g, 3, 20))
               for g in range(4)])])

    r = rng("lying")
    add("evasion-lying-command-line", "training", True,
        "A DeepSeek fine-tune whose command line claims to be a vLLM server",
        [host([train_trace(r, 3, peak_kbps=50_000_000) for _ in range(2)],
              [proc("python3", ["-m", "vllm.entrypoints.openai.api_server", "--model", "deepseek-ai/DeepSeek-V2-Lite"],
                    [g], 70, model=16_000_000_000, write=ckpt("/tmp/kv_cache_%d.bin" % g, 2, 20))
               for g in range(2)])])

    r = rng("innocent-ckpt")
    add("evasion-innocent-checkpoint-names", "training", True,
        "Checkpoints written as `cache.bin`, launcher renamed",
        [host([train_trace(r, 5, compute=0.7) for _ in range(2)],
              [proc("python3", ["app.py"], [g], 60, write=ckpt("/data/tmp/cache.bin" if g == 0 else "/data/tmp/cache1.bin",
                                                                2, 25))
               for g in range(2)])])

    r = rng("network-ckpt")
    add("evasion-checkpoints-on-network-path", "training", True,
        "Checkpoints on a network file system under an innocent name, no launcher",
        [host([train_trace(r, 4, link="pcie", peak_kbps=10_000_000) for _ in range(2)],
              [proc("python3", ["worker.py", "--role", "compute"], [g], 50,
                    write=ckpt("mnt/fsx/shared/blob-%d.dat" % g, 2, 20))
               for g in range(2)])])

    r = rng("capped")
    add("evasion-utilisation-capped-40", "training", True,
        "Training with utilisation held to 40% (MPS thread limit), renamed launcher",
        [host([train_trace(r, 4, cap=40, peak_kbps=20_000_000) for _ in range(4)],
              [proc("python3", ["job.py"], [g], 65, write=ckpt("/scratch/state_%d.bin" % g, 2, 20))
               for g in range(4)])])

    r = rng("split")
    add("evasion-split-into-small-jobs", "training", True,
        "One training run split into four single-GPU jobs with no scheduler identity, synchronising over PCIe",
        [host([train_trace(r, 4, link="pcie", peak_kbps=8_000_000) for _ in range(4)],
              [proc("python3", ["shard_%d.py" % g], [g], 40) for g in range(4)])])

    r = rng("everything")
    add("evasion-capped-renamed-no-checkpoints", "training", True,
        "Capped at 40%, launcher renamed, no checkpoint files at all: only the rhythm and the all-reduce",
        [host([train_trace(r, 3, cap=40, peak_kbps=30_000_000) for _ in range(2)],
              [proc("python3", ["infer.py", "--serve"], [g], 55) for g in range(2)])])

    # ---- evasions: inference dressed as training ---------------------------------------------------
    r = rng("disguised-serve")
    add("evasion-serving-named-torchrun", "inference", True,
        "An inference server started as `torchrun train.py`, with torch environment and checkpoint-named weights",
        [host([serve_trace(r, link_kbps=6_000_000) for _ in range(2)],
              [proc("python3", ["-m", "torch.distributed.run", "--nproc-per-node=2", "train.py"], [g], 72,
                    env=torchrun_env("srv", g, 2), model=8_000_000_000)
               for g in range(2)])])

    r = rng("disguised-batch")
    add("evasion-batch-inference-named-deepspeed", "inference", True,
        "Offline batch inference launched as `deepspeed train.py`",
        [host([steady_trace(r, level=95, jitter=2) for _ in range(2)],
              [proc("python3", ["/usr/local/bin/deepspeed", "train.py"], [g], 70, env={"WORLD_SIZE": "2"},
                    model=8_000_000_000)
               for g in range(2)])])

    r = rng("disguised-ckpt-serve")
    add("evasion-serving-with-checkpoint-names", "inference", True,
        "A server named like a trainer that writes small files named checkpoint-*",
        [host([serve_trace(r, rate=0.4)],
              [proc("python3", ["finetune.py", "--resume", "checkpoint-1000"], [0], 70, model=8_000_000_000,
                    write={"path": "/out/checkpoint-1000/trainer_state.json", "bytes": 4096, "every_ms": 10000})])])
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "suite")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith(".json"):
            os.remove(os.path.join(out, f))
    all_ = scenarios()
    for sc in all_:
        with open(os.path.join(out, sc["name"] + ".json"), "w") as f:
            json.dump(sc, f, separators=(",", ":"))
            f.write("\n")
    ev = sum(1 for s in all_ if s["evasion"])
    print("wrote %d scenarios (%d ordinary, %d evasions) to %s" % (len(all_), len(all_) - ev, ev, out))


if __name__ == "__main__":
    main()

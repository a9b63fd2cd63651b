//! `gpuattest-collector demo`: the whole system on one machine.
//!
//! A collector on the embedded store in `--data`, four real `gpuattest-agent` processes on the simulated
//! NVML library (each with its own scenario, hostname and sysfs tree), and real workload processes whose
//! pids the scenarios place on GPUs: a DeepSeek fine-tune spread over two hosts of tenant `acme-ai`, a
//! Llama inference server and a host carrying a Huawei Ascend NPU for tenant `borealis-labs`, and an
//! idle host. The workloads are this binary re-executed with a real-looking command line (see
//! [`WORKLOAD_ENV`]); they hold nothing but their pid and exit when the demo does.

mod landmarks;
pub mod traces;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::policy::Policy;
use crate::server::Collector;
use crate::store::Store;
use crate::tokens::{self, Role};

/// When this variable is set, the collector binary does nothing but wait for its parent to exit: it is
/// a stand-in workload whose command line (set by the demo) is what the agent reads from `/proc`.
pub const WORKLOAD_ENV: &str = "GPUATTEST_DEMO_WORKLOAD";

/// Demo failures.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A binary the demo needs is missing.
    #[error("cannot find {what} at {path}; build everything first with `cargo build --release --workspace`")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Setting up failed.
    #[error("demo: {0}")]
    Setup(String),
}

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The data directory (store and demo files).
    pub data: PathBuf,
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Where the HTTP side listens.
    pub http_listen: String,
    /// Agents' observation interval.
    pub interval: Duration,
}

/// Paths (separated by `:`) the stand-in workload keeps open, as a real job keeps its weights open.
pub const HOLD_ENV: &str = "GPUATTEST_DEMO_HOLD";

/// Paths (separated by `:`) the stand-in workload creates and keeps open for writing, as a training job
/// writes checkpoints: each sparse, [`WRITE_BYTES_ENV`] bytes long, and rewritten (its length and
/// modification time changed) every [`WRITE_EVERY_ENV`] milliseconds when that is set.
pub const WRITE_ENV: &str = "GPUATTEST_DEMO_WRITE";
/// Size of the files in [`WRITE_ENV`] (default 1 GiB).
pub const WRITE_BYTES_ENV: &str = "GPUATTEST_DEMO_WRITE_BYTES";
/// Rewrite cadence of the files in [`WRITE_ENV`], ms (default: never).
pub const WRITE_EVERY_ENV: &str = "GPUATTEST_DEMO_WRITE_EVERY_MS";

/// Runs the stand-in workload: opens the files named in [`HOLD_ENV`] and [`WRITE_ENV`], then waits
/// until the parent exits (or 24 hours pass), rewriting the written files on their cadence.
pub fn run_workload() {
    let held: Vec<fs::File> = std::env::var_os(HOLD_ENV)
        .map(|v| std::env::split_paths(&v).filter_map(|p| fs::File::open(p).ok()).collect())
        .unwrap_or_default();
    let _keep = held;
    let number = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<u64>().ok());
    let size = number(WRITE_BYTES_ENV).unwrap_or(1 << 30);
    let written: Vec<fs::File> = std::env::var_os(WRITE_ENV)
        .map(|v| {
            std::env::split_paths(&v)
                .filter_map(|p| {
                    let f = fs::OpenOptions::new().create(true).truncate(true).write(true).open(p).ok()?;
                    f.set_len(size).ok()?;
                    Some(f)
                })
                .collect()
        })
        .unwrap_or_default();
    let every = number(WRITE_EVERY_ENV).filter(|ms| *ms > 0).map(Duration::from_millis);
    let parent = std::os::unix::process::parent_id();
    let start = std::time::Instant::now();
    let mut rewrites = 0u64;
    while start.elapsed() < Duration::from_secs(86_400) {
        std::thread::sleep(Duration::from_millis(100));
        if std::os::unix::process::parent_id() != parent {
            return;
        }
        if let Some(e) = every
            && start.elapsed().as_millis() / e.as_millis().max(1) > u128::from(rewrites)
        {
            rewrites += 1;
            for f in &written {
                let _ = f.set_len(size + (rewrites % 2) * 4096);
            }
        }
    }
}

struct Host {
    name: &'static str,
    tenant: &'static str,
    /// GPU index -> workload index.
    placements: Vec<(usize, usize)>,
    ascend: bool,
    /// The demo landmark whose city the host is registered in.
    site: &'static str,
}

/// Writes a model directory: config.json and one sparse safetensors shard whose header declares
/// `tensors` (name, shape) in BF16. The file is as large as the tensors say, but sparse: nothing
/// but the header is written, and nothing but the header is read.
fn write_model(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(&str, &[u64])],
    shard: &str,
) -> Result<PathBuf, DemoError> {
    fs::create_dir_all(dir).map_err(setup_err("model directory"))?;
    fs::write(dir.join("config.json"), config.to_string()).map_err(setup_err("config.json"))?;
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * 2;
        header.insert(
            name.to_string(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let h = serde_json::Value::Object(header).to_string();
    let path = dir.join(shard);
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    fs::write(&path, &bytes).map_err(setup_err("model shard"))?;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(bytes.len() as u64 + offset))
        .map_err(setup_err("model shard size"))?;
    Ok(path)
}

/// The demo's model files: a DeepSeek-V3 shard and a Llama 3.1 8B shard, shaped like the real ones.
fn write_models(root: &Path) -> Result<(PathBuf, PathBuf), DemoError> {
    let deepseek = write_model(
        &root.join("deepseek-ai/DeepSeek-V3"),
        &json!({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "_name_or_path": "deepseek-ai/DeepSeek-V3",
                "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128, "vocab_size": 129280,
                "n_routed_experts": 256, "num_experts_per_tok": 8, "kv_lora_rank": 512, "q_lora_rank": 1536, "torch_dtype": "bfloat16"}),
        &[("model.embed_tokens.weight", &[129_280, 7168]), ("model.layers.0.self_attn.q_a_proj.weight", &[1536, 7168])],
        "model-00001-of-000163.safetensors",
    )?;
    let llama = write_model(
        &root.join("meta-llama/Llama-3.1-8B-Instruct"),
        &json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "_name_or_path": "meta-llama/Llama-3.1-8B-Instruct",
                "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "vocab_size": 128256, "torch_dtype": "bfloat16"}),
        &[("model.embed_tokens.weight", &[128_256, 4096]), ("model.layers.0.mlp.up_proj.weight", &[14_336, 4096])],
        "model-00001-of-00004.safetensors",
    )?;
    Ok((deepseek, llama))
}

/// Real-looking command lines. The first carries a Hugging Face token that must be redacted.
fn workloads() -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "python3",
            s(&[
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--node-rank=0",
                "--nproc-per-node=8",
                "finetune.py",
                "--model_name_or_path",
                "deepseek-ai/DeepSeek-V3",
                "--bf16",
                "--hf_token",
                "hf_DemoSecretTokenThatMustNeverLeaveTheHost0123",
            ]),
        ),
        (
            "python3",
            s(&[
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--node-rank=1",
                "--nproc-per-node=8",
                "finetune.py",
                "--model_name_or_path",
                "deepseek-ai/DeepSeek-V3",
                "--bf16",
            ]),
        ),
        (
            "python3",
            s(&[
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                "meta-llama/Llama-3.1-8B-Instruct",
                "--tensor-parallel-size",
                "2",
            ]),
        ),
    ]
}

fn hosts() -> Vec<Host> {
    vec![
        Host {
            name: "gpu-node-01",
            tenant: "acme-ai",
            placements: (0..8).map(|g| (g, 0)).collect(),
            ascend: false,
            site: "ashburn",
        },
        Host {
            name: "gpu-node-02",
            tenant: "acme-ai",
            placements: (0..8).map(|g| (g, 1)).collect(),
            ascend: false,
            site: "ashburn",
        },
        Host {
            name: "gpu-node-03",
            tenant: "borealis-labs",
            placements: vec![(0, 2), (1, 2)],
            ascend: true,
            site: "ashburn",
        },
        Host { name: "gpu-node-04", tenant: "borealis-labs", placements: vec![], ascend: false, site: "frankfurt" },
    ]
}

fn setup_err(what: &str) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |e| DemoError::Setup(format!("{what}: {e}"))
}

/// A sysfs tree with just the GPUs NVML will also report, and optionally a Huawei Ascend 910B.
fn write_sysfs(root: &Path, ascend: bool) -> Result<(), DemoError> {
    let dev = |addr: &str, vendor: &str, device: &str, class: &str| -> Result<(), DemoError> {
        let d = root.join("bus/pci/devices").join(addr);
        fs::create_dir_all(&d).map_err(setup_err("sysfs"))?;
        for (f, v) in [("vendor", vendor), ("device", device), ("class", class)] {
            fs::write(d.join(f), format!("{v}\n")).map_err(setup_err("sysfs"))?;
        }
        Ok(())
    };
    for bus in ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"] {
        dev(&format!("0000:{bus}:00.0"), "0x10de", "0x2330", "0x030200")?;
    }
    if ascend {
        dev("0000:c1:00.0", "0x19e5", "0xd802", "0x120000")?;
    }
    Ok(())
}

fn find_beside_self(name: &'static str, what: &'static str) -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(setup_err("locating this binary"))?;
    let path = exe.parent().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name));
    if path.exists() { Ok(path) } else { Err(DemoError::Missing { what, path }) }
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so agents stop cleanly, then make sure.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).stderr(Stdio::null()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the demo.
///
/// # Errors
/// [`DemoError`] when binaries are missing or the demo cannot set up its files, listeners or children.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let agent_bin = find_beside_self("gpuattest-agent", "the agent binary")?;
    let sim_lib = find_beside_self("libgpuattest_nvml_sim.so", "the simulated NVML library")?;
    let self_exe = std::env::current_exe().map_err(setup_err("locating this binary"))?;
    let demo_dir = opts.data.join("demo");
    fs::create_dir_all(&demo_dir).map_err(setup_err("creating the demo directory"))?;
    let store = Arc::new(Store::open(&opts.data).map_err(|e| DemoError::Setup(e.to_string()))?);
    let policy = Policy::load_from_data(&opts.data).map_err(|e| DemoError::Setup(e.to_string()))?;
    let collector = Collector::new(store.clone(), policy);
    let grpc = TcpListener::bind("127.0.0.1:0").await.map_err(setup_err("binding gRPC"))?;
    let http = TcpListener::bind(&opts.http_listen).await.map_err(|e| {
        DemoError::Setup(format!("binding HTTP on {}: {e}; pass --http-listen 127.0.0.1:0", opts.http_listen))
    })?;
    let grpc_addr = grpc.local_addr().map_err(setup_err("gRPC address"))?;
    let http_addr = http.local_addr().map_err(setup_err("HTTP address"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let c = collector.clone();
        tokio::spawn(async move { c.serve(grpc, http, None, stop_rx).await })
    };

    landmarks::start(&store, &demo_dir.join("landmarks"), stop_tx.subscribe()).await?;
    let reviewer =
        tokens::mint(&store, Role::Reviewer, None, Some(Duration::from_secs(7 * 86_400)), 1, "demo", crate::now_ms())
            .map_err(|e| DemoError::Setup(e.to_string()))?;
    println!("gpuattest demo: collector on grpc {grpc_addr}, store {}", store.location());
    println!("review UI: http://{http_addr}/  (sign in with the reviewer token {reviewer})");
    println!("starting {} workloads and {} agents on the simulated NVML library...", workloads().len(), hosts().len());
    let mut children = Children(Vec::new());
    let mut pids = Vec::new();
    let (deepseek, llama) = write_models(&demo_dir.join("models"))?;
    for (i, (argv0, args)) in workloads().into_iter().enumerate() {
        use std::os::unix::process::CommandExt;
        let hold = if i < 2 { &deepseek } else { &llama };
        // The fine-tune's first rank saves a checkpoint every few seconds (a sparse 2 GiB file).
        let checkpoint = demo_dir.join("checkpoints").join(format!("rank-{i}.bin"));
        let writes: &[(&str, String)] = if i == 0 {
            &[
                (WRITE_ENV, checkpoint.display().to_string()),
                (WRITE_BYTES_ENV, (2u64 << 30).to_string()),
                (WRITE_EVERY_ENV, (opts.interval.as_millis() * 3).to_string()),
            ]
        } else {
            &[]
        };
        if i == 0 {
            fs::create_dir_all(demo_dir.join("checkpoints")).map_err(setup_err("checkpoint directory"))?;
        }
        // torchrun exports its rendezvous to every worker: the two hosts' processes are one job.
        let rendezvous: &[(&str, String)] = if i < 2 {
            &[
                ("TORCHELASTIC_RUN_ID", "deepseek-ft-7".into()),
                ("MASTER_ADDR", "gpu-node-01".into()),
                ("MASTER_PORT", "29500".into()),
                ("WORLD_SIZE", "16".into()),
                ("RANK", (i * 8).to_string()),
            ]
        } else {
            &[]
        };
        let child = Command::new(&self_exe)
            .arg0(argv0)
            .args(&args)
            .envs(rendezvous.iter().chain(writes).map(|(k, v)| (*k, v.as_str())))
            .env(WORKLOAD_ENV, "1")
            .env(HOLD_ENV, hold)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(setup_err("starting a workload"))?;
        pids.push(child.id());
        children.0.push(child);
    }
    let now = crate::now_ms();
    // Ten samples per report, as at the default 1 s and 10 s, so the short demo shows the rhythm.
    let sample_ms = (opts.interval.as_millis() / 10).clamp(10, 1000);
    for h in hosts() {
        let dir = demo_dir.join(h.name);
        fs::create_dir_all(&dir).map_err(setup_err("creating a host directory"))?;
        let gpus: Vec<serde_json::Value> = (0..8)
            .map(|g| {
                let procs: Vec<serde_json::Value> = h
                    .placements
                    .iter()
                    .filter(|(gi, _)| *gi == g)
                    .map(|(_, w)| json!({"pid": pids[*w], "used_memory_bytes": 71_000_000_000u64 - (*w as u64) * 20_000_000_000}))
                    .collect();
                // What the GPUs do: the fine-tune steps in a rhythm, the server answers requests.
                let seed = g as u64 + 1;
                match h.placements.iter().find(|(gi, _)| *gi == g).map(|(_, w)| *w) {
                    Some(2) => json!({"processes": procs, "samples": traces::serving(seed)}),
                    Some(_) => json!({"processes": procs, "samples": traces::training(seed)}),
                    None => json!({"processes": procs}),
                }
            })
            .collect();
        let scenario = dir.join("scenario.json");
        let text = serde_json::to_string_pretty(&json!({"seed": h.name, "gpus": gpus, "sample_ms": sample_ms}))
            .unwrap_or_default();
        fs::write(&scenario, text).map_err(setup_err("writing a scenario"))?;
        let sys = dir.join("sys");
        let _ = fs::remove_dir_all(&sys);
        write_sysfs(&sys, h.ascend)?;
        let token = tokens::mint(&store, Role::Enroll, Some(h.tenant), None, 1, "demo", now)
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        // Every demo host answers from here (Ashburn); one is registered in Frankfurt: diverted.
        let token_id = gpuattest_proto::hex(&tokens::hash(&token)[..6]);
        store.set_token_site(&token_id, &landmarks::site(h.site)).map_err(|e| DemoError::Setup(e.to_string()))?;
        let log = fs::File::create(dir.join("agent.log")).map_err(setup_err("creating an agent log"))?;
        let log2 = log.try_clone().map_err(setup_err("agent log"))?;
        let child = Command::new(&agent_bin)
            .args(["run", "--collector", &format!("http://{grpc_addr}"), "--enroll-token", &token])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--interval", &format!("{}ms", opts.interval.as_millis()), "--hostname", h.name])
            .args(["--sample-interval", &format!("{sample_ms}ms")])
            .arg("--nvml-lib")
            .arg(&sim_lib)
            .arg("--sys-root")
            .arg(&sys)
            .env("GPUATTEST_NVML_SIM", &scenario)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(setup_err("starting an agent"))?;
        children.0.push(child);
    }

    let started = Instant::now();
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut ctrl_c => break,
        }
        if let Ok(hosts) = store.hosts(None) {
            let line: Vec<String> = hosts.iter().map(|h| format!("{} {}", h.hostname, h.reports)).collect();
            println!(
                "[{:>3}s] reports per host: {}",
                started.elapsed().as_secs(),
                if line.is_empty() { "enrolling...".into() } else { line.join(" · ") }
            );
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    drop(children);
    // Let the last acknowledged reports settle before reading the store.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;

    println!("\n== hosts ==");
    let mut hosts = store.hosts(None).map_err(|e| DemoError::Setup(e.to_string()))?;
    let policy = Policy::load_from_data(&opts.data).unwrap_or_else(|_| Policy::builtin());
    crate::location::annotate_hosts(&store, policy.location(), &mut hosts, crate::now_ms())
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    print!("{}", crate::render::hosts(&hosts));
    println!("\n== flags ==");
    print!("{}", crate::render::flags(&store.flags(None).map_err(|e| DemoError::Setup(e.to_string()))?));
    println!(
        "\nThe store is in {}. Look again with:\n  gpuattest-collector flags list --data {0}\n  gpuattest-collector hosts list --data {0}\n\
         Review in the browser with `gpuattest-collector serve --data {0} --http-listen {http_addr}` and the reviewer token\n  {reviewer}",
        opts.data.display()
    );
    Ok(())
}

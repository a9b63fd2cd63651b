//! `gpuattest-collector bench`: end-to-end ingest on this machine, beside the Ed25519 verification
//! ceiling measured on the same report bytes, so the ratio says how close ingest comes to the crypto.
//!
//! Agents are simulated in a child process (this binary again, [`AGENTS_ENV`] set), so the collector's
//! resident memory is measured alone and each side has its own file-descriptor budget: each agent is a
//! real gRPC client with its own enrolled key, streaming realistic signed reports (8 GPUs, several
//! processes with models, about 2 KB) over loopback to a real collector with the embedded store in a
//! temporary directory, or (`--database`) with the shared store in a scratch schema of that PostgreSQL
//! database, dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuattest_proto::pb;
use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::policy::Policy;
use crate::server::Collector;
use crate::store::Store;
use crate::tools::scratch::ScratchSchema;

mod review;

pub use review::{ReviewFigures, review_page};

/// What the benchmark measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// Simulated agents (concurrent streams).
    pub agents: usize,
    /// Reports acknowledged.
    pub reports: u64,
    /// Mean encoded report size, bytes.
    pub report_bytes: usize,
    /// End-to-end acknowledged reports per second.
    pub reports_per_second: f64,
    /// Ed25519 verifications per second on the same bytes, all cores.
    pub verify_ceiling_per_second: f64,
    /// `reports_per_second / verify_ceiling_per_second`.
    pub ratio: f64,
    /// Median send-to-ack latency, ms.
    pub p50_ack_ms: f64,
    /// 99th percentile send-to-ack latency, ms.
    pub p99_ack_ms: f64,
    /// Resident set of the collector (the simulated agents run in another process), bytes, at the end.
    pub collector_rss_bytes: u64,
    /// Resident set of the process simulating the agents, bytes, at the end.
    pub agents_rss_bytes: u64,
    /// Store used.
    pub store: String,
    /// CPU time of the collector (this process, the agents run in another) over the run, per report
    /// acknowledged, microseconds.
    pub collector_cpu_us_per_report: f64,
    /// One core verifying the same signed bytes, microseconds per report.
    pub verify_us_per_report: f64,
    /// `verify_us_per_report / collector_cpu_us_per_report`: how much of the collector's work per report
    /// the signature check is (1 would be pure cryptography).
    pub cpu_ratio: f64,
    /// With `--database` on a local server: CPU time of every `postgres` process over the run, per report,
    /// microseconds (the run's backends and whatever else that server did meanwhile); otherwise null.
    pub database_cpu_us_per_report: Option<f64>,
    /// CPU time of the store's own threads ([`crate::store::THREAD_NAMES`]: the group commit, the log's sequencer,
    /// the write-ahead-log checkpointer, PostgreSQL connections) over the run, per report, microseconds:
    /// the part of `collector_cpu_us_per_report` that the store costs in this process.
    pub store_threads_cpu_us_per_report: f64,
    /// `verify_us_per_report / (collector_cpu_us_per_report - store_threads_cpu_us_per_report)`: the
    /// `cpu_ratio` this run would have had if the store cost nothing, the ceiling that work on the
    /// store alone can reach; the rest is gRPC, decoding, verification, policy and scheduling.
    pub cpu_ratio_without_store: f64,
    /// Bytes the collector process caused to be written to storage over the run (`write_bytes` of
    /// `/proc/self/io`: the embedded store's write-ahead log and its checkpoints into the database
    /// file), per report; null where that file cannot be read. On PostgreSQL the server writes, not
    /// the collector.
    pub write_bytes_per_report: Option<f64>,
    /// Collector replicas serving the agents (`--replicas`, on one PostgreSQL store; agents spread
    /// across them in turn).
    pub replicas: usize,
}

/// Linux reports process times in USER_HZ, 100 per second on every architecture it runs on here.
const USER_HZ: u64 = 100;

/// User + system CPU time of a process from `/proc/PID/stat`, microseconds, and its command name.
fn process_cpu_us(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: the name may hold spaces and parentheses; fields follow the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks * 1_000_000 / USER_HZ))
}

/// CPU time of each of this process's threads that the store started, microseconds, by thread id.
fn store_threads_cpu_us() -> std::collections::HashMap<String, u64> {
    let named = |comm: &str| crate::store::THREAD_NAMES.iter().any(|n| n.get(..n.len().min(15)) == Some(comm));
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|tid| process_cpu_us(&format!("self/task/{tid}")).map(|(comm, us)| (tid, comm, us)))
        .filter(|(_, comm, _)| named(comm))
        .map(|(tid, _, us)| (tid, us))
        .collect()
}

/// CPU the store's threads spent between two readings of [`store_threads_cpu_us`] (a thread started in
/// between counts from zero).
fn store_threads_spent(before: &std::collections::HashMap<String, u64>) -> u64 {
    store_threads_cpu_us().iter().map(|(tid, us)| us.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum()
}

/// Bytes this process has caused to be written to storage so far (`/proc/self/io`).
fn written_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time of every process named `postgres` on this machine, microseconds.
fn postgres_cpu_us() -> u64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(str::to_string))
        .filter_map(|pid| process_cpu_us(&pid))
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, us)| us)
        .sum()
}

/// The database URL names this machine (so its backends' CPU can be read from `/proc`).
fn database_is_local(url: &str) -> bool {
    let after = url.split_once('@').map_or(url, |(_, h)| h);
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| after.starts_with(h)) || after.starts_with('/')
}

/// The UUID of simulated host `n`'s GPU `i`: every host has GPUs of its own, as in a real fleet (shared
/// UUIDs would make every report look like chips moving between hosts).
fn gpu_uuid(n: usize, i: u32) -> String {
    format!("GPU-{n:08x}-{i:04x}-2222-3333-444444444444")
}

/// A realistic report from simulated host `n`: 8 GPUs with usage, 4 processes with a model each.
fn report(n: usize, host_id: &str, seq: u64, prev: &[u8]) -> pb::UsageReport {
    let gpus = (0..8)
        .map(|i| pb::Gpu {
            index: i,
            uuid: gpu_uuid(n, i),
            serial: format!("1650{n:07}{i:02}"),
            name: "NVIDIA H100 80GB HBM3".into(),
            pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + i * 16),
            memory_total_bytes: 85_520_809_984,
            memory_used_bytes: Some(70_000_000_000),
            utilization_gpu_pct: Some(97),
            power_mw: Some(645_000),
            energy_mj: Some(1_000_000_000 + u64::from(i)),
            processes: vec![pb::GpuProcessUsage { pid: 1000 + i / 2, used_memory_bytes: 35_000_000_000, mps: false }],
            ..Default::default()
        })
        .collect();
    let processes = (0..4)
        .map(|p| pb::GpuProcess {
            pid: 1000 + p,
            gpu_uuids: vec![gpu_uuid(n, p * 2)],
            cmdline: "python3 -m torch.distributed.run --nproc-per-node=8 train.py --model meta-llama/Llama-3.1-70B"
                .into(),
            models: vec![pb::ModelFingerprint {
                path: "/models/meta-llama/Llama-3.1-70B/model-00001-of-00030.safetensors".into(),
                format: "safetensors".into(),
                header_sha256: "ab".repeat(32),
                tensor_count: 24,
                parameter_count: 2_400_000_000,
                architecture: Some("LlamaForCausalLM".into()),
                model_type: Some("llama".into()),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    pb::UsageReport {
        host_id: host_id.to_string(),
        seq,
        prev_report_sha256: prev.to_vec(),
        window_start_unix_ms: crate::now_ms() - 10_000,
        window_end_unix_ms: crate::now_ms(),
        agent_time_unix_ms: crate::now_ms(),
        gpus,
        processes,
        ..Default::default()
    }
}

fn key() -> Ed25519KeyPair {
    let doc =
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap_or_else(|_| unreachable!("keygen"));
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap_or_else(|_| unreachable!("parse"))
}

/// The verification ceiling: all cores verifying the same signed bytes for `dur`.
fn verify_ceiling(signed: &pb::SignedReport, public: &[u8], dur: Duration) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        if gpuattest_proto::verify_report(public, signed).is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The benchmark's store: embedded in `dir`, or (`database`) a scratch schema there, dropped with it.
fn bench_store(dir: &std::path::Path, database: Option<&str>) -> Result<(Store, Option<ScratchSchema>), String> {
    Ok(match database {
        None => (Store::open(dir).map_err(|e| e.to_string())?, None),
        Some(url) => {
            let scratch = ScratchSchema::create_in(url, "gpuattest_bench")?;
            (Store::connect(&scratch.url).map_err(|e| e.to_string())?, Some(scratch))
        }
    })
}

/// Runs the benchmark: `agents` streams for `seconds`.
///
/// # Errors
/// A sentence when the temporary store, listeners or enrollment fail.
pub async fn run(
    agents: usize,
    seconds: u64,
    interval: Option<Duration>,
    database: Option<&str>,
    replicas: usize,
) -> Result<Figures, String> {
    let dir = std::env::temp_dir().join(format!("gpuattest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, scratch) = bench_store(&dir, database)?;
    if replicas > 1 && scratch.is_none() {
        return Err("--replicas needs --database: replicas share one PostgreSQL store".into());
    }
    let store_name = match &scratch {
        None => "embedded (SQLite)".to_string(),
        Some(_) => format!(
            "PostgreSQL {} (scratch schema, dropped), {replicas} replica(s)",
            crate::store::redact_url(database.unwrap_or(""))
        ),
    };
    let store = Arc::new(store);
    // Replicas: each a collector with a store (connections) of its own on the one database, as separate
    // processes would be; they share this process, so their CPU is counted together.
    let mut stores = vec![store.clone()];
    for _ in 1..replicas {
        let url = scratch.as_ref().map(|s| s.url.clone()).unwrap_or_default();
        stores.push(Arc::new(Store::connect(&url).map_err(|e| e.to_string())?));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut urls = Vec::with_capacity(replicas);
    let mut servers = Vec::with_capacity(replicas);
    for (i, s) in stores.iter().enumerate() {
        let collector = Collector::new(s.clone(), Policy::builtin()).with_data_dir(dir.join(format!("replica-{i}")));
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        urls.push(format!("http://{}", grpc.local_addr().map_err(|e| e.to_string())?));
        let stop = stop_rx.clone();
        servers.push(tokio::spawn(async move { collector.serve(grpc, http, None, stop).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The ceiling, on a report like the ones sent.
    let k = key();
    let sample = gpuattest_proto::sign_report(&k, report(0, "bench", 1, &[]).encode_to_vec());
    let report_bytes = sample.encoded_len();
    let ceiling = verify_ceiling(&sample, k.public_key().as_ref(), Duration::from_secs(2));

    let tok = crate::tokens::mint(
        &store,
        crate::tokens::Role::Enroll,
        None,
        None,
        u32::try_from(agents).unwrap_or(u32::MAX).min(crate::tokens::MAX_ENROLL_USES),
        "bench",
        crate::now_ms(),
    )
    .map_err(|e| e.to_string())?;
    let local_db = database.is_some_and(database_is_local);
    let cpu_before = process_cpu_us("self").map_or(0, |c| c.1);
    let store_before = store_threads_cpu_us();
    let written_before = written_bytes();
    let db_before = local_db.then(postgres_cpu_us);
    let (mut latencies, elapsed, agents_rss_bytes) = run_agents_process(&urls, &tok, agents, seconds, interval).await?;
    let collector_cpu_us = process_cpu_us("self").map_or(0, |c| c.1).saturating_sub(cpu_before);
    let store_cpu_us = store_threads_spent(&store_before);
    let written = written_before.and_then(|b| Some(written_bytes()?.saturating_sub(b)));
    let db_cpu_us = db_before.map(|b| postgres_cpu_us().saturating_sub(b));
    let rss_bytes = rss();
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(stores);
    drop(store);
    drop(scratch);
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let rate = latencies.len() as f64 / elapsed.as_secs_f64().max(seconds as f64);
    let acknowledged = (latencies.len() as f64).max(1.0);
    let threads = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let verify_us = 1e6 * threads / ceiling.max(1.0);
    let collector_us = collector_cpu_us as f64 / acknowledged;
    let store_us = store_cpu_us as f64 / acknowledged;
    let rest_us = collector_us - store_us;
    Ok(Figures {
        agents,
        reports: latencies.len() as u64,
        report_bytes,
        reports_per_second: rate,
        verify_ceiling_per_second: ceiling,
        ratio: rate / ceiling,
        p50_ack_ms: pct(0.50),
        p99_ack_ms: pct(0.99),
        collector_rss_bytes: rss_bytes,
        agents_rss_bytes,
        store: store_name,
        collector_cpu_us_per_report: collector_us,
        verify_us_per_report: verify_us,
        cpu_ratio: if collector_us > 0.0 { verify_us / collector_us } else { 0.0 },
        database_cpu_us_per_report: db_cpu_us.map(|us| us as f64 / acknowledged),
        store_threads_cpu_us_per_report: store_us,
        cpu_ratio_without_store: if rest_us > 0.0 { verify_us / rest_us } else { 0.0 },
        write_bytes_per_report: written.map(|b| b as f64 / acknowledged),
        replicas,
    })
}

/// Set (to `1`) in the child process that simulates the agents.
pub const AGENTS_ENV: &str = "GPUATTEST_BENCH_AGENTS";

/// What the parent tells the agents' process.
#[derive(Debug, Serialize, serde::Deserialize)]
struct AgentsJob {
    /// The replicas' gRPC URLs; agent `n` streams to `urls[n % len]`.
    urls: Vec<String>,
    token: String,
    agents: usize,
    seconds: u64,
    interval_ms: Option<u64>,
}

/// Starts the agents' process, waits until every agent is enrolled and streaming, starts the clock,
/// and returns the acknowledgement latencies (ms), the measured duration and that process's RSS.
async fn run_agents_process(
    urls: &[String],
    token: &str,
    agents: usize,
    seconds: u64,
    interval: Option<Duration>,
) -> Result<(Vec<f64>, Duration, u64), String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let job = AgentsJob {
        urls: urls.to_vec(),
        token: token.to_string(),
        agents,
        seconds,
        interval_ms: interval.map(|i| u64::try_from(i.as_millis()).unwrap_or(u64::MAX)),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary to run the agents: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .env(AGENTS_ENV, "1")
        .env_remove("GPUATTEST_DATABASE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the agents' process: {e}"))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the agents' process has no pipes".into());
    };
    let job = serde_json::to_string(&job).map_err(|e| e.to_string())?;
    stdin.write_all(format!("{job}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = tokio::io::BufReader::new(stdout);
    let mut line = String::new();
    out.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("the agents' process did not get ready: {}", line.trim()));
    }
    let began = Instant::now();
    stdin.write_all(b"go\n").await.map_err(|e| e.to_string())?;
    let mut rest = String::new();
    out.read_to_string(&mut rest).await.map_err(|e| e.to_string())?;
    let elapsed = began.elapsed();
    let _ = child.wait().await;
    let done: AgentsDone = serde_json::from_str(rest.trim())
        .map_err(|e| format!("the agents' process answered {:?}: {e}", rest.chars().take(200).collect::<String>()))?;
    match done.error {
        Some(e) => Err(e),
        None => Ok((done.latencies_ms, elapsed, done.rss_bytes)),
    }
}

/// What the agents' process reports back.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct AgentsDone {
    latencies_ms: Vec<f64>,
    rss_bytes: u64,
    error: Option<String>,
}

/// The agents' process: reads its job from stdin, enrolls and connects every agent, prints `ready`,
/// waits for `go`, streams for the job's seconds and prints the latencies as JSON.
pub fn agents_main() -> std::process::ExitCode {
    let done = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(agents_job()).unwrap_or_else(|e| AgentsDone { error: Some(e), ..Default::default() }),
        Err(e) => AgentsDone { error: Some(e.to_string()), ..Default::default() },
    };
    println!("{}", serde_json::to_string(&done).unwrap_or_default());
    std::process::ExitCode::SUCCESS
}

async fn agents_job() -> Result<AgentsDone, String> {
    use tokio::io::AsyncBufReadExt;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let job: AgentsJob = serde_json::from_str(line.trim()).map_err(|e| format!("bad job: {e}"))?;
    let interval = job.interval_ms.map(Duration::from_millis);
    let mut tasks = Vec::new();
    // Every agent enrolls and opens its stream first; the clock starts when all are ready.
    let start = Arc::new(tokio::sync::Barrier::new(job.agents + 1));
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(Instant::now());
    // Connect in waves: thousands of simultaneous connects overflow the listen backlog.
    let connecting = Arc::new(tokio::sync::Semaphore::new(128));
    for a in 0..job.agents {
        let url = job.urls.get(a % job.urls.len().max(1)).cloned().unwrap_or_default();
        let (tok, start, deadline) = (job.token.clone(), start.clone(), deadline_rx.clone());
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move { agent(&url, &tok, a, connecting, start, deadline, interval).await }));
    }
    start.wait().await;
    println!("ready");
    line.clear();
    stdin.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let _ = deadline_tx.send(Instant::now() + Duration::from_secs(job.seconds));
    let mut latencies = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(AgentsDone { latencies_ms: latencies, rss_bytes: rss(), error: None })
}

/// One simulated agent: enroll, then send reports back to back until `deadline`, one in flight at a time
/// per stream (the latency measured is send to acknowledgement).
async fn agent(
    url: &str,
    token: &str,
    n: usize,
    connecting: Arc<tokio::sync::Semaphore>,
    start: Arc<tokio::sync::Barrier>,
    deadline: tokio::sync::watch::Receiver<Instant>,
    interval: Option<Duration>,
) -> Result<Vec<f64>, String> {
    let ready = {
        let _permit = connecting.acquire().await.map_err(|e| e.to_string())?;
        agent_connect(url, token, n).await
    };
    start.wait().await;
    let (k, host_id, tx, mut inbound) = ready?;
    // The deadline is set just after the barrier; wait for it to change from its initial value.
    let mut deadline = deadline;
    let _ = deadline.changed().await;
    let deadline = *deadline.borrow();
    // Spread paced agents over the interval so they do not all send at once.
    let mut next = Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64((n % 1000) as f64 / 1000.0));
    let mut prev = Vec::new();
    let mut latencies = Vec::new();
    let mut seq = 1;
    while Instant::now() < deadline {
        if let Some(i) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += i;
        }
        let bytes = report(n, &host_id, seq, &prev).encode_to_vec();
        prev = gpuattest_proto::sha256(&bytes).to_vec();
        let signed = gpuattest_proto::sign_report(&k, bytes);
        let sent = Instant::now();
        tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Report(signed)) })
            .await
            .map_err(|e| e.to_string())?;
        match inbound.message().await.map_err(|e| e.message().to_string())? {
            Some(pb::CollectorMessage { msg: Some(pb::collector_message::Msg::Ack(_)) }) => {
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            other => return Err(format!("unexpected answer to report {seq}: {other:?}")),
        }
        seq += 1;
    }
    Ok(latencies)
}

type Ready = (Ed25519KeyPair, String, mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::CollectorMessage>);

/// Enrolls one simulated agent and opens its stream.
async fn agent_connect(url: &str, token: &str, n: usize) -> Result<Ready, String> {
    let k = key();
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = pb::collector_client::CollectorClient::new(channel);
    let host_id = client
        .enroll(pb::EnrollRequest {
            enroll_token: token.to_string(),
            public_key: k.public_key().as_ref().to_vec(),
            facts: Some(pb::HostFacts { hostname: format!("bench-{n}"), ..Default::default() }),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .host_id;
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::Hello {
        host_id: host_id.clone(),
        key_id: gpuattest_proto::key_id(k.public_key().as_ref()).to_vec(),
        ..Default::default()
    };
    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }).await.map_err(|e| e.to_string())?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await.map_err(|e| e.message().to_string())?.into_inner();
    let _challenge = inbound.message().await.map_err(|e| e.message().to_string())?;
    Ok((k, host_id, tx, inbound))
}

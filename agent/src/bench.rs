//! `gpuattest-agent bench`: figures for the issue notes, printed, never asserted in tests.
//!
//! - Observation cost: CPU time per observation outside the driver is what the agent adds to every GPU
//!   host. Run it on the simulated library with a scenario of 8 GPUs and 64 live processes
//!   (`agent/benches/observe.sh` sets that up) or on a real host.
//! - Fingerprint cost: a sparse 1 TB safetensors file must fingerprint in milliseconds, because only
//!   its header is read.
//! - Sampling cost: one round of every GPU's fast counters (the 1 Hz sampler), the share of a core the
//!   agent needs at 1 Hz sampling and 10 s reports, and what a window's telemetry adds to a report.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::gpu::GpuSource;
use crate::models;
use crate::observe::{HostPaths, Observer};

/// What the benchmark measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// Observations taken.
    pub observations: u32,
    /// GPUs per observation.
    pub gpus: usize,
    /// GPU processes per observation.
    pub processes: usize,
    /// Wall time per observation, microseconds.
    pub wall_us_per_observation: f64,
    /// CPU time (user + system) per observation, microseconds (includes the NVML library's own work).
    pub cpu_us_per_observation: f64,
    /// Peak resident set of this process, bytes.
    pub peak_rss_bytes: u64,
    /// Size of the sparse safetensors file fingerprinted.
    pub sparse_file_bytes: u64,
    /// Time per uncached fingerprint of that file, microseconds.
    pub fingerprint_us: f64,
    /// Signed ~2 KiB reports appended to the spool (each fsynced) per second.
    pub spool_reports_per_second: f64,
    /// Sampling rounds (every GPU's fast counters once) timed.
    pub sample_rounds: u32,
    /// CPU time per sampling round, microseconds (includes the NVML library's own work).
    pub sample_cpu_us_per_round: f64,
    /// Wall time per sampling round, microseconds.
    pub sample_wall_us_per_round: f64,
    /// Share of one core the agent spends at the defaults: a sampling round every second and an
    /// observation every 10 s, percent.
    pub core_share_pct_at_1hz: f64,
    /// An encoded report of this host with the window's telemetry, bytes.
    pub report_bytes: usize,
    /// What the telemetry adds to it, bytes.
    pub telemetry_bytes: usize,
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes a sparse safetensors file declaring `bytes` of BF16 weights.
///
/// # Errors
/// When the file cannot be written.
pub fn write_sparse_safetensors(path: &Path, bytes: u64) -> std::io::Result<()> {
    let rows = bytes / 2 / 8192;
    let header = format!(r#"{{"w":{{"dtype":"BF16","shape":[{rows},8192],"data_offsets":[0,{}]}}}}"#, rows * 8192 * 2);
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    std::fs::write(path, &v)?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(v.len() as u64 + rows * 8192 * 2)
}

/// Runs both benchmarks.
///
/// # Errors
/// A sentence when the GPU source cannot observe or the sparse file cannot be written.
pub fn run(gpus: Box<dyn GpuSource>, paths: HostPaths, iterations: u32, scratch: &Path) -> Result<Figures, String> {
    let mut observer = Observer::new(gpus, paths);
    let first = observer.observe(0).map_err(|e| e.to_string())?;
    let (ticks0, t0) = (cpu_ticks(), Instant::now());
    for i in 0..iterations {
        observer.observe(i64::from(i)).map_err(|e| e.to_string())?;
    }
    let wall = t0.elapsed();
    let ticks = cpu_ticks() - ticks0;
    let sparse = scratch.join("sparse-1tb.safetensors");
    let size = 1u64 << 40;
    write_sparse_safetensors(&sparse, size).map_err(|e| format!("{}: {e}", sparse.display()))?;
    let rounds = 200u32;
    let t1 = Instant::now();
    for _ in 0..rounds {
        models::fingerprint_path(&sparse).map_err(|e| e.to_string())?;
    }
    let fp_wall = t1.elapsed();
    let _ = std::fs::remove_file(&sparse);
    let spool_dir = scratch.join("bench-spool");
    let (mut spool, _) = crate::spool::Spool::open(&spool_dir, 0, 1 << 30).map_err(|e| e.to_string())?;
    let payload = vec![0x5au8; 2048];
    let appends = 2000u64;
    let t2 = Instant::now();
    for seq in 1..=appends {
        spool.append(seq, payload.clone()).map_err(|e| e.to_string())?;
    }
    let spool_wall = t2.elapsed();
    let _ = std::fs::remove_dir_all(&spool_dir);
    // The 1 Hz sampler: every GPU's fast counters, then the report a 10-sample window makes.
    let rounds = iterations.max(10);
    let (ticks1, t3) = (cpu_ticks(), Instant::now());
    for i in 0..rounds {
        observer.sample(i64::from(i) * 1000);
    }
    let sample_wall = t3.elapsed();
    let sample_ticks = cpu_ticks() - ticks1;
    let _ = observer.observe(0).map_err(|e| e.to_string())?;
    for i in 0..10 {
        observer.sample(i64::from(i) * 1000);
    }
    let obs = observer.observe(10_000).map_err(|e| e.to_string())?;
    let ctx = crate::report::ReportContext::default();
    let report_bytes = prost::Message::encoded_len(&crate::report::build(&obs, &ctx));
    let mut bare = obs.clone();
    for g in &mut bare.gpus {
        g.telemetry = None;
    }
    let telemetry_bytes = report_bytes - prost::Message::encoded_len(&crate::report::build(&bare, &ctx));
    let n = f64::from(iterations.max(1));
    let sample_cpu_us = sample_ticks as f64 * 10_000.0 / f64::from(rounds);
    let observe_cpu_us = ticks as f64 * 10_000.0 / n;
    Ok(Figures {
        sample_rounds: rounds,
        sample_cpu_us_per_round: sample_cpu_us,
        sample_wall_us_per_round: sample_wall.as_secs_f64() * 1e6 / f64::from(rounds),
        core_share_pct_at_1hz: (sample_cpu_us + observe_cpu_us / 10.0) / 1e6 * 100.0,
        report_bytes,
        telemetry_bytes,
        observations: iterations,
        gpus: first.gpus.len(),
        processes: first.processes.len(),
        wall_us_per_observation: wall.as_secs_f64() * 1e6 / n,
        // USER_HZ is 100 on Linux: one tick is 10 ms.
        cpu_us_per_observation: ticks as f64 * 10_000.0 / n,
        peak_rss_bytes: peak_rss(),
        sparse_file_bytes: size,
        fingerprint_us: fp_wall.as_secs_f64() * 1e6 / f64::from(rounds),
        spool_reports_per_second: appends as f64 / spool_wall.as_secs_f64(),
    })
}

//! The agent's own health for Prometheus and probes: a small HTTP listener, off by default and meant
//! for localhost or the pod network (`--metrics-listen 127.0.0.1:9108`), serving `/metrics` (spool,
//! acknowledgements, NVML errors by call) and `/healthz` (an observation ran recently).
//!
//! It speaks just enough HTTP/1.1 for a scraper and a probe: one request per connection, the request
//! head bounded (8 KiB) and timed (5 s), at most 64 connections at once.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::observe::Observation;

/// Counters the daemon updates as it runs.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    nvml_errors: Mutex<BTreeMap<String, u64>>,
    last_ack_ms: AtomicI64,
    last_observation_ms: AtomicI64,
}

/// Distinct NVML calls counted (a bound on the label's values).
const MAX_CALLS: usize = 256;

impl AgentMetrics {
    /// Counts one failed NVML call (by the report field it feeds, or `observe` for a whole observation).
    pub fn nvml_error(&self, call: &str) {
        let mut m = self.nvml_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() < MAX_CALLS || m.contains_key(call) {
            *m.entry(call.chars().take(64).collect()).or_default() += 1;
        }
    }

    /// Records an observation: its time, and every NVML call that failed in it.
    pub fn observed(&self, obs: &Observation, now_ms: i64) {
        self.last_observation_ms.store(now_ms, Ordering::Relaxed);
        for g in &obs.gpus {
            for u in &g.unavailable {
                self.nvml_error(&u.field);
            }
        }
    }

    /// Records an acknowledgement from a collector.
    pub fn acked(&self, now_ms: i64) {
        self.last_ack_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether an observation completed within `within` of `now_ms`.
    pub fn observed_within(&self, within: Duration, now_ms: i64) -> bool {
        let last = self.last_observation_ms.load(Ordering::Relaxed);
        last > 0 && now_ms - last <= within.as_millis() as i64
    }

    /// The text format, with the spool's figures read by the caller.
    pub fn render(&self, unacked: u64, spool_bytes: u64) -> String {
        let mut s = String::new();
        let gauge = |s: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {v}");
        };
        gauge(
            &mut s,
            "gpuattest_agent_spool_bytes",
            "Bytes of unacknowledged reports on disk.",
            spool_bytes.to_string(),
        );
        gauge(
            &mut s,
            "gpuattest_agent_reports_unacked",
            "Reports signed and spooled but not yet acknowledged by a collector.",
            unacked.to_string(),
        );
        let secs = |a: &AtomicI64| (a.load(Ordering::Relaxed) as f64 / 1000.0).to_string();
        gauge(
            &mut s,
            "gpuattest_agent_last_ack_timestamp_seconds",
            "When a collector last acknowledged a report (0: not since start).",
            secs(&self.last_ack_ms),
        );
        gauge(
            &mut s,
            "gpuattest_agent_last_observation_timestamp_seconds",
            "When the last observation of the host completed (0: none since start).",
            secs(&self.last_observation_ms),
        );
        let _ = writeln!(
            s,
            "# HELP gpuattest_agent_nvml_errors_total NVML calls that failed, by the report field they feed."
        );
        let _ = writeln!(s, "# TYPE gpuattest_agent_nvml_errors_total counter");
        for (call, n) in self.nvml_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            let call = call.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(s, "gpuattest_agent_nvml_errors_total{{call=\"{call}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP gpuattest_agent_build_info The running build: 1, labelled with its version.");
        let _ = writeln!(s, "# TYPE gpuattest_agent_build_info gauge");
        let _ = writeln!(s, "gpuattest_agent_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        s
    }
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Serves `GET PATH` with `answer(PATH)` (status, body; `None`: 404) until `shutdown` turns true.
pub async fn serve<F>(listener: tokio::net::TcpListener, mut shutdown: watch::Receiver<bool>, answer: F)
where
    F: Fn(&str) -> Option<(u16, String)> + Send + Sync + 'static,
{
    let answer = std::sync::Arc::new(answer);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(head)) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream)).await else {
                return;
            };
            let mut parts = head.split_whitespace();
            let (status, body) = match (parts.next(), parts.next()) {
                (Some("GET"), Some(path)) => answer(path.split('?').next().unwrap_or(path))
                    .unwrap_or((404, "not found; try /metrics or /healthz\n".into())),
                _ => (405, "only GET\n".into()),
            };
            let reason = match status {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Service Unavailable",
            };
            let content_type =
                if body.starts_with("# HELP") { "text/plain; version=0.0.4" } else { "text/plain; charset=utf-8" };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads up to the end of the request head; its first line.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_in_the_text_format() {
        let m = AgentMetrics::default();
        m.nvml_error("power_mw");
        m.nvml_error("power_mw");
        m.acked(1_795_000_000_000);
        let t = m.render(3, 4096);
        for line in [
            "gpuattest_agent_spool_bytes 4096",
            "gpuattest_agent_reports_unacked 3",
            "gpuattest_agent_last_ack_timestamp_seconds 1795000000",
            "gpuattest_agent_nvml_errors_total{call=\"power_mw\"} 2",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        assert!(!m.observed_within(Duration::from_secs(60), 1_795_000_000_000));
    }
}

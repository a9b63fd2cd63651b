//! Logging set-up and the shutdown signal for the binary.
//!
//! `GPUATTEST_LOG` is the filter (`RUST_LOG` where it is unset; default `info`);
//! `GPUATTEST_LOG_FORMAT=json` writes one JSON object per line for log shippers, fatal errors included.
//! Colour only when stderr is a terminal, so journald and `kubectl logs` get no escape codes. Logs go
//! to stderr, so `--json` output on stdout stays clean.

use std::io::IsTerminal;

/// Whether `GPUATTEST_LOG_FORMAT=json` is set.
pub fn json_mode() -> bool {
    std::env::var("GPUATTEST_LOG_FORMAT").is_ok_and(|f| f == "json")
}

/// Installs the global subscriber with `default` as the filter when neither `GPUATTEST_LOG` nor
/// `RUST_LOG` is set. Call once, from `main`.
pub fn init(default: &str) {
    let filter = ["GPUATTEST_LOG", "RUST_LOG"]
        .iter()
        .find_map(|v| tracing_subscriber::EnvFilter::try_from_env(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json_mode() {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The line a failed command ends with on stderr: `PROGRAM: MESSAGE`, or in JSON mode one object in
/// the shape of the log lines (`level`, `fields.message`, `target`).
pub fn fatal_line(program: &str, message: &str) -> String {
    if json_mode() {
        serde_json::json!({"level": "ERROR", "fields": {"message": message}, "target": program}).to_string()
    } else {
        format!("{program}: {message}")
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

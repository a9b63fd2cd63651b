//! Logging set-up and the shutdown signal for the binary.
//!
//! `GPUATTEST_LOG` is the filter (default `info`), `GPUATTEST_LOG_FORMAT=json` switches to JSON lines
//! for log shippers. Logs go to stderr, so `--json` output on stdout stays clean.

/// Installs the global subscriber with `default` as the filter when `GPUATTEST_LOG` is unset. Call
/// once, from `main`.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GPUATTEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("GPUATTEST_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves on either.
///
/// # Errors
/// When the handlers cannot be installed.
pub fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

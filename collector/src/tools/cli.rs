//! The commands behind `demo` and `bench`, over the tools' public functions and the CLI's exit codes.

use std::path::Path;
use std::time::Duration;

use crate::cli::{Result, out, print_json, runtime, runtime_rt, usage};
use crate::tools::{bench, demo};

/// `demo`.
///
/// # Errors
/// Usage errors for a bad interval; runtime errors from the demo.
pub fn demo(data: &Path, seconds: Option<u64>, http_listen: String, interval: &str) -> Result {
    let interval = match gpuattest_proto::units::parse_duration(interval) {
        Ok(i) if !i.is_zero() => i,
        Ok(_) => return Err(usage("--interval must be more than 0")),
        Err(e) => return Err(usage(format!("--interval: {e}"))),
    };
    let opts = demo::DemoOptions {
        data: data.to_path_buf(),
        duration: seconds.map(Duration::from_secs),
        http_listen,
        interval,
    };
    runtime_rt()?.block_on(demo::run(opts)).map_err(runtime)
}

/// Most simulated agents: each is a real gRPC stream with its own connection (10,000 is the sizing
/// table's largest run).
pub const MAX_AGENTS: u64 = 100_000;
/// Longest run, seconds (a day).
pub const MAX_SECONDS: u64 = 86_400;
/// Most collector replicas the bench starts in its one process.
pub const MAX_REPLICAS: u64 = 16;
/// Most reports `--review-reports` stores.
pub const MAX_REVIEW_REPORTS: u64 = 10_000_000;

/// `bench --review-reports N`: the review page of a flag over N stored reports of one host.
///
/// # Errors
/// Runtime errors from the store.
pub fn bench_review(reports: u64, database: Option<&str>, json: bool) -> Result {
    if !(1..=MAX_REVIEW_REPORTS).contains(&reports) {
        return Err(usage(format!(
            "--review-reports must be 1 to {MAX_REVIEW_REPORTS} (the issue's target page is 100000)"
        )));
    }
    let f = bench::review_page(reports, database).map_err(runtime)?;
    if json {
        return print_json(&f);
    }
    out(&format!(
        "{} reports of one host ({}), stored in {:.1} s: the flag's review page took {:.1} ms (median of {}), {} timeline points\n",
        f.stored_reports,
        f.store,
        f.fill_seconds,
        f.review_page_median_ms,
        f.review_page_ms.len(),
        f.timeline_points
    ))
}

/// `bench`: end-to-end ingest against the verification ceiling, on the embedded store (or
/// `--database`, with `--replicas` collectors on it).
///
/// # Errors
/// When the benchmark cannot set up its store, listeners or agents.
pub fn bench(
    agents: usize,
    seconds: u64,
    interval: Option<&str>,
    database: Option<&str>,
    replicas: usize,
    json: bool,
) -> Result {
    for (flag, value, max) in [
        ("--agents", agents as u64, MAX_AGENTS),
        ("--seconds", seconds, MAX_SECONDS),
        ("--replicas", replicas as u64, MAX_REPLICAS),
    ] {
        if !(1..=max).contains(&value) {
            return Err(usage(format!("{flag} must be 1 to {max}; got {value}")));
        }
    }
    if replicas > 1 && database.is_none() {
        return Err(usage("--replicas needs --database: replicas share one PostgreSQL store"));
    }
    let interval = match interval.map(gpuattest_proto::units::parse_duration) {
        None => None,
        Some(Ok(d)) if d.is_zero() => {
            return Err(usage("--interval must be more than 0; leave it out to send back to back"));
        }
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return Err(usage(format!("--interval: {e}"))),
    };
    let f = runtime_rt()?.block_on(bench::run(agents, seconds, interval, database, replicas)).map_err(runtime)?;
    if json {
        return print_json(&f);
    }
    out(&format!(
        "{} agents, {} reports of {} bytes in {seconds} s: {:.0} reports/s; verification ceiling {:.0}/s (ratio {:.2}); ack p50 {:.1} ms, p99 {:.1} ms; collector RSS {} MiB, agents' process {} MiB ({})\n",
        f.agents,
        f.reports,
        f.report_bytes,
        f.reports_per_second,
        f.verify_ceiling_per_second,
        f.ratio,
        f.p50_ack_ms,
        f.p99_ack_ms,
        f.collector_rss_bytes >> 20,
        f.agents_rss_bytes >> 20,
        f.store
    ))?;
    out(&format!(
        "collector CPU {:.0} us per report, of which the store's threads {:.0} us; signature check {:.0} us (cpu_ratio {:.2}, {:.2} without the store){}\n",
        f.collector_cpu_us_per_report,
        f.store_threads_cpu_us_per_report,
        f.verify_us_per_report,
        f.cpu_ratio,
        f.cpu_ratio_without_store,
        f.database_cpu_us_per_report.map_or(String::new(), |d| format!("; database CPU {d:.0} us per report"))
    ))?;
    match f.write_bytes_per_report {
        Some(b) => out(&format!("written to storage by the collector: {:.1} KiB per report\n", b / 1024.0)),
        None => Ok(()),
    }
}

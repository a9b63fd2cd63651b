//! Counters and a latency histogram for Prometheus (`GET /metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a report was rejected (a label on `gpuattest_reports_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The signature does not verify over the bytes.
    BadSignature,
    /// Signed by a key other than the host's enrolled key.
    UnknownKey,
    /// Not a decodable report.
    Malformed,
    /// This (host, seq) is already stored.
    Replay,
    /// Behind the host's position.
    OutOfOrder,
    /// The report names another host.
    WrongHost,
    /// The host is unknown or revoked.
    HostGone,
}

impl Reject {
    const ALL: [Reject; 7] = [
        Reject::BadSignature,
        Reject::UnknownKey,
        Reject::Malformed,
        Reject::Replay,
        Reject::OutOfOrder,
        Reject::WrongHost,
        Reject::HostGone,
    ];
    fn label(self) -> &'static str {
        match self {
            Reject::BadSignature => "bad_signature",
            Reject::UnknownKey => "unknown_key",
            Reject::Malformed => "malformed",
            Reject::Replay => "replay",
            Reject::OutOfOrder => "out_of_order",
            Reject::WrongHost => "wrong_host",
            Reject::HostGone => "host_gone",
        }
    }
}

/// Upper bounds of the ingest latency buckets, milliseconds.
const BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000];

/// The collector's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    rejected: [AtomicU64; 7],
    enrollments: AtomicU64,
    enroll_refused: AtomicU64,
    streams_active: AtomicU64,
    streams_total: AtomicU64,
    flags: AtomicU64,
    latency_buckets: [AtomicU64; 10],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

impl Metrics {
    /// A report was stored; `elapsed_us` from receipt to commit.
    pub fn accepted(&self, elapsed_us: u64, flags: usize) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.flags.fetch_add(flags as u64, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(elapsed_us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if elapsed_us <= b * 1000 {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A report was rejected.
    pub fn rejected(&self, why: Reject) {
        if let Some(i) = Reject::ALL.iter().position(|r| *r == why) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reports rejected for `why` so far.
    pub fn rejected_count(&self, why: Reject) -> u64 {
        Reject::ALL.iter().position(|r| *r == why).map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }

    /// Reports accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// An enrollment succeeded (`true`) or was refused.
    pub fn enrollment(&self, ok: bool) {
        if ok { &self.enrollments } else { &self.enroll_refused }.fetch_add(1, Ordering::Relaxed);
    }

    /// Streams open now.
    pub fn streams_active(&self) -> u64 {
        self.streams_active.load(Ordering::Relaxed)
    }

    /// Counts a stream opening (`true`) or closing.
    pub fn stream(&self, open: bool) {
        if open {
            self.streams_active.fetch_add(1, Ordering::Relaxed);
            self.streams_total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.streams_active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(s, "# HELP gpuattest_reports_accepted_total Reports verified and durably stored.");
        let _ = writeln!(s, "# TYPE gpuattest_reports_accepted_total counter");
        let _ = writeln!(s, "gpuattest_reports_accepted_total {}", l(&self.accepted));
        let _ = writeln!(s, "# HELP gpuattest_reports_rejected_total Reports refused, by reason.");
        let _ = writeln!(s, "# TYPE gpuattest_reports_rejected_total counter");
        for (i, r) in Reject::ALL.iter().enumerate() {
            let _ =
                writeln!(s, "gpuattest_reports_rejected_total{{reason=\"{}\"}} {}", r.label(), l(&self.rejected[i]));
        }
        let _ = writeln!(s, "# HELP gpuattest_enrollments_total Enrollment attempts, by outcome.");
        let _ = writeln!(s, "# TYPE gpuattest_enrollments_total counter");
        let _ = writeln!(s, "gpuattest_enrollments_total{{outcome=\"ok\"}} {}", l(&self.enrollments));
        let _ = writeln!(s, "gpuattest_enrollments_total{{outcome=\"refused\"}} {}", l(&self.enroll_refused));
        let _ = writeln!(s, "# HELP gpuattest_streams_active Agent report streams open now.");
        let _ = writeln!(s, "# TYPE gpuattest_streams_active gauge");
        let _ = writeln!(s, "gpuattest_streams_active {}", l(&self.streams_active));
        let _ = writeln!(s, "# TYPE gpuattest_streams_total counter");
        let _ = writeln!(s, "gpuattest_streams_total {}", l(&self.streams_total));
        let _ = writeln!(s, "# HELP gpuattest_flag_updates_total Flags raised or updated by reports.");
        let _ = writeln!(s, "# TYPE gpuattest_flag_updates_total counter");
        let _ = writeln!(s, "gpuattest_flag_updates_total {}", l(&self.flags));
        let _ = writeln!(s, "# HELP gpuattest_ingest_seconds Time from receiving a report to its durable commit.");
        let _ = writeln!(s, "# TYPE gpuattest_ingest_seconds histogram");
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                s,
                "gpuattest_ingest_seconds_bucket{{le=\"{}\"}} {}",
                *b as f64 / 1000.0,
                l(&self.latency_buckets[i])
            );
        }
        let _ = writeln!(s, "gpuattest_ingest_seconds_bucket{{le=\"+Inf\"}} {}", l(&self.latency_count));
        let _ = writeln!(s, "gpuattest_ingest_seconds_sum {}", l(&self.latency_sum_us) as f64 / 1e6);
        let _ = writeln!(s, "gpuattest_ingest_seconds_count {}", l(&self.latency_count));
        s
    }
}

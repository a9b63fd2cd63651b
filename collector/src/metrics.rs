//! Counters and a latency histogram for Prometheus (`GET /metrics`), the fleet's gauges read from the
//! store (open flags, each host's last report and gaps), the process's own CPU, memory and
//! descriptors, and a linter for the text format that the tests run over all of it.

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

/// Upper bounds of the ingest latency buckets, milliseconds: to 30 s, past the saturated p99 of 2-5 s
/// the sizing guide reports.
const BUCKETS_MS: [u64; 14] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000];

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
    latency_buckets: [AtomicU64; BUCKETS_MS.len()],
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
        let _ = writeln!(s, "# HELP gpuattest_streams_total Agent report streams opened since start.");
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
        let _ = writeln!(s, "# HELP gpuattest_build_info The running build: 1, labelled with its version.");
        let _ = writeln!(s, "# TYPE gpuattest_build_info gauge");
        let _ = writeln!(s, "gpuattest_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        s.push_str(&process_metrics());
        s
    }
}

/// What the store says about the fleet, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    /// Open flags: (severity, rule, count).
    pub flags_open: Vec<(String, String, u64)>,
    /// Hosts not revoked.
    pub hosts: Vec<crate::store::HostGauge>,
    /// Reports stored and acknowledged, not yet given a transparency-log index.
    pub log_unsequenced: u64,
}

/// A label value in the text format: backslash, double quote and newline escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl FleetGauges {
    /// The gauges in the text format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP gpuattest_flags_open Flags not yet decided, by severity and rule.");
        let _ = writeln!(s, "# TYPE gpuattest_flags_open gauge");
        for (sev, rule, n) in &self.flags_open {
            let _ = writeln!(s, "gpuattest_flags_open{{severity=\"{}\",rule=\"{}\"}} {n}", label(sev), label(rule));
        }
        let _ = writeln!(
            s,
            "# HELP gpuattest_host_last_report_timestamp_seconds When each host's last stored report arrived."
        );
        let _ = writeln!(s, "# TYPE gpuattest_host_last_report_timestamp_seconds gauge");
        for h in &self.hosts {
            if let Some(ms) = h.last_report_ms {
                let _ = writeln!(
                    s,
                    "gpuattest_host_last_report_timestamp_seconds{{host_id=\"{}\",tenant=\"{}\"}} {}",
                    label(&h.host_id),
                    label(h.tenant.as_deref().unwrap_or_default()),
                    ms as f64 / 1000.0
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP gpuattest_host_sequence_gaps Sequence numbers missing from a host's chain and not covered by a signed gap record."
        );
        let _ = writeln!(s, "# TYPE gpuattest_host_sequence_gaps gauge");
        for h in &self.hosts {
            let _ = writeln!(s, "gpuattest_host_sequence_gaps{{host_id=\"{}\"}} {}", label(&h.host_id), h.gaps);
        }
        let _ = writeln!(
            s,
            "# HELP gpuattest_log_unsequenced Reports stored and acknowledged that the sequencer has not yet given a transparency-log index (the whole store; it stays near zero while a sequencer runs)."
        );
        let _ = writeln!(s, "# TYPE gpuattest_log_unsequenced gauge");
        let _ = writeln!(s, "gpuattest_log_unsequenced {}", self.log_unsequenced);
        s
    }
}

/// The process's CPU time, resident memory and descriptors, as the Prometheus client libraries name
/// them, read from `/proc/self` (nothing where it cannot be read).
pub fn process_metrics() -> String {
    let mut s = String::new();
    let read = |p: &str| std::fs::read_to_string(p).ok();
    // /proc/self/stat: the fields after the command's closing parenthesis; utime and stime are the
    // 12th and 13th of those, start time the 20th, in USER_HZ (100 on Linux) ticks.
    let stat = read("/proc/self/stat");
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|t| t.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).map(|v| v / 100.0);
    if let (Some(u), Some(k)) = (tick(11), tick(12)) {
        let _ = writeln!(s, "# HELP process_cpu_seconds_total User and system CPU time spent, seconds.");
        let _ = writeln!(s, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(s, "process_cpu_seconds_total {}", u + k);
    }
    let boot = read("/proc/stat")
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok()));
    if let (Some(b), Some(start)) = (boot, tick(19)) {
        let _ =
            writeln!(s, "# HELP process_start_time_seconds Start time of the process since the Unix epoch, seconds.");
        let _ = writeln!(s, "# TYPE process_start_time_seconds gauge");
        let _ = writeln!(s, "process_start_time_seconds {}", b + start);
    }
    let rss_kib = read("/proc/self/status").and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    if let Some(kib) = rss_kib {
        let _ = writeln!(s, "# HELP process_resident_memory_bytes Resident memory size, bytes.");
        let _ = writeln!(s, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(s, "process_resident_memory_bytes {}", kib * 1024);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(s, "# HELP process_open_fds Open file descriptors.");
        let _ = writeln!(s, "# TYPE process_open_fds gauge");
        let _ = writeln!(s, "process_open_fds {}", fds.count());
    }
    let max = read("/proc/self/limits").and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    });
    if let Some(m) = max {
        let _ = writeln!(s, "# HELP process_max_fds Most open file descriptors allowed.");
        let _ = writeln!(s, "# TYPE process_max_fds gauge");
        let _ = writeln!(s, "process_max_fds {m}");
    }
    s
}

/// Checks text in the Prometheus exposition format the way `promtool check metrics` does for what
/// this project writes: every family has HELP and TYPE before its samples and appears once, names
/// and label names are valid, counters end in `_total`, label values are quoted and escaped, values
/// are numbers, and histogram buckets are cumulative with `+Inf` equal to the count.
///
/// # Errors
/// The first problem, with its line.
pub fn lint(text: &str) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut help: BTreeSet<String> = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current = String::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or_default().to_string();
            if !name_ok(&name) || !help.insert(name.clone()) || done.contains(&name) {
                return Err(at("a family's HELP is missing a valid name or appears twice".into()));
            }
            if current != name {
                if !current.is_empty() {
                    done.insert(current.clone());
                }
                current = name;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().unwrap_or_default(), w.next().unwrap_or_default());
            if !help.contains(name) || types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at("TYPE without HELP before it, or twice".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("a counter's name must end in _total".into()));
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at(format!("value {v} is not a number")))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').ok_or_else(|| at("unclosed labels".into()))?),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if family != current || !types.contains_key(family) {
            return Err(at(format!("sample of {family} outside its family's HELP and TYPE")));
        }
        // Labels: name="value" pairs, values with escapes only for \\, \" and \n.
        let mut rest = labels;
        let mut le = None;
        while !rest.is_empty() {
            let (lname, after) = rest.split_once("=\"").ok_or_else(|| at("a label without =\"".into()))?;
            if !name_ok(lname) || lname.contains(':') {
                return Err(at(format!("label name {lname}")));
            }
            let mut end = None;
            let mut escaped = false;
            for (j, ch) in after.char_indices() {
                match (escaped, ch) {
                    (true, '\\' | '"' | 'n') => escaped = false,
                    (true, _) => return Err(at("a bad escape in a label value".into())),
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(j);
                        break;
                    }
                    (false, '\n') => return Err(at("a raw newline in a label value".into())),
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| at("an unterminated label value".into()))?;
            if lname == "le" {
                le = Some(after[..end].to_string());
            }
            rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
        }
        if let Some(f) = name.strip_suffix("_bucket").filter(|f| types.get(*f).is_some_and(|t| t == "histogram")) {
            let bound = match le.as_deref() {
                Some("+Inf") => f64::INFINITY,
                Some(b) => b.parse().map_err(|_| at("le is not a number".into()))?,
                None => return Err(at("a bucket without le".into())),
            };
            buckets.entry(f.to_string()).or_default().push((bound, v));
        }
        if let Some(f) = name.strip_suffix("_count").filter(|f| types.get(*f).is_some_and(|t| t == "histogram")) {
            counts.insert(f.to_string(), v);
        }
    }
    for (f, b) in &buckets {
        let cumulative = b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        let inf = b.last().filter(|(bound, _)| bound.is_infinite()).map(|(_, v)| *v);
        if !cumulative || inf != counts.get(f).copied() {
            return Err(format!("histogram {f}: buckets not cumulative, or +Inf is not the count"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_on_metrics_passes_the_linter() {
        let m = Metrics::default();
        m.accepted(1_500, 1);
        m.accepted(40_000_000, 0);
        m.rejected(Reject::Replay);
        m.stream(true);
        let fleet = FleetGauges {
            flags_open: vec![("high".into(), "model-developer".into(), 3)],
            hosts: vec![crate::store::HostGauge {
                host_id: "node-\"a\"\\b".into(),
                tenant: Some("acme\nai".into()),
                last_report_ms: Some(1_795_000_000_000),
                gaps: 2,
            }],
            log_unsequenced: 7,
        };
        let text = format!("{}{}", m.render(), fleet.render());
        lint(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for name in [
            "gpuattest_build_info{version=",
            "gpuattest_flags_open{severity=\"high\",rule=\"model-developer\"} 3",
            "gpuattest_host_last_report_timestamp_seconds{host_id=\"node-\\\"a\\\"\\\\b\",tenant=\"acme\\nai\"} 1795000000",
            "gpuattest_host_sequence_gaps{",
            "gpuattest_log_unsequenced 7",
            "gpuattest_ingest_seconds_bucket{le=\"30\"} 1",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }

    #[test]
    fn the_linter_finds_what_promtool_would() {
        for bad in [
            "gpuattest_x 1\n",
            "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"unterminated} 1\n",
            "# HELP a x\n# TYPE a counter\na 1\n",
            "# HELP a x\n# TYPE a gauge\na{l=\"v\"} one\n",
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\nh_sum 1\nh_count 4\n",
            "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na 2\n",
        ] {
            assert!(lint(bad).is_err(), "{bad}");
        }
    }
}

//! Training or inference: what a job's GPUs do, weighed above what the job calls itself.
//!
//! Evidence is accumulated per job across reports ([`JobEvidence`], stored as JSON with the job) and
//! weighed as log-odds ([`classify`]): positive for training, negative for inference. Two kinds:
//!
//! - **Behaviour** (what the hardware and the file system show; a tenant can change it only by
//!   changing the work): a step rhythm in GPU utilisation, all-reduce bursts on NVLink or PCIe in the
//!   same rhythm, GPUs of several hosts (or several jobs of the tenant) in lock-step, large files open
//!   for writing and rewritten (checkpoints, adapters, whatever their names), memory per parameter that
//!   only gradients and optimizer state explain; against it, request-driven bursts without a rhythm,
//!   steady memory-bound work without one.
//! - **Names** (launcher and server names on the command line, checkpoint-like file names, distributed
//!   environment variables): a tenant sets them freely, so together they move the verdict by at most
//!   [`NAME_CAP`] log-odds, never enough for a confident verdict on their own.
//!
//! The confidence is the logistic of the score, so 0.8 needs 1.39 log-odds of net evidence; names alone
//! reach at most 0.69. The weights are set by hand and documented here; the labelled workload suite
//! (`tests/workloads`) measures how they do.

use std::collections::BTreeMap;

use gpuattest_proto::pb;
use serde::{Deserialize, Serialize};

/// Most log-odds tenant-controlled evidence may add, in either direction.
pub const NAME_CAP: f64 = 0.8;
/// GPU-windows of telemetry needed before behaviour is weighed.
pub const MIN_WINDOWS: u64 = 3;

/// Evidence accumulated for a job across its reports, kept as JSON in `jobs.evidence`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobEvidence {
    /// Launchers and inference servers seen, with the kind the agent gave each (`torchrun: training`).
    #[serde(default)]
    pub launchers: BTreeMap<String, String>,
    /// Largest distributed world size seen.
    #[serde(default)]
    pub max_world_size: u32,
    /// Checkpoint-like files written (a few, for the reviewer).
    #[serde(default)]
    pub checkpoint_writes: Vec<String>,
    /// Hosts the job ran on.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Largest parameter count of a model file the job had open.
    #[serde(default)]
    pub max_model_parameters: u64,
    /// Largest GPU memory one process of the job used, bytes.
    #[serde(default)]
    pub max_process_memory: u64,
    /// Per-report utilisation samples of the job's GPUs: count.
    #[serde(default)]
    pub util_samples: u64,
    /// Σ utilisation.
    #[serde(default)]
    pub util_sum: f64,
    /// Σ utilisation².
    #[serde(default)]
    pub util_sq_sum: f64,
    /// Model names the job had open or named.
    #[serde(default)]
    pub models: Vec<String>,
    /// GPU-windows with telemetry.
    #[serde(default)]
    pub windows: u64,
    /// Of those, windows with a step rhythm in utilisation.
    #[serde(default)]
    pub rhythmic: u64,
    /// Windows with interconnect bursts in the same rhythm (all-reduce after each step).
    #[serde(default)]
    pub synced: u64,
    /// Windows of bursts without a rhythm (request-driven).
    #[serde(default)]
    pub bursty: u64,
    /// Windows steady and busy without a rhythm.
    #[serde(default)]
    pub steady: u64,
    /// Windows where the memory controller is as busy as the SMs (decode-like, bandwidth-bound).
    #[serde(default)]
    pub memory_bound: u64,
    /// The latest step period per host, ms.
    #[serde(default)]
    pub host_periods: BTreeMap<String, u32>,
    /// Most other jobs of the same tenant seen in the same rhythm on one host at once.
    #[serde(default)]
    pub lockstep_jobs: u32,
    /// Large files open for writing, `path (size)` (a few, for the reviewer).
    #[serde(default)]
    pub large_writes: Vec<String>,
    /// Distinct versions (path and modification time) of large files written, up to 32.
    #[serde(default)]
    pub large_write_versions: Vec<String>,
}

/// Most entries kept in each evidence list.
const MAX_LIST: usize = 16;

/// The part of [`JobEvidence`] every report adds to: counts and sums, which the store keeps as
/// commutative counters beside the job's usage rows (added to in place, by any replica, in any order),
/// so the job's evidence row is rewritten only when its slow-changing part (lists, largest values,
/// step periods) changes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvidenceCounters {
    /// As [`JobEvidence::util_samples`].
    pub util_samples: u64,
    /// As [`JobEvidence::util_sum`].
    pub util_sum: f64,
    /// As [`JobEvidence::util_sq_sum`].
    pub util_sq_sum: f64,
    /// As [`JobEvidence::windows`].
    pub windows: u64,
    /// As [`JobEvidence::rhythmic`].
    pub rhythmic: u64,
    /// As [`JobEvidence::synced`].
    pub synced: u64,
    /// As [`JobEvidence::bursty`].
    pub bursty: u64,
    /// As [`JobEvidence::steady`].
    pub steady: u64,
    /// As [`JobEvidence::memory_bound`].
    pub memory_bound: u64,
}

impl EvidenceCounters {
    /// `self + o`, field by field (`sign` -1 subtracts).
    fn combine(&self, o: &EvidenceCounters, sign: i8) -> EvidenceCounters {
        let n = |a: u64, b: u64| if sign < 0 { a.saturating_sub(b) } else { a.saturating_add(b) };
        let f = |a: f64, b: f64| if sign < 0 { a - b } else { a + b };
        EvidenceCounters {
            util_samples: n(self.util_samples, o.util_samples),
            util_sum: f(self.util_sum, o.util_sum),
            util_sq_sum: f(self.util_sq_sum, o.util_sq_sum),
            windows: n(self.windows, o.windows),
            rhythmic: n(self.rhythmic, o.rhythmic),
            synced: n(self.synced, o.synced),
            bursty: n(self.bursty, o.bursty),
            steady: n(self.steady, o.steady),
            memory_bound: n(self.memory_bound, o.memory_bound),
        }
    }

    /// The sum of both.
    pub fn plus(&self, o: &EvidenceCounters) -> EvidenceCounters {
        self.combine(o, 1)
    }

    /// What `self` has beyond `earlier` (counts never below zero).
    pub fn since(&self, earlier: &EvidenceCounters) -> EvidenceCounters {
        self.combine(earlier, -1)
    }

    /// Whether every count and sum is zero.
    pub fn is_zero(&self) -> bool {
        *self == EvidenceCounters::default()
    }
}

impl JobEvidence {
    /// Its counters.
    pub fn counters(&self) -> EvidenceCounters {
        EvidenceCounters {
            util_samples: self.util_samples,
            util_sum: self.util_sum,
            util_sq_sum: self.util_sq_sum,
            windows: self.windows,
            rhythmic: self.rhythmic,
            synced: self.synced,
            bursty: self.bursty,
            steady: self.steady,
            memory_bound: self.memory_bound,
        }
    }

    /// The same evidence with these counters.
    pub fn with_counters(mut self, c: EvidenceCounters) -> JobEvidence {
        (self.util_samples, self.util_sum, self.util_sq_sum) = (c.util_samples, c.util_sum, c.util_sq_sum);
        (self.windows, self.rhythmic, self.synced) = (c.windows, c.rhythmic, c.synced);
        (self.bursty, self.steady, self.memory_bound) = (c.bursty, c.steady, c.memory_bound);
        self
    }
}

fn push_bounded(v: &mut Vec<String>, s: &str, max: usize) {
    if v.len() < max && !v.iter().any(|x| x == s) {
        v.push(s.chars().take(512).collect());
    }
}

/// What one GPU's telemetry says about one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// The utilisation's step period, ms, when it has a clear one.
    pub rhythm: Option<u32>,
    /// NVLink or PCIe bursts in the same rhythm.
    pub synced: bool,
    /// Bursts without a rhythm.
    pub bursty: bool,
    /// Busy and steady without a rhythm.
    pub steady: bool,
    /// Memory controller about as busy as the SMs.
    pub memory_bound: bool,
}

fn series(t: &pb::GpuTelemetry, m: pb::Metric) -> Option<&pb::SeriesStats> {
    t.series.iter().find(|s| s.metric == m as i32)
}

/// Samples of history a window needs before its rhythm (or its lack) is judged.
pub const MIN_HISTORY: u32 = 16;

/// Reads one GPU-window. `None` without utilisation samples, or with fewer than [`MIN_HISTORY`] of
/// them so far (a new job or agent: no rhythm can show yet, so none is held against it).
pub fn window(t: &pb::GpuTelemetry) -> Option<Window> {
    let u = series(t, pb::Metric::GpuUtil).filter(|u| u.history >= MIN_HISTORY)?;
    let mean = f64::from(u.mean);
    let cv = if mean > 0.0 { f64::from(u.stddev) / mean } else { 0.0 };
    // A clear rhythm: a strong autocorrelation peak over enough history, in a series that moves.
    let rhythm = (u.period_ms > 0 && u.period_strength >= 500 && u.stddev >= 30).then_some(u.period_ms);
    let tolerance = |p: u32| u32::max(t.sample_ms, (u64::from(p) * 15 / 100) as u32);
    let synced = rhythm.is_some_and(|p| {
        [pb::Metric::NvlinkTx, pb::Metric::PcieTx, pb::Metric::NvlinkRx, pb::Metric::PcieRx].iter().any(|m| {
            series(t, *m).is_some_and(|x| {
                x.max >= 100_000
                    && f64::from(x.max) >= 2.0 * f64::from(x.mean)
                    && x.period_ms > 0
                    && x.period_strength >= 400
                    && x.period_ms.abs_diff(p) <= tolerance(p)
            })
        })
    });
    let memory_bound =
        series(t, pb::Metric::MemUtil).is_some_and(|m| mean >= 200.0 && f64::from(m.mean) >= 0.75 * mean);
    Some(Window {
        rhythm,
        synced,
        bursty: rhythm.is_none() && mean > 0.0 && cv >= 0.5,
        steady: rhythm.is_none() && mean >= 600.0 && cv < 0.15,
        memory_bound,
    })
}

/// Whether two step periods are the same rhythm (within 15%).
pub fn same_rhythm(a: u32, b: u32) -> bool {
    u64::from(a.abs_diff(b)) <= u64::from(a.max(b)) * 15 / 100
}

impl JobEvidence {
    /// Adds what one process in one report says.
    pub fn add_process(&mut self, host_id: &str, p: &pb::GpuProcess, gpu_utils: &[u32]) {
        push_bounded(&mut self.hosts, host_id, MAX_LIST);
        if let Some(l) = &p.launch {
            if !l.framework.is_empty() && self.launchers.len() < MAX_LIST {
                self.launchers.insert(l.framework.clone(), l.kind.clone());
            }
            self.max_world_size = self.max_world_size.max(l.world_size.unwrap_or(0));
        }
        for w in &p.writing {
            push_bounded(&mut self.checkpoint_writes, w, MAX_LIST);
        }
        for w in &p.large_writes {
            push_bounded(&mut self.large_writes, &format!("{} ({} MiB)", w.path, w.size_bytes >> 20), MAX_LIST);
            push_bounded(&mut self.large_write_versions, &format!("{}@{}", w.path, w.modified_unix_ms), 32);
        }
        for m in &p.models {
            self.max_model_parameters = self.max_model_parameters.max(m.parameter_count);
            if let Some(n) = m.name.as_deref().or(m.architecture.as_deref()) {
                push_bounded(&mut self.models, n, MAX_LIST);
            }
        }
        for u in gpu_utils {
            let u = f64::from(*u);
            self.util_samples += 1;
            self.util_sum += u;
            self.util_sq_sum += u * u;
        }
    }

    /// Records a process's GPU memory.
    pub fn add_memory(&mut self, bytes: u64) {
        self.max_process_memory = self.max_process_memory.max(bytes);
    }

    /// Adds the job's GPUs' telemetry on `host_id` in one report; returns the job's step period there
    /// (the median of its rhythmic GPUs'), if it has one.
    pub fn add_telemetry<'a>(
        &mut self,
        host_id: &str,
        gpus: impl IntoIterator<Item = &'a pb::GpuTelemetry>,
    ) -> Option<u32> {
        let mut periods = Vec::new();
        for w in gpus.into_iter().filter_map(window) {
            self.windows += 1;
            self.rhythmic += u64::from(w.rhythm.is_some());
            self.synced += u64::from(w.synced);
            self.bursty += u64::from(w.bursty);
            self.steady += u64::from(w.steady);
            self.memory_bound += u64::from(w.memory_bound);
            periods.extend(w.rhythm);
        }
        periods.sort_unstable();
        let period = periods.get(periods.len() / 2).copied();
        if let Some(p) = period
            && (self.host_periods.len() < MAX_LIST || self.host_periods.contains_key(host_id))
        {
            self.host_periods.insert(host_id.to_string(), p);
        }
        period
    }

    /// Hosts whose latest step periods agree with another host's.
    fn hosts_in_lockstep(&self) -> usize {
        let p: Vec<u32> = self.host_periods.values().copied().collect();
        p.iter().filter(|a| p.iter().filter(|b| same_rhythm(**a, **b)).count() > 1).count()
    }
}

/// Training, inference or unknown, with a confidence and the reasons.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `training`, `inference` or `unknown`.
    pub kind: String,
    /// 0.5 to 1: the probability of the side the score leans to (the logistic of the score).
    pub confidence: f64,
    /// Sentences a reviewer can check against the evidence, each with its weight.
    pub reasons: Vec<String>,
    /// Per reason: whether the tenant controls that evidence (names, not behaviour).
    pub tenant_controlled: Vec<bool>,
    /// The summed log-odds (positive: training).
    pub score: f64,
}

struct Weigh {
    behaviour: f64,
    names: f64,
    reasons: Vec<(String, bool)>,
}

impl Weigh {
    fn add(&mut self, weight: f64, tenant: bool, why: String) {
        if tenant {
            self.names += weight;
        } else {
            self.behaviour += weight;
        }
        let side = if weight >= 0.0 { "training" } else { "inference" };
        let by = if tenant { "named by the tenant" } else { "behaviour" };
        self.reasons.push((format!("{why} ({weight:+.1} {side}, {by})"), tenant));
    }
}

/// Weighs the evidence (see the module docs). Verdict `training` from a probability of 0.6,
/// `inference` up to 0.4, `unknown` between.
pub fn classify(e: &JobEvidence) -> Verdict {
    let mut w = Weigh { behaviour: 0.0, names: 0.0, reasons: Vec::new() };
    // Behaviour: the GPUs' rhythm and what travels between them.
    if e.windows >= MIN_WINDOWS {
        let n = e.windows as f64;
        let share = |k: u64| k as f64 / n;
        if share(e.rhythmic) >= 0.5 {
            w.add(
                1.2,
                false,
                format!("a step rhythm in GPU utilisation in {} of {} GPU-windows", e.rhythmic, e.windows),
            );
        }
        if share(e.synced) >= 0.3 {
            w.add(
                1.5,
                false,
                format!(
                    "NVLink/PCIe bursts in the same rhythm (all-reduce after each step) in {} GPU-windows",
                    e.synced
                ),
            );
        }
        if share(e.bursty) >= 0.5 {
            w.add(
                -1.5,
                false,
                format!(
                    "utilisation in bursts without a rhythm (request-driven) in {} of {} GPU-windows",
                    e.bursty, e.windows
                ),
            );
        }
        if share(e.steady) >= 0.5 {
            w.add(
                -0.8,
                false,
                format!("steady busy utilisation without a step rhythm in {} of {} GPU-windows", e.steady, e.windows),
            );
        }
        if share(e.memory_bound) >= 0.5 {
            w.add(
                -1.0,
                false,
                format!(
                    "memory bandwidth as busy as the SMs (token decoding) in {} of {} GPU-windows",
                    e.memory_bound, e.windows
                ),
            );
        }
    }
    let lockstep = e.hosts_in_lockstep();
    if lockstep >= 2 {
        w.add(0.8, false, format!("{lockstep} hosts in the same step rhythm"));
    }
    if e.lockstep_jobs >= 1 {
        w.add(0.8, false, format!("in lock-step with {} other job(s) of the tenant on one host", e.lockstep_jobs));
    }
    if let Some(first) = e.large_writes.first() {
        let more =
            if e.large_writes.len() > 1 { format!(" and {} more", e.large_writes.len() - 1) } else { String::new() };
        w.add(1.3, false, format!("holds large files open for writing ({first}{more}), whatever their names"));
        if e.large_write_versions.len() >= 2 {
            w.add(0.5, false, format!("rewritten {} times: a checkpoint cadence", e.large_write_versions.len()));
        }
    }
    // Below a billion parameters, activations and caches dominate memory whatever the work: a 335M
    // embedding model batching on a 16 GB slice holds 50 bytes per parameter without a gradient.
    if e.max_model_parameters >= 1_000_000_000 && e.max_process_memory > 0 {
        let per_param = e.max_process_memory as f64 / e.max_model_parameters as f64;
        if per_param >= 12.0 {
            w.add(
                0.6,
                false,
                format!("{per_param:.1} bytes of GPU memory per model parameter in one process: room for gradients and optimizer state"),
            );
        } else if per_param <= 3.0 {
            w.add(
                -0.3,
                false,
                format!("{per_param:.1} bytes of GPU memory per model parameter: weights and little else"),
            );
        }
    }
    // Names: what the tenant calls things.
    for (framework, kind) in &e.launchers {
        match kind.as_str() {
            "training" => w.add(0.6, true, format!("launched by {framework}, a training launcher")),
            "inference" => w.add(-0.6, true, format!("runs {framework}, an inference server")),
            _ => {}
        }
    }
    if let Some(c) = e.checkpoint_writes.first() {
        w.add(0.4, true, format!("writes files named like checkpoints ({c})"));
    }
    if e.max_world_size > 1 {
        w.add(0.2, true, format!("distributed environment (world size {})", e.max_world_size));
    }
    let names = w.names.clamp(-NAME_CAP, NAME_CAP);
    let score = w.behaviour + names;
    let mut reasons: Vec<String> = Vec::with_capacity(w.reasons.len() + 1);
    let mut tenant_controlled = Vec::with_capacity(w.reasons.len() + 1);
    for (r, t) in w.reasons {
        reasons.push(r);
        tenant_controlled.push(t);
    }
    if (names - w.names).abs() > f64::EPSILON {
        reasons.push(format!("names add {:+.1} together, capped at {names:+.1}", w.names));
        tenant_controlled.push(true);
    }
    if e.windows < MIN_WINDOWS {
        reasons.push(format!("{} GPU-windows of telemetry so far: behaviour is weighed from {MIN_WINDOWS}", e.windows));
        tenant_controlled.push(false);
    }
    let p = 1.0 / (1.0 + (-score).exp());
    let kind = if p >= 0.6 {
        "training"
    } else if p <= 0.4 {
        "inference"
    } else {
        "unknown"
    };
    Verdict {
        kind: kind.into(),
        confidence: (p.max(1.0 - p) * 100.0).round() / 100.0,
        reasons,
        tenant_controlled,
        score: (score * 100.0).round() / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(util: [u32; 4], period: (u32, u32), mem: u32, link: Option<[u32; 4]>) -> pb::GpuTelemetry {
        let s = |m: pb::Metric, v: [u32; 4], period: (u32, u32)| pb::SeriesStats {
            metric: m as i32,
            mean: v[0],
            min: v[1],
            max: v[2],
            stddev: v[3],
            period_ms: period.0,
            period_strength: period.1,
            history: 64,
        };
        let mut series = vec![s(pb::Metric::GpuUtil, util, period), s(pb::Metric::MemUtil, [mem, mem, mem, 0], (0, 0))];
        if let Some(l) = link {
            series.push(s(pb::Metric::NvlinkTx, l, period));
        }
        pb::GpuTelemetry { sample_ms: 1000, samples: 10, series, ..Default::default() }
    }

    #[test]
    fn windows_read_rhythm_bursts_and_bandwidth() {
        let train =
            window(&telemetry([700, 300, 980, 300], (4000, 800), 300, Some([2_000_000, 50_000, 9_000_000, 3_000_000])))
                .expect("util");
        assert_eq!((train.rhythm, train.synced, train.bursty, train.memory_bound), (Some(4000), true, false, false));
        // The same rhythm capped at 40%: still a rhythm.
        let capped = window(&telemetry([280, 120, 400, 120], (4000, 800), 120, None)).expect("util");
        assert_eq!((capped.rhythm, capped.synced), (Some(4000), false));
        let serve = window(&telemetry([300, 20, 990, 350], (3000, 200), 280, None)).expect("util");
        assert_eq!((serve.rhythm, serve.bursty, serve.memory_bound), (None, true, true));
        let batch = window(&telemetry([930, 880, 990, 40], (0, 0), 800, None)).expect("util");
        assert_eq!((batch.steady, batch.memory_bound, batch.rhythm), (true, true, None));
        assert!(window(&pb::GpuTelemetry::default()).is_none());
    }

    #[test]
    fn behaviour_outweighs_names() {
        let mut training = JobEvidence::default();
        let mut serving = JobEvidence::default();
        for _ in 0..6 {
            training.add_telemetry(
                "h1",
                [&telemetry([700, 300, 980, 300], (4000, 800), 300, Some([2_000_000, 50_000, 9_000_000, 3_000_000]))],
            );
            serving.add_telemetry("h2", [&telemetry([300, 20, 990, 350], (3000, 200), 280, None)]);
        }
        // The trainer calls itself a server; the server calls itself torchrun.
        training.launchers.insert("vllm".into(), "inference".into());
        serving.launchers.insert("torchrun".into(), "training".into());
        serving.checkpoint_writes.push("/ckpt/step-1.pt".into());
        serving.max_world_size = 8;
        let v = classify(&training);
        assert_eq!(v.kind, "training", "{v:?}");
        assert!(v.confidence >= 0.85, "{v:?}");
        assert_eq!(v.tenant_controlled.iter().filter(|t| **t).count(), 1, "{v:?}");
        let v = classify(&serving);
        assert_eq!(v.kind, "inference", "{v:?}");
        assert!(v.reasons.iter().any(|r| r.contains("request-driven")), "{v:?}");
        assert!(v.reasons.iter().any(|r| r.contains("capped")), "names together are capped: {v:?}");
    }

    #[test]
    fn names_alone_are_never_confident() {
        let mut e = JobEvidence::default();
        assert_eq!(classify(&e).kind, "unknown");
        e.launchers.insert("torchrun".into(), "training".into());
        e.launchers.insert("deepspeed".into(), "training".into());
        e.checkpoint_writes.push("/ckpt/step-100.safetensors".into());
        e.max_world_size = 64;
        let v = classify(&e);
        assert_eq!(v.kind, "training", "{v:?}");
        assert!(v.confidence < 0.8, "{v:?}");
        assert!(v.tenant_controlled.iter().all(|t| *t) || v.reasons.iter().any(|r| r.contains("GPU-windows")));
    }

    #[test]
    fn hostile_telemetry_is_weighed_without_panics() {
        let extreme = [u32::MAX, 0, u32::MAX, u32::MAX];
        let t = telemetry(extreme, (u32::MAX, u32::MAX), u32::MAX, Some(extreme));
        let w = window(&t).expect("util");
        assert!(w.rhythm.is_some() && !w.bursty);
        let mut e = JobEvidence::default();
        for _ in 0..1000 {
            e.add_telemetry("h", [&t, &telemetry([0; 4], (0, 0), 0, None), &pb::GpuTelemetry::default()]);
        }
        assert_eq!(e.windows, 2000, "a GPU without utilisation is not a window");
        assert!(same_rhythm(u32::MAX, u32::MAX - 1));
        let v = classify(&e);
        assert!(v.confidence.is_finite() && v.score.is_finite(), "{v:?}");
        // Unknown metrics and duplicated series are ignored, not trusted.
        let mut odd = t.clone();
        odd.series.push(pb::SeriesStats { metric: 99, ..Default::default() });
        assert_eq!(window(&odd), window(&t));
    }

    #[test]
    fn hosts_and_jobs_in_lockstep_count() {
        let mut e = JobEvidence::default();
        e.host_periods.insert("a".into(), 4000);
        e.host_periods.insert("b".into(), 4200);
        e.host_periods.insert("c".into(), 9000);
        assert_eq!(e.hosts_in_lockstep(), 2);
        assert!(same_rhythm(1000, 1100) && !same_rhythm(1000, 1300));
    }
}

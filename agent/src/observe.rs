//! One observation of the host: GPUs from the [`GpuSource`], who runs on them from `/proc`, other
//! accelerators from sysfs, and what changed since the previous observation.
//!
//! This is what `inspect --json` prints and what a report is made from. Hardware and OS come in from
//! outside (the GPU source, the proc and sys roots, the clock), so tests hand in prepared ones.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::accelerators::{self, Accelerator};
use crate::gpu::{GpuError, GpuObservation, GpuSource};
use crate::jobs;

/// Facts about the host itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostFacts {
    /// Hostname (or the configured override).
    pub hostname: String,
    /// `/etc/machine-id`, where readable.
    pub machine_id: String,
    /// Kernel release.
    pub kernel: String,
    /// This agent's version.
    pub agent_version: String,
}

pub use crate::models::Fingerprint as ModelFingerprint;

/// A model file that could not be fingerprinted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelError {
    /// The path as the process sees it.
    pub path: String,
    /// Why.
    pub error: String,
}

/// One process that uses at least one GPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessObservation {
    /// Host pid.
    pub pid: u32,
    /// UUIDs of the GPUs it runs on.
    pub gpu_uuids: Vec<String>,
    /// Command line, secrets redacted.
    pub cmdline: String,
    /// Container id, where the process runs in one.
    pub container_id: Option<String>,
    /// Kubernetes pod UID.
    pub pod_uid: Option<String>,
    /// Slurm job id.
    pub slurm_job_id: Option<String>,
    /// Model fingerprints of weight files it has open or mapped.
    pub models: Vec<ModelFingerprint>,
    /// Model files it has open that could not be fingerprinted, and why.
    pub model_errors: Vec<ModelError>,
    /// Real uid.
    pub uid: Option<u32>,
    /// Executable.
    pub exe: Option<String>,
    /// Start time (clock ticks since boot).
    pub start_time_ticks: Option<u64>,
    /// Everything the cgroup paths said.
    pub attribution: jobs::Attribution,
    /// The raw cgroup paths.
    pub cgroups: Vec<String>,
    /// Allow-listed environment variables; no other environment value leaves the host.
    pub env: std::collections::BTreeMap<String, String>,
    /// Launcher or inference server, distributed size and rank.
    pub launch: jobs::Launch,
    /// Checkpoint-like files open for writing.
    pub writing: Vec<String>,
    /// Large files open for writing, whatever their names.
    pub large_writes: Vec<jobs::OpenWrite>,
    /// User name.
    pub user: Option<String>,
    /// The pod, from the kubelet, when enrichment is on and the pod is known.
    pub pod: Option<crate::kubelet::PodInfo>,
}

/// Something that changed since the previous observation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// `gpu_appeared`, `gpu_disappeared`, `gpu_serial_changed`, `gpu_lost`.
    pub kind: String,
    /// The GPU concerned.
    pub gpu_uuid: String,
    /// Human-readable detail.
    pub detail: String,
}

/// One observation of the host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observation {
    /// When it was taken, Unix milliseconds.
    pub observed_at_unix_ms: i64,
    /// The host.
    pub host: HostFacts,
    /// `nvml` or `simulated`.
    pub gpu_source: String,
    /// NVIDIA driver version.
    pub driver_version: Option<String>,
    /// CUDA driver API version.
    pub cuda_driver_version: Option<String>,
    /// GPUs managed by NVML.
    pub gpus: Vec<GpuObservation>,
    /// Processes on those GPUs.
    pub processes: Vec<ProcessObservation>,
    /// Accelerators NVML does not manage.
    pub accelerators: Vec<Accelerator>,
    /// Changes since the previous observation.
    pub events: Vec<Event>,
    /// Confidential-computing state of the host's GPUs.
    pub confidential_compute: crate::gpu::ConfCompute,
    /// GPU attestation reports bound to the collector's latest nonce (made once per new nonce).
    pub attestations: Vec<crate::gpu::Attestation>,
}

/// Where the observer reads the host from.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// `/proc` or a prepared tree.
    pub proc_root: PathBuf,
    /// `/sys` or a prepared tree.
    pub sys_root: PathBuf,
    /// Overrides the hostname read from `proc_root` (several simulated hosts on one machine).
    pub hostname: Option<String>,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths { proc_root: PathBuf::from("/proc"), sys_root: PathBuf::from("/sys"), hostname: None }
    }
}

/// A process's open and mapped files (models, checkpoints being written) are re-scanned when its number
/// of open descriptors changes, and at least every this many observations (mapped files can change
/// without it).
pub const RESCAN_EVERY: u64 = 30;
/// Its command line, cgroups, owner and environment (fixed at exec, or rarely changed) are re-read
/// every this many observations.
pub const REREAD_FACTS_EVERY: u64 = 90;
/// Most processes kept in the cache (each holds two descriptors into /proc).
pub const MAX_CACHED_PROCESSES: usize = 4096;

struct CachedProcess {
    facts: jobs::ProcessFacts,
    models: Vec<ModelFingerprint>,
    model_errors: Vec<ModelError>,
    facts_at: u64,
    models_at: u64,
    /// `/proc/<pid>/stat`, held open: reads fail once this process is gone.
    stat: std::fs::File,
    /// `/proc/<pid>/fd`, held open: its size is the number of open descriptors.
    fd_dir: Option<std::fs::File>,
    fd_count: Option<u64>,
}

/// Takes observations and remembers the previous GPU set for change detection.
pub struct Observer {
    /// Observations taken so far.
    observations: u64,
    /// Processes read recently, by pid.
    processes: std::collections::HashMap<u32, CachedProcess>,
    /// Host facts and non-NVML accelerators, when read, and for which NVML bus ids.
    host_cache: Option<(HostFacts, Vec<Accelerator>, u64, Vec<String>)>,
    gpus: Box<dyn GpuSource>,
    paths: HostPaths,
    /// Fingerprints by file identity.
    models: crate::models::Cache,
    /// uuid -> (index, serial) of the previous observation; `None` before the first.
    previous: Option<BTreeMap<String, (u32, String)>>,
    /// Kubernetes enrichment (the kubelet's pod list), when configured.
    pods: Option<Box<dyn crate::kubelet::PodDirectory>>,
    /// The nonce the GPUs last attested to.
    attested_nonce: Option<[u8; 32]>,
    /// The 1 Hz counters since the last observation.
    sampler: crate::telemetry::Sampler,
    /// GPUs in confidential-computing mode at the latest observation (they answer GPU-bound
    /// landmark challenges); `None` before the first observation.
    attesting: Option<Vec<String>>,
}

fn read_trimmed(path: &std::path::Path) -> String {
    jobs::read_bounded(path, 4096).map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default()
}

impl Observer {
    /// An observer over a GPU source and host paths.
    pub fn new(gpus: Box<dyn GpuSource>, paths: HostPaths) -> Self {
        Observer {
            observations: 0,
            processes: std::collections::HashMap::new(),
            host_cache: None,
            gpus,
            paths,
            models: crate::models::Cache::default(),
            previous: None,
            pods: None,
            attested_nonce: None,
            sampler: crate::telemetry::Sampler::new(1000),
            attesting: None,
        }
    }

    /// GPUs in confidential-computing mode at the latest observation; `None` before the first.
    pub fn attesting_gpus(&self) -> Option<Vec<String>> {
        self.attesting.clone()
    }

    /// One GPU's attestation report over `nonce` (a landmark's GPU-bound challenge).
    pub fn attest_gpu(&mut self, uuid: &str, nonce: &[u8; 32]) -> Option<crate::gpu::Attestation> {
        self.gpus.attest_one(uuid, nonce)
    }

    /// Sets the interval [`Observer::sample`] is called at (1 s by default), for the periods it reports.
    #[must_use]
    pub fn with_sample_interval(mut self, interval: std::time::Duration) -> Self {
        self.sampler = crate::telemetry::Sampler::new(interval.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        self
    }

    /// Samples the GPUs' fast-moving counters at `now_unix_ms`; the next observation carries their
    /// statistics.
    pub fn sample(&mut self, now_unix_ms: i64) {
        let samples = self.gpus.sample();
        self.sampler.record(now_unix_ms, &samples);
    }

    /// Adds Kubernetes enrichment: processes with a pod UID get the pod's namespace, name, labels,
    /// service account and owner.
    #[must_use]
    pub fn with_pods(mut self, pods: Box<dyn crate::kubelet::PodDirectory>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Facts about the host.
    pub fn host_facts(&self) -> HostFacts {
        HostFacts {
            hostname: self
                .paths
                .hostname
                .clone()
                .unwrap_or_else(|| read_trimmed(&self.paths.proc_root.join("sys/kernel/hostname"))),
            machine_id: read_trimmed(std::path::Path::new("/etc/machine-id")),
            kernel: read_trimmed(&self.paths.proc_root.join("sys/kernel/osrelease")),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Takes one observation at `now_unix_ms`.
    ///
    /// # Errors
    /// Only when the GPU source cannot list GPUs at all; per-GPU and per-process failures are recorded
    /// in the observation instead.
    pub fn observe(&mut self, now_unix_ms: i64) -> Result<Observation, GpuError> {
        self.observe_with(now_unix_ms, None)
    }

    /// Takes one observation; when `nonce` is new and the GPUs are in confidential-computing mode, it
    /// carries their attestation reports bound to it.
    ///
    /// # Errors
    /// As [`Observer::observe`].
    pub fn observe_with(&mut self, now_unix_ms: i64, nonce: Option<[u8; 32]>) -> Result<Observation, GpuError> {
        let mut snapshot = self.gpus.observe()?;
        let events = self.changes(&mut snapshot.gpus);
        let mut telemetry = self.sampler.take();
        for g in &mut snapshot.gpus {
            g.telemetry = telemetry.remove(&g.uuid);
        }
        let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for g in &snapshot.gpus {
            for p in &g.processes {
                by_pid.entry(p.pid).or_default().push(g.uuid.clone());
            }
        }
        self.observations += 1;
        let mut seen = Vec::with_capacity(by_pid.len());
        let mut processes = Vec::with_capacity(by_pid.len());
        for (pid, gpu_uuids) in by_pid {
            let (facts, models, model_errors) = self.process(pid);
            seen.push(pid);
            let f = facts;
            let pod = match (&mut self.pods, &f.attribution.pod_uid) {
                (Some(dir), Some(uid)) => dir.pod(uid),
                _ => None,
            };
            processes.push(ProcessObservation {
                pod,
                pid,
                gpu_uuids,
                cmdline: f.cmdline,
                container_id: f.attribution.container_id.clone(),
                pod_uid: f.attribution.pod_uid.clone(),
                slurm_job_id: f.attribution.slurm_job_id.clone(),
                models,
                model_errors,
                uid: f.uid,
                exe: f.exe,
                start_time_ticks: f.start_time_ticks,
                attribution: f.attribution,
                cgroups: f.cgroups,
                env: f.env,
                launch: f.launch,
                writing: f.writing,
                large_writes: f.large_writes,
                user: f.user,
            });
        }
        self.processes.retain(|pid, _| seen.contains(pid));
        // The PCI bus and the host's names change rarely; a sysfs walk reads hundreds of files.
        let managed: Vec<String> = snapshot.gpus.iter().map(|g| g.pci_bus_id.clone()).collect();
        if self.host_cache.as_ref().is_none_or(|(_, _, at, m)| self.observations - at >= RESCAN_EVERY || *m != managed)
        {
            let acc = accelerators::scan(&self.paths.sys_root, &managed);
            self.host_cache = Some((self.host_facts(), acc, self.observations, managed));
        }
        let (host, accelerators) = match &self.host_cache {
            Some((h, a, _, _)) => (h.clone(), a.clone()),
            None => (self.host_facts(), Vec::new()),
        };
        self.attesting = Some(if snapshot.confidential_compute.enabled == Some(true) {
            snapshot.gpus.iter().filter(|g| !g.lost && !g.uuid.is_empty()).map(|g| g.uuid.clone()).collect()
        } else {
            Vec::new()
        });
        let attestations = match nonce {
            Some(n) if snapshot.confidential_compute.enabled == Some(true) && self.attested_nonce != Some(n) => {
                self.attested_nonce = Some(n);
                self.gpus.attest(&n)
            }
            _ => Vec::new(),
        };
        Ok(Observation {
            observed_at_unix_ms: now_unix_ms,
            host,
            gpu_source: snapshot.source,
            driver_version: snapshot.driver_version,
            cuda_driver_version: snapshot.cuda_driver_version,
            gpus: snapshot.gpus,
            processes,
            accelerators,
            events,
            confidential_compute: snapshot.confidential_compute,
            attestations,
        })
    }

    /// What `/proc` says about `pid`, from the cache when the same process (pid and start time) was read
    /// within the last [`RESCAN_EVERY`] observations: one small read per process per observation
    /// instead of a dozen files and a descriptor walk.
    fn process(&mut self, pid: u32) -> (jobs::ProcessFacts, Vec<ModelFingerprint>, Vec<ModelError>) {
        use std::os::unix::fs::FileExt;
        let now = self.observations;
        let dir = self.paths.proc_root.join(pid.to_string());
        // A held /proc/<pid>/stat refers to one task for good: once that process is gone, reads fail,
        // even if the pid has been reused. That is the PID-reuse guard, at one pread per observation.
        let cached = self.processes.remove(&pid).filter(|c| c.stat.read_at(&mut [0u8; 1], 0).is_ok());
        if let Some(mut c) = cached {
            let fd_count = c.fd_dir.as_ref().and_then(|d| d.metadata().ok()).map(|m| m.len());
            let models_fresh = now - c.models_at < RESCAN_EVERY && fd_count == c.fd_count;
            // An empty command line is a process caught mid-exec: read it again rather than keep it.
            if now - c.facts_at >= REREAD_FACTS_EVERY || c.facts.cmdline.is_empty() {
                let fresh = jobs::read_process(&self.paths.proc_root, pid);
                if fresh.start_time_ticks == c.facts.start_time_ticks {
                    c.facts = fresh;
                    c.facts_at = now;
                }
            }
            if !models_fresh {
                let (m, e) = self.models_of(pid);
                c.models = m;
                c.model_errors = e;
                c.models_at = now;
                c.fd_count = fd_count;
                (c.facts.writing, c.facts.large_writes) = jobs::open_for_writing(&dir);
            } else if !c.facts.large_writes.is_empty() {
                // Checkpoints grow and are rewritten between rescans: their size and time are news.
                jobs::refresh_large_writes(&dir, &mut c.facts.large_writes);
            }
            // Still the same process after the reads?
            if c.stat.read_at(&mut [0u8; 1], 0).is_ok() {
                let out = (c.facts.clone(), c.models.clone(), c.model_errors.clone());
                self.processes.insert(pid, c);
                return out;
            }
            return (jobs::ProcessFacts { pid, ..Default::default() }, Vec::new(), Vec::new());
        }
        let stat = std::fs::File::open(dir.join("stat"));
        let facts = jobs::read_process(&self.paths.proc_root, pid);
        let (models, model_errors) = self.models_of(pid);
        // The held stat file must name the process just read (same start time), or nothing stands.
        let held_start = stat.as_ref().ok().and_then(|f| {
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, 0).ok()?;
            jobs::parse_stat_start_time(&String::from_utf8_lossy(&buf[..n]))
        });
        let (Ok(stat), Some(start)) = (stat, held_start) else {
            return (jobs::ProcessFacts { pid, ..Default::default() }, Vec::new(), Vec::new());
        };
        if facts.start_time_ticks != Some(start) {
            return (jobs::ProcessFacts { pid, ..Default::default() }, Vec::new(), Vec::new());
        }
        let fd_dir = std::fs::File::open(dir.join("fd")).ok();
        let fd_count = fd_dir.as_ref().and_then(|d| d.metadata().ok()).map(|m| m.len());
        if self.processes.len() < MAX_CACHED_PROCESSES {
            self.processes.insert(
                pid,
                CachedProcess {
                    facts: facts.clone(),
                    models: models.clone(),
                    model_errors: model_errors.clone(),
                    facts_at: now,
                    models_at: now,
                    stat,
                    fd_dir,
                    fd_count,
                },
            );
        }
        (facts, models, model_errors)
    }

    /// Fingerprints of the model files `pid` has open or mapped.
    fn models_of(&mut self, pid: u32) -> (Vec<ModelFingerprint>, Vec<ModelError>) {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for c in crate::models::discover(&self.paths.proc_root, pid) {
            match self.models.fingerprint(&c) {
                Ok(fp) => ok.push(fp),
                Err(crate::models::ModelError::Unknown) => {}
                Err(e) => errors.push(ModelError { path: c.shown, error: e.to_string() }),
            }
        }
        (ok, errors)
    }

    /// Compares with the previous observation. A lost GPU whose identity can no longer be read gets
    /// the UUID and serial it had at the same index last time, so the evidence names the chip.
    fn changes(&mut self, gpus: &mut [GpuObservation]) -> Vec<Event> {
        if let Some(prev) = &self.previous {
            for g in gpus.iter_mut().filter(|g| g.lost && g.uuid.is_empty()) {
                if let Some((uuid, (_, serial))) = prev.iter().find(|(_, (i, _))| *i == g.index) {
                    g.uuid = uuid.clone();
                    g.serial = serial.clone();
                }
            }
        }
        let now: BTreeMap<String, (u32, String)> =
            gpus.iter().filter(|g| !g.uuid.is_empty()).map(|g| (g.uuid.clone(), (g.index, g.serial.clone()))).collect();
        let mut events: Vec<Event> = gpus
            .iter()
            .filter(|g| g.lost)
            .map(|g| Event {
                kind: "gpu_lost".into(),
                gpu_uuid: g.uuid.clone(),
                detail: format!("GPU index {} cannot be read (fallen off the bus?)", g.index),
            })
            .collect();
        if let Some(prev) = &self.previous {
            for (uuid, (_, serial)) in &now {
                match prev.get(uuid) {
                    None => events.push(Event {
                        kind: "gpu_appeared".into(),
                        gpu_uuid: uuid.clone(),
                        detail: format!("serial {serial}"),
                    }),
                    Some((_, old)) if old != serial && !serial.is_empty() => events.push(Event {
                        kind: "gpu_serial_changed".into(),
                        gpu_uuid: uuid.clone(),
                        detail: format!("serial {old} -> {serial}"),
                    }),
                    Some(_) => {}
                }
            }
            for (uuid, (_, serial)) in prev {
                if !now.contains_key(uuid) {
                    events.push(Event {
                        kind: "gpu_disappeared".into(),
                        gpu_uuid: uuid.clone(),
                        detail: format!("serial {serial}"),
                    });
                }
            }
        }
        self.previous = Some(now);
        events
    }
}

/// A human-readable rendering of an observation (what `inspect` prints without `--json`).
pub fn render_text(obs: &Observation) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "host {} (kernel {}), GPU source {}, driver {}",
        obs.host.hostname,
        obs.host.kernel,
        obs.gpu_source,
        obs.driver_version.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "\n{:<4} {:<42} {:<14} {:<18} {:<24} {:>6} {:>5}",
        "IDX", "UUID", "SERIAL", "PCI", "NAME", "UTIL%", "PROCS"
    );
    for g in &obs.gpus {
        let util = g.utilization_gpu_pct.map_or("-".to_string(), |u| u.to_string());
        let name = if g.lost { "(lost)" } else { g.name.as_str() };
        let _ = writeln!(
            s,
            "{:<4} {:<42} {:<14} {:<18} {:<24} {:>6} {:>5}",
            g.index,
            g.uuid,
            g.serial,
            g.pci_bus_id,
            name,
            util,
            g.processes.len()
        );
    }
    let _ = writeln!(s, "\nprocesses: {}", obs.processes.len());
    for p in &obs.processes {
        let job = p
            .slurm_job_id
            .as_ref()
            .map(|j| format!("slurm job {j}"))
            .or_else(|| p.pod.as_ref().map(|k| format!("pod {}/{}", k.namespace, k.name)))
            .or_else(|| p.pod_uid.as_ref().map(|u| format!("pod {u}")))
            .or_else(|| p.container_id.as_ref().map(|c| format!("container {}", &c[..c.len().min(12)])))
            .unwrap_or_else(|| "no job".into());
        let _ = writeln!(s, "  pid {:<8} {:<28} gpus {}  {}", p.pid, job, p.gpu_uuids.len(), p.cmdline);
    }
    let _ = writeln!(s, "\nother accelerators: {}", obs.accelerators.len());
    for a in &obs.accelerators {
        let _ = writeln!(s, "  {} {} {} ({:04x}:{:04x})", a.pci_address, a.vendor, a.product, a.vendor_id, a.device_id);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{GpuProcessUsage, GpuSnapshot};

    struct Fixed(Vec<GpuSnapshot>);
    impl GpuSource for Fixed {
        fn observe(&mut self) -> Result<GpuSnapshot, GpuError> {
            Ok(if self.0.len() > 1 { self.0.remove(0) } else { self.0[0].clone() })
        }
    }

    fn gpu(i: u32, uuid: &str, serial: &str, pids: &[u32]) -> GpuObservation {
        GpuObservation {
            index: i,
            uuid: uuid.into(),
            serial: serial.into(),
            processes: pids.iter().map(|&pid| GpuProcessUsage { pid, used_memory_bytes: 1, mps: false }).collect(),
            ..Default::default()
        }
    }

    fn snap(gpus: Vec<GpuObservation>) -> GpuSnapshot {
        GpuSnapshot {
            source: "test".into(),
            driver_version: None,
            cuda_driver_version: None,
            gpus,
            ..Default::default()
        }
    }

    #[test]
    fn processes_are_grouped_across_gpus() {
        let me = std::process::id();
        let src = Fixed(vec![snap(vec![gpu(0, "GPU-a", "1", &[me]), gpu(1, "GPU-b", "2", &[me, 999_999_999])])]);
        let mut o = Observer::new(Box::new(src), HostPaths::default());
        let obs = o.observe(1).expect("observe");
        assert_eq!(obs.processes.len(), 2);
        let mine = obs.processes.iter().find(|p| p.pid == me).expect("me");
        assert_eq!(mine.gpu_uuids, vec!["GPU-a".to_string(), "GPU-b".to_string()]);
        assert!(!mine.cmdline.is_empty());
        assert!(obs.events.is_empty());
    }

    #[test]
    fn cached_processes_are_dropped_when_they_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        let src = Fixed(vec![snap(vec![gpu(0, "GPU-a", "1", &[pid])])]);
        let mut o = Observer::new(Box::new(src), HostPaths::default());
        // Right after exec the kernel may not show the new command line yet.
        for _ in 0..200 {
            if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(o.observe(1).expect("first").processes[0].cmdline, "sleep 30");
        assert_eq!(o.observe(2).expect("cached").processes[0].cmdline, "sleep 30");
        let _ = child.kill();
        let _ = child.wait();
        // The pid is gone (and could be reused): nothing cached about it may be reported.
        let p = &o.observe(3).expect("after exit").processes[0];
        assert_eq!((p.cmdline.as_str(), p.start_time_ticks), ("", None));
    }

    #[test]
    fn gpu_changes_become_events() {
        let src = Fixed(vec![
            snap(vec![gpu(0, "GPU-a", "1", &[]), gpu(1, "GPU-b", "2", &[])]),
            snap(vec![gpu(0, "GPU-a", "9", &[]), gpu(1, "GPU-c", "3", &[])]),
        ]);
        let mut o = Observer::new(Box::new(src), HostPaths::default());
        assert!(o.observe(1).expect("first").events.is_empty());
        let kinds: Vec<(String, String)> =
            o.observe(2).expect("second").events.into_iter().map(|e| (e.kind, e.gpu_uuid)).collect();
        assert!(kinds.contains(&("gpu_serial_changed".into(), "GPU-a".into())));
        assert!(kinds.contains(&("gpu_appeared".into(), "GPU-c".into())));
        assert!(kinds.contains(&("gpu_disappeared".into(), "GPU-b".into())));
    }
}

//! Job and GPU accounting inside a commit: each stored report adds its window's GPU time, energy and
//! estimated operations to the jobs its processes belong to (across hosts), extends their
//! training/inference evidence, and records where each GPU was seen ([`super::sightings`]), so a GPU
//! that appears on a second host is noticed in the same transaction that stores the report.
//!
//! What changes with every report is written as commutative additions to the `job_usage` rows the
//! report updates anyway (time, energy, operations, the evidence's counters); a job's own row and a
//! GPU's location row are written when something slower changes, or once a minute.
//!
//! A group of reports committed together is accounted as one: what the group touches is read once
//! ([`Accounting::load`]: the GPUs' locations, the jobs' rows, locked on PostgreSQL, and their usage
//! sums), each report is applied in memory in commit order ([`Accounting::apply`], so the totals each
//! report hands the policy are those after it), and the result is written once
//! ([`Accounting::write`]: a few multi-row statements for the whole group, not per report).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use gpuattest_proto::pb;

use super::db::{Db, params};
use super::generations::Generations;
use super::jobs::{JobReport, MovedGpu, UsageSums, parsed_evidence, remember_evidence, usage_sums};
use super::sightings::{GpuAt, SIGHTING_REFRESH_MS, Sightings, json_list};
use super::{Result, sql};
use crate::classify::EvidenceCounters;
use crate::compute::{JobEvidence, JobSummary, peak_for};

/// Longest report window counted (a bogus window cannot add more than this much time).
const MAX_WINDOW_SECONDS: f64 = 3600.0;

/// Which GPU (by its UUID or one of its MIG instances' UUIDs) each process UUID refers to.
fn parent_gpu(r: &pb::UsageReport) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for (i, g) in r.gpus.iter().enumerate() {
        m.insert(g.uuid.as_str(), i);
        for d in &g.mig_devices {
            m.insert(d.uuid.as_str(), i);
        }
    }
    m
}

/// One job's usage of one GPU on one host, summed over the group's reports.
struct UsageRow {
    name: String,
    first_seen: i64,
    last_seen: i64,
    seconds: f64,
    energy: f64,
    ops: f64,
    unknown: f64,
    first_seq: u64,
    last_seq: u64,
    /// The evidence counters of its job that the group's reports added (see [`EvidenceCounters`]).
    counters: EvidenceCounters,
}

/// A job's row, as stored and then as the group extends it.
#[derive(Clone)]
struct JobRow {
    tenant: Option<String>,
    first_seen: i64,
    /// Exact: the stored row's, or its usage's last sighting where later, or the group's.
    last_seen: i64,
    /// Complete: counters included.
    evidence: JobEvidence,
    /// The counters `jobs.evidence` itself carries (those from before migration 11; any that found no
    /// usage row): the rest are summed from `job_usage`.
    row_counters: EvidenceCounters,
    /// What the stored row holds: its evidence as written and its `last_seen`; `None` for a new row.
    stored: Option<(JobEvidence, i64)>,
}

/// A job the group touches.
#[derive(Default, Clone)]
struct JobState {
    /// Its row; `None` while the store has none (SQLite; PostgreSQL creates it before locking it).
    row: Option<JobRow>,
    /// Its usage summed over hosts and GPUs, stored plus the group's.
    sums: UsageSums,
    /// GPU UUIDs with usage of the job, stored or added by the group: its GPU count grows when one is
    /// new. All of them where the job came from or goes to [`Running`]; else those of the group's GPUs.
    uuids: HashSet<String>,
    /// The group extended its evidence (a row of another tenant is never written).
    extended: bool,
}

/// The running state of a group of reports' accounting: read once, applied in memory, written once.
pub(super) struct Accounting {
    /// Where the group's GPUs are, and its hosts' energy counters.
    gpus: Sightings,
    jobs: BTreeMap<String, JobState>,
    usage: BTreeMap<(String, String, String), UsageRow>,
    /// Loaded without [`Running`] (PostgreSQL, or the savepoint path): the evidence written is also
    /// kept in the thread's text cache for the next group's read. With [`Running`], that holds the
    /// parsed evidence already, and a second copy would be work for nothing.
    cache_text: bool,
}

/// The embedded store's accounting state as its writer last committed it: GPU locations, job rows,
/// usage sums and each job's GPUs, so a group reads from the database only what no group before it
/// touched. It holds while nothing else wrote: the commit compares SQLite's `data_version` (another
/// connection committed) and the store's write generation (this connection was taken for anything but
/// a commit) with the stamp the last commit left, and starts empty when either moved. Bounded by
/// [`Generations`]: what no group used for a generation is dropped and read again when needed. Not kept
/// on PostgreSQL, where other replicas write the same rows.
pub(super) struct Running {
    stamp: Option<(i64, u64)>,
    gpus: Generations<GpuAt>,
    jobs: Generations<JobState>,
}

impl Default for Running {
    fn default() -> Running {
        Running { stamp: None, gpus: Generations::new(RUNNING_GPUS), jobs: Generations::new(RUNNING_JOBS) }
    }
}

/// GPUs per generation of [`Running`] (eight per host for 32,768 hosts).
const RUNNING_GPUS: usize = 262_144;
/// Jobs per generation of [`Running`], evidence included (four per host for 16,384 hosts). A map emptied
/// whole at a cap of 16,384 made 10,000 hosts with four jobs each read every job back every few seconds
/// (ack p99 0.3-1.2 s at 1,000 reports/s instead of 41-52 ms); with generations, only jobs idle for a
/// generation are read again.
const RUNNING_JOBS: usize = 65_536;

/// Job keys a replica has seen committed with a row (PostgreSQL). Jobs are never deleted, so a known
/// job's row needs no create before the group locks it: the create of a committed row is a no-op that
/// still cost a statement per group (6% of the database's time per report). A key created by a
/// transaction still open elsewhere is never known here, so creates wait on each other exactly as
/// before. Bounded by [`Generations`].
pub(super) struct KnownJobs(Generations<()>);

impl Default for KnownJobs {
    fn default() -> KnownJobs {
        KnownJobs(Generations::new(KNOWN_JOBS))
    }
}

/// Job keys per generation of [`KnownJobs`].
const KNOWN_JOBS: usize = 262_144;

impl KnownJobs {
    /// Takes in the jobs with a row in a group just committed.
    pub(super) fn absorb(&mut self, acc: &Accounting) {
        for (key, _) in acc.jobs.iter().filter(|(_, j)| j.row.is_some()) {
            self.0.put(key.clone(), ());
        }
    }
}

impl Running {
    /// Whether the state still matches the database, given this transaction's stamp; empties it if not.
    pub(super) fn check(&mut self, stamp: (i64, u64)) {
        if self.stamp != Some(stamp) {
            self.forget();
        }
    }

    /// Empties it: the next group reads everything from the database.
    pub(super) fn forget(&mut self) {
        self.stamp = None;
        self.gpus.clear();
        self.jobs.clear();
    }

    /// Takes in what a group committed, under the stamp its transaction read.
    pub(super) fn absorb(&mut self, acc: Accounting, stamp: (i64, u64)) {
        for (uuid, at) in acc.gpus.committed() {
            self.gpus.put(uuid, at);
        }
        for (key, mut j) in acc.jobs {
            j.extended = false;
            self.jobs.put(key, j);
        }
        self.stamp = Some(stamp);
    }
}

impl Accounting {
    /// Reads what `reports` touch, in three queries whatever their number: their GPUs' locations, their
    /// jobs' rows (on PostgreSQL created where new and locked, in key order, so two replicas committing
    /// one multi-host job's reports take turns and the later extends the earlier's evidence), and the
    /// jobs' usage sums with which of the group's GPUs each job has used before.
    ///
    /// With `running` (the embedded store), what it holds is taken from it instead, and each job read
    /// from the database comes with all its GPUs, so it can join the running state after the commit.
    pub(super) fn load(
        tx: &mut Db,
        reports: &[JobReport<'_>],
        counters: &HashMap<&str, Option<&str>>,
        mut running: Option<&mut Running>,
        known: Option<&KnownJobs>,
    ) -> Result<Accounting> {
        let mut acc = Accounting {
            gpus: Sightings::new(counters),
            jobs: BTreeMap::new(),
            usage: BTreeMap::new(),
            cache_text: running.is_none(),
        };
        let mut uuids: BTreeSet<&String> = reports.iter().flat_map(|r| r.report.gpus.iter().map(|g| &g.uuid)).collect();
        // Each job's tenant and the time of its first report in the group (for a row created now).
        let mut keys: BTreeMap<String, (Option<String>, i64)> = BTreeMap::new();
        for r in reports {
            for (key, tenant) in r.process_jobs() {
                keys.entry(key).or_insert((tenant, r.at()));
            }
        }
        let group_uuids = json_list(uuids.iter().copied());
        if let Some(run) = running.as_deref_mut() {
            // Taken out, and put back by `absorb` after the commit: a group that fails leaves them to be
            // read from the database again.
            uuids.retain(|u| match run.gpus.take(u) {
                Some(g) => {
                    acc.gpus.gpus.insert((*u).clone(), g);
                    false
                }
                None => true,
            });
            keys.retain(|k, _| match run.jobs.take(k) {
                Some(j) => {
                    acc.jobs.insert(k.clone(), j);
                    false
                }
                None => true,
            });
        }
        let pg = tx.is_postgres();
        acc.gpus.read(tx, &uuids)?;
        if keys.is_empty() {
            return Ok(acc);
        }
        let keys_json = json_list(keys.keys());
        if pg {
            // A job new to the store gets its row first (nothing if it exists), so the lock below covers
            // it too. Sent with the read; not for jobs known to have a row.
            let mut ps = Vec::with_capacity(5 * keys.len());
            for (key, (tenant, at)) in keys.iter().filter(|(k, _)| !known.is_some_and(|n| n.0.contains(k))) {
                ps.extend_from_slice(params![key, tenant.as_deref(), *at, *at, "{}"]);
            }
            tx.defer_values(
                "INSERT INTO jobs (job_key, tenant, first_seen, last_seen, evidence) VALUES ",
                5,
                " ON CONFLICT (job_key) DO NOTHING",
                &ps,
            )
            .map_err(sql("create jobs"))?;
        }
        // The jobs primary key.
        let jobs_sql = if pg {
            concat!(
                "SELECT job_key, evidence, tenant, first_seen, last_seen FROM jobs WHERE job_key",
                keys_in!(pg),
                " ORDER BY job_key FOR UPDATE"
            )
        } else {
            concat!("SELECT job_key, evidence, tenant, first_seen, last_seen FROM jobs WHERE job_key", keys_in!(sqlite))
        };
        let rows = tx
            .rows(jobs_sql, params![&keys_json], |row| {
                let key: String = row.get(0)?;
                let evidence: String = row.get(1)?;
                Ok((key, evidence, row.get(2)?, row.get(3)?, row.get(4)?))
            })
            .map_err(sql("read jobs"))?;
        for (key, text, tenant, first_seen, last_seen) in rows {
            let evidence = parsed_evidence(&key, &text);
            acc.jobs.entry(key).or_default().row = Some(JobRow {
                tenant,
                first_seen,
                last_seen,
                row_counters: evidence.counters(),
                stored: Some((evidence.clone(), last_seen)),
                evidence,
            });
        }
        // With `running`, each job read from the database comes with all its GPUs (to join the
        // running state after the commit); else with those of the group's GPUs it has used.
        let gpus_filter = if running.is_some() { None } else { Some(group_uuids.as_str()) };
        for (key, (sums, gpus)) in usage_sums(tx, &keys_json, gpus_filter)? {
            let job = acc.jobs.entry(key).or_default();
            if let Some(row) = &mut job.row {
                row.evidence = sums.complete(std::mem::take(&mut row.evidence));
                row.last_seen = row.last_seen.max(sums.last_seen.unwrap_or(i64::MIN));
            }
            job.sums = sums;
            job.uuids.extend(gpus);
        }
        Ok(acc)
    }

    /// Applies one report (loaded with [`Accounting::load`]) in memory: the totals after it of the jobs
    /// it touched (by key) and its GPUs last seen on another host.
    pub(super) fn apply(&mut self, jr: &JobReport<'_>) -> (Vec<JobSummary>, Vec<MovedGpu>) {
        let (host_id, r) = (jr.host_id, jr.report);
        let at = jr.at();
        let dt = ((r.window_end_unix_ms - r.window_start_unix_ms) as f64 / 1000.0).clamp(0.0, MAX_WINDOW_SECONDS);
        let parents = parent_gpu(r);
        let (energy, moved) = self.gpus.locate(host_id, r, at, dt);

        // Jobs per GPU, so a shared GPU's time and energy are split between the jobs on it.
        let mut jobs_on_gpu: Vec<BTreeSet<String>> = vec![BTreeSet::new(); r.gpus.len()];
        let mut job_processes: BTreeMap<String, Vec<&pb::GpuProcess>> = BTreeMap::new();
        let mut job_tenant: BTreeMap<String, Option<String>> = BTreeMap::new();
        for ((key, t), p) in jr.process_jobs().into_iter().zip(&r.processes) {
            job_tenant.entry(key.clone()).or_insert(t);
            for u in &p.gpu_uuids {
                if let Some(&i) = parents.get(u.as_str()) {
                    jobs_on_gpu[i].insert(key.clone());
                }
            }
            job_processes.entry(key).or_default().push(p);
        }
        // Usage per (job, GPU UUID), summed where a report repeats a UUID.
        for (i, g) in r.gpus.iter().enumerate() {
            let n = jobs_on_gpu[i].len();
            if n == 0 {
                continue;
            }
            let share = 1.0 / n as f64;
            // Unknown utilisation counts as fully busy: an upper bound must not under-count.
            let util = f64::from(g.utilization_gpu_pct.unwrap_or(100).min(100)) / 100.0;
            let (ops, unknown) = match peak_for(&g.name) {
                Some(p) => (p.bf16_dense_tflops * 1e12 * util * dt * share, 0.0),
                None => (0.0, dt * share),
            };
            let (seconds, joules) = (dt * share, energy[i] * share);
            for key in &jobs_on_gpu[i] {
                let u = self.usage.entry((key.clone(), host_id.to_string(), g.uuid.clone())).or_insert(UsageRow {
                    name: String::new(),
                    first_seen: at,
                    last_seen: at,
                    seconds: 0.0,
                    energy: 0.0,
                    ops: 0.0,
                    unknown: 0.0,
                    first_seq: r.seq,
                    last_seq: r.seq,
                    counters: EvidenceCounters::default(),
                });
                u.name.clone_from(&g.name);
                (u.first_seen, u.last_seen) = (u.first_seen.min(at), u.last_seen.max(at));
                (u.first_seq, u.last_seq) = (u.first_seq.min(r.seq), u.last_seq.max(r.seq));
                u.seconds += seconds;
                u.energy += joules;
                u.ops += ops;
                u.unknown += unknown;
                let job = self.jobs.entry(key.clone()).or_default();
                if !job.uuids.contains(&g.uuid) {
                    job.uuids.insert(g.uuid.clone());
                    job.sums.gpus += 1;
                }
                job.sums.gpu_seconds += seconds;
                job.sums.energy += joules;
                job.sums.ops += ops;
                job.sums.unknown += unknown;
            }
        }

        // Evidence, extended in memory; a job whose stored tenant is another (two keys collided) is left
        // as it is.
        // Each job's step period on this host, to find jobs of one tenant in lock-step.
        let mut rhythms: Vec<(String, Option<String>, u32)> = Vec::new();
        for (key, procs) in &job_processes {
            let tenant = job_tenant.get(key).cloned().flatten();
            let job = self.jobs.entry(key.clone()).or_default();
            let row = job.row.get_or_insert_with(|| JobRow {
                tenant: tenant.clone(),
                first_seen: at,
                last_seen: at,
                evidence: JobEvidence::default(),
                row_counters: EvidenceCounters::default(),
                stored: None,
            });
            if row.tenant != tenant {
                continue;
            }
            row.last_seen = row.last_seen.max(at);
            job.extended = true;
            let counted = row.evidence.counters();
            let ev = &mut row.evidence;
            let gpus: BTreeSet<usize> = procs
                .iter()
                .flat_map(|p| p.gpu_uuids.iter())
                .filter_map(|u| parents.get(u.as_str()).copied())
                .collect();
            if let Some(period) = ev.add_telemetry(host_id, gpus.iter().filter_map(|&i| r.gpus[i].telemetry.as_ref())) {
                rhythms.push((key.clone(), tenant, period));
            }
            for p in procs {
                let utils: Vec<u32> = p
                    .gpu_uuids
                    .iter()
                    .filter_map(|u| parents.get(u.as_str()))
                    .filter_map(|&i| r.gpus[i].utilization_gpu_pct)
                    .collect();
                ev.add_process(host_id, p, &utils);
                for g in &r.gpus {
                    let all = g.processes.iter().chain(g.mig_devices.iter().flat_map(|d| d.processes.iter()));
                    for u in all.filter(|u| u.pid == p.pid) {
                        ev.add_memory(u.used_memory_bytes);
                    }
                }
            }
            // What this report added to the counters goes with the usage of the job's first GPU in it,
            // which the group writes anyway (else, never in practice, with the job's row).
            let added = row.evidence.counters().since(&counted);
            if !added.is_zero() {
                let first = jobs_on_gpu.iter().position(|on| on.contains(key));
                let usage =
                    first.and_then(|i| self.usage.get_mut(&(key.clone(), host_id.to_string(), r.gpus[i].uuid.clone())));
                match usage {
                    Some(u) => u.counters = u.counters.plus(&added),
                    None => row.row_counters = row.row_counters.plus(&added),
                }
            }
        }
        // Jobs of one tenant stepping in the same rhythm on one host: one training run split into many
        // small jobs looks like this.
        for (key, tenant, mine) in &rhythms {
            let others = rhythms
                .iter()
                .filter(|(k, t, p)| k != key && t == tenant && crate::classify::same_rhythm(*p, *mine))
                .count();
            if let Some(row) = self.jobs.get_mut(key).and_then(|j| j.row.as_mut()) {
                row.evidence.lockstep_jobs = row.evidence.lockstep_jobs.max(others as u32);
            }
        }
        let summaries = job_processes
            .keys()
            .filter_map(|key| {
                let job = self.jobs.get(key)?;
                let row = job.row.as_ref()?;
                Some(job.sums.summary(
                    key.clone(),
                    row.tenant.clone(),
                    row.first_seen,
                    row.last_seen,
                    row.evidence.clone(),
                ))
            })
            .collect();
        (summaries, moved)
    }

    /// Writes what the group changed: GPU locations, job usage and job evidence, each in one multi-row
    /// statement (two for locations: moves, then sightings).
    pub(super) fn write(&mut self, tx: &mut Db) -> Result<()> {
        self.gpus.write(tx)?;

        let mut ps = Vec::with_capacity(21 * self.usage.len());
        for ((key, host, uuid), u) in &self.usage {
            let c = &u.counters;
            ps.extend_from_slice(params![
                key.as_str(),
                host.as_str(),
                uuid.as_str(),
                u.name.as_str(),
                u.first_seen,
                u.last_seen,
                u.seconds,
                u.energy,
                u.ops,
                u.unknown,
                u.first_seq,
                u.last_seq,
                c.util_samples,
                c.util_sum,
                c.util_sq_sum,
                c.windows,
                c.rhythmic,
                c.synced,
                c.bursty,
                c.steady,
                c.memory_bound
            ]);
        }
        tx.defer_values(
            "INSERT INTO job_usage (job_key, host_id, gpu_uuid, gpu_name, first_seen, last_seen, gpu_seconds, energy_joules, ops_upper, unknown_peak_seconds, first_seq, last_seq, \
               util_samples, util_sum, util_sq_sum, windows, rhythmic, synced, bursty, steady, memory_bound) VALUES ",
            21,
            " ON CONFLICT (job_key, host_id, gpu_uuid) DO UPDATE SET \
               last_seen = CASE WHEN excluded.last_seen > job_usage.last_seen THEN excluded.last_seen ELSE job_usage.last_seen END, \
               first_seen = CASE WHEN excluded.first_seen < job_usage.first_seen THEN excluded.first_seen ELSE job_usage.first_seen END, \
               last_seq = CASE WHEN job_usage.last_seq IS NULL OR excluded.last_seq > job_usage.last_seq THEN excluded.last_seq ELSE job_usage.last_seq END, \
               first_seq = CASE WHEN job_usage.first_seq IS NULL OR excluded.first_seq < job_usage.first_seq THEN excluded.first_seq ELSE job_usage.first_seq END, \
               gpu_seconds = job_usage.gpu_seconds + excluded.gpu_seconds, \
               energy_joules = job_usage.energy_joules + excluded.energy_joules, ops_upper = job_usage.ops_upper + excluded.ops_upper, \
               unknown_peak_seconds = job_usage.unknown_peak_seconds + excluded.unknown_peak_seconds, \
               util_samples = job_usage.util_samples + excluded.util_samples, util_sum = job_usage.util_sum + excluded.util_sum, \
               util_sq_sum = job_usage.util_sq_sum + excluded.util_sq_sum, windows = job_usage.windows + excluded.windows, \
               rhythmic = job_usage.rhythmic + excluded.rhythmic, synced = job_usage.synced + excluded.synced, \
               bursty = job_usage.bursty + excluded.bursty, steady = job_usage.steady + excluded.steady, \
               memory_bound = job_usage.memory_bound + excluded.memory_bound",
            &ps,
        )
        .map_err(sql("account job usage"))?;

        // A job's row where the group changed the slow part of its evidence, or its last sighting is a
        // minute past the stored one, or it is new. Compared in the row's own form (its counters those
        // the row carries), swapped in place rather than copied: most jobs of a group are not written.
        let mut written: Vec<(&String, &mut JobRow, EvidenceCounters, String)> = Vec::new();
        for (key, j) in &mut self.jobs {
            let Some(row) = j.row.as_mut().filter(|_| j.extended) else { continue };
            let complete = row.evidence.counters();
            row.evidence = std::mem::take(&mut row.evidence).with_counters(row.row_counters);
            let due = match &row.stored {
                Some((ev, seen)) => *ev != row.evidence || row.last_seen - seen >= SIGHTING_REFRESH_MS,
                None => true,
            };
            if due {
                let json = serde_json::to_string(&row.evidence).unwrap_or_default();
                written.push((key, row, complete, json));
            } else {
                row.evidence = std::mem::take(&mut row.evidence).with_counters(complete);
            }
        }
        let mut ps = Vec::with_capacity(5 * written.len());
        for (key, row, _, json) in &written {
            ps.extend_from_slice(params![
                key.as_str(),
                row.tenant.as_deref(),
                row.first_seen,
                row.last_seen,
                json.as_str()
            ]);
        }
        tx.defer_values(
            "INSERT INTO jobs (job_key, tenant, first_seen, last_seen, evidence) VALUES ",
            5,
            // A job belongs to one tenant: the key carries it, and the guard keeps evidence of another
            // tenant out even if two keys ever collided.
            " ON CONFLICT (job_key) DO UPDATE SET evidence = excluded.evidence, \
               last_seen = CASE WHEN excluded.last_seen > jobs.last_seen THEN excluded.last_seen ELSE jobs.last_seen END \
               WHERE jobs.tenant IS NOT DISTINCT FROM excluded.tenant",
            &ps,
        )
        .map_err(sql("record jobs"))?;
        let cache_text = self.cache_text;
        for (key, row, complete, json) in written {
            let form = row.evidence.clone();
            row.evidence = std::mem::take(&mut row.evidence).with_counters(complete);
            row.stored = Some((form.clone(), row.last_seen));
            if cache_text {
                remember_evidence(key, json, form);
            }
        }
        Ok(())
    }
}

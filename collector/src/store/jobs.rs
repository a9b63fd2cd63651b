//! Job accounting inside the report transaction: each report adds its window's GPU time, energy and
//! estimated operations to the jobs its processes belong to (across hosts), updates their
//! training/inference evidence, and records where each GPU was seen, so a GPU that appears on a second
//! host is noticed in the same transaction that stores the evidence.

use std::collections::{BTreeMap, BTreeSet};

use gpuattest_proto::pb;
use serde::Serialize;

use super::db::{Db, params};
use super::{Result, Store, sql};
use crate::compute::{JobEvidence, JobSummary, classify, job_identity, peak_for};

/// Longest report window counted (a bogus window cannot add more than this much time).
const MAX_WINDOW_SECONDS: f64 = 3600.0;

/// What the commit learned beyond the chain position, for the policy.
#[derive(Debug, Clone, Default)]
pub struct CommitContext {
    /// The jobs this report touched, with their totals after it.
    pub jobs: Vec<JobSummary>,
    /// GPUs in this report last seen on another host.
    pub moved_gpus: Vec<MovedGpu>,
    /// Device identities proven by this report's evidence and last proven on another host.
    pub moved_devices: Vec<super::MovedDevice>,
}

/// A GPU whose UUID was last reported by another host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MovedGpu {
    /// GPU UUID.
    pub uuid: String,
    /// Serial now.
    pub serial: String,
    /// Serial the other host reported.
    pub previous_serial: String,
    /// The host that reported it before.
    pub from_host: String,
    /// When that host last reported it, Unix ms.
    pub from_last_seen: i64,
}

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

/// One job's usage of one GPU in one report.
#[derive(Default)]
struct Usage<'a> {
    name: &'a str,
    seconds: f64,
    energy: f64,
    ops: f64,
    unknown: f64,
}

pub(super) fn account(
    tx: &mut Db,
    host_id: &str,
    tenant: Option<&str>,
    process_tenants: &[Option<String>],
    r: &pb::UsageReport,
    received_at: i64,
) -> Result<(Vec<JobSummary>, Vec<MovedGpu>)> {
    let at = if r.window_end_unix_ms > 0 { r.window_end_unix_ms } else { received_at };
    let dt = ((r.window_end_unix_ms - r.window_start_unix_ms) as f64 / 1000.0).clamp(0.0, MAX_WINDOW_SECONDS);
    let parents = parent_gpu(r);

    // Energy per GPU in this window: the counter's delta where the same host reported it last time,
    // else power × time. Also where each GPU was last seen.
    let mut moved = Vec::new();
    let mut energy = vec![0.0f64; r.gpus.len()];
    // Where this report's GPUs were last seen, in one query by primary key.
    let uuids: Vec<&str> = r.gpus.iter().map(|g| g.uuid.as_str()).collect();
    let locations_sql = if tx.is_postgres() {
        concat!("SELECT uuid, host_id, serial, last_seen, last_energy_mj FROM gpu_locations WHERE uuid", keys_in!(pg))
    } else {
        concat!(
            "SELECT uuid, host_id, serial, last_seen, last_energy_mj FROM gpu_locations WHERE uuid",
            keys_in!(sqlite)
        )
    };
    let mut known: BTreeMap<String, (String, String, i64, Option<i64>)> = tx
        .rows(locations_sql, params![&serde_json::to_string(&uuids).unwrap_or_default()], |row| {
            Ok((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
        })
        .map_err(sql("read gpu locations"))?
        .into_iter()
        .collect();
    // GPUs still where they were, by UUID (the last entry wins where a report repeats one), upserted
    // together after the moves.
    let mut stay: BTreeMap<&str, (&str, Option<i64>)> = BTreeMap::new();
    for (i, g) in r.gpus.iter().enumerate() {
        if g.uuid.is_empty() || g.lost {
            continue;
        }
        let prev = known.remove(&g.uuid);
        let counter = g.energy_mj.map(|v| v as i64);
        energy[i] = match (&prev, counter) {
            (Some((h, _, _, Some(last))), Some(now)) if h == host_id && now >= *last => (now - last) as f64 / 1000.0,
            _ => f64::from(g.power_mw.unwrap_or(0)) / 1000.0 * dt,
        };
        match prev {
            Some((h, serial, last_seen, _)) if h != host_id => {
                moved.push(MovedGpu {
                    uuid: g.uuid.clone(),
                    serial: g.serial.clone(),
                    previous_serial: serial,
                    from_host: h,
                    from_last_seen: last_seen,
                });
                tx.defer("UPDATE gpu_locations SET host_id = ?2, serial = ?3, first_seen = ?4, last_seen = ?4, last_seq = ?5, last_energy_mj = ?6 WHERE uuid = ?1", params![&g.uuid, host_id, &g.serial, at, r.seq, counter])
                .map_err(sql("move gpu location"))?;
            }
            _ => {
                stay.insert(&g.uuid, (&g.serial, counter));
            }
        }
    }
    let mut ps = Vec::with_capacity(7 * stay.len());
    for (uuid, (serial, counter)) in &stay {
        ps.extend_from_slice(params![*uuid, host_id, *serial, at, at, r.seq, *counter]);
    }
    tx.defer_values(
        "INSERT INTO gpu_locations (uuid, host_id, serial, first_seen, last_seen, last_seq, last_energy_mj) VALUES ",
        7,
        " ON CONFLICT (uuid) DO UPDATE SET serial = excluded.serial, \
           last_seen = CASE WHEN excluded.last_seen > gpu_locations.last_seen THEN excluded.last_seen ELSE gpu_locations.last_seen END, \
           last_seq = excluded.last_seq, last_energy_mj = excluded.last_energy_mj",
        &ps,
    )
    .map_err(sql("record gpu locations"))?;

    // Jobs per GPU, so a shared GPU's time and energy are split between the jobs on it.
    let mut jobs_on_gpu: Vec<BTreeSet<String>> = vec![BTreeSet::new(); r.gpus.len()];
    let mut job_processes: BTreeMap<String, Vec<&pb::GpuProcess>> = BTreeMap::new();
    let mut job_tenant: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (i, p) in r.processes.iter().enumerate() {
        let t = process_tenants.get(i).cloned().flatten().or_else(|| tenant.map(str::to_string));
        let key = job_identity(host_id, t.as_deref(), p);
        job_tenant.entry(key.clone()).or_insert(t);
        for u in &p.gpu_uuids {
            if let Some(&i) = parents.get(u.as_str()) {
                jobs_on_gpu[i].insert(key.clone());
            }
        }
        job_processes.entry(key).or_default().push(p);
    }
    // Usage per (job, GPU UUID), summed where a report repeats a UUID, upserted together.
    let mut usage: BTreeMap<(&str, &str), Usage<'_>> = BTreeMap::new();
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
        for key in &jobs_on_gpu[i] {
            let u = usage.entry((key.as_str(), g.uuid.as_str())).or_insert(Usage { name: &g.name, ..Usage::default() });
            u.seconds += dt * share;
            u.energy += energy[i] * share;
            u.ops += ops;
            u.unknown += unknown;
        }
    }
    let mut ps = Vec::with_capacity(12 * usage.len());
    for ((key, uuid), u) in &usage {
        ps.extend_from_slice(params![
            *key, host_id, *uuid, u.name, at, at, u.seconds, u.energy, u.ops, u.unknown, r.seq, r.seq
        ]);
    }
    tx.defer_values(
        "INSERT INTO job_usage (job_key, host_id, gpu_uuid, gpu_name, first_seen, last_seen, gpu_seconds, energy_joules, ops_upper, unknown_peak_seconds, first_seq, last_seq) VALUES ",
        12,
        " ON CONFLICT (job_key, host_id, gpu_uuid) DO UPDATE SET \
           last_seen = CASE WHEN excluded.last_seen > job_usage.last_seen THEN excluded.last_seen ELSE job_usage.last_seen END, \
           first_seen = CASE WHEN excluded.first_seen < job_usage.first_seen THEN excluded.first_seen ELSE job_usage.first_seen END, \
           last_seq = CASE WHEN job_usage.last_seq IS NULL OR excluded.last_seq > job_usage.last_seq THEN excluded.last_seq ELSE job_usage.last_seq END, \
           first_seq = CASE WHEN job_usage.first_seq IS NULL OR excluded.first_seq < job_usage.first_seq THEN excluded.first_seq ELSE job_usage.first_seq END, \
           gpu_seconds = job_usage.gpu_seconds + excluded.gpu_seconds, \
           energy_joules = job_usage.energy_joules + excluded.energy_joules, ops_upper = job_usage.ops_upper + excluded.ops_upper, \
           unknown_peak_seconds = job_usage.unknown_peak_seconds + excluded.unknown_peak_seconds",
        &ps,
    )
    .map_err(sql("account job usage"))?;

    // The jobs' stored evidence in one query, their updates pipelined, their totals in one query.
    let keys: Vec<String> = job_processes.keys().cloned().collect();
    let keys_json = serde_json::to_string(&keys).unwrap_or_default();
    // A job's evidence is read, extended and written back: on PostgreSQL its row is locked first (in
    // key order), since one job's reports from several hosts may commit at once on several replicas
    // and the later write must not drop the earlier one's evidence.
    let evidence_sql = if tx.is_postgres() {
        concat!(
            "SELECT job_key, evidence, tenant, first_seen, last_seen FROM jobs WHERE job_key",
            keys_in!(pg),
            " ORDER BY job_key FOR UPDATE"
        )
    } else {
        concat!("SELECT job_key, evidence, tenant, first_seen, last_seen FROM jobs WHERE job_key", keys_in!(sqlite))
    };
    if tx.is_postgres() {
        // A job new to the store gets its row first (nothing if it exists), so the lock below covers it
        // too: two replicas committing a new multi-host job's first reports at once then take turns,
        // and the second extends the first's evidence instead of overwriting it. Sent with the read.
        let mut ps = Vec::with_capacity(5 * keys.len());
        for key in &keys {
            ps.extend_from_slice(params![key, job_tenant.get(key).and_then(Option::as_deref), at, at, "{}"]);
        }
        tx.defer_values(
            "INSERT INTO jobs (job_key, tenant, first_seen, last_seen, evidence) VALUES ",
            5,
            " ON CONFLICT (job_key) DO NOTHING",
            &ps,
        )
        .map_err(sql("create jobs"))?;
    }
    let mut stored: BTreeMap<String, StoredJob> = tx
        .rows(evidence_sql, params![&keys_json], |row| {
            Ok((
                row.get(0)?,
                StoredJob {
                    evidence: row.get(1)?,
                    tenant: row.get(2)?,
                    first_seen: row.get(3)?,
                    last_seen: row.get(4)?,
                },
            ))
        })
        .map_err(sql("read jobs"))?
        .into_iter()
        .collect();
    let mut evidence: Vec<(String, JobEvidence)> = Vec::with_capacity(job_processes.len());
    // Jobs whose stored tenant is another (two keys collided): their row is left as it is.
    let mut foreign: BTreeMap<String, JobEvidence> = BTreeMap::new();
    // Each job's step period on this host, to find jobs of one tenant in lock-step.
    let mut rhythms: Vec<(String, Option<String>, u32)> = Vec::new();
    for (key, procs) in job_processes {
        let tenant = job_tenant.get(&key).cloned().flatten();
        let mut ev = match stored.get(&key) {
            Some(row) => parsed_evidence(&key, &row.evidence),
            None => JobEvidence::default(),
        };
        if stored.get(&key).is_some_and(|row| row.tenant != tenant) {
            foreign.insert(key, ev);
            continue;
        }
        let gpus: BTreeSet<usize> =
            procs.iter().flat_map(|p| p.gpu_uuids.iter()).filter_map(|u| parents.get(u.as_str()).copied()).collect();
        if let Some(period) = ev.add_telemetry(host_id, gpus.iter().filter_map(|&i| r.gpus[i].telemetry.as_ref())) {
            rhythms.push((key.clone(), job_tenant.get(&key).cloned().flatten(), period));
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
        evidence.push((key, ev));
    }
    // Jobs of one tenant stepping in the same rhythm on one host: one training run split into many
    // small jobs looks like this.
    let evidence: Vec<(String, String, JobEvidence)> = evidence
        .into_iter()
        .map(|(key, mut ev)| {
            if let Some((_, tenant, mine)) = rhythms.iter().find(|(k, _, _)| *k == key) {
                let others = rhythms
                    .iter()
                    .filter(|(k, t, p)| *k != key && t == tenant && crate::classify::same_rhythm(*p, *mine))
                    .count();
                ev.lockstep_jobs = ev.lockstep_jobs.max(others as u32);
            }
            let json = serde_json::to_string(&ev).unwrap_or_default();
            (key, json, ev)
        })
        .collect();
    let mut ps = Vec::with_capacity(5 * evidence.len());
    for (key, json, _) in &evidence {
        ps.extend_from_slice(params![key, job_tenant.get(key).and_then(Option::as_deref), at, at, json]);
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
    // The jobs' totals after this report: their usage summed in one query; their evidence is what was
    // just written (or, for a foreign row, what is stored), never read and parsed again.
    let mut sums = usage_sums(tx, &keys_json)?;
    let mut summaries = Vec::with_capacity(keys.len());
    for (key, json, ev) in evidence {
        let row = stored.remove(&key);
        remember_evidence(&key, json, ev.clone());
        let tenant = job_tenant.get(&key).cloned().flatten();
        let (first_seen, last_seen) = row.as_ref().map_or((at, at), |r| (r.first_seen, r.last_seen.max(at)));
        summaries.push(sums.remove(&key).unwrap_or_default().summary(key, tenant, first_seen, last_seen, ev));
    }
    for (key, ev) in foreign {
        let Some(row) = stored.remove(&key) else { continue };
        summaries.push(sums.remove(&key).unwrap_or_default().summary(
            key,
            row.tenant,
            row.first_seen,
            row.last_seen,
            ev,
        ));
    }
    summaries.sort_by(|a, b| a.job_key.cmp(&b.job_key));
    Ok((summaries, moved))
}

/// A job's row as the report transaction reads it.
struct StoredJob {
    evidence: String,
    tenant: Option<String>,
    first_seen: i64,
    last_seen: i64,
}

/// The last evidence this thread wrote per job, as text and parsed: a report of a job whose stored
/// evidence is still that text (the usual case: the committing thread wrote it) takes the parsed copy
/// instead of parsing the text again. Compared by content, so a row another writer changed is parsed.
/// Bounded: cleared when it reaches [`EVIDENCE_CACHE_JOBS`].
struct EvidenceCache {
    jobs: std::collections::HashMap<String, (String, JobEvidence)>,
}

/// Jobs whose evidence one committing thread keeps parsed.
const EVIDENCE_CACHE_JOBS: usize = 16_384;

thread_local! {
    static EVIDENCE: std::cell::RefCell<EvidenceCache> =
        std::cell::RefCell::new(EvidenceCache { jobs: std::collections::HashMap::new() });
}

/// A job's stored evidence, parsed (or taken from what this thread last wrote, when the text is the same).
fn parsed_evidence(key: &str, text: &str) -> JobEvidence {
    let cached = EVIDENCE.with(|c| {
        let c = c.borrow();
        c.jobs.get(key).filter(|(t, _)| t == text).map(|(_, ev)| ev.clone())
    });
    cached.unwrap_or_else(|| serde_json::from_str(text).unwrap_or_default())
}

/// Keeps what was just written for `key` (text and parsed) for its next report.
fn remember_evidence(key: &str, text: String, ev: JobEvidence) {
    EVIDENCE.with(|c| {
        let mut c = c.borrow_mut();
        if c.jobs.len() >= EVIDENCE_CACHE_JOBS && !c.jobs.contains_key(key) {
            c.jobs.clear();
        }
        c.jobs.insert(key.to_string(), (text, ev));
    });
}

/// One job's usage summed over its GPUs and hosts.
#[derive(Default)]
struct UsageSums {
    gpus: u64,
    gpu_seconds: f64,
    energy: f64,
    ops: f64,
    unknown: f64,
}

impl UsageSums {
    fn summary(
        self,
        key: String,
        tenant: Option<String>,
        first_seen: i64,
        last_seen: i64,
        ev: JobEvidence,
    ) -> JobSummary {
        Totals {
            key,
            tenant,
            first_seen,
            last_seen,
            evidence: String::new(),
            gpus: self.gpus,
            gpu_seconds: self.gpu_seconds,
            energy: self.energy,
            ops: self.ops,
            unknown: self.unknown,
        }
        .summary_with(ev)
    }
}

macro_rules! usage_sums_sql {
    ($dialect:tt) => {
        concat!(
            "SELECT job_key, COUNT(DISTINCT gpu_uuid), COALESCE(SUM(gpu_seconds), 0), COALESCE(SUM(energy_joules), 0), \
             COALESCE(SUM(ops_upper), 0), COALESCE(SUM(unknown_peak_seconds), 0) FROM job_usage WHERE job_key",
            keys_in!($dialect),
            " GROUP BY job_key"
        )
    };
}

/// The jobs' (`keys_json`, a JSON array) usage sums, in one query by the job_usage primary key's prefix.
fn usage_sums(tx: &mut Db, keys_json: &str) -> Result<BTreeMap<String, UsageSums>> {
    let sql_text = if tx.is_postgres() { usage_sums_sql!(pg) } else { usage_sums_sql!(sqlite) };
    let rows = tx
        .rows(sql_text, params![keys_json], |r| {
            Ok((
                r.get::<String>(0)?,
                UsageSums {
                    gpus: r.u64(1)?,
                    gpu_seconds: r.get(2)?,
                    energy: r.get(3)?,
                    ops: r.get(4)?,
                    unknown: r.get(5)?,
                },
            ))
        })
        .map_err(sql("sum job usage"))?;
    Ok(rows.into_iter().collect())
}

macro_rules! summaries_sql {
    ($dialect:tt) => {
        // Both tables filtered by the keys (each through its own index), then joined: joined first,
        // PostgreSQL's plan read all of job_usage for every report.
        concat!(
            "SELECT j.job_key, j.tenant, j.first_seen, j.last_seen, j.evidence, COALESCE(u.gpus, 0), \
             COALESCE(u.seconds, 0), COALESCE(u.energy, 0), COALESCE(u.ops, 0), COALESCE(u.unknown, 0) \
             FROM jobs j LEFT JOIN (SELECT job_key, COUNT(DISTINCT gpu_uuid) AS gpus, SUM(gpu_seconds) AS seconds, \
               SUM(energy_joules) AS energy, SUM(ops_upper) AS ops, SUM(unknown_peak_seconds) AS unknown \
               FROM job_usage WHERE job_key",
            keys_in!($dialect),
            " GROUP BY job_key) u ON u.job_key = j.job_key WHERE j.job_key",
            keys_in!($dialect)
        )
    };
}

/// Jobs' totals and verdicts by key, in one query; the operation estimate is filled in by the
/// policy's efficiency. Unknown keys are absent.
pub(super) fn summaries(conn: &mut Db, keys: &[String]) -> Result<BTreeMap<String, JobSummary>> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let sql_text = if conn.is_postgres() { summaries_sql!(pg) } else { summaries_sql!(sqlite) };
    let keys_json = serde_json::to_string(keys).unwrap_or_default();
    let rows = conn
        .rows(sql_text, params![&keys_json], |r| {
            Ok(Totals {
                key: r.get(0)?,
                tenant: r.get(1)?,
                first_seen: r.get(2)?,
                last_seen: r.get(3)?,
                evidence: r.get(4)?,
                gpus: r.u64(5)?,
                gpu_seconds: r.get(6)?,
                energy: r.get(7)?,
                ops: r.get(8)?,
                unknown: r.get(9)?,
            })
        })
        .map_err(sql("sum job usage"))?;
    Ok(rows.into_iter().map(|t| (t.key.clone(), t.summary())).collect())
}

/// One row of [`summaries`].
struct Totals {
    key: String,
    tenant: Option<String>,
    first_seen: i64,
    last_seen: i64,
    evidence: String,
    gpus: u64,
    gpu_seconds: f64,
    energy: f64,
    ops: f64,
    unknown: f64,
}

impl Totals {
    fn summary(mut self) -> JobSummary {
        let evidence: JobEvidence = serde_json::from_str(&std::mem::take(&mut self.evidence)).unwrap_or_default();
        self.summary_with(evidence)
    }

    fn summary_with(self, evidence: JobEvidence) -> JobSummary {
        let Totals { key, tenant, first_seen, last_seen, evidence: _, gpus, gpu_seconds, energy, ops, unknown } = self;
        JobSummary {
            job_key: key,
            tenant,
            hosts: evidence.hosts.clone(),
            gpus,
            gpu_hours: gpu_seconds / 3600.0,
            energy_joules: energy,
            ops_upper_bound: ops,
            ops_estimate: 0.0,
            unknown_peak_gpu_seconds: unknown,
            first_seen,
            last_seen,
            verdict: classify(&evidence),
            evidence,
        }
    }
}

impl Store {
    /// Jobs, most recent first, optionally of one tenant.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn jobs(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<JobSummary>> {
        let mut conn = self.reader();
        let keys: Vec<String> = conn
            .rows(
                "SELECT job_key FROM jobs WHERE CAST(?1 AS TEXT) IS NULL OR tenant = ?1 ORDER BY last_seen DESC LIMIT ?2",
                params![tenant, limit],
                |r| r.get(0),
            )
            .map_err(sql("list jobs"))?;
        let mut totals = summaries(&mut conn, &keys)?;
        Ok(keys.iter().filter_map(|k| totals.remove(k)).collect())
    }

    /// One job.
    ///
    /// # Errors
    /// [`super::StoreError::Sql`].
    pub fn job(&self, key: &str) -> Result<Option<JobSummary>> {
        Ok(summaries(&mut self.reader(), &[key.to_string()])?.remove(key))
    }
}

//! Jobs as the store keeps them: a report's jobs as accounting sees them, what a commit tells the
//! policy about the jobs and GPUs a report touched, each job's usage summed over its GPUs and hosts, the
//! committing thread's parsed copy of the evidence it last wrote, and the readers of job totals. The
//! accounting that writes them inside the commit is in `account`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::db::{Db, params};
use super::generations::Generations;
use super::{Result, Store, sql};
use gpuattest_proto::pb;

use crate::classify::EvidenceCounters;
use crate::compute::{JobEvidence, JobSummary, classify, job_identity};

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

/// One job's usage summed over its GPUs and hosts.
#[derive(Debug, Clone, Default)]
pub(super) struct UsageSums {
    /// Distinct GPUs.
    pub gpus: u64,
    pub gpu_seconds: f64,
    pub energy: f64,
    pub ops: f64,
    pub unknown: f64,
    /// Its evidence counters kept with the usage (added to the counters in `jobs.evidence`).
    pub counters: EvidenceCounters,
    /// Its last sighting on any GPU (exact: `jobs.last_seen` is written once a minute).
    pub last_seen: Option<i64>,
}

/// What [`UsageSums::from_row`] reads, after the job key: the SQL of the sums over `job_usage` rows.
macro_rules! usage_sums_columns {
    () => {
        "COUNT(DISTINCT gpu_uuid), COALESCE(SUM(gpu_seconds), 0), COALESCE(SUM(energy_joules), 0), \
         COALESCE(SUM(ops_upper), 0), COALESCE(SUM(unknown_peak_seconds), 0), \
         CAST(COALESCE(SUM(util_samples), 0) AS BIGINT), COALESCE(SUM(util_sum), 0), COALESCE(SUM(util_sq_sum), 0), \
         CAST(COALESCE(SUM(windows), 0) AS BIGINT), CAST(COALESCE(SUM(rhythmic), 0) AS BIGINT), \
         CAST(COALESCE(SUM(synced), 0) AS BIGINT), CAST(COALESCE(SUM(bursty), 0) AS BIGINT), \
         CAST(COALESCE(SUM(steady), 0) AS BIGINT), CAST(COALESCE(SUM(memory_bound), 0) AS BIGINT), MAX(last_seen)"
    };
}

impl UsageSums {
    /// The sums from a row's columns from `first` on, as [`usage_sums_columns`] selects them (a job
    /// without usage: all NULL).
    fn from_row(r: &super::db::Row<'_>, first: usize) -> std::result::Result<UsageSums, super::db::DbError> {
        let f = |i: usize| r.get::<Option<f64>>(first + i).map(Option::unwrap_or_default);
        let n = |i: usize| r.get::<Option<i64>>(first + i).map(|v| v.unwrap_or_default().max(0) as u64);
        Ok(UsageSums {
            gpus: n(0)?,
            gpu_seconds: f(1)?,
            energy: f(2)?,
            ops: f(3)?,
            unknown: f(4)?,
            counters: EvidenceCounters {
                util_samples: n(5)?,
                util_sum: f(6)?,
                util_sq_sum: f(7)?,
                windows: n(8)?,
                rhythmic: n(9)?,
                synced: n(10)?,
                bursty: n(11)?,
                steady: n(12)?,
                memory_bound: n(13)?,
            },
            last_seen: r.get(first + 14)?,
        })
    }

    /// The job's evidence: what `jobs.evidence` holds, its counters plus these.
    pub(super) fn complete(&self, stored: JobEvidence) -> JobEvidence {
        let counters = stored.counters().plus(&self.counters);
        stored.with_counters(counters)
    }

    /// The job's summary with these sums, its row's fields and its evidence (complete: counters
    /// included).
    pub(super) fn summary(
        &self,
        key: String,
        tenant: Option<String>,
        first_seen: i64,
        last_seen: i64,
        evidence: JobEvidence,
    ) -> JobSummary {
        JobSummary {
            job_key: key,
            tenant,
            hosts: evidence.hosts.clone(),
            gpus: self.gpus,
            gpu_hours: self.gpu_seconds / 3600.0,
            energy_joules: self.energy,
            ops_upper_bound: self.ops,
            ops_estimate: 0.0,
            unknown_peak_gpu_seconds: self.unknown,
            first_seen,
            last_seen,
            verdict: classify(&evidence),
            evidence,
        }
    }
}

/// One stored report, as job accounting sees it.
pub(super) struct JobReport<'a> {
    /// The reporting host.
    pub host_id: &'a str,
    /// The host's tenant.
    pub tenant: Option<&'a str>,
    /// Tenant per process (index-aligned; missing entries fall back to the host's).
    pub process_tenants: &'a [Option<String>],
    /// The decoded report.
    pub report: &'a pb::UsageReport,
    /// Unix ms.
    pub received_at: i64,
}

impl JobReport<'_> {
    /// When the report's window ended (its arrival, where it gives none).
    pub(super) fn at(&self) -> i64 {
        let r = self.report;
        if r.window_end_unix_ms > 0 { r.window_end_unix_ms } else { self.received_at }
    }

    /// Each process's job key and tenant, in process order.
    pub(super) fn process_jobs(&self) -> Vec<(String, Option<String>)> {
        self.report
            .processes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let t = self.process_tenants.get(i).cloned().flatten().or_else(|| self.tenant.map(str::to_string));
                (job_identity(self.host_id, t.as_deref(), p), t)
            })
            .collect()
    }
}

/// The last evidence this thread wrote per job, as text and parsed: a group touching a job whose stored
/// evidence is still that text (the usual case: the committing thread wrote it) takes the parsed copy
/// instead of parsing the text again. Compared by content, so a row another writer changed is parsed.
/// Bounded by [`Generations`]: a job not written for a generation is parsed again.
type EvidenceCache = Generations<(String, JobEvidence)>;

/// Jobs whose evidence one committing thread keeps parsed, per generation.
const EVIDENCE_CACHE_JOBS: usize = 16_384;

thread_local! {
    static EVIDENCE: std::cell::RefCell<EvidenceCache> =
        std::cell::RefCell::new(Generations::new(EVIDENCE_CACHE_JOBS));
}

/// A job's stored evidence, parsed (or taken from what this thread last wrote, when the text is the same).
pub(super) fn parsed_evidence(key: &str, text: &str) -> JobEvidence {
    let cached = EVIDENCE.with(|c| {
        let c = c.borrow();
        c.get(key).filter(|(t, _)| t == text).map(|(_, ev)| ev.clone())
    });
    cached.unwrap_or_else(|| serde_json::from_str(text).unwrap_or_default())
}

/// Keeps what was just written for `key` (text and parsed) for its next report. If the transaction
/// then rolls back, the stored text differs and the next read parses it.
pub(super) fn remember_evidence(key: &str, text: String, ev: JobEvidence) {
    EVIDENCE.with(|c| {
        c.borrow_mut().put(key.to_string(), (text, ev));
    });
}

macro_rules! usage_sums_sql {
    ($dialect:tt, $gpus:literal) => {
        concat!(
            "SELECT job_key, ",
            usage_sums_columns!(),
            ", ",
            $gpus,
            " FROM job_usage WHERE job_key",
            keys_in!($dialect),
            " GROUP BY job_key"
        )
    };
}

/// The jobs' (`keys_json`, a JSON array) usage sums, in one query by the job_usage primary key's prefix,
/// each with the GPU UUIDs it has used among `gpus_json` (a JSON array), or among all its GPUs where
/// `gpus_json` is `None` (embedded store only). The same scan answers both: a job's GPUs are what makes
/// its GPU count grow when a report adds one. (`IN (SELECT ...)`, a hashed subplan, not `= ANY(...)`,
/// which compares every row with every GPU of the group: on PostgreSQL this one query costs a third less
/// than the sums and a second query for the GPUs did.)
pub(super) fn usage_sums(
    tx: &mut Db,
    keys_json: &str,
    gpus_json: Option<&str>,
) -> Result<BTreeMap<String, (UsageSums, Vec<String>)>> {
    let sql_text = match (tx.is_postgres(), gpus_json.is_some()) {
        (true, _) => usage_sums_sql!(
            pg,
            "CAST(json_agg(DISTINCT gpu_uuid) FILTER (WHERE gpu_uuid IN (SELECT jsonb_array_elements_text(CAST(?2 AS jsonb)))) AS text)"
        ),
        (false, true) => usage_sums_sql!(
            sqlite,
            "json_group_array(DISTINCT gpu_uuid) FILTER (WHERE gpu_uuid IN (SELECT value FROM json_each(?2)))"
        ),
        (false, false) => usage_sums_sql!(sqlite, "json_group_array(DISTINCT gpu_uuid) FILTER (WHERE ?2 IS NULL)"),
    };
    let rows = tx
        .rows(sql_text, params![keys_json, gpus_json], |r| {
            let gpus: Option<String> = r.get(16)?;
            // The store's own JSON array of strings; anything else is no GPU (counted again, never lost).
            let gpus: Vec<String> = gpus.and_then(|g| serde_json::from_str(&g).ok()).unwrap_or_default();
            Ok((r.get::<String>(0)?, (UsageSums::from_row(r, 1)?, gpus)))
        })
        .map_err(sql("sum job usage"))?;
    Ok(rows.into_iter().collect())
}

macro_rules! summaries_sql {
    ($dialect:tt) => {
        // Both tables filtered by the keys (each through its own index), then joined: joined first,
        // PostgreSQL's plan read all of job_usage for every report.
        concat!(
            "SELECT j.job_key, j.tenant, j.first_seen, j.last_seen, j.evidence, u.* \
             FROM jobs j LEFT JOIN (SELECT ",
            usage_sums_columns!(),
            ", job_key FROM job_usage WHERE job_key",
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
                sums: UsageSums::from_row(r, 5)?,
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
    sums: UsageSums,
}

impl Totals {
    fn summary(self) -> JobSummary {
        let stored: JobEvidence = serde_json::from_str(&self.evidence).unwrap_or_default();
        let evidence = self.sums.complete(stored);
        let last_seen = self.sums.last_seen.map_or(self.last_seen, |l| l.max(self.last_seen));
        self.sums.summary(self.key, self.tenant, self.first_seen, last_seen, evidence)
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

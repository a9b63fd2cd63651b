//! Flags: raised and merged by (host, rule, job), decided by reviewers (a decision never hides later evidence), listed and counted.

use super::*;

/// The columns [`flag_row`] reads, in order.
macro_rules! flag_columns {
    () => {
        "SELECT id, rule, severity, status, host_id, tenant, summary, job_key, pid, gpu_uuids, evidence, \
         policy_digest, first_seq, last_seq, occurrences, created_at, updated_at, assignee, after_decision, reopened, \
         reopened_at FROM flags"
    };
}

/// A flag to raise or update.
#[derive(Debug, Clone)]
pub struct NewFlag {
    /// Rule id.
    pub rule: String,
    /// `low`, `medium`, `high`, `critical`.
    pub severity: String,
    /// The job the flag is about (one open flag per rule, host and job).
    pub job_key: String,
    /// A sentence for reviewers.
    pub summary: String,
    /// Process, where one is concerned.
    pub pid: Option<u32>,
    /// GPUs concerned.
    pub gpu_uuids: Vec<String>,
    /// What matched, as JSON.
    pub evidence: serde_json::Value,
    /// Digest of the policy that raised it.
    pub policy_digest: String,
    /// For a job that spans hosts: the host the flag lives on (the job's first), so the job has one
    /// flag per rule. `None`: the reporting host.
    pub job_host: Option<String>,
    /// The job's tenant where the policy's mapping says so. `None`: the host's tenant.
    pub tenant: Option<String>,
}

/// A stored flag.
#[derive(Debug, Clone, Serialize)]
pub struct FlagRow {
    /// Flag id.
    pub id: i64,
    /// Rule id.
    pub rule: String,
    /// Severity.
    pub severity: String,
    /// `open`, `confirmed`, `dismissed`, `escalated`.
    pub status: String,
    /// Host.
    pub host_id: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Summary for reviewers.
    pub summary: String,
    /// Job key.
    pub job: String,
    /// Process.
    pub pid: Option<u32>,
    /// GPUs.
    pub gpu_uuids: Vec<String>,
    /// Evidence.
    pub evidence: serde_json::Value,
    /// Policy digest.
    pub policy_digest: String,
    /// First report that raised it.
    pub first_seq: u64,
    /// Latest report that matched.
    pub last_seq: u64,
    /// Reports that matched.
    pub occurrences: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Who is working on it.
    pub assignee: Option<String>,
    /// Occurrences since the last decision (counted once a flag has been decided).
    pub after_decision: u64,
    /// Times new evidence re-opened it after a decision.
    pub reopened: u64,
    /// When it last re-opened, RFC 3339.
    pub reopened_at: Option<String>,
}

/// What a flag's evidence is about, for telling new evidence of another kind from more of the same:
/// the rule and, where the evidence has them, the model's developer and family, the tenant and the
/// threshold crossed. Process ids, hosts and counts are not part of it.
pub(super) fn flag_kind(f: &NewFlag) -> String {
    let mut kind = f.rule.clone();
    for key in ["developer", "family", "tenant", "threshold"] {
        if let Some(v) = f.evidence.get(key).filter(|v| !v.is_null()) {
            kind.push('|');
            kind.push_str(&v.to_string());
        }
    }
    kind
}

/// Raises a flag or adds an occurrence to it. A flag a reviewer has decided keeps its decision for
/// more of the same evidence, counting it in `after_decision`; evidence of another kind (or, with
/// `reopen_any`, any new occurrence) re-opens it, so a decision never silently absorbs what it did
/// not decide on.
pub(super) fn upsert_flag(
    tx: &mut Db,
    host_id: &str,
    tenant: Option<&str>,
    seq: u64,
    now: i64,
    f: &NewFlag,
    reopen_any: bool,
) -> Result<()> {
    let gpus = serde_json::to_string(&f.gpu_uuids).unwrap_or_default();
    let evidence = f.evidence.to_string();
    tx.defer(
        "INSERT INTO flags (rule, severity, host_id, tenant, job_key, summary, pid, gpu_uuids, evidence, policy_digest, first_seq, last_seq, occurrences, created_at, updated_at, kind) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, 1, ?12, ?12, ?13) \
         ON CONFLICT (rule, host_id, job_key) DO UPDATE SET \
           status = CASE WHEN flags.status <> 'open' AND (?14 = 1 OR flags.kind <> excluded.kind) THEN 'open' ELSE flags.status END, \
           reopened = flags.reopened + CASE WHEN flags.status <> 'open' AND (?14 = 1 OR flags.kind <> excluded.kind) THEN 1 ELSE 0 END, \
           reopened_at = CASE WHEN flags.status <> 'open' AND (?14 = 1 OR flags.kind <> excluded.kind) THEN excluded.updated_at ELSE flags.reopened_at END, \
           after_decision = flags.after_decision + CASE WHEN flags.status <> 'open' OR flags.reopened > 0 THEN 1 ELSE 0 END, \
           kind = excluded.kind, \
           last_seq = excluded.last_seq, occurrences = flags.occurrences + 1, updated_at = excluded.updated_at, \
           evidence = excluded.evidence, gpu_uuids = excluded.gpu_uuids, policy_digest = excluded.policy_digest, \
           summary = excluded.summary, \
           severity = CASE WHEN (CASE excluded.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END) \
                             > (CASE flags.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END) \
                           THEN excluded.severity ELSE flags.severity END",
        params![
            &f.rule,
            &f.severity,
            f.job_host.as_deref().unwrap_or(host_id),
            f.tenant.as_deref().or(tenant),
            &f.job_key,
            &f.summary,
            f.pid,
            &gpus,
            &evidence,
            &f.policy_digest,
            seq,
            now,
            &flag_kind(f),
            i64::from(reopen_any)
        ],
    )
    .map_err(sql("upsert flag"))?;
    Ok(())
}

pub(super) fn flag_row(r: &Row<'_>) -> Result<FlagRow, DbError> {
    Ok(FlagRow {
        id: r.get(0)?,
        rule: r.get(1)?,
        severity: r.get(2)?,
        status: r.get(3)?,
        host_id: r.get(4)?,
        tenant: r.get(5)?,
        summary: r.get(6)?,
        job: r.get(7)?,
        pid: r.get(8)?,
        gpu_uuids: serde_json::from_str(&r.get::<String>(9)?).unwrap_or_default(),
        evidence: serde_json::from_str(&r.get::<String>(10)?).unwrap_or_default(),
        policy_digest: r.get(11)?,
        first_seq: r.u64(12)?,
        last_seq: r.u64(13)?,
        occurrences: r.u64(14)?,
        created_at: rfc3339(r.get(15)?),
        updated_at: rfc3339(r.get(16)?),
        assignee: r.get(17)?,
        after_decision: r.u64(18)?,
        reopened: r.u64(19)?,
        reopened_at: r.get::<Option<i64>>(20)?.map(rfc3339),
    })
}

impl Store {
    /// Open flags counted by (severity, rule), for `/metrics`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn open_flag_counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.reader()
            .rows(
                "SELECT severity, rule, COUNT(*) FROM flags WHERE status = 'open' GROUP BY severity, rule ORDER BY severity, rule",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.u64(2)?)),
            )
            .map_err(sql("count open flags"))
    }

    /// Raises (or updates) a flag outside a report, e.g. for silence.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn raise_flag(&self, host_id: &str, seq: u64, now: i64, f: &NewFlag) -> Result<()> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let tenant: Option<String> = tx
            .row("SELECT tenant FROM hosts WHERE host_id = ?1", params![host_id], |r| r.get::<Option<String>>(0))
            .map_err(sql("read tenant"))?
            .flatten();
        upsert_flag(&mut tx, host_id, tenant.as_deref(), seq, now, f, false)?;
        tx.commit().map_err(sql("commit flag"))
    }

    /// Adds `key: value` to a flag's evidence (a note such as a re-evaluation's), leaving the rest.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn annotate_flag(&self, id: i64, key: &str, value: &serde_json::Value) -> Result<()> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let evidence: Option<String> = tx
            .row("SELECT evidence FROM flags WHERE id = ?1", params![id], |r| r.get(0))
            .map_err(sql("read flag evidence"))?;
        let Some(evidence) = evidence else { return Ok(()) };
        let mut ev: serde_json::Value = serde_json::from_str(&evidence).unwrap_or_else(|_| serde_json::json!({}));
        if !ev.is_object() {
            ev = serde_json::json!({ "evidence": ev });
        }
        if let Some(o) = ev.as_object_mut() {
            o.insert(key.to_string(), value.clone());
        }
        tx.execute("UPDATE flags SET evidence = ?2 WHERE id = ?1", params![id, &ev.to_string()])
            .map_err(sql("annotate flag"))?;
        tx.commit().map_err(sql("commit annotation"))
    }

    /// Flags, newest first, optionally one tenant's.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn flags(&self, tenant: Option<&str>) -> Result<Vec<FlagRow>> {
        self.reader()
            .rows(
                concat!(
                    flag_columns!(),
                    " WHERE (CAST(?1 AS TEXT) IS NULL OR tenant = ?1) \
                 ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END, id"
                ),
                params![tenant],
                flag_row,
            )
            .map_err(sql("list flags"))
    }

    /// One flag by id, if it exists (and belongs to `tenant` when one is given).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn flag(&self, id: i64, tenant: Option<&str>) -> Result<Option<FlagRow>> {
        self.reader()
            .row(
                concat!(flag_columns!(), " WHERE id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR tenant = ?2)"),
                params![id, tenant],
                flag_row,
            )
            .map_err(sql("read flag"))
    }

    /// The audit entries about one flag (decisions, assignments), newest first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn flag_history(&self, id: i64) -> Result<Vec<AuditRow>> {
        self.reader()
            .rows(
                "SELECT id, at, actor, action, target, detail FROM audit WHERE target = ?1 ORDER BY id DESC",
                params![&format!("flag:{id}")],
                audit_row,
            )
            .map_err(sql("read flag history"))
    }

    /// Records a reviewer's decision on a flag and audits it. Returns the flag's tenant, or `None` when
    /// there is no such flag.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn decide_flag(&self, id: i64, status: &str, actor: &str, reason: &str, now: i64) -> Result<Option<()>> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute(
                "UPDATE flags SET status = ?1, updated_at = ?2, after_decision = 0 WHERE id = ?3",
                params![status, now, id],
            )
            .map_err(sql("decide flag"))?;
        if n == 0 {
            return Ok(None);
        }
        audit_tx(&mut tx, now, actor, &format!("flag.{status}"), &format!("flag:{id}"), reason)?;
        tx.commit().map_err(sql("commit decision"))?;
        Ok(Some(()))
    }
}

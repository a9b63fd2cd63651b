//! `policy reevaluate`: run the policy in force over stored evidence, after the policy, tenant file or
//! screening lists changed. Rules that judge a report on its own (model developer, foreign
//! accelerator, tenant findings) and compute thresholds on current job totals are evaluated again;
//! integrity rules (gaps, chain breaks, clock skew, silence, moved GPUs) describe what happened on the
//! wire and are left as they are. Every flag the run raises or updates carries a `reevaluation` note
//! (policy digest, time), and open flags of those rules that the new policy no longer raises are marked
//! `not_raised_by` that policy; nobody's decision is changed.

use std::collections::BTreeSet;

use gpuattest_proto::pb;
use serde::Serialize;
use serde_json::json;

use crate::policy::{HostContext, Policy, Receipt};
use crate::store::{ChainPosition, CommitContext, Store, StoreError};

/// Rules re-evaluated (the others describe the transport and are not a matter of policy).
pub const RULES: &[&str] =
    &["model-developer", "foreign-accelerator", "tenant-screening", "tenant-parent-country", "compute-threshold"];

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// The policy applied.
    pub policy_digest: String,
    /// Reports evaluated.
    pub reports: u64,
    /// Flags raised or updated.
    pub raised_or_updated: u64,
    /// Open flags the policy no longer raises (marked, not closed).
    pub no_longer_raised: Vec<i64>,
}

/// Re-evaluates every stored report received at or after `since` (Unix ms).
///
/// # Errors
/// [`StoreError`] when the store cannot be read or written.
pub fn run(store: &Store, policy: &Policy, since: i64, now: i64) -> Result<Outcome, StoreError> {
    let mut out = Outcome { policy_digest: policy.digest().to_string(), ..Outcome::default() };
    let mut produced: BTreeSet<(String, String, String)> = BTreeSet::new();
    let note = json!({"policy_digest": policy.digest(), "at": crate::timefmt::rfc3339(now)});
    let hosts = store.hosts(None)?;
    for (host_id, seq) in store.report_keys(since)? {
        let (host_id, seq) = (host_id.as_str(), seq);
        let Some(signed) = store.signed_report(host_id, seq)? else { continue };
        let Ok(r) = <pb::UsageReport as prost::Message>::decode(signed.report.as_slice()) else { continue };
        let Some(h) = hosts.iter().find(|h| h.host_id == host_id) else { continue };
        out.reports += 1;
        let ctx_host = HostContext { host_id, hostname: &h.hostname, tenant: h.tenant.as_deref() };
        // The chain as it stood when the report was accepted: no integrity flags from re-evaluation.
        let pos = ChainPosition { last_seq: seq.saturating_sub(1), last_hash: Some(r.prev_report_sha256.clone()) };
        let mut jobs = Vec::new();
        for p in &r.processes {
            let key = crate::compute::job_identity(host_id, policy.tenant_of(p, h.tenant.as_deref()).as_deref(), p);
            if !jobs.iter().any(|j: &crate::compute::JobSummary| j.job_key == key)
                && let Ok(Some(j)) = store.job(&key)
            {
                jobs.push(j);
            }
        }
        let ctx = CommitContext { jobs, ..CommitContext::default() };
        let receipt = Receipt { received_at: r.agent_time_unix_ms, nonce_fresh: false };
        for mut f in policy.evaluate(&ctx_host, &r, &pos, &ctx, receipt) {
            if !RULES.contains(&f.rule.as_str()) {
                continue;
            }
            if let Some(o) = f.evidence.as_object_mut() {
                o.insert("reevaluation".into(), note.clone());
            }
            let on_host = f.job_host.clone().unwrap_or_else(|| host_id.to_string());
            produced.insert((f.rule.clone(), on_host, f.job_key.clone()));
            store.raise_flag(host_id, seq, now, &f)?;
            out.raised_or_updated += 1;
        }
    }
    for f in store.flags(None)? {
        if f.status == "open"
            && RULES.contains(&f.rule.as_str())
            && (since == 0 || f.updated_at >= crate::timefmt::rfc3339(since))
            && !produced.contains(&(f.rule.clone(), f.host_id.clone(), f.job.clone()))
        {
            store.annotate_flag(f.id, "not_raised_by", &note)?;
            out.no_longer_raised.push(f.id);
        }
    }
    store.audit(
        now,
        "cli",
        "policy.reevaluate",
        policy.digest(),
        &format!(
            "{} reports, {} flags raised or updated, {} no longer raised",
            out.reports,
            out.raised_or_updated,
            out.no_longer_raised.len()
        ),
    )?;
    Ok(out)
}

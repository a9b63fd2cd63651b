//! `bench --review-reports N`: a flag's review page over a host with N stored reports.

use std::time::Instant;

use prost::Message;
use ring::signature::KeyPair;
use serde::Serialize;

use super::{bench_store, key, report};
use crate::policy::Policy;

/// What `bench --review-reports N` measured.
#[derive(Debug, Serialize)]
pub struct ReviewFigures {
    /// Reports stored for the one host (each 8 GPUs, 4 processes, and the flag raised again).
    pub stored_reports: u64,
    /// Store used.
    pub store: String,
    /// Time to commit them (report commits in batches of [`crate::store::MAX_BATCH`], not over gRPC).
    pub fill_seconds: f64,
    /// The review page's store work for the flag (all of `http::flag_detail`), each run, ms.
    pub review_page_ms: Vec<f64>,
    /// Their median.
    pub review_page_median_ms: f64,
    /// Points in the flag's timeline.
    pub timeline_points: usize,
}

/// Fills a store with `reports` reports of one host, all raising one flag, and times the flag's review
/// page (the store reads `GET /api/v1/flags/{id}` makes) five times.
///
/// # Errors
/// A sentence when the store cannot be opened or written.
pub fn review_page(reports: u64, database: Option<&str>) -> Result<ReviewFigures, String> {
    use crate::store::{NewFlag, PendingCommit};
    let dir = std::env::temp_dir().join(format!("gpuattest-bench-review-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, scratch) = bench_store(&dir, database)?;
    let store_name = if scratch.is_some() { "PostgreSQL (scratch schema, dropped)" } else { "embedded (SQLite)" };
    let k = key();
    let tok =
        crate::tokens::mint(&store, crate::tokens::Role::Enroll, Some("bench"), None, 1, "bench", crate::now_ms())
            .map_err(|e| e.to_string())?;
    let pk = k.public_key().as_ref();
    let host = store
        .enroll(&gpuattest_proto::sha256(tok.as_bytes()), pk, &gpuattest_proto::key_id(pk), "review-bench", "", "{}", 1)
        .map_err(|e| e.to_string())?
        .host_id;
    let started = Instant::now();
    let t0 = crate::now_ms() - i64::try_from(reports).unwrap_or(0) * 10_000;
    let mut prev = Vec::new();
    let mut seq = 0u64;
    while seq < reports {
        let mut batch = Vec::with_capacity(crate::store::MAX_BATCH);
        while batch.len() < crate::store::MAX_BATCH && seq < reports {
            seq += 1;
            let mut r = report(0, &host, seq, &prev);
            r.window_start_unix_ms = t0 + (seq as i64 - 1) * 10_000;
            r.window_end_unix_ms = t0 + seq as i64 * 10_000;
            let signed = gpuattest_proto::sign_report(&k, r.encode_to_vec());
            prev = gpuattest_proto::sha256(&signed.report).to_vec();
            batch.push(PendingCommit {
                host_id: host.clone(),
                signed,
                received_at: r.window_end_unix_ms,
                decoded: r,
                nonce_fresh: true,
                process_tenants: Vec::new(),
                reopen_decided: false,
                evidence: Vec::new(),
                flags_for: Box::new(|r, _, ctx| {
                    vec![NewFlag {
                        rule: "bench".into(),
                        severity: "high".into(),
                        job_key: ctx.jobs.first().map(|j| j.job_key.clone()).unwrap_or_default(),
                        summary: "the review page's benchmark".into(),
                        pid: r.processes.first().map(|p| p.pid),
                        gpu_uuids: r.gpus.iter().map(|g| g.uuid.clone()).collect(),
                        evidence: serde_json::json!({}),
                        policy_digest: String::new(),
                        job_host: None,
                        tenant: None,
                    }]
                }),
            });
        }
        for result in store.commit_batch(batch) {
            result.map_err(|e| e.to_string())?;
        }
    }
    store.sequence_pending().map_err(|e| e.to_string())?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let id = store.flags(None).map_err(|e| e.to_string())?.first().map(|f| f.id).ok_or("no flag was raised")?;
    let policy = Policy::builtin();
    let mut times = Vec::new();
    let mut points = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let detail = crate::http::flag_detail(&store, &policy, id, None).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        points = detail.as_ref().and_then(|d| d["timeline"].as_array()).map_or(0, Vec::len);
    }
    drop(store);
    drop(scratch);
    let _ = std::fs::remove_dir_all(&dir);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(ReviewFigures {
        stored_reports: reports,
        store: store_name.into(),
        fill_seconds,
        review_page_median_ms: sorted[sorted.len() / 2],
        review_page_ms: times,
        timeline_points: points,
    })
}

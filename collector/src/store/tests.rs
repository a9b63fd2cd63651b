//! The store suite, run on both backends: a real SQLite file in a temporary directory, and a schema of
//! its own in the real PostgreSQL (see [`super::scratch`]).

use ring::signature::{Ed25519KeyPair, KeyPair};

use super::db::params;
use super::*;

fn key() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
}

fn token(store: &Store, id: &str, role: &str, expires_at: i64) -> [u8; 32] {
    token_uses(store, id, role, expires_at, 1)
}

fn token_uses(store: &Store, id: &str, role: &str, expires_at: i64, max_uses: u32) -> [u8; 32] {
    let hash = gpuattest_proto::sha256(id.as_bytes());
    store
        .insert_token(&NewToken {
            id: id.into(),
            hash,
            role: role.into(),
            tenant: Some("t1".into()),
            created_at: 0,
            expires_at,
            created_by: "test".into(),
            max_uses,
        })
        .expect("insert token");
    hash
}

fn enrolled(store: &Store, k: &Ed25519KeyPair, name: &str) -> HostRow {
    let h = token(store, name, "enroll", i64::MAX);
    let pk = k.public_key().as_ref();
    store.enroll(&h, pk, &gpuattest_proto::key_id(pk), name, "mid", "{}", 10).expect("enroll")
}

fn signed(k: &Ed25519KeyPair, host: &str, seq: u64) -> (pb::SignedReport, pb::UsageReport) {
    let r = pb::UsageReport { host_id: host.into(), seq, ..Default::default() };
    (gpuattest_proto::sign_report(k, prost::Message::encode_to_vec(&r)), r)
}

fn commit(store: &Store, host: &str, s: &pb::SignedReport, r: &pb::UsageReport, flags: Vec<NewFlag>) -> Commit {
    let inc = IncomingReport {
        signed: s,
        decoded: r,
        received_at: 100,
        nonce_fresh: true,
        process_tenants: &[],
        evidence: Default::default(),
        reopen_decided: false,
    };
    store.commit_report(host, &inc, |_, _| flags).expect("commit")
}

fn flag(job: &str) -> NewFlag {
    NewFlag {
        rule: "r".into(),
        severity: "high".into(),
        job_key: job.into(),
        summary: "s".into(),
        pid: Some(1),
        gpu_uuids: vec!["GPU-1".into()],
        evidence: serde_json::json!({}),
        policy_digest: "sha256:x".into(),
        job_host: None,
        tenant: None,
    }
}

/// Where a test's store lives; `open` may be called again to reopen the same store.
pub(super) enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(crate::tools::scratch::ScratchSchema),
}

impl Backend {
    fn open(&self) -> Result<Store> {
        match self {
            Backend::Sqlite(d) => Store::open(d.path()),
            Backend::Postgres(s) => Store::connect(&s.url),
        }
    }
}

/// Each test of the suite, once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::Sqlite(tempfile::tempdir().expect("tmp")));
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if let Some(s) = crate::tools::scratch::ScratchSchema::or_skip(stringify!($name)) {
                    super::$name(&super::Backend::Postgres(s));
                }
            })*
        }
    };
}

fn migrations_are_idempotent_and_newer_schemas_are_refused(b: &Backend) {
    drop(b.open().expect("first open"));
    let s = b.open().expect("second open");
    s.conn().execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)", params![]).expect("bump");
    drop(s);
    let e = b.open().expect_err("too new");
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade gpuattest-collector"));
}

fn enrollment_refusals_say_what_to_do(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let pk = k.public_key().as_ref().to_vec();
    let kid = gpuattest_proto::key_id(&pk);
    let e = s.enroll(&[0; 32], &pk, &kid, "h", "", "{}", 1).expect_err("unknown");
    assert!(e.to_string().contains("token create --role enroll"), "{e}");
    let expired = token(&s, "old", "enroll", 5);
    assert!(s.enroll(&expired, &pk, &kid, "h", "", "{}", 6).expect_err("expired").to_string().contains("expired"));
    let reviewer = token(&s, "rev", "reviewer", i64::MAX);
    assert!(s.enroll(&reviewer, &pk, &kid, "h", "", "{}", 6).expect_err("role").to_string().contains("not enroll"));
    let good = token(&s, "good", "enroll", i64::MAX);
    let host = s.enroll(&good, &pk, &kid, "gpu-1", "", "{}", 6).expect("enroll");
    assert!(host.host_id.starts_with("gpu-1-"));
    assert_eq!(host.tenant.as_deref(), Some("t1"));
    assert!(s.enroll(&good, &pk, &kid, "gpu-1", "", "{}", 7).expect_err("reuse").to_string().contains("already used"));
    let again = token(&s, "again", "enroll", i64::MAX);
    let e = s.enroll(&again, &pk, &kid, "gpu-1", "", "{}", 7).expect_err("same key");
    assert!(e.to_string().contains("operator"), "{e}");
    // The refused reuse is in the audit log.
    assert!(s.audit_log(10).expect("audit").iter().any(|a| a.action == "enroll.refused"));
}

fn a_fleet_enroll_token_enrolls_as_many_hosts_as_it_allows(b: &Backend) {
    let s = b.open().expect("open");
    let fleet = token_uses(&s, "fleet", "enroll", i64::MAX, 3);
    let mut ids = std::collections::BTreeSet::new();
    for n in 0..3 {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let h =
            s.enroll(&fleet, &pk, &gpuattest_proto::key_id(&pk), &format!("node-{n}"), "", "{}", 5).expect("enroll");
        ids.insert(h.host_id);
    }
    assert_eq!(ids.len(), 3, "three distinct hosts");
    let k = key();
    let pk = k.public_key().as_ref().to_vec();
    let e = s.enroll(&fleet, &pk, &gpuattest_proto::key_id(&pk), "node-3", "", "{}", 6).expect_err("used up");
    assert!(e.to_string().contains("all 3 hosts"), "{e}");
    assert_eq!(s.hosts(None).expect("hosts").len(), 3, "the refused fourth host is not stored");
}

fn reports_are_stored_once_and_refusals_change_nothing(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let (s1, r1) = signed(&k, &h.host_id, 1);
    assert_eq!(commit(&s, &h.host_id, &s1, &r1, vec![flag("j")]), Commit::Stored { flags: 1 });
    assert_eq!(commit(&s, &h.host_id, &s1, &r1, vec![flag("j")]), Commit::Duplicate);
    let (s3, r3) = signed(&k, &h.host_id, 3);
    assert_eq!(commit(&s, &h.host_id, &s3, &r3, vec![flag("j")]), Commit::Stored { flags: 1 });
    let (s2, r2) = signed(&k, &h.host_id, 2);
    assert_eq!(commit(&s, &h.host_id, &s2, &r2, vec![flag("other")]), Commit::Behind { last_seq: 3 });
    let hosts = s.hosts(None).expect("hosts");
    assert_eq!((hosts[0].last_seq, hosts[0].reports, hosts[0].gaps), (3, 2, 1));
    let flags = s.flags(None).expect("flags");
    assert_eq!(flags.len(), 1, "one flag per rule and job; refused reports raise nothing");
    assert_eq!((flags[0].occurrences, flags[0].first_seq, flags[0].last_seq), (2, 1, 3));
    assert_eq!(flags[0].tenant.as_deref(), Some("t1"));
    assert_eq!(s.signed_report(&h.host_id, 3).expect("read"), Some(s3));
    assert_eq!(commit(&s, "no-such-host", &s1, &r1, vec![]), Commit::HostGone);
}

fn verify_all_finds_tampered_rows_and_broken_chains(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let (s1, r1) = signed(&k, &h.host_id, 1);
    commit(&s, &h.host_id, &s1, &r1, vec![]);
    let r2 = pb::UsageReport {
        host_id: h.host_id.clone(),
        seq: 2,
        prev_report_sha256: gpuattest_proto::sha256(&s1.report).to_vec(),
        ..Default::default()
    };
    let s2 = gpuattest_proto::sign_report(&k, prost::Message::encode_to_vec(&r2));
    commit(&s, &h.host_id, &s2, &r2, vec![]);
    let v = s.verify_all().expect("verify");
    assert_eq!((v.checked, v.valid, v.chain_breaks, v.invalid.len()), (2, 2, 0, 0));
    // Someone edits a stored report behind the collector's back.
    let mut tampered = s1.report.clone();
    tampered.push(0);
    s.conn().execute("UPDATE reports SET report = ?1 WHERE seq = 1", params![&tampered]).expect("tamper");
    let v = s.verify_all().expect("verify");
    // Report 1 no longer verifies, and report 2 no longer chains to what is stored as report 1.
    assert_eq!((v.valid, v.invalid.len(), v.chain_breaks), (1, 1, 1));
    assert_eq!(v.invalid[0].seq, 1);
}

fn audit_log_is_append_only(b: &Backend) {
    let s = b.open().expect("open");
    s.audit(1, "cli", "x", "y", "z").expect("append");
    assert!(s.conn().execute("UPDATE audit SET actor = 'mallory'", params![]).is_err());
    assert!(s.conn().execute("DELETE FROM audit", params![]).is_err());
    assert_eq!(s.audit_log(10).expect("read")[0].actor, "cli");
}

fn decisions_are_recorded_and_audited(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let (s1, r1) = signed(&k, &h.host_id, 1);
    commit(&s, &h.host_id, &s1, &r1, vec![flag("j")]);
    let id = s.flags(None).expect("flags")[0].id;
    assert_eq!(s.decide_flag(id, "dismissed", "token:abc", "research use, licensed", 5).expect("decide"), Some(()));
    assert_eq!(s.decide_flag(9999, "dismissed", "token:abc", "x", 5).expect("decide"), None);
    assert_eq!(s.flags(None).expect("flags")[0].status, "dismissed");
    let a = s.audit_log(1).expect("audit");
    assert_eq!((a[0].action.as_str(), a[0].detail.as_str()), ("flag.dismissed", "research use, licensed"));
}

fn pending(host: &str, s: pb::SignedReport, r: pb::UsageReport) -> PendingCommit {
    PendingCommit {
        host_id: host.into(),
        signed: s,
        decoded: r,
        received_at: 100,
        nonce_fresh: true,
        process_tenants: Vec::new(),
        evidence: Default::default(),
        reopen_decided: false,
        flags_for: Box::new(|_, _, _| vec![flag("j")]),
    }
}

fn a_batch_commits_each_report_on_its_own_merits(b: &Backend) {
    let s = b.open().expect("open");
    let (ka, kb) = (key(), key());
    let (a, b) = (enrolled(&s, &ka, "a").host_id, enrolled(&s, &kb, "b").host_id);
    let (s1, r1) = signed(&ka, &a, 1);
    assert!(matches!(commit(&s, &a, &s1, &r1, vec![]), Commit::Stored { .. }));
    let (_, mut r2) = signed(&ka, &a, 2);
    r2.prev_report_sha256 = gpuattest_proto::sha256(&s1.report).to_vec();
    let s2 = gpuattest_proto::sign_report(&ka, prost::Message::encode_to_vec(&r2));
    let (_, mut r3) = signed(&ka, &a, 3);
    r3.prev_report_sha256 = gpuattest_proto::sha256(&s2.report).to_vec();
    let s3 = gpuattest_proto::sign_report(&ka, prost::Message::encode_to_vec(&r3));
    let (b1, rb1) = signed(&kb, &b, 1);
    let results = s.commit_batch(vec![
        pending(&a, s1.clone(), r1.clone()), // a replay
        pending(&a, s2, r2),                 // then the next two of the same host, in order
        pending(&a, s3, r3),
        pending("nobody", b1.clone(), rb1.clone()), // an unknown host
        pending(&b, b1, rb1),
    ]);
    let kinds: Vec<String> =
        results.iter().map(|r| format!("{r:?}").split(['(', ' ', '{']).nth(1).unwrap_or("").to_string()).collect();
    assert!(matches!(results[0], Ok(Commit::Duplicate)), "{kinds:?}");
    assert!(matches!(results[1], Ok(Commit::Stored { flags: 1 })), "{kinds:?}");
    assert!(matches!(results[2], Ok(Commit::Stored { .. })), "{kinds:?}");
    assert!(matches!(results[3], Ok(Commit::HostGone)), "{kinds:?}");
    assert!(matches!(results[4], Ok(Commit::Stored { .. })), "{kinds:?}");
    let hosts = s.hosts(None).expect("hosts");
    let last = |id: &str| hosts.iter().find(|h| h.host_id == id).map(|h| (h.last_seq, h.reports, h.gaps));
    assert_eq!(last(&a), Some((3, 3, 0)));
    assert_eq!(last(&b), Some((1, 1, 0)));
    let v = s.verify_all().expect("verify");
    assert_eq!((v.checked, v.valid, v.chain_breaks), (4, 4, 0));
}

/// A report of `gpus` H100s, all used by one process of Slurm job 77, over a 10 s window.
fn busy_report(host: &str, seq: u64, prev: &[u8], gpus: usize) -> pb::UsageReport {
    let uuids: Vec<String> = (0..gpus).map(|i| format!("GPU-{host}-{i}")).collect();
    pb::UsageReport {
        host_id: host.into(),
        seq,
        prev_report_sha256: prev.to_vec(),
        window_start_unix_ms: (seq as i64) * 10_000,
        window_end_unix_ms: (seq as i64 + 1) * 10_000,
        gpus: uuids
            .iter()
            .enumerate()
            .map(|(i, u)| pb::Gpu {
                index: i as u32,
                uuid: u.clone(),
                serial: format!("165{i:010}"),
                name: "NVIDIA H100 80GB HBM3".into(),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + i),
                memory_total_bytes: 85_520_809_984,
                utilization_gpu_pct: Some(50),
                power_mw: Some(400_000),
                energy_mj: Some(1_000_000 * seq),
                ..Default::default()
            })
            .collect(),
        processes: vec![pb::GpuProcess {
            pid: 4242,
            gpu_uuids: uuids,
            cmdline: "python train.py".into(),
            exe: "/usr/bin/python3".into(),
            slurm_job_id: Some("77".into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Signs `r` with `k` and commits it as received at its window's end plus ten seconds; the result
/// and the hash the next report links to.
fn sign_and_commit(
    s: &Store,
    k: &Ed25519KeyPair,
    host: &str,
    r: &pb::UsageReport,
    flags_for: impl FnOnce(&ChainPosition, &CommitContext) -> Vec<NewFlag>,
) -> (Result<Commit>, pb::SignedReport) {
    sign_and_commit_as(s, k, host, r, &[], false, flags_for)
}

/// As [`sign_and_commit`], with each process's tenant and the policy's re-opening rule given.
fn sign_and_commit_as(
    s: &Store,
    k: &Ed25519KeyPair,
    host: &str,
    r: &pb::UsageReport,
    tenants: &[Option<String>],
    reopen_decided: bool,
    flags_for: impl FnOnce(&ChainPosition, &CommitContext) -> Vec<NewFlag>,
) -> (Result<Commit>, pb::SignedReport) {
    let sr = gpuattest_proto::sign_report(k, prost::Message::encode_to_vec(r));
    let inc = IncomingReport {
        signed: &sr,
        decoded: r,
        received_at: (r.seq as i64 + 1) * 10_000,
        nonce_fresh: true,
        process_tenants: tenants,
        reopen_decided,
        evidence: &[],
    };
    (s.commit_report(host, &inc, flags_for), sr)
}

fn commit_chain(s: &Store, k: &Ed25519KeyPair, host: &str, n: u64, gpus: usize) -> Vec<pb::SignedReport> {
    let mut prev = Vec::new();
    let mut out = Vec::new();
    for seq in 1..=n {
        let r = busy_report(host, seq, &prev, gpus);
        let (c, sr) = sign_and_commit(s, k, host, &r, |_, ctx| {
            ctx.jobs.iter().map(|j| NewFlag { job_key: j.job_key.clone(), ..flag("x") }).collect()
        });
        assert_eq!(c.expect("commit"), Commit::Stored { flags: 1 });
        prev = gpuattest_proto::sha256(&sr.report).to_vec();
        out.push(sr);
    }
    out
}

fn jobs_are_accounted_across_reports_and_gpus(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    commit_chain(&s, &k, &h.host_id, 3, 2);
    let jobs = s.jobs(None, 10).expect("jobs");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let j = &jobs[0];
    assert_eq!((j.job_key.as_str(), j.gpus, j.tenant.as_deref()), ("t1|slurm:77", 2, Some("t1")));
    // 3 windows of 10 s on 2 GPUs.
    assert!((j.gpu_hours - 60.0 / 3600.0).abs() < 1e-9, "{}", j.gpu_hours);
    // Energy: first window 400 W x 10 s per GPU (no earlier counter), then counter deltas of 1,000 J.
    assert!((j.energy_joules - 2.0 * (4000.0 + 1000.0 + 1000.0)).abs() < 1e-6, "{}", j.energy_joules);
    assert!(j.ops_upper_bound > 0.0);
    assert_eq!((j.first_seen, j.last_seen), (20_000, 40_000));
    assert_eq!(s.job("t1|slurm:77").expect("job").map(|j| j.gpus), Some(2));
    assert_eq!(s.jobs(Some("other"), 10).expect("jobs").len(), 0);
    // One flag for the job, seen three times; its timeline has every GPU sample.
    let flags = s.flags(Some("t1")).expect("flags");
    assert_eq!((flags.len(), flags[0].occurrences), (1, 3));
    let t = s.timeline("t1|slurm:77", &h.host_id, &[], (1, 3)).expect("timeline");
    assert_eq!(t.len(), 6, "{t:?}");
    assert!(t.windows(2).all(|w| w[0].t <= w[1].t));
    assert_eq!((t[0].util, t[0].power_mw), (Some(50), Some(400_000)));
    // A flag with no job: one GPU's series over the flag's sequence range.
    let uuid = format!("GPU-{}-1", h.host_id);
    let t = s.timeline("no-such-job", &h.host_id, std::slice::from_ref(&uuid), (2, 3)).expect("gpu timeline");
    assert_eq!(
        t.iter().map(|p| (p.gpu_uuid.as_str(), p.t)).collect::<Vec<_>>(),
        vec![(&*uuid, 30_000), (&*uuid, 40_000)]
    );
}

/// The totals a commit hands the policy are built from what it just wrote (not read back): after every
/// report of a job on two hosts they equal what a reader of the store sees; evidence changed by another
/// writer in between is read, not taken from the committing thread's memory.
fn the_totals_a_commit_hands_the_policy_are_the_stored_ones(b: &Backend) {
    let s = b.open().expect("open");
    let (k1, k2) = (key(), key());
    let (h1, h2) = (enrolled(&s, &k1, "n1"), enrolled(&s, &k2, "n2"));
    let mut prev: [Vec<u8>; 2] = Default::default();
    for seq in 1..=3u64 {
        for (i, (k, h)) in [(&k1, &h1), (&k2, &h2)].into_iter().enumerate() {
            if seq == 3 && i == 0 {
                // Another writer's evidence for the job: the next commit must start from it.
                let ev = serde_json::json!({"max_world_size": 4096, "hosts": [h1.host_id, h2.host_id]}).to_string();
                s.conn()
                    .execute("UPDATE jobs SET evidence = ?1 WHERE job_key = 't1|slurm:77'", params![&ev])
                    .expect("edit evidence");
            }
            let r = busy_report(&h.host_id, seq, &prev[i], 2 + i);
            let mut seen = Vec::new();
            let (c, sr) = sign_and_commit_as(&s, k, &h.host_id, &r, &[Some("t1".into())], false, |_, ctx| {
                seen = ctx.jobs.clone();
                Vec::new()
            });
            assert_eq!(c.expect("commit"), Commit::Stored { flags: 0 });
            prev[i] = gpuattest_proto::sha256(&sr.report).to_vec();
            let stored = s.job("t1|slurm:77").expect("job").expect("accounted");
            assert_eq!(seen, vec![stored.clone()], "seq {seq}, host {i}");
            assert_eq!(stored.gpus, if seq == 1 && i == 0 { 2 } else { 5 }, "distinct GPUs of both hosts");
            if seq == 3 {
                assert_eq!(stored.evidence.max_world_size, 4096, "the other writer's evidence was extended");
            }
        }
    }
}

/// Job `job`'s reports on two hosts, in commit order: `first` reports twice, then `second` reports
/// with `first`'s GPU 0 moved to it, then `first` again with that GPU back. GPUs are named after `gpus`.
fn moving_reports(
    (k1, first): (&Ed25519KeyPair, &str),
    (k2, second): (&Ed25519KeyPair, &str),
    job: &str,
    gpus: &str,
) -> Vec<(String, pb::SignedReport, pb::UsageReport)> {
    let mut prev: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for (k, host, seq) in [(k1, first, 1), (k1, first, 2), (k2, second, 1), (k1, first, 3)] {
        let mut r = busy_report(host, seq, prev.get(host).map_or(&[][..], |v| v), 2);
        let side = if host == first { "a" } else { "b" };
        for (i, g) in r.gpus.iter_mut().enumerate() {
            g.uuid = if host == second && i == 0 { format!("{gpus}-a-0") } else { format!("{gpus}-{side}-{i}") };
        }
        r.processes[0].gpu_uuids = r.gpus.iter().map(|g| g.uuid.clone()).collect();
        r.processes[0].slurm_job_id = Some(job.into());
        let sr = gpuattest_proto::sign_report(k, prost::Message::encode_to_vec(&r));
        prev.insert(host.to_string(), gpuattest_proto::sha256(&sr.report).to_vec());
        out.push((host.to_string(), sr, r));
    }
    out
}

/// What a commit handed the policy, without the names that differ between two runs.
fn totals_seen(ctx: &CommitContext) -> (Vec<String>, Vec<String>) {
    let jobs = ctx
        .jobs
        .iter()
        .map(|j| {
            format!(
                "gpus {} hours {:.9} J {:.3} ops {:e} seen {}..{} hosts {} verdict {:?}",
                j.gpus,
                j.gpu_hours,
                j.energy_joules,
                j.ops_upper_bound,
                j.first_seen,
                j.last_seen,
                j.hosts.len(),
                j.verdict
            )
        })
        .collect();
    (jobs, ctx.moved_gpus.iter().map(|m| m.uuid.rsplit('-').take(2).collect::<Vec<_>>().join("-")).collect())
}

/// A group commit accounts its reports in memory, in order: each report's totals, energy and GPU moves
/// are the same as when the reports are committed one at a time, and what is stored after it equals
/// what the last report handed the policy.
fn a_group_commit_accounts_each_report_as_if_alone(b: &Backend) {
    let s = b.open().expect("open");
    let keys = [key(), key(), key(), key()];
    let hosts: Vec<String> = ["a", "b", "c", "d"].iter().zip(&keys).map(|(n, k)| enrolled(&s, k, n).host_id).collect();
    // One at a time: hosts a and b, job 77.
    let mut alone = Vec::new();
    for (host, sr, r) in moving_reports((&keys[0], &hosts[0]), (&keys[1], &hosts[1]), "77", "GPU-x") {
        let inc = IncomingReport {
            signed: &sr,
            decoded: &r,
            received_at: 100,
            nonce_fresh: true,
            process_tenants: &[],
            reopen_decided: false,
            evidence: &[],
        };
        let c = s.commit_report(&host, &inc, |_, ctx| {
            alone.push(totals_seen(ctx));
            Vec::new()
        });
        assert_eq!(c.expect("commit"), Commit::Stored { flags: 0 });
    }
    // Together: hosts c and d, job 88, the same reports in one batch.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let batch = moving_reports((&keys[2], &hosts[2]), (&keys[3], &hosts[3]), "88", "GPU-y")
        .into_iter()
        .enumerate()
        .map(|(i, (host, sr, r))| {
            let seen = seen.clone();
            PendingCommit {
                flags_for: Box::new(move |_, _, ctx| {
                    seen.lock().expect("seen").push((i, totals_seen(ctx), ctx.jobs.clone()));
                    Vec::new()
                }),
                ..pending(&host, sr, r)
            }
        })
        .collect();
    let results = s.commit_batch(batch);
    assert!(results.iter().all(|r| matches!(r, Ok(Commit::Stored { flags: 0 }))), "{results:?}");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3], "in commit order, once each");
    let together: Vec<_> = seen.iter().map(|(_, t, _)| t.clone()).collect();
    assert_eq!(together, alone);
    // The figures themselves: 2 GPUs x 10 s per report; the second report's energy is its counters'
    // delta (1,000 J per GPU), the others' power x time (4,000 J per GPU); the GPU moves twice.
    let job = |t: &(Vec<String>, Vec<String>)| t.0[0].clone();
    assert!(job(&alone[0]).starts_with("gpus 2 hours 0.005555556 J 8000.000"), "{}", job(&alone[0]));
    assert!(job(&alone[1]).starts_with("gpus 2 hours 0.011111111 J 10000.000"), "{}", job(&alone[1]));
    assert!(job(&alone[2]).starts_with("gpus 3 hours 0.016666667 J 18000.000"), "{}", job(&alone[2]));
    assert!(job(&alone[3]).starts_with("gpus 3 hours 0.022222222 J 23000.000"), "{}", job(&alone[3]));
    let moves: Vec<Vec<String>> = alone.iter().map(|t| t.1.clone()).collect();
    assert_eq!(moves, vec![vec![], vec![], vec!["0-a".to_string()], vec!["0-a".to_string()]]);
    let stored = s.job("t1|slurm:88").expect("job").expect("accounted");
    assert_eq!(seen[3].2, vec![stored], "the last report's totals are the stored ones");
    let v = s.verify_all().expect("verify");
    assert_eq!((v.checked, v.valid, v.chain_breaks), (8, 8, 0));
}

/// What a batch's commits handed the policy, by report.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<CommitContext>>>;

/// `r` signed with `k` and pending, its commit's context kept in `seen`.
fn pending_seen(k: &Ed25519KeyPair, host: &str, r: pb::UsageReport, seen: &Seen) -> PendingCommit {
    let seen = seen.clone();
    let sr = gpuattest_proto::sign_report(k, prost::Message::encode_to_vec(&r));
    PendingCommit {
        flags_for: Box::new(move |_, _, ctx| {
            seen.lock().expect("seen").push(ctx.clone());
            Vec::new()
        }),
        ..pending(host, sr, r)
    }
}

/// The embedded store keeps its accounting state in memory between commits; what another writer
/// commits in between (another store on the same database, or this store's connection used for
/// anything but a commit) is read again, never overwritten with what memory held.
fn the_running_state_yields_to_other_writers(b: &Backend) {
    let (s1, s2) = (b.open().expect("store 1"), b.open().expect("store 2"));
    let (ka, kb) = (key(), key());
    let (a, bh) = (enrolled(&s1, &ka, "a").host_id, enrolled(&s1, &kb, "b").host_id);
    let seen: Seen = Default::default();
    let mut prev_a = Vec::new();
    let report_a = |seq: u64, prev: &mut Vec<u8>| {
        let r = busy_report(&a, seq, prev, 2);
        *prev = gpuattest_proto::sha256(&prost::Message::encode_to_vec(&r)).to_vec();
        r
    };
    // Store 1 accounts host a twice (the second time from memory).
    for seq in 1..=2 {
        let r = report_a(seq, &mut prev_a);
        let results = s1.commit_batch(vec![pending_seen(&ka, &a, r, &seen)]);
        assert!(matches!(results[..], [Ok(Commit::Stored { .. })]), "{results:?}");
    }
    // Store 2 (another connection) takes host a's GPU 0 to host b, for the same job.
    let mut rb = busy_report(&bh, 1, &[], 1);
    rb.gpus[0].uuid = format!("GPU-{a}-0");
    rb.processes[0].gpu_uuids = vec![rb.gpus[0].uuid.clone()];
    let results = s2.commit_batch(vec![pending_seen(&kb, &bh, rb, &seen)]);
    assert!(matches!(results[..], [Ok(Commit::Stored { .. })]), "{results:?}");
    // Store 1's next report of host a sees the move and the other host's usage.
    let r = report_a(3, &mut prev_a);
    let results = s1.commit_batch(vec![pending_seen(&ka, &a, r, &seen)]);
    assert!(matches!(results[..], [Ok(Commit::Stored { .. })]), "{results:?}");
    let ctx = seen.lock().expect("seen").last().cloned().expect("a context");
    assert_eq!(ctx.moved_gpus.iter().map(|m| m.from_host.as_str()).collect::<Vec<_>>(), vec![bh.as_str()]);
    let stored = s1.job("t1|slurm:77").expect("job").expect("accounted");
    assert_eq!(ctx.jobs, vec![stored.clone()], "the totals handed the policy are the stored ones");
    assert_eq!(stored.hosts.len(), 2, "{:?}", stored.hosts);
    // This store's own connection, used for anything but a commit, also writes beside memory.
    let ev = serde_json::json!({"max_world_size": 512, "hosts": [a, bh]}).to_string();
    s1.conn().execute("UPDATE jobs SET evidence = ?1 WHERE job_key = 't1|slurm:77'", params![&ev]).expect("edit");
    let r = report_a(4, &mut prev_a);
    let results = s1.commit_batch(vec![pending_seen(&ka, &a, r, &seen)]);
    assert!(matches!(results[..], [Ok(Commit::Stored { .. })]), "{results:?}");
    let stored = s1.job("t1|slurm:77").expect("job").expect("accounted");
    assert_eq!(stored.evidence.max_world_size, 512, "the edit was extended, not overwritten");
    assert_eq!(seen.lock().expect("seen").last().map(|c| c.jobs.clone()), Some(vec![stored]));
}

/// A GPU that stays on its host costs no location write per report: its row is written when it
/// appears, moves or is a minute stale. Its energy counter is kept with its host's position instead,
/// so energy stays the counter's delta across a restart, and a move is still seen at once.
fn gpu_locations_are_written_on_change_and_energy_survives_a_restart(b: &Backend) {
    let probe = b.open().expect("probe");
    let stored_seen = |uuid: &str| {
        probe
            .conn()
            .row("SELECT last_seen FROM gpu_locations WHERE uuid = ?1", params![uuid], |r| r.get::<i64>(0))
            .expect("read location")
    };
    let (ka, kb) = (key(), key());
    let (a, bh) = (enrolled(&probe, &ka, "a").host_id, enrolled(&probe, &kb, "b").host_id);
    let gpu0 = format!("GPU-{a}-0");
    let mut prev = Vec::new();
    let mut commit_a = |s: &Store, seq: u64| {
        let r = busy_report(&a, seq, &prev, 2);
        let (c, sr) = sign_and_commit(s, &ka, &a, &r, |_, _| Vec::new());
        assert_eq!(c.expect("commit"), Commit::Stored { flags: 0 });
        prev = gpuattest_proto::sha256(&sr.report).to_vec();
    };
    let s = b.open().expect("open");
    // Reports 1-3 end at 20, 30 and 40 s: the row keeps its first sighting.
    for seq in 1..=3 {
        commit_a(&s, seq);
    }
    assert_eq!(stored_seen(&gpu0), Some(20_000));
    // A restart: the next report's energy is still its counters' delta (1,000 J a GPU, not 4,000).
    drop(s);
    let s = b.open().expect("reopen");
    for seq in 4..=6 {
        commit_a(&s, seq);
    }
    assert_eq!(stored_seen(&gpu0), Some(20_000), "50 s on: not yet due");
    commit_a(&s, 7);
    assert_eq!(stored_seen(&gpu0), Some(80_000), "60 s on: written again");
    let job = s.job("t1|slurm:77").expect("job").expect("accounted");
    assert!((job.energy_joules - 2.0 * (4000.0 + 6.0 * 1000.0)).abs() < 1e-6, "{}", job.energy_joules);
    // Host b takes GPU 0: seen as a move at once, and the row follows it.
    let mut rb = busy_report(&bh, 1, &[], 1);
    rb.gpus[0].uuid.clone_from(&gpu0);
    rb.processes[0].gpu_uuids = vec![gpu0.clone()];
    (rb.window_start_unix_ms, rb.window_end_unix_ms) = (80_000, 90_000);
    let mut moved = Vec::new();
    let (c, _) = sign_and_commit(&s, &kb, &bh, &rb, |_, ctx| {
        moved.clone_from(&ctx.moved_gpus);
        Vec::new()
    });
    assert_eq!(c.expect("commit"), Commit::Stored { flags: 0 });
    assert_eq!(
        moved.iter().map(|m| (m.from_host.as_str(), m.from_last_seen)).collect::<Vec<_>>(),
        vec![(a.as_str(), 80_000)]
    );
    assert_eq!(stored_seen(&gpu0), Some(90_000));
    let host_of = probe
        .conn()
        .row("SELECT host_id FROM gpu_locations WHERE uuid = ?1", params![&gpu0], |r| r.get::<String>(0))
        .expect("read location");
    assert_eq!(host_of, Some(bh));
}

/// A job's evidence counters go with its usage rows (added to in place), so its own row is rewritten
/// only when the slow part of its evidence changes or its last sighting is a minute stale; readers and
/// the policy see the whole evidence either way, counters from before migration 11 included.
fn job_evidence_counters_are_kept_with_usage_and_the_row_written_on_change(b: &Backend) {
    let probe = b.open().expect("probe");
    let raw = || {
        probe
            .conn()
            .row("SELECT evidence, last_seen FROM jobs WHERE job_key = 't1|slurm:77'", params![], |r| {
                Ok((serde_json::from_str::<serde_json::Value>(&r.get::<String>(0)?).expect("json"), r.get::<i64>(1)?))
            })
            .expect("read job")
            .expect("job row")
    };
    let k = key();
    let a = enrolled(&probe, &k, "a").host_id;
    let s = b.open().expect("open");
    let mut prev = Vec::new();
    // Commits host a's report `seq`; what the policy was handed of the job.
    let mut commit_a = |seq: u64, model: Option<&str>| {
        let mut r = busy_report(&a, seq, &prev, 2);
        if let Some(m) = model {
            r.processes[0].models = vec![pb::ModelFingerprint { name: Some(m.into()), ..Default::default() }];
        }
        let mut seen = None;
        let (c, sr) = sign_and_commit(&s, &k, &a, &r, |_, ctx| {
            seen = ctx.jobs.first().cloned();
            Vec::new()
        });
        assert_eq!(c.expect("commit"), Commit::Stored { flags: 0 });
        prev = gpuattest_proto::sha256(&sr.report).to_vec();
        seen.expect("the job")
    };
    // Three reports, each 2 utilisation samples of 50%: the row is written once, by the first.
    for seq in 1..=3 {
        commit_a(seq, None);
    }
    let (ev, last_seen) = raw();
    assert_eq!((ev["util_samples"].as_u64(), last_seen), (Some(0), 20_000), "{ev}");
    let job = s.job("t1|slurm:77").expect("job").expect("accounted");
    assert_eq!((job.evidence.util_samples, job.evidence.util_sum, job.last_seen), (6, 300.0, 40_000));
    // A row written before the counters moved holds some itself: they count once, beside the rest.
    let mut legacy = ev.clone();
    legacy["util_samples"] = 10.into();
    legacy["util_sum"] = 500.0.into();
    probe
        .conn()
        .execute("UPDATE jobs SET evidence = ?1 WHERE job_key = 't1|slurm:77'", params![&legacy.to_string()])
        .expect("edit");
    let seen = commit_a(4, None);
    let job = s.job("t1|slurm:77").expect("job").expect("accounted");
    assert_eq!((job.evidence.util_samples, job.evidence.util_sum), (18, 900.0));
    assert_eq!(seen, job, "the policy saw what a reader sees");
    assert_eq!(raw().0["util_samples"].as_u64(), Some(10), "not rewritten");
    // A model seen: the slow part changed, so the row is rewritten, its own counters as they were.
    let seen = commit_a(5, Some("Llama-3.1-70B"));
    let (ev, last_seen) = raw();
    assert_eq!(
        (ev["models"].clone(), ev["util_samples"].as_u64(), last_seen),
        (serde_json::json!(["Llama-3.1-70B"]), Some(10), 60_000)
    );
    let job = s.job("t1|slurm:77").expect("job").expect("accounted");
    assert_eq!((job.evidence.util_samples, job.last_seen), (20, 60_000));
    assert_eq!(seen, job);
    // Its last sighting is written again a minute after the last write (the job list's order).
    for seq in 6..=10 {
        commit_a(seq, Some("Llama-3.1-70B"));
    }
    assert_eq!(raw().1, 60_000);
    let seen = commit_a(11, Some("Llama-3.1-70B"));
    assert_eq!(raw().1, 120_000);
    let job = s.job("t1|slurm:77").expect("job").expect("accounted");
    assert_eq!((job.evidence.util_samples, job.evidence.util_sum), (32, 1_600.0));
    assert_eq!(seen, job);
}

fn a_report_that_repeats_a_gpu_uuid_is_stored(b: &Backend) {
    // Rows are upserted several to a statement; PostgreSQL refuses a statement that updates one row
    // twice, so a report naming a GPU twice (a buggy or hostile agent) must not make every batch it is
    // in fail.
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let mut prev = Vec::new();
    for seq in 1..=2 {
        let mut r = busy_report(&h.host_id, seq, &prev, 3);
        let twice = r.gpus[0].uuid.clone();
        r.gpus[2].uuid = twice.clone();
        r.processes[0].gpu_uuids = vec![twice.clone(), twice];
        let (c, sr) = sign_and_commit(&s, &k, &h.host_id, &r, |_, ctx| {
            assert!(ctx.moved_gpus.is_empty(), "{:?}", ctx.moved_gpus);
            Vec::new()
        });
        assert_eq!(c.expect("commit"), Commit::Stored { flags: 0 });
        prev = gpuattest_proto::sha256(&sr.report).to_vec();
    }
    let j = s.job("t1|slurm:77").expect("job").expect("accounted");
    // One GPU UUID, counted once per window: 2 windows of 10 s.
    assert_eq!(j.gpus, 1);
    assert!((j.gpu_hours - 20.0 / 3600.0).abs() < 1e-9, "{}", j.gpu_hours);
}

fn review_reads_and_writes_round_trip(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let chain = commit_chain(&s, &k, &h.host_id, 2, 1);
    let id = s.flags(None).expect("flags")[0].id;
    assert_eq!(s.assign_flag(id, "alice", "token:r", 7).expect("assign"), Some(()));
    assert_eq!(s.assign_flag(id + 1000, "alice", "token:r", 7).expect("assign"), None);
    s.annotate_flag(id, "reevaluated", &serde_json::json!({"still": true})).expect("annotate");
    let f = s.flag(id, Some("t1")).expect("flag").expect("exists");
    assert_eq!(f.assignee.as_deref(), Some("alice"));
    assert_eq!(f.evidence["reevaluated"]["still"], serde_json::json!(true));
    assert!(s.flag(id, Some("t2")).expect("flag").is_none(), "another tenant's flag is not shown");
    assert_eq!(s.flag_history(id).expect("history")[0].action, "flag.assign");
    let refs = s.report_refs(&h.host_id, 1, 2, 10).expect("refs");
    assert_eq!(refs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 1]);
    let check = s.check_report(&h.host_id, 2).expect("check").expect("exists");
    assert!(check.valid && check.chains_to_previous == Some(true), "{check:?}");
    assert_eq!(s.report_keys(0).expect("keys"), vec![(h.host_id.clone(), 1), (h.host_id.clone(), 2)]);
    // Key rotation: the old key stays valid for what it signed.
    let k2 = key();
    let new_id = s.rotate_key(&h.host_id, k2.public_key().as_ref(), 2, 8).expect("rotate");
    assert_eq!(new_id, gpuattest_proto::key_id(k2.public_key().as_ref()).to_vec());
    let old = s.signing_key(&h.host_id, &chain[0].key_id).expect("retired").expect("kept");
    assert_eq!((old.public_key.as_slice(), old.valid_through), (k.public_key().as_ref(), Some(2)));
    assert!(s.check_report(&h.host_id, 1).expect("check").expect("exists").valid);
    assert_eq!(s.verify_all().expect("verify").valid, 2);
    // Silence, revocation.
    s.conn().execute("UPDATE hosts SET interval_ms = 1000 WHERE host_id = ?1", params![&h.host_id]).expect("interval");
    assert_eq!(s.silent_hosts(30_000 + 2_500, 2).expect("silent").len(), 1);
    assert_eq!(s.silent_hosts(30_000 + 1_500, 2).expect("silent").len(), 0);
    assert!(s.revoke_host(&h.host_id, "cli", "decommissioned", 9).expect("revoke"));
    assert!(!s.revoke_host(&h.host_id, "cli", "again", 9).expect("revoke"));
    let (s3, r3) = signed(&k2, &h.host_id, 3);
    assert_eq!(commit(&s, &h.host_id, &s3, &r3, vec![]), Commit::HostGone);
    assert!(s.revoke_token("n1", "cli", 9).expect("revoke token"));
    assert!(s.token_by_hash(&gpuattest_proto::sha256(b"n1")).expect("token").expect("kept").revoked_at.is_some());
}

fn the_transparency_log_is_dense_and_in_commit_order(b: &Backend) {
    let s = b.open().expect("open");
    let (ka, kb) = (key(), key());
    let (a, bh) = (enrolled(&s, &ka, "a").host_id, enrolled(&s, &kb, "b").host_id);
    let (a1, ra1) = signed(&ka, &a, 1);
    let (b1, rb1) = signed(&kb, &bh, 1);
    let (b2, rb2) = signed(&kb, &bh, 2);
    let (a1_bytes, b2_bytes) = (a1.report.clone(), b2.report.clone());
    // Refused and failed reports in between leave no hole in the log.
    let results = s.commit_batch(vec![
        pending(&a, a1.clone(), ra1.clone()),
        pending(&a, a1, ra1),
        pending("nobody", b1.clone(), rb1.clone()),
        pending(&bh, b1, rb1),
        pending(&bh, b2, rb2),
    ]);
    assert_eq!(results.iter().filter(|r| matches!(r, Ok(Commit::Stored { .. }))).count(), 3);
    assert!(matches!(results[1], Ok(Commit::Duplicate)), "the same report twice in one batch: {results:?}");
    // Each host stands at its last report of the batch (on PostgreSQL one statement moved both).
    let at = |host: &str| -> (i64, Vec<u8>) {
        s.conn()
            .row("SELECT last_seq, last_hash FROM hosts WHERE host_id = ?1", params![host], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("host")
            .expect("row")
    };
    assert_eq!(at(&a), (1, gpuattest_proto::sha256(&a1_bytes).to_vec()));
    assert_eq!(at(&bh), (2, gpuattest_proto::sha256(&b2_bytes).to_vec()));
    // Committed means queued for the log, not yet in it: named so by exports and `reports verify`.
    assert_eq!(s.log_leaves(None).expect("leaves").len(), 0);
    assert_eq!(s.unsequenced().expect("queue"), 3);
    let v = s.verify_all().expect("verify");
    assert_eq!((v.sequenced, v.unsequenced, v.unlogged), (0, 3, 0));
    assert!(s.reports_for_export("t1", 0, i64::MAX).expect("export").iter().all(|r| r.log_index.is_none()));
    // One pass sequences them in commit order (a host's reports in its sequence order), once.
    let pass = s.sequence_pending().expect("sequence");
    assert_eq!((pass.from, pass.leaves.len(), pass.size()), (0, 3, 3));
    assert_eq!(s.sequence_pending().expect("again").leaves.len(), 0, "nothing is sequenced twice");
    assert_eq!(s.unsequenced().expect("queue"), 0);
    assert_eq!(s.log_leaves(None).expect("leaves"), pass.leaves);
    assert_eq!(s.log_leaves(Some(2)).expect("leaves").len(), 2);
    let rows = s.reports_for_export("t1", 0, i64::MAX).expect("export");
    let index =
        |host: &str, seq: u64| rows.iter().find(|r| r.host_id == host && r.seq == seq).and_then(|r| r.log_index);
    assert_eq!((index(&a, 1), index(&bh, 1), index(&bh, 2)), (Some(0), Some(1), Some(2)));
    let v = s.verify_all().expect("verify");
    assert_eq!((v.sequenced, v.unsequenced, v.unlogged), (3, 0, 0));
    // A later report continues the log densely.
    let (b3, rb3) = signed(&kb, &bh, 3);
    assert!(matches!(s.commit_batch(vec![pending(&bh, b3, rb3)])[0], Ok(Commit::Stored { .. })));
    let pass = s.sequence_pending().expect("sequence");
    assert_eq!((pass.from, pass.leaves.len()), (3, 1));
    // A queued leaf removed behind the store's back leaves a report outside the log: counted.
    let (b4, rb4) = signed(&kb, &bh, 4);
    assert!(matches!(s.commit_batch(vec![pending(&bh, b4, rb4)])[0], Ok(Commit::Stored { .. })));
    s.conn().execute("DELETE FROM log_queue", params![]).expect("tamper");
    let v = s.verify_all().expect("verify");
    assert_eq!((v.checked, v.sequenced, v.unsequenced, v.unlogged), (5, 4, 0, 1));
    s.record_head(3, &[1; 32], &[2; 64], 5).expect("head");
    s.record_head(3, &[1; 32], &[2; 64], 6).expect("the same head again is kept once");
}

fn a_report_that_fails_in_a_batch_leaves_the_others_stored(b: &Backend) {
    let s = b.open().expect("open");
    let (ka, kb) = (key(), key());
    let (a, bad) = (enrolled(&s, &ka, "a").host_id, enrolled(&s, &kb, "b").host_id);
    // A storage failure for one host's reports only (a trigger stands in for a full disk or a bad row).
    let trigger = if s.conn().is_postgres() {
        format!(
            "CREATE FUNCTION fail_b() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.host_id = '{bad}' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER fail_b BEFORE INSERT ON reports FOR EACH ROW EXECUTE FUNCTION fail_b();"
        )
    } else {
        format!(
            "CREATE TRIGGER fail_b BEFORE INSERT ON reports WHEN NEW.host_id = '{bad}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        )
    };
    s.conn().batch(&trigger).expect("trigger");
    let a1 = busy_report(&a, 1, &[], 2);
    let sa1 = gpuattest_proto::sign_report(&ka, prost::Message::encode_to_vec(&a1));
    let a2 = busy_report(&a, 2, &gpuattest_proto::sha256(&sa1.report), 2);
    let sa2 = gpuattest_proto::sign_report(&ka, prost::Message::encode_to_vec(&a2));
    let b1 = busy_report(&bad, 1, &[], 2);
    let sb1 = gpuattest_proto::sign_report(&kb, prost::Message::encode_to_vec(&b1));
    let results = s.commit_batch(vec![pending(&a, sa1, a1), pending(&bad, sb1, b1), pending(&a, sa2, a2)]);
    assert!(matches!(results[0], Ok(Commit::Stored { .. })), "{results:?}");
    assert!(results[1].as_ref().is_err_and(|e| e.to_string().contains("injected failure")), "{results:?}");
    assert!(matches!(results[2], Ok(Commit::Stored { .. })), "{results:?}");
    let hosts = s.hosts(None).expect("hosts");
    let row = |id: &str| hosts.iter().find(|h| h.host_id == id).map(|h| (h.last_seq, h.reports));
    assert_eq!((row(&a), row(&bad)), (Some((2, 2)), Some((0, 0))));
    assert_eq!(s.sequence_pending().expect("sequence").leaves.len(), 2, "the failed report left no log leaf");
    assert_eq!(s.jobs(None, 10).expect("jobs").iter().map(|j| j.gpus).sum::<u64>(), 2, "nor job usage");
    assert_eq!(s.verify_all().expect("verify").valid, 2);
}

fn reads_do_not_wait_for_an_open_write_and_cannot_write(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let mut conn = s.conn();
    let mut tx = conn.write().expect("write");
    tx.execute("UPDATE hosts SET last_seq = 99 WHERE host_id = ?1", params![&h.host_id]).expect("update");
    // The review UI's reads go to the reader: they answer while the write is open, with what is committed.
    let hosts = s.hosts(None).expect("hosts while a write is open");
    assert_eq!((hosts.len(), hosts[0].last_seq), (1, 0));
    assert_eq!(s.host(&h.host_id).expect("host").map(|h| h.last_seq), Some(0));
    drop(tx);
    drop(conn);
    // Every reader is read-only (all are taken at once, so each is a different connection).
    let all: Vec<_> = (0..super::READERS).map(|_| s.reader()).collect();
    for mut r in all {
        assert!(r.execute("DELETE FROM tokens", params![]).is_err(), "a reader cannot write");
    }
    assert_eq!(s.token_by_hash(&gpuattest_proto::sha256(b"n1")).expect("token").map(|t| t.uses), Some(1));
    // A long read (an export) holds one reader; the review UI's reads go on with the others.
    let held = s.reader();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(s.hosts(None).map(|h| h.len()));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert_eq!(answer.expect("a read waited for another read to finish").expect("hosts"), 1);
    });
}

fn a_failed_commit_leaves_the_connection_usable(b: &Backend) {
    let s = b.open().expect("open");
    token(&s, "t", "enroll", 5);
    {
        let mut conn = s.conn();
        let mut tx = conn.write().expect("write");
        // A duplicate key: SQLite reports it at once, PostgreSQL (pipelined) only when committing.
        let deferred = tx.defer(
            "INSERT INTO tokens (id, hash, role, created_at, expires_at, created_by) VALUES ('t', ?1, 'x', 0, 0, 'x')",
            params![&[9u8; 32]],
        );
        assert!(deferred.is_err() || tx.commit().is_err(), "the duplicate is refused");
    }
    token(&s, "u", "enroll", 5);
    assert!(s.token_by_hash(&gpuattest_proto::sha256(b"u")).expect("read").is_some(), "the next write went through");
    assert!(s.token_by_hash(&[9u8; 32]).expect("read").is_none());
}

/// Commits `r` (signed with `k`) with each process's tenant given, and the flags `flags_for` makes.
fn commit_for_tenants(
    s: &Store,
    k: &Ed25519KeyPair,
    r: &pb::UsageReport,
    tenants: &[Option<String>],
    reopen_decided: bool,
    flags_for: impl FnOnce(&ChainPosition, &CommitContext) -> Vec<NewFlag>,
) -> Commit {
    sign_and_commit_as(s, k, &r.host_id, r, tenants, reopen_decided, flags_for).0.expect("commit")
}

fn model_flag(job: &str, developer: &str) -> NewFlag {
    NewFlag { rule: "model-developer".into(), evidence: serde_json::json!({ "developer": developer }), ..flag(job) }
}

/// Finding 1: two tenants whose processes carry the same Slurm job id get a job each, each job keeps
/// its own tenant and hosts, and each tenant's flag stays its own.
fn finding_1_two_tenants_with_one_slurm_job_id_never_share_a_job(b: &Backend) {
    let s = b.open().expect("open");
    let (ka, kg) = (key(), key());
    let a = enrolled(&s, &ka, "acme-node");
    let g = enrolled(&s, &kg, "globex-node");
    for (k, h, t) in [(&ka, &a, "acme"), (&kg, &g, "globex")] {
        let r = busy_report(&h.host_id, 1, &[], 1);
        let c = commit_for_tenants(&s, k, &r, &[Some(t.to_string())], false, |_, ctx| {
            ctx.jobs
                .iter()
                .map(|j| NewFlag { tenant: j.tenant.clone(), ..model_flag(&j.job_key, "DeepSeek") })
                .collect()
        });
        assert_eq!(c, Commit::Stored { flags: 1 });
    }
    let mut jobs = s.jobs(None, 10).expect("jobs");
    jobs.sort_by(|x, y| x.job_key.cmp(&y.job_key));
    let seen: Vec<(&str, Option<&str>, Vec<String>)> =
        jobs.iter().map(|j| (j.job_key.as_str(), j.tenant.as_deref(), j.hosts.clone())).collect();
    assert_eq!(
        seen,
        vec![
            ("acme|slurm:77", Some("acme"), vec![a.host_id.clone()]),
            ("globex|slurm:77", Some("globex"), vec![g.host_id.clone()]),
        ]
    );
    for (t, h) in [("acme", &a), ("globex", &g)] {
        let f = s.flags(Some(t)).expect("flags");
        assert_eq!(f.len(), 1, "{t}: {f:?}");
        assert_eq!((f[0].host_id.as_str(), f[0].job.as_str()), (h.host_id.as_str(), format!("{t}|slurm:77").as_str()));
    }
}

/// Finding 1: after a decision, more of the same evidence is counted beside it; evidence of another
/// kind re-opens the flag; with the policy's `reopen_decided_flags`, any new occurrence does.
fn finding_1_a_decided_flag_does_not_absorb_new_evidence_silently(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let mut prev = Vec::new();
    let mut seq = 0;
    let mut send = |developer: &str, reopen: bool| {
        seq += 1;
        let r = busy_report(&h.host_id, seq, &prev, 1);
        prev = gpuattest_proto::sha256(&prost::Message::encode_to_vec(&r)).to_vec();
        let c = commit_for_tenants(&s, &k, &r, &[], reopen, |_, _| vec![model_flag("j", developer)]);
        assert_eq!(c, Commit::Stored { flags: 1 });
        s.flags(None).expect("flags").remove(0)
    };
    let f = send("DeepSeek", false);
    s.decide_flag(f.id, "dismissed", "token:r", "licensed research", 1).expect("decide").expect("flag");
    let f = send("DeepSeek", false);
    assert_eq!((f.status.as_str(), f.after_decision, f.reopened), ("dismissed", 1, 0), "{f:?}");
    let f = send("DeepSeek", false);
    assert_eq!((f.status.as_str(), f.after_decision), ("dismissed", 2));
    let f = send("Moonshot AI", false);
    assert_eq!((f.status.as_str(), f.reopened), ("open", 1), "another developer re-opens: {f:?}");
    assert!(f.reopened_at.is_some());
    s.decide_flag(f.id, "dismissed", "token:r", "also licensed", 2).expect("decide").expect("flag");
    let f = send("Moonshot AI", true);
    assert_eq!((f.status.as_str(), f.reopened, f.after_decision), ("open", 2, 1), "policy: any occurrence: {f:?}");
}

/// Finding 3: a report signed by a key retired before its sequence number is refused at commit,
/// whatever the stream saw when it opened; the new key signs on.
fn finding_3_a_retired_key_signs_nothing_after_its_last_report(b: &Backend) {
    let s = b.open().expect("open");
    let (old, new) = (key(), key());
    let h = enrolled(&s, &old, "n1");
    let (sr, r) = signed(&old, &h.host_id, 1);
    assert_eq!(commit(&s, &h.host_id, &sr, &r, vec![]), Commit::Stored { flags: 0 });
    s.rotate_key(&h.host_id, new.public_key().as_ref(), 1, 5).expect("rotate");
    let old_id = gpuattest_proto::key_id(old.public_key().as_ref());
    assert_eq!(s.signing_key(&h.host_id, &old_id).expect("key").and_then(|k| k.valid_through), Some(1));
    let (sr, r) = signed(&old, &h.host_id, 2);
    assert_eq!(commit(&s, &h.host_id, &sr, &r, vec![]), Commit::KeyRetired { through: Some(1) });
    let (sr, r) = signed(&new, &h.host_id, 2);
    assert_eq!(commit(&s, &h.host_id, &sr, &r, vec![]), Commit::Stored { flags: 0 });
    let v = s.verify_all().expect("verify");
    assert_eq!((v.checked, v.valid), (2, 2), "{v:?}");
}

/// Finding 2: the interval the silence rule uses comes from the signed report, bounded to 1 s .. 1 h.
fn finding_2_the_silence_interval_is_signed_and_bounded(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let interval = |s: &Store| -> Option<i64> {
        s.conn()
            .row("SELECT interval_ms FROM hosts WHERE host_id = ?1", params![&h.host_id], |r| r.get(0))
            .expect("read")
            .flatten()
    };
    let mut r = pb::UsageReport { host_id: h.host_id.clone(), seq: 1, interval_ms: 1, ..Default::default() };
    let sr = gpuattest_proto::sign_report(&k, prost::Message::encode_to_vec(&r));
    commit(&s, &h.host_id, &sr, &r, vec![]);
    assert_eq!(interval(&s), Some(1_000));
    r.seq = 2;
    r.interval_ms = 9_000_000_000_000_000_000;
    let sr = gpuattest_proto::sign_report(&k, prost::Message::encode_to_vec(&r));
    commit(&s, &h.host_id, &sr, &r, vec![]);
    assert_eq!(interval(&s), Some(3_600_000));
}

/// Two replicas (two stores on one database) commit four hosts' reports from four threads while both
/// run sequencing passes: every report gets exactly one log index, the indexes are dense, and each
/// host's reports are in the log in its sequence order.
fn replicas_sequencing_at_once_give_each_report_one_index(b: &Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const PER_HOST: u64 = 40;
    let replicas = [Arc::new(b.open().expect("replica 1")), Arc::new(b.open().expect("replica 2"))];
    let hosts: Vec<(Ed25519KeyPair, String)> = (0..4)
        .map(|i| {
            let k = key();
            let id = enrolled(&replicas[0], &k, &format!("h{i}")).host_id;
            (k, id)
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let sequencers: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (r, done) = (r.clone(), done.clone());
            std::thread::spawn(move || {
                let mut passes = 0;
                while !done.load(Ordering::Relaxed) {
                    passes += usize::from(!r.sequence_pending().expect("pass").leaves.is_empty());
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                passes
            })
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, (k, id)) in hosts.iter().enumerate() {
            let replicas = &replicas;
            scope.spawn(move || {
                for seq in 1..=PER_HOST {
                    let (sr, r) = signed(k, id, seq);
                    // Each host's reports alternate between the replicas, as after failovers.
                    let via = &replicas[(i + seq as usize) % 2];
                    assert!(matches!(via.commit_batch(vec![pending(id, sr, r)])[0], Ok(Commit::Stored { .. })));
                }
            });
        }
    });
    done.store(true, Ordering::Relaxed);
    let passes: usize = sequencers.into_iter().map(|t| t.join().expect("sequencer")).sum();
    replicas[1].sequence_pending().expect("the rest");
    assert!(passes >= 2, "both replicas' passes ran: {passes}");
    let total = 4 * PER_HOST;
    assert_eq!(replicas[0].log_size().expect("size"), total);
    assert_eq!(replicas[0].unsequenced().expect("queue"), 0);
    let rows = replicas[1].reports_for_export("t1", 0, i64::MAX).expect("rows");
    let mut idx: Vec<u64> = rows.iter().map(|r| r.log_index.expect("sequenced")).collect();
    idx.sort_unstable();
    assert_eq!(idx, (0..total).collect::<Vec<_>>(), "dense, each report once");
    for (_, id) in &hosts {
        let mine: Vec<u64> = rows.iter().filter(|r| &r.host_id == id).map(|r| r.log_index.unwrap_or(0)).collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "host {id}'s reports in its order: {mine:?}");
    }
}

/// The review page's report list reads the newest reports of a range in bounded windows, widening past
/// gaps in the chain, and returns exactly the newest ones.
fn the_newest_reports_of_a_range_are_found_across_gaps(b: &Backend) {
    let s = b.open().expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1").host_id;
    for seq in [1, 2, 5, 6, 9, 30, 31] {
        let (sr, r) = signed(&k, &h, seq);
        assert!(matches!(commit(&s, &h, &sr, &r, vec![]), Commit::Stored { .. }), "seq {seq}");
    }
    let seqs = |first, last, n| -> Vec<u64> {
        s.report_refs(&h, first, last, n).expect("refs").iter().map(|r| r.seq).collect()
    };
    assert_eq!(seqs(1, 31, 3), vec![31, 30, 9]);
    assert_eq!(seqs(1, 29, 2), vec![9, 6]);
    assert_eq!(seqs(3, 31, 10), vec![31, 30, 9, 6, 5]);
    assert_eq!(seqs(1, 31, 100), vec![31, 30, 9, 6, 5, 2, 1]);
    assert_eq!(seqs(10, 29, 5), Vec::<u64>::new());
}

/// Replica 1 holds a transaction that has accounted `first` (host a's report) while replica 2 commits
/// `second` (host b's); replica 2 commits only after replica 1 has.
fn race_two_replicas(s1: &Store, s2: &Store, first: PendingCommit, second: PendingCommit) {
    let a = first.host_id.clone();
    let mut conn = s1.conn();
    let (mut tx, _) = commit::begin_reports(&mut conn, &[a.as_str()]).expect("begin");
    let (c, _) =
        commit::commit_reports(&mut tx, &[(a.as_str(), commit::incoming(&first))], |_, _, _| vec![], None, None, None)
            .expect("commit a");
    assert!(matches!(c[..], [Commit::Stored { .. }]));
    std::thread::scope(|scope| {
        let other = scope.spawn(|| s2.commit_batch(vec![second]));
        std::thread::sleep(std::time::Duration::from_millis(300));
        tx.commit().expect("commit replica 1");
        let results = other.join().expect("replica 2");
        assert!(matches!(results[0], Ok(Commit::Stored { .. })), "{results:?}");
    });
}

/// Two replicas commit the first reports of one new multi-host job at the same time: the second waits
/// for the first's job row and extends its evidence, rather than overwriting it with its own. Then
/// again with the job known to both (replica 2 sends no create for it; it still waits on the lock).
fn a_new_job_seen_by_two_replicas_at_once_keeps_both_hosts(b: &Backend) {
    let (s1, s2) = (b.open().expect("replica 1"), b.open().expect("replica 2"));
    let (ka, kb) = (key(), key());
    let (a, bh) = (enrolled(&s1, &ka, "a").host_id, enrolled(&s1, &kb, "b").host_id);
    let ra = busy_report(&a, 1, &[], 1);
    let sa = gpuattest_proto::sign_report(&ka, prost::Message::encode_to_vec(&ra));
    let rb = busy_report(&bh, 1, &[], 1);
    let sb = gpuattest_proto::sign_report(&kb, prost::Message::encode_to_vec(&rb));
    let (prev_a, prev_b) = (gpuattest_proto::sha256(&sa.report), gpuattest_proto::sha256(&sb.report));
    race_two_replicas(&s1, &s2, pending(&a, sa, ra), pending(&bh, sb, rb));
    let job = s1.job("t1|slurm:77").expect("job").expect("stored");
    let mut hosts = job.hosts.clone();
    hosts.sort();
    let mut both = vec![a.clone(), bh.clone()];
    both.sort();
    assert_eq!(hosts, both, "neither replica's evidence was lost");

    // Each report now adds a checkpoint the other's does not know of.
    let second = |host: &str, k: &Ed25519KeyPair, prev: &[u8]| {
        let mut r = busy_report(host, 2, prev, 1);
        r.processes[0].writing = vec![format!("/ckpt/{host}.pt")];
        pending(host, gpuattest_proto::sign_report(k, prost::Message::encode_to_vec(&r)), r)
    };
    race_two_replicas(&s1, &s2, second(&a, &ka, &prev_a), second(&bh, &kb, &prev_b));
    let job = s1.job("t1|slurm:77").expect("job").expect("stored");
    let mut writes = job.evidence.checkpoint_writes.clone();
    writes.sort();
    let mut both = vec![format!("/ckpt/{a}.pt"), format!("/ckpt/{bh}.pt")];
    both.sort();
    assert_eq!(writes, both, "a job known to both replicas is still locked before it is extended");
}

on_both_backends!(
    the_running_state_yields_to_other_writers,
    a_group_commit_accounts_each_report_as_if_alone,
    a_new_job_seen_by_two_replicas_at_once_keeps_both_hosts,
    the_newest_reports_of_a_range_are_found_across_gaps,
    replicas_sequencing_at_once_give_each_report_one_index,
    finding_1_two_tenants_with_one_slurm_job_id_never_share_a_job,
    finding_1_a_decided_flag_does_not_absorb_new_evidence_silently,
    finding_3_a_retired_key_signs_nothing_after_its_last_report,
    finding_2_the_silence_interval_is_signed_and_bounded,
    a_failed_commit_leaves_the_connection_usable,
    reads_do_not_wait_for_an_open_write_and_cannot_write,
    a_report_that_fails_in_a_batch_leaves_the_others_stored,
    migrations_are_idempotent_and_newer_schemas_are_refused,
    enrollment_refusals_say_what_to_do,
    a_fleet_enroll_token_enrolls_as_many_hosts_as_it_allows,
    reports_are_stored_once_and_refusals_change_nothing,
    verify_all_finds_tampered_rows_and_broken_chains,
    audit_log_is_append_only,
    decisions_are_recorded_and_audited,
    a_batch_commits_each_report_on_its_own_merits,
    jobs_are_accounted_across_reports_and_gpus,
    gpu_locations_are_written_on_change_and_energy_survives_a_restart,
    job_evidence_counters_are_kept_with_usage_and_the_row_written_on_change,
    a_report_that_repeats_a_gpu_uuid_is_stored,
    the_totals_a_commit_hands_the_policy_are_the_stored_ones,
    review_reads_and_writes_round_trip,
    the_transparency_log_is_dense_and_in_commit_order,
);

#[test]
fn both_backends_have_the_same_tables_and_columns() {
    let Some(pg) = crate::tools::scratch::ScratchSchema::or_skip("schema comparison") else { return };
    let t = tempfile::tempdir().expect("tmp");
    let lite = Store::open(t.path()).expect("sqlite");
    let shared = Store::connect(&pg.url).expect("postgres");
    let pair = |r: &db::Row<'_>| Ok((r.get::<String>(0)?, r.get::<String>(1)?));
    let mut a = lite
        .conn()
        .rows(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
            params![],
            pair,
        )
        .expect("sqlite columns");
    let mut b = shared
        .conn()
        .rows(
            "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = current_schema()",
            params![],
            pair,
        )
        .expect("postgres columns");
    a.sort();
    b.sort();
    assert!(a.len() > 80, "{a:?}");
    assert_eq!(a, b, "the PostgreSQL migrations must define what the SQLite ones do");
}

/// The operator guide's recipe for partitioning reports by time (deploy/postgres/partition-reports.sql)
/// keeps every guarantee of the suite.
#[test]
fn the_suite_holds_on_reports_partitioned_by_time() {
    type Case = (&'static str, fn(&Backend));
    let suite: [Case; 5] = [
        ("stored once", reports_are_stored_once_and_refusals_change_nothing),
        ("batch", a_batch_commits_each_report_on_its_own_merits),
        ("verify", verify_all_finds_tampered_rows_and_broken_chains),
        ("log", the_transparency_log_is_dense_and_in_commit_order),
        ("review", review_reads_and_writes_round_trip),
    ];
    for (name, test) in suite {
        let Some(s) = crate::tools::scratch::ScratchSchema::or_skip("partitioned reports") else { return };
        let b = Backend::Postgres(s);
        b.open()
            .expect("migrate")
            .conn()
            .batch(include_str!("../../../deploy/postgres/partition-reports.sql"))
            .expect("the partitioning recipe applies");
        let kind: Option<String> = b
            .open()
            .expect("open")
            .conn()
            .row("SELECT CAST(relkind AS TEXT) FROM pg_class WHERE oid = CAST('reports' AS regclass)", params![], |r| {
                r.get(0)
            })
            .expect("relkind");
        assert_eq!(kind.as_deref(), Some("p"), "{name}: reports is partitioned");
        test(&b);
    }
}

#[test]
fn urls_are_shown_without_passwords() {
    assert_eq!(redact_url("postgres://u:secret@db:5432/g?options=-cx"), "postgres://u:***@db:5432/g");
    assert_eq!(redact_url("postgres://u:p@ss@db/g"), "postgres://u:***@db/g");
    assert_eq!(redact_url("postgresql://u@db/g"), "postgresql://u@db/g");
    assert_eq!(redact_url("postgres://db/g?password=secret"), "postgres://db/g");
    assert_eq!(redact_url("postgres://u:secret@db"), "postgres://u:***@db");
    assert_eq!(redact_url("host=db password=secret"), "(not a URL)");
    for bad in ["mysql://u:secret@db/g", "host=db password=secret", "postgres://u:secret@db:notaport/g"] {
        let e = Store::connect(bad).expect_err(bad).to_string();
        assert!(!e.contains("secret") && e.starts_with("--database"), "{e}");
    }
}

#[test]
fn the_embedded_store_checkpoints_its_log_off_the_commit_path() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let file = t.path().join("gpuattest.db");
    let before = std::fs::metadata(&file).expect("db").len();
    commit_chain(&s, &k, &h.host_id, 40, 8);
    // Commits do not checkpoint (auto-checkpoint is off): the reports are in the log, not yet in the file.
    assert!(std::fs::metadata(t.path().join("gpuattest.db-wal")).expect("wal").len() > 100_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&file).expect("db").len() <= before {
        assert!(std::time::Instant::now() < deadline, "the checkpoint thread copied nothing into the file");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(s);
    let again = Store::open(t.path()).expect("reopen");
    assert_eq!(again.verify_all().expect("verify").valid, 40);
}

#[test]
fn the_embedded_stores_log_starts_over_under_sustained_commits() {
    // Commits back to back never leave the checkpoint thread a moment in which the log is fully copied,
    // so before the writer restarted it between commits, the log only grew (1.3 GB in 12 seconds of
    // the benchmark). With a 256 KiB limit, the log must be cut back while commits go on.
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open_sqlite(t.path(), 256 << 10).expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let wal = t.path().join("gpuattest.db-wal");
    let len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let mut prev = Vec::new();
    let mut largest = 0;
    let mut committed = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for seq in 1.. {
        let r = busy_report(&h.host_id, seq, &prev, 8);
        let (c, sr) = sign_and_commit(&s, &k, &h.host_id, &r, |_, _| Vec::new());
        assert!(matches!(c, Ok(Commit::Stored { .. })), "{c:?}");
        prev = gpuattest_proto::sha256(&sr.report).to_vec();
        committed = seq;
        largest = largest.max(len());
        if largest > 1 << 20 && len() < 512 << 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log never started over: {} bytes after {seq} commits (largest {largest})",
            len()
        );
    }
    drop(s);
    let again = Store::open(t.path()).expect("reopen");
    let v = again.verify_all().expect("verify");
    assert_eq!((v.valid, v.chain_breaks, v.invalid.len()), (committed, 0, 0), "{v:?}");
}

/// Finding 11: the embedded store and its backups are the owner's alone, whatever the umask.
#[test]
fn finding_11_the_store_and_its_backups_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let s = Store::open(&data).expect("open");
    let k = key();
    let h = enrolled(&s, &k, "n1");
    let (sr, r) = signed(&k, &h.host_id, 1);
    commit(&s, &h.host_id, &sr, &r, vec![]);
    assert_eq!(mode(&data), 0o700);
    for f in ["gpuattest.db", "gpuattest.db-wal", "gpuattest.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    s.backup_into(&t.path().join("backup/gpuattest.db")).expect("backup");
    assert_eq!(mode(&t.path().join("backup")), 0o700);
    assert_eq!(mode(&t.path().join("backup/gpuattest.db")), 0o600);
    drop(s);
    // A store left world-readable by an older version is tightened when opened.
    std::fs::set_permissions(data.join("gpuattest.db"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    drop(Store::open(&data).expect("reopen"));
    assert_eq!(mode(&data.join("gpuattest.db")), 0o600);
}

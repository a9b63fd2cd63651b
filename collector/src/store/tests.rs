//! Store tests on a real SQLite file in a temporary directory.

use ring::signature::{Ed25519KeyPair, KeyPair};

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
    let inc =
        IncomingReport { signed: s, decoded: r, received_at: 100, nonce_fresh: true, process_tenants: Vec::new() };
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

#[test]
fn migrations_are_idempotent_and_newer_schemas_are_refused() {
    let t = tempfile::tempdir().expect("tmp");
    drop(Store::open(t.path()).expect("first open"));
    drop(Store::open(t.path()).expect("second open"));
    let conn = Connection::open(t.path().join("gpuattest.db")).expect("raw");
    conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)", []).expect("bump");
    drop(conn);
    let e = Store::open(t.path()).expect_err("too new");
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade gpuattest-collector"));
}

#[test]
fn enrollment_refusals_say_what_to_do() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
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

#[test]
fn a_fleet_enroll_token_enrolls_as_many_hosts_as_it_allows() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
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

#[test]
fn reports_are_stored_once_and_refusals_change_nothing() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
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

#[test]
fn verify_all_finds_tampered_rows_and_broken_chains() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
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
    s.conn().execute("UPDATE reports SET report = CAST(report || x'00' AS BLOB) WHERE seq = 1", []).expect("tamper");
    let v = s.verify_all().expect("verify");
    // Report 1 no longer verifies, and report 2 no longer chains to what is stored as report 1.
    assert_eq!((v.valid, v.invalid.len(), v.chain_breaks), (1, 1, 1));
    assert_eq!(v.invalid[0].seq, 1);
}

#[test]
fn audit_log_is_append_only() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
    s.audit(1, "cli", "x", "y", "z").expect("append");
    assert!(s.conn().execute("UPDATE audit SET actor = 'mallory'", []).is_err());
    assert!(s.conn().execute("DELETE FROM audit", []).is_err());
    assert_eq!(s.audit_log(10).expect("read")[0].actor, "cli");
}

#[test]
fn decisions_are_recorded_and_audited() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
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
        flags_for: Box::new(|_, _, _| vec![flag("j")]),
    }
}

#[test]
fn a_batch_commits_each_report_on_its_own_merits() {
    let t = tempfile::tempdir().expect("tmp");
    let s = Store::open(t.path()).expect("open");
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

//! One test per integrity rule, positive and negative, on stored evidence: real agents on the simulator
//! where a real agent can produce the condition (a Huawei Ascend in sysfs, a host that goes silent),
//! and the raw protocol client where only a misbehaving agent could (a skewed clock, a rewritten
//! chain, GPU change events). Model-developer, compute, moved-GPU and tenant rules are in `streaming`,
//! `jobs` and `tenants`.

use std::time::Duration;

use gpuattest_proto::pb;
use gpuattest_proto::pb::collector_message::Msg;
use gpuattest_tests::raw::{RawStream, enroll, new_key, report, sign};
use gpuattest_tests::{Collector, flags, host, token, wait_for, write_sysfs};
use ring::signature::KeyPair;
use serde_json::Value;

use crate::streaming::{node, reports, start_agent};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn rule(data: &std::path::Path, rule: &str) -> Vec<Value> {
    flags(data).into_iter().filter(|f| f["rule"] == rule).collect()
}

#[test]
fn an_ascend_npu_is_flagged_and_a_plain_gpu_host_is_not() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let with = node(t.path(), "node-npu", &[]);
    write_sysfs(&with.sys, &[("0000:c1:00.0", "0x19e5", "0xd802", "0x120000")]);
    let without = node(t.path(), "node-gpu", &[]);
    let mut a = start_agent(&c.url(), &with, &token(&data, "enroll", None), "200ms", &[]);
    let mut b = start_agent(&c.url(), &without, &token(&data, "enroll", None), "200ms", &[]);
    wait_for("reports", Duration::from_secs(30), || {
        (reports(&data, "node-npu") >= 3 && reports(&data, "node-gpu") >= 3).then_some(())
    });
    a.stop();
    b.stop();
    let f = rule(&data, "foreign-accelerator");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["host_id"], host(&data, "node-npu").expect("npu")["host_id"]);
    assert_eq!(f[0]["severity"], "high");
    assert!(f[0]["summary"].as_str().is_some_and(|s| s.contains("Ascend") && s.contains("0000:c1:00.0")), "{f:?}");
    // Real agents with honest clocks and intact chains raise no integrity flags.
    for r in ["clock-skew", "chain-break", "sequence-gap", "gpu-change", "host-silent"] {
        assert!(rule(&data, r).is_empty(), "{r}: {:?}", rule(&data, r));
    }
}

#[test]
fn a_host_that_stops_reporting_is_flagged_and_a_live_one_is_not() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("policy.toml"), "extend_builtin = true\n[integrity]\nsilence_intervals = 3\n")
        .expect("policy");
    let c = Collector::start(&data);
    let quiet = node(t.path(), "node-quiet", &[]);
    let live = node(t.path(), "node-live", &[]);
    let mut a = start_agent(&c.url(), &quiet, &token(&data, "enroll", None), "200ms", &[]);
    let mut b = start_agent(&c.url(), &live, &token(&data, "enroll", None), "200ms", &[]);
    wait_for("reports", Duration::from_secs(30), || (reports(&data, "node-quiet") >= 3).then_some(()));
    a.kill9();
    let f = wait_for("a host-silent flag", Duration::from_secs(30), || rule(&data, "host-silent").into_iter().next());
    b.stop();
    assert_eq!(f["host_id"], host(&data, "node-quiet").expect("quiet")["host_id"]);
    assert!(f["summary"].as_str().is_some_and(|s| s.contains("node-quiet") && s.contains("no report")), "{f}");
    assert_eq!(rule(&data, "host-silent").len(), 1, "the live host is not flagged");
}

pub(crate) async fn raw_host(
    c: &Collector,
    data: &std::path::Path,
    name: &str,
) -> (ring::signature::Ed25519KeyPair, String, RawStream) {
    let key = new_key();
    let host_id = enroll(&c.url(), &token(data, "enroll", None), &key, name).await.expect("enroll");
    let key_id = gpuattest_proto::key_id(key.public_key().as_ref());
    let s = RawStream::open(&c.url(), &host_id, &key_id).await.expect("stream");
    (key, host_id, s)
}

pub(crate) fn acked(m: Msg, seq: u64) {
    assert!(matches!(m, Msg::Ack(ref a) if a.seq == seq), "expected Ack {seq}, got {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_rewritten_chains_and_gpu_changes_are_flagged() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let now = now_ms();

    // An agent whose clock is an hour ahead, on a stream whose nonce it carries (so it is live).
    let (key, id, mut s) = raw_host(&c, &data, "raw-skew").await;
    let mut r1 = report(&id, 1, &[], "python serve.py");
    r1.collector_nonce = s.challenge.nonce.clone();
    r1.agent_time_unix_ms = now + 3_600_000;
    acked(s.next_after(sign(&key, &r1)).await, 1);
    // And one in step, on the same stream: no flag for it.
    let (key2, id2, mut s2) = raw_host(&c, &data, "raw-ontime").await;
    let mut ok = report(&id2, 1, &[], "python serve.py");
    ok.collector_nonce = s2.challenge.nonce.clone();
    ok.agent_time_unix_ms = now_ms();
    let s2_first = sign(&key2, &ok);
    acked(s2.next_after(s2_first.clone()).await, 1);

    // Report 2 that does not chain to report 1 (history rewritten, or a second agent with this key).
    let r2 = report(&id, 2, &[7; 32], "python serve.py");
    acked(s.next_after(sign(&key, &r2)).await, 2);
    // Report 2 of the honest host chains: no chain-break.
    let prev = gpuattest_proto::sha256(&s2_first.report);
    acked(s2.next_after(sign(&key2, &report(&id2, 2, &prev, "python serve.py"))).await, 2);

    // GPU change events as the agent makes them.
    let mut r3 = report(&id, 3, &gpuattest_proto::sha256(&sign(&key, &r2).report), "python serve.py");
    r3.events = vec![
        pb::Event {
            kind: "gpu_serial_changed".into(),
            gpu_uuid: "GPU-a".into(),
            detail: "1654922001234 -> 1654922009999".into(),
        },
        pb::Event { kind: "gpu_disappeared".into(), gpu_uuid: "GPU-b".into(), detail: String::new() },
    ];
    acked(s.next_after(sign(&key, &r3)).await, 3);

    let raw = host(&data, "raw-skew").expect("host")["host_id"].clone();
    let skew = rule(&data, "clock-skew");
    assert_eq!(skew.len(), 1, "{skew:?}");
    assert_eq!(skew[0]["host_id"], raw);
    assert!(skew[0]["summary"].as_str().is_some_and(|s| s.contains("ahead of")), "{skew:?}");
    let brk = rule(&data, "chain-break");
    assert_eq!(brk.len(), 1, "only the rewritten chain: {brk:?}");
    assert_eq!((brk[0]["host_id"].clone(), brk[0]["severity"].clone()), (raw.clone(), "high".into()));
    let changes = rule(&data, "gpu-change");
    let sev: Vec<(String, String)> = changes
        .iter()
        .map(|f| {
            (
                f["gpu_uuids"][0].as_str().unwrap_or_default().to_string(),
                f["severity"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(sev.len(), 2, "{changes:?}");
    assert!(
        sev.contains(&("GPU-a".into(), "high".into())) && sev.contains(&("GPU-b".into(), "medium".into())),
        "{sev:?}"
    );
}

#[test]
fn confidential_computing_gpus_attest_once_per_stream_to_the_collectors_nonce() {
    use gpuattest_tests::http_get;
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = node(t.path(), "node-cc", &[]);
    std::fs::write(&n.scenario, r#"{"seed": "node-cc", "confidential_compute": {}, "gpus": [{}, {}]}"#)
        .expect("scenario");
    let mut a = start_agent(&c.url(), &n, &token(&data, "enroll", None), "200ms", &[]);
    wait_for("reports", Duration::from_secs(30), || (reports(&data, "node-cc") >= 8).then_some(()));
    a.stop();
    let h = host(&data, "node-cc").expect("host");
    let id = h["host_id"].as_str().expect("id").to_string();
    let rev = token(&data, "reviewer", None);
    let mut with = Vec::new();
    for seq in 1..=h["last_seq"].as_u64().expect("seq") {
        let (code, body) = http_get(&c.http, &format!("/api/v1/reports/{id}/{seq}"), Some(&rev));
        assert_eq!(code, 200, "{body}");
        let r: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(r["decoded"]["confidential_compute"]["enabled"], true);
        let atts = r["decoded"]["attestations"].as_array().cloned().unwrap_or_default();
        if !atts.is_empty() {
            with.push((seq, atts));
        }
    }
    assert_eq!(with.len(), 1, "one stream, one nonce, one set of attestations: {with:?}");
    let (_, atts) = &with[0];
    assert_eq!(atts.len(), 2);
    assert!(
        atts.iter().all(|x| x["bound_to_this_report_nonce"] == true && x["report_bytes"].as_u64() > Some(32)),
        "{atts:?}"
    );
    // The simulator without an evidence directory returns a marker, not a signed SPDM report: the
    // collector's verifier refuses it, once per GPU (see `evidence` for the real format).
    let failed = rule(&data, "gpu-evidence-failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|f| f["summary"].as_str().is_some_and(|s| s.contains("GET_MEASUREMENTS"))), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_answering_another_nonce_is_flagged() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let (key, id, mut s) = raw_host(&c, &data, "raw-cc").await;
    let mut r = report(&id, 1, &[], "python serve.py");
    r.collector_nonce = s.challenge.nonce.clone();
    r.attestations = vec![pb::GpuAttestation {
        gpu_uuid: "GPU-00000000-1111-2222-3333-444444444444".into(),
        nonce: vec![9; 32],
        report: b"an old report".to_vec(),
        ..Default::default()
    }];
    acked(s.next_after(sign(&key, &r)).await, 1);
    let f = rule(&data, "gpu-evidence-failed");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["severity"], "high");
}

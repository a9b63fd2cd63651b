//! Bad input on the report stream: flipped bytes, replays, unknown keys, malformed reports, unknown
//! hosts and stolen enrollment tokens. Each is refused with a clear gRPC code, counted, and the stream
//! and collector keep serving; nothing stored changes.

use gpuattest_proto::pb::collector_message::Msg;
use gpuattest_tests::raw::{RawStream, enroll, new_key, report, sign};
use gpuattest_tests::{Collector, collector_json, host, http_get, token};
use ring::signature::KeyPair;

fn rejection(m: Msg) -> (u64, i32, String) {
    match m {
        Msg::Rejection(r) => (r.seq, r.code, r.message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_foreign_and_malformed_reports_are_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(t.path());
    let key = new_key();
    let tok = token(t.path(), "enroll", Some("acme"));
    let host_id = enroll(&c.url(), &tok, &key, "raw-host").await.expect("enroll");
    let key_id = gpuattest_proto::key_id(key.public_key().as_ref());
    let mut s = RawStream::open(&c.url(), &host_id, &key_id).await.expect("stream");
    assert_eq!(s.challenge.stored_seq, 0);
    assert_eq!(s.challenge.nonce.len(), 32);

    let r1 = report(&host_id, 1, &[], "python serve.py");
    let s1 = sign(&key, &r1);
    s.send(s1.clone()).await;
    assert!(matches!(s.next().await, Msg::Ack(a) if a.seq == 1));

    // One flipped byte in the signed bytes.
    let prev = gpuattest_proto::sha256(&s1.report);
    let mut tampered = sign(&key, &report(&host_id, 2, &prev, "python serve.py"));
    let last = tampered.report.len() - 1;
    tampered.report[last] ^= 0x01;
    let (_, code, msg) = rejection(s.next_after(tampered).await);
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(msg.contains("signature"), "{msg}");

    // The same report again.
    let (seq, code, msg) = rejection(s.next_after(s1.clone()).await);
    assert_eq!((seq, code), (1, tonic::Code::AlreadyExists as i32));
    assert!(msg.contains("replay"), "{msg}");

    // Signed by a key that is not the host's.
    let other = new_key();
    let foreign = gpuattest_proto::sign_report(&other, prost::Message::encode_to_vec(&report(&host_id, 2, &prev, "x")));
    let (_, code, _) = rejection(s.next_after(foreign).await);
    assert_eq!(code, tonic::Code::Unauthenticated as i32);

    // Validly signed garbage.
    let garbage = gpuattest_proto::sign_report(&key, vec![0xff, 0xff, 0xff, 0x01]);
    let (_, code, msg) = rejection(s.next_after(garbage).await);
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(msg.contains("not a UsageReport"), "{msg}");

    // A report naming another host.
    let wrong = sign(&key, &report("someone-else", 2, &prev, "x"));
    let (_, code, _) = rejection(s.next_after(wrong).await);
    assert_eq!(code, tonic::Code::PermissionDenied as i32);

    // The stream still works.
    let s2 = sign(&key, &report(&host_id, 2, &prev, "vllm serve deepseek-ai/DeepSeek-R1"));
    assert!(matches!(s.next_after(s2.clone()).await, Msg::Ack(a) if a.seq == 2));

    // Reports larger than those verified on the runtime's thread take the blocking path: stored when
    // good, refused when tampered, the same as small ones.
    let prev = gpuattest_proto::sha256(&s2.report);
    let long = format!("python train.py {}", "--flag=value ".repeat(2_000));
    let big = sign(&key, &report(&host_id, 3, &prev, &long));
    assert!(big.report.len() > gpuattest_collector::ingest::INLINE_REPORT_BYTES, "{}", big.report.len());
    let mut tampered = sign(&key, &report(&host_id, 4, &gpuattest_proto::sha256(&big.report), &long));
    assert!(matches!(s.next_after(big).await, Msg::Ack(a) if a.seq == 3));
    tampered.report[20] ^= 0x01;
    let (_, code, msg) = rejection(s.next_after(tampered).await);
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(msg.contains("signature"), "{msg}");

    let h = host(t.path(), "raw-host").expect("host listed");
    assert_eq!((h["reports"].as_u64(), h["last_seq"].as_u64(), h["gaps"].as_u64()), (Some(3), Some(3), Some(0)));
    assert_eq!(h["tenant"], "acme");
    let v = collector_json(t.path(), &["reports", "verify", "--json"]);
    assert_eq!((v["checked"].as_u64(), v["valid"].as_u64(), v["chain_breaks"].as_u64()), (Some(3), Some(3), Some(0)));

    // Counted, by reason.
    let (status, metrics) = http_get(&c.http, "/metrics", None);
    assert_eq!(status, 200);
    for (reason, n) in [("bad_signature", 2), ("replay", 1), ("unknown_key", 1), ("malformed", 1), ("wrong_host", 1)] {
        let line = format!("gpuattest_reports_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
    }
    assert!(metrics.contains("gpuattest_reports_accepted_total 3"));

    // The flag from the second report names host, GPU and pid.
    let flags = collector_json(t.path(), &["flags", "list", "--json"]);
    let f = &flags.as_array().expect("array")[0];
    assert_eq!((f["rule"].as_str(), f["severity"].as_str()), (Some("model-developer"), Some("high")));
    assert_eq!(f["pid"], 4242);
    assert_eq!(f["gpu_uuids"][0], "GPU-00000000-1111-2222-3333-444444444444");
    assert_eq!(f["host_id"], host_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_and_wrong_key_cannot_open_a_stream() {
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(t.path());
    let e = RawStream::open(&c.url(), "nobody-123456", &[0u8; 32]).await.err().expect("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("not enrolled"), "{}", e.message());

    let key = new_key();
    let host_id = enroll(&c.url(), &token(t.path(), "enroll", None), &key, "h").await.expect("enroll");
    let e = RawStream::open(&c.url(), &host_id, &[7u8; 32]).await.err().expect("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_enroll_token_is_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(t.path());
    let tok = token(t.path(), "enroll", None);
    enroll(&c.url(), &tok, &new_key(), "first").await.expect("first use");
    let e = enroll(&c.url(), &tok, &new_key(), "thief").await.expect_err("second use");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("already used"), "{}", e.message());
    let e = enroll(&c.url(), "gpa_made_up", &new_key(), "x").await.expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // A reviewer token is not an enroll token.
    let e = enroll(&c.url(), &token(t.path(), "reviewer", None), &new_key(), "x").await.expect_err("wrong role");
    assert!(e.message().contains("not enroll"), "{}", e.message());
}

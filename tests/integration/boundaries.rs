//! Tenant boundaries (issue 16), end to end on a running collector: two tenants whose jobs share a
//! Slurm job id stay apart (finding 1), a hand-made stream's opening message changes nothing stored
//! (finding 2), a key retired mid-stream stops signing at once (finding 3), and the authorization
//! matrix: every HTTP route (from the router's own table) x every role x own or other tenant.

use std::path::Path;
use std::time::Duration;

use gpuattest_collector::http::{ROUTES, allowed};
use gpuattest_collector::tokens::Role;
use gpuattest_proto::pb;
use gpuattest_tests::raw::{self, RawStream};
use gpuattest_tests::{Collector, Workload, collector_json, flags, http_request, token, wait_for};
use ring::signature::KeyPair;
use serde_json::Value;

use crate::streaming::{node, reports, start_agent};

fn jobs(data: &Path) -> Vec<Value> {
    collector_json(data, &["jobs", "list", "--json"]).as_array().cloned().unwrap_or_default()
}

/// A process of Slurm job 777 that names DeepSeek and a tenant-private path on its command line.
fn slurm_777(private: &str) -> Workload {
    Workload::start_with_env(
        "python3",
        &["serve.py", "--model", "deepseek-ai/DeepSeek-V3", "--data", private],
        &[("SLURM_JOB_ID", "777")],
    )
}

#[test]
fn finding_1_two_tenants_sharing_a_slurm_job_id_stay_apart() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let (wa, wg) = (slurm_777("/data/acme/private"), slurm_777("/data/globex/private"));
    let a = node(t.path(), "acme-node", &[wa.pid()]);
    let g = node(t.path(), "globex-node", &[wg.pid()]);
    let mut agents = vec![
        start_agent(&c.url(), &a, &token(&data, "enroll", Some("acme")), "200ms", &[]),
        start_agent(&c.url(), &g, &token(&data, "enroll", Some("globex")), "200ms", &[]),
    ];
    wait_for("reports from both tenants", Duration::from_secs(40), || {
        (reports(&data, "acme-node") >= 5 && reports(&data, "globex-node") >= 5).then_some(())
    });
    let all = jobs(&data);
    for tenant in ["acme", "globex"] {
        let key = format!("{tenant}|slurm:777");
        let j = all.iter().find(|j| j["job_key"] == key.as_str()).unwrap_or_else(|| panic!("{key} in {all:?}"));
        assert_eq!(j["tenant"], tenant, "{j}");
        let hosts = j["hosts"].as_array().expect("hosts");
        assert_eq!(hosts.len(), 1, "a job never spans tenants: {j}");
        assert!(hosts[0].as_str().is_some_and(|h| h.starts_with(&format!("{tenant}-node"))), "{j}");
    }
    let model_flags = |tenant: &str| -> Vec<Value> {
        flags(&data).into_iter().filter(|f| f["rule"] == "model-developer" && f["tenant"] == tenant).collect()
    };
    // Each tenant's customer sees its own flag, and nothing of the other's.
    for (tenant, other) in [("acme", "globex"), ("globex", "acme")] {
        assert!(!model_flags(tenant).is_empty(), "{tenant} has its own DeepSeek flag");
        let customer = token(&data, "customer", Some(tenant));
        let (code, body) = http_request(&c.http, "GET", "/api/v1/flags", Some(&customer), None);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("{tenant}-node")), "{body}");
        for leak in [format!("/data/{other}/private"), format!("{other}-node")] {
            assert!(!body.contains(&leak), "{tenant}'s customer sees {leak}: {body}");
        }
    }
    // A dismissed flag keeps its decision for more of the same, and shows the occurrences since.
    let f = model_flags("acme").remove(0);
    let reviewer = token(&data, "reviewer", None);
    let (code, body) = http_request(
        &c.http,
        "POST",
        &format!("/api/v1/flags/{}/decision", f["id"]),
        Some(&reviewer),
        Some(r#"{"decision": "dismiss", "reason": "licensed evaluation"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let seen = reports(&data, "acme-node");
    wait_for("more acme reports", Duration::from_secs(30), || (reports(&data, "acme-node") >= seen + 3).then_some(()));
    let shown = collector_json(&data, &["flags", "show", &f["id"].to_string(), "--json"]);
    assert_eq!(shown["flag"]["status"], "dismissed", "{shown}");
    assert!(shown["flag"]["after_decision"].as_u64().is_some_and(|n| n >= 2), "{shown}");
    for ag in &mut agents {
        ag.stop();
    }
}

fn report(host: &str, seq: u64, prev: &[u8], cmdline: &str, interval_ms: u64) -> pb::UsageReport {
    pb::UsageReport { interval_ms, ..raw::report(host, seq, prev, cmdline) }
}

/// A host enrolled for `tenant` by a raw client, its stream open and its first report (one process
/// running `cmdline`, announcing `interval_ms`) acknowledged: (key, host id, stream, that report).
async fn first_report(
    c: &Collector,
    hostname: &str,
    tenant: &str,
    cmdline: &str,
    interval_ms: u64,
) -> (ring::signature::Ed25519KeyPair, String, RawStream, pb::SignedReport) {
    let k = raw::new_key();
    let host = raw::enroll(&c.url(), &token(&c.data, "enroll", Some(tenant)), &k, hostname).await.expect("enroll");
    let key_id = gpuattest_proto::key_id(k.public_key().as_ref());
    let mut s = RawStream::open(&c.url(), &host, &key_id).await.expect("stream");
    let first = raw::sign(&k, &report(&host, 1, &[], cmdline, interval_ms));
    let ack = s.next_after(first.clone()).await;
    assert!(matches!(ack, pb::collector_message::Msg::Ack(pb::Ack { seq: 1 })), "{ack:?}");
    (k, host, s, first)
}

#[test]
fn finding_2_a_hand_made_hello_changes_nothing_stored() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let (k, host, _stream, _) = first_report(&c, "quiet-host", "acme", "python serve.py", 3_600_000).await;
        let key_id = gpuattest_proto::key_id(k.public_key().as_ref());
        // The attacker knows the host id and key id (a customer can read both) but not the key: its
        // Hello claims a 1 ms interval, which used to be stored and raise false "silent" flags.
        let _attacker = RawStream::open_with_interval(&c.url(), &host, &key_id, 1).await.expect("stream opens");
        // The silence check runs every 5 s; with the signed interval of 1 h, nothing is silent.
        tokio::time::sleep(Duration::from_secs(7)).await;
    });
    let silent: Vec<Value> = flags(&data).into_iter().filter(|f| f["rule"] == "host-silent").collect();
    assert!(silent.is_empty(), "an unauthenticated Hello changed the silence rule: {silent:?}");
}

#[test]
fn finding_3_a_key_retired_mid_stream_stops_signing_at_once() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let (old, host, mut s, s1) = first_report(&c, "rotating-host", "acme", "python train.py", 10_000).await;
        // Rotation, vouched by the old key, valid through report 1; the stream stays open.
        let new = raw::new_key();
        let sig = old.sign(&gpuattest_proto::rotation_message(&host, new.public_key().as_ref(), 1)).as_ref().to_vec();
        raw::client(&c.url())
            .await
            .rotate_key(pb::RotateKeyRequest {
                host_id: host.clone(),
                new_public_key: new.public_key().as_ref().to_vec(),
                last_seq_old_key: 1,
                signature: sig,
            })
            .await
            .expect("rotate");
        let prev = gpuattest_proto::sha256(&s1.report);
        let late = s.next_after(raw::sign(&old, &report(&host, 2, &prev, "python train.py", 10_000))).await;
        let pb::collector_message::Msg::Rejection(rej) = late else { panic!("old key after rotation: {late:?}") };
        assert_eq!(rej.code, tonic::Code::Unauthenticated as i32, "{rej:?}");
        assert!(rej.message.contains("retired"), "{rej:?}");
    });
    let v = collector_json(&data, &["reports", "verify", "--json"]);
    assert_eq!((v["checked"].as_u64(), v["valid"].as_u64()), (Some(1), Some(1)), "{v}");
}

/// The strings of one tenant that another tenant's customer must never see.
fn secrets(tenant: &str) -> [String; 2] {
    [format!("{tenant}-secret-host"), format!("/data/{tenant}/private")]
}

#[test]
fn the_authorization_matrix_holds_for_every_route_role_and_tenant() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    // Evidence of two tenants: a DeepSeek process each, with private paths, on hosts of their own.
    let hosts: Vec<(String, String)> = rt.block_on(async {
        let mut out = Vec::new();
        for tenant in ["acme", "globex"] {
            let cmd = format!("python serve.py --model deepseek-ai/DeepSeek-V3 --data /data/{tenant}/private");
            let (_, host, _, _) = first_report(&c, &format!("{tenant}-secret-host"), tenant, &cmd, 10_000).await;
            out.push((tenant.to_string(), host));
        }
        out
    });
    let flag_of = |tenant: &str| -> String {
        flags(&data).iter().find(|f| f["tenant"] == tenant).map(|f| f["id"].to_string()).expect("a flag of each tenant")
    };
    let (own_flag, other_flag) = (flag_of("acme"), flag_of("globex"));
    let (own_host, other_host) = (hosts[0].1.clone(), hosts[1].1.clone());
    let principals: Vec<(&str, Option<Role>, Option<String>)> = vec![
        ("no token", None, None),
        ("reviewer", Some(Role::Reviewer), Some(token(&data, "reviewer", None))),
        ("operator", Some(Role::Operator), Some(token(&data, "operator", None))),
        ("customer of acme", Some(Role::Customer), Some(token(&data, "customer", Some("acme")))),
    ];
    let mut checked = 0;
    for route in ROUTES {
        for other_tenant in [false, true] {
            let path = route
                .path
                .replace("{id}", if other_tenant { &other_flag } else { &own_flag })
                .replace("{host}", if other_tenant { &other_host } else { &own_host })
                .replace("{seq}", "1");
            let path = if route.path == "/api/v1/export" {
                format!("{path}?tenant={}", if other_tenant { "globex" } else { "acme" })
            } else {
                path
            };
            let body = match route.path {
                p if p.ends_with("/decision") => Some(r#"{"decision": "escalate", "reason": "matrix"}"#),
                p if p.ends_with("/assign") => Some(r#"{"assignee": "alice"}"#),
                _ => None,
            };
            for (who, role, tok) in &principals {
                let (code, text) = http_request(&c.http, route.method, &path, tok.as_deref(), body);
                let expected = match (route.action, role) {
                    (None, _) => 200,
                    (Some(_), None) => 401,
                    (Some(a), Some(r)) if !allowed(*r, a) => 403,
                    (Some(_), Some(Role::Customer)) if other_tenant && route.path == "/api/v1/export" => 403,
                    (Some(_), Some(Role::Customer)) if other_tenant && path.contains(&other_flag) => 404,
                    (Some(_), Some(Role::Customer)) if other_tenant && path.contains(&other_host) => 404,
                    _ => 200,
                };
                assert_eq!(code, expected, "{who} {} {path}: {text}", route.method);
                // Every body a token or anyone can read: no other tenant's command lines or paths,
                // and no other tenant's hostnames except on /metrics, whose per-host series name hosts
                // and tenants by the contract (an operator endpoint: the threat model says to keep it
                // off tenant networks).
                if *role == Some(Role::Customer) || role.is_none() {
                    let [hostname, private_path] = secrets("globex");
                    assert!(
                        !text.contains(&private_path),
                        "{who} {} {path} shows {private_path}: {text}",
                        route.method
                    );
                    if route.path != "/metrics" {
                        assert!(!text.contains(&hostname), "{who} {} {path} shows {hostname}: {text}", route.method);
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, ROUTES.len() * 2 * principals.len());
    // Unredacted exports are for the operator's people only.
    let customer = principals[3].2.as_deref();
    let (code, text) = http_request(&c.http, "GET", "/api/v1/export?tenant=acme&redact=false", customer, None);
    assert_eq!(code, 403, "{text}");
}

#[test]
fn finding_7_a_half_sent_request_is_cut_off() {
    use std::io::{Read, Write};
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(&t.path().join("data"));
    let mut s = std::net::TcpStream::connect(&c.http).expect("connect");
    s.write_all(b"GET /api/v1/log/head HTTP/1.1\r\nHost: x\r\n").expect("half a request");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    // The server closes (0 bytes, or a 408 and then 0) once the header timeout passes.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(20), "a half-sent request held its connection for {waited:?}");
}

#[test]
fn findings_8_and_10_the_cli_refuses_in_one_line() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    token(&data, "enroll", Some("acme"));
    let one_line = |args: &[&str]| {
        let (code, _, err) = gpuattest_tests::run(gpuattest_tests::collector_cmd(&data).args(args));
        assert_eq!(code, 64, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let e = one_line(&["token", "create", "--role", "reviewer", "--tenant", "acme"]);
    assert!(e.contains("--tenant"), "{e}");
    let out = t.path().join("x.json");
    let out = out.to_str().expect("utf-8");
    let e = one_line(&["export", "--tenant", "acme", "--since", "2026-01-01T00:00:00.a\u{20ac}Z", "--out", out]);
    assert!(e.contains("not a time"), "{e}");
}

/// Finding 5: the public tree head is cheap (it reads only new leaves) and budgeted: a flood gets 429
/// while the collector keeps answering. Finding 6: one token cannot start exports without end.
#[test]
fn findings_5_and_6_public_heads_and_exports_are_budgeted() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        first_report(&c, "budget-host", "acme", "python serve.py", 10_000).await;
    });
    // 120 requests at once (a budget of 40 plus 20/s cannot answer them all, however slow the machine).
    let codes: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..120).map(|_| scope.spawn(|| http_request(&c.http, "GET", "/api/v1/log/head", None, None).0)).collect();
        handles.into_iter().map(|h| h.join().expect("request")).collect()
    });
    assert!(codes.iter().filter(|c| **c == 200).count() >= 20, "{codes:?}");
    assert!(codes.contains(&429), "120 head requests at once were all answered: {codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    let customer = token(&data, "customer", Some("acme"));
    let codes: Vec<u16> =
        (0..12).map(|_| http_request(&c.http, "GET", "/api/v1/export", Some(&customer), None).0).collect();
    assert_eq!(&codes[..10], &[200; 10], "{codes:?}");
    assert_eq!(codes[11], 429, "{codes:?}");
    // Another token is not held up by the first one's budget.
    let other = token(&data, "customer", Some("acme"));
    assert_eq!(http_request(&c.http, "GET", "/api/v1/export", Some(&other), None).0, 200);
}

//! The review API: every role against every endpoint of the contract's table, tenant isolation for
//! customers, decisions in the audit log, and the CLI's flags show / decide.

use gpuattest_tests::{Collector, collector_cmd, demo_data, http_get, http_request, run, token};
use serde_json::Value;

#[test]
fn every_role_against_every_endpoint() {
    let t = tempfile::tempdir().expect("tmp");
    let data = demo_data(t.path());
    let c = Collector::start(&data);
    let tokens = [
        ("none", None),
        ("bogus", Some("gpa_0000".to_string())),
        ("enroll", Some(token(&data, "enroll", None))),
        ("reviewer", Some(token(&data, "reviewer", None))),
        ("operator", Some(token(&data, "operator", None))),
        ("customer", Some(token(&data, "customer", Some("acme-ai")))),
    ];
    let (_, flags) = http_get(&c.http, "/api/v1/flags", tokens[3].1.as_deref());
    let flags: Value = serde_json::from_str(&flags).expect("flags");
    let acme = |f: &&Value| f["tenant"] == "acme-ai";
    let id = flags.as_array().expect("list").iter().find(acme).and_then(|f| f["id"].as_i64()).expect("an acme flag");
    let other_id =
        flags.as_array().expect("list").iter().find(|f| !acme(f)).and_then(|f| f["id"].as_i64()).expect("another");
    let (_, hosts) = http_get(&c.http, "/api/v1/hosts", tokens[3].1.as_deref());
    let hosts: Value = serde_json::from_str(&hosts).expect("hosts");
    let host_of = |tenant: &str| {
        hosts.as_array().expect("list").iter().find(|h| h["tenant"] == tenant).expect("host")["host_id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let (acme_host, other_host) = (host_of("acme-ai"), host_of("borealis-labs"));
    let decision = r#"{"decision": "escalate", "reason": "role matrix test"}"#;
    let assign = r#"{"assignee": "alice"}"#;
    // (method, path, body, expected status per token in the order above)
    let table: [(&str, String, Option<&str>, [u16; 6]); 12] = [
        ("GET", "/api/v1/flags".into(), None, [401, 401, 401, 200, 200, 200]),
        ("POST", format!("/api/v1/flags/{id}/decision"), Some(decision), [401, 401, 401, 200, 403, 403]),
        ("GET", "/api/v1/hosts".into(), None, [401, 401, 401, 200, 200, 403]),
        ("GET", "/api/v1/audit".into(), None, [401, 401, 401, 200, 200, 403]),
        ("GET", format!("/api/v1/flags/{id}"), None, [401, 401, 401, 200, 200, 200]),
        ("GET", format!("/api/v1/flags/{other_id}"), None, [401, 401, 401, 200, 200, 404]),
        ("POST", format!("/api/v1/flags/{id}/assign"), Some(assign), [401, 401, 401, 200, 403, 403]),
        ("GET", format!("/api/v1/reports/{acme_host}/1"), None, [401, 401, 401, 200, 200, 200]),
        ("GET", format!("/api/v1/reports/{other_host}/1"), None, [401, 401, 401, 200, 200, 404]),
        ("GET", "/healthz".into(), None, [200; 6]),
        ("GET", "/metrics".into(), None, [200; 6]),
        ("GET", "/".into(), None, [200; 6]),
    ];
    for (method, path, body, expected) in &table {
        for ((who, tok), want) in tokens.iter().zip(expected) {
            let (got, text) = http_request(&c.http, method, path, tok.as_deref(), *body);
            assert_eq!(got, *want, "{method} {path} as {who}: {text}");
        }
    }
    // A customer sees only its own tenant's flags.
    let (_, own) = http_get(&c.http, "/api/v1/flags", tokens[5].1.as_deref());
    let own: Value = serde_json::from_str(&own).expect("json");
    assert!(!own.as_array().expect("list").is_empty());
    assert!(own.as_array().expect("list").iter().all(|f| f["tenant"] == "acme-ai"), "{own}");
    let other = token(&data, "customer", Some("borealis-labs"));
    let (_, theirs) = http_get(&c.http, "/api/v1/flags", Some(&other));
    let theirs: Value = serde_json::from_str(&theirs).expect("json");
    assert!(theirs.as_array().expect("list").iter().all(|f| f["tenant"] == "borealis-labs"), "{theirs}");
    // A decision needs a reason and a known decision.
    let rev = tokens[3].1.as_deref();
    assert_eq!(
        http_request(
            &c.http,
            "POST",
            &format!("/api/v1/flags/{id}/decision"),
            rev,
            Some(r#"{"decision":"dismiss","reason":"  "}"#)
        )
        .0,
        400
    );
    assert_eq!(
        http_request(
            &c.http,
            "POST",
            &format!("/api/v1/flags/{id}/decision"),
            rev,
            Some(r#"{"decision":"ignore","reason":"x"}"#)
        )
        .0,
        400
    );
    assert_eq!(http_request(&c.http, "POST", "/api/v1/flags/999999/decision", rev, Some(decision)).0, 404);
    // The decision is in the audit log and on the flag.
    let (_, audit) = http_get(&c.http, "/api/v1/audit", rev);
    assert!(audit.contains("flag.escalated") && audit.contains("role matrix test"), "{audit}");
    let (code, shown, err) = run(collector_cmd(&data).args(["flags", "show", &id.to_string(), "--json"]));
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["flag"]["status"], "escalated");
    assert_eq!(shown["decisions"][0]["detail"], "role matrix test");
}

#[test]
fn cli_decisions_are_audited_and_bad_ones_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let data = demo_data(t.path());
    let (_, list, _) = run(collector_cmd(&data).args(["flags", "list", "--json"]));
    let id = serde_json::from_str::<Value>(&list).expect("json")[0]["id"].as_i64().expect("flag").to_string();
    let (code, out, err) = run(collector_cmd(&data).args([
        "flags",
        "decide",
        &id,
        "--decision",
        "dismiss",
        "--reason",
        "licensed research use",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dismissed"));
    let (code, _, err) =
        run(collector_cmd(&data).args(["flags", "decide", &id, "--decision", "shrug", "--reason", "x"]));
    assert_eq!(code, 64);
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = run(collector_cmd(&data).args(["flags", "show", "999999"]));
    assert_eq!((code, err.lines().count()), (64, 1), "{err}");
    let (_, text, _) = run(collector_cmd(&data).args(["flags", "show", &id]));
    assert!(text.contains("flag.dismissed") && text.contains("licensed research use"), "{text}");
}

#[test]
fn the_ui_never_turns_data_into_markup() {
    // Tenant-controlled strings (command lines, model names) reach the page only through textContent,
    // under a CSP that forbids inline script.
    let js = include_str!("../../collector/src/ui/ui.js");
    assert!(
        !js.contains("innerHTML")
            && !js.contains("outerHTML")
            && !js.contains("insertAdjacentHTML")
            && !js.contains("eval(")
    );
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(t.path());
    let (status, page) = http_get(&c.http, "/", None);
    assert_eq!(status, 200);
    assert!(!page.contains("<script>") && page.contains("<script src=\"/ui.js\">"), "no inline script");
}

#[test]
fn a_revoked_token_stops_working_at_once() {
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(t.path());
    let (code, out, err) = run(collector_cmd(t.path()).args(["token", "create", "--role", "reviewer", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let (tok, id) = (v["token"].as_str().expect("token"), v["id"].as_str().expect("id"));
    assert_eq!(http_get(&c.http, "/api/v1/flags", Some(tok)).0, 200);
    let (code, _, err) = run(collector_cmd(t.path()).args(["token", "revoke", id]));
    assert_eq!(code, 0, "{err}");
    let (status, body) = http_get(&c.http, "/api/v1/flags", Some(tok));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert_eq!(run(collector_cmd(t.path()).args(["token", "revoke", id])).0, 64);
}

#[test]
fn the_ingest_benchmark_prints_the_contract_fields() {
    let (code, out, err) = run(std::process::Command::new(gpuattest_tests::bin("gpuattest-collector")).args([
        "bench",
        "--agents",
        "2",
        "--seconds",
        "1",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    for k in [
        "reports_per_second",
        "verify_ceiling_per_second",
        "ratio",
        "p50_ack_ms",
        "p99_ack_ms",
        "collector_rss_bytes",
        "agents_rss_bytes",
        "agents",
        "collector_cpu_us_per_report",
        "verify_us_per_report",
        "cpu_ratio",
        "store_threads_cpu_us_per_report",
        "cpu_ratio_without_store",
        "replicas",
    ] {
        assert!(v[k].is_number(), "{k} missing in {v}");
    }
    assert!(v["database_cpu_us_per_report"].is_null(), "the embedded store has no database process: {v}");
    assert!(v["collector_cpu_us_per_report"].as_f64().is_some_and(|c| c > 0.0), "{v}");
    assert!(v["reports"].as_u64().is_some_and(|r| r > 0), "{v}");
    let (all, store) = (v["collector_cpu_us_per_report"].as_f64(), v["store_threads_cpu_us_per_report"].as_f64());
    assert!(store <= all, "the store's threads are part of the collector: {v}");
    assert!(
        v["cpu_ratio_without_store"].as_f64() >= v["cpu_ratio"].as_f64(),
        "taking the store's share away cannot lower the ratio: {v}"
    );
    // The embedded store writes its log: where this machine shows a process's I/O, that is counted.
    if std::path::Path::new("/proc/self/io").exists() {
        assert!(v["write_bytes_per_report"].as_f64().is_some_and(|b| b > 0.0), "{v}");
    }
    assert_eq!(v["agents"], 2, "{v}");
    assert!(v["agents_rss_bytes"].as_u64().is_some_and(|r| r > 0), "the agents ran in their own process: {v}");
}

#[test]
fn the_flag_page_api_shows_reports_job_timeline_and_reverifies() {
    let t = tempfile::tempdir().expect("tmp");
    let data = demo_data(t.path());
    let c = Collector::start(&data);
    let rev = token(&data, "reviewer", None);
    let (_, flags) = http_get(&c.http, "/api/v1/flags", Some(&rev));
    let flags: Value = serde_json::from_str(&flags).expect("flags");
    let f = flags.as_array().expect("list").iter().find(|f| f["rule"] == "model-developer").expect("the DeepSeek flag");
    let id = f["id"].as_i64().expect("id");
    let (code, body) = http_get(&c.http, &format!("/api/v1/flags/{id}"), Some(&rev));
    assert_eq!(code, 200, "{body}");
    let d: Value = serde_json::from_str(&body).expect("json");
    // The two-host fine-tune: one job, judged training, with a timeline across both hosts' GPUs.
    assert_eq!(d["job"]["verdict"]["kind"], "training", "{}", d["job"]);
    assert_eq!(d["job"]["hosts"].as_array().map(Vec::len), Some(2));
    let timeline = d["timeline"].as_array().expect("timeline");
    let hosts: std::collections::BTreeSet<&str> = timeline.iter().filter_map(|p| p["host_id"].as_str()).collect();
    assert_eq!(hosts.len(), 2, "samples from both hosts");
    assert!(timeline.iter().all(|p| p["util"].as_u64().is_some() && p["energy_mj"].as_u64().is_some()));
    // Its reports, each re-verifiable now.
    let r = &d["reports"][0];
    let (code, body) = http_get(
        &c.http,
        &format!("/api/v1/reports/{}/{}", r["host_id"].as_str().expect("host"), r["seq"]),
        Some(&rev),
    );
    assert_eq!(code, 200, "{body}");
    let check: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(check["valid"], true, "{check}");
    assert_eq!(check["report_sha256"], r["report_sha256"]);
    assert!(check["decoded"]["processes"].as_array().is_some_and(|p| !p.is_empty()));
    // Assignment is recorded and audited.
    let (code, _) = http_request(
        &c.http,
        "POST",
        &format!("/api/v1/flags/{id}/assign"),
        Some(&rev),
        Some(r#"{"assignee":"alice"}"#),
    );
    assert_eq!(code, 200);
    let (_, body) = http_get(&c.http, &format!("/api/v1/flags/{id}"), Some(&rev));
    let d: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(d["flag"]["assignee"], "alice");
    assert!(d["history"].as_array().is_some_and(|h| h.iter().any(|a| a["action"] == "flag.assign")));
    // Hosts carry their GPUs and other accelerators.
    let (_, hosts) = http_get(&c.http, "/api/v1/hosts", Some(&rev));
    let hosts: Value = serde_json::from_str(&hosts).expect("json");
    let npu = hosts.as_array().expect("list").iter().find(|h| h["hostname"] == "gpu-node-03").expect("node 3");
    assert_eq!(npu["gpus"].as_array().map(Vec::len), Some(8), "{npu}");
    assert!(npu["accelerators"][0]["product"].as_str().is_some_and(|p| p.contains("Ascend")), "{npu}");
}

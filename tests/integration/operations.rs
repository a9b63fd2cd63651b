//! Operator readiness (issue 21), on real processes: SIGTERM with agents connected ends in a clean
//! exit within the grace and loses no acknowledged report; JSON logs are one object per line and text
//! logs carry no colour codes off a terminal; a revoked agent stops with exit 78 and keeps its spool.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gpuattest_tests::{Collector, collector_cmd, collector_json, host, http_get, run, token, wait_for};
use serde_json::Value;

use crate::streaming::{node, reports, start_agent};

fn sigterm(child: &Child) {
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
}

/// Waits up to `limit` for `child` to exit: its exit code and how long it took.
fn exit_within(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return (status.code(), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (None, started.elapsed())
}

#[test]
fn sigterm_with_20_connected_agents_exits_0_within_the_grace_and_loses_no_acknowledged_report() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let mut c = Collector::start_with(&data, "127.0.0.1:0", &["--shutdown-grace", "10s"]);
    let names: Vec<&'static str> = (0..20).map(|i| &*Box::leak(format!("drain-{i:02}").into_boxed_str())).collect();
    let nodes: Vec<_> = names.iter().map(|n| node(t.path(), n, &[])).collect();
    let mut agents: Vec<_> =
        nodes.iter().map(|n| start_agent(&c.url(), n, &token(&data, "enroll", Some("acme")), "500ms", &[])).collect();
    wait_for("2 reports from each of 20 agents", Duration::from_secs(120), || {
        names.iter().all(|n| reports(&data, n) >= 2).then_some(())
    });
    let (_, streams) = http_get(&c.http, "/metrics", None);
    assert!(streams.contains("gpuattest_streams_active 20"), "{streams}");
    sigterm(&c.child);
    let (code, took) = exit_within(&mut c.child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "the collector exits 0 on SIGTERM (after {took:?})");
    // The 10 s grace, plus the process's own teardown on a loaded 2-core machine.
    assert!(took < Duration::from_secs(14), "within the 10 s grace: {took:?}");
    // Every report an agent holds as acknowledged is in the store, and every stored report verifies.
    for (a, n) in agents.iter_mut().zip(&names) {
        a.kill9();
        let st = a.status();
        let h = host(&data, n).expect("host listed");
        assert!(st["acked_seq"].as_u64() <= h["last_seq"].as_u64(), "{n}: agent {st} vs stored {h}");
    }
    let v = collector_json(&data, &["reports", "verify", "--json"]);
    assert_eq!(v["checked"], v["valid"], "{v}");
}

#[test]
fn logs_are_one_json_object_per_line_and_text_logs_have_no_colour_off_a_terminal() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    token(&data, "enroll", Some("acme"));
    let log = t.path().join("collector.log");
    let mut child = collector_cmd(&data)
        .args(["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("GPUATTEST_LOG_FORMAT", "json")
        .env("GPUATTEST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("collector");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut first)
        .expect("listening line");
    let listening: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    let http = listening["fields"]["http"].as_str().expect("http address").to_string();
    assert_eq!(http_get(&http, "/readyz", None).0, 200);
    sigterm(&child);
    assert_eq!(exit_within(&mut child, Duration::from_secs(20)).0, Some(0));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
    // A fatal error in JSON mode is JSON too; in text mode, one plain line without escape codes.
    let (code, _, err) = run(collector_cmd(&data)
        .args(["serve", "--grpc-listen", "not-an-address"])
        .env("GPUATTEST_LOG_FORMAT", "json"));
    assert_ne!(code, 0);
    let v: Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("fatal line not JSON ({e}): {err}"));
    assert_eq!(v["level"], "ERROR", "{err}");
    let (_, _, err) =
        run(collector_cmd(&data).args(["serve", "--grpc-listen", "not-an-address"]).env("GPUATTEST_LOG", "info"));
    assert!(!err.contains('\u{1b}'), "escape codes off a terminal: {err:?}");
}

#[test]
fn a_revoked_agent_stops_with_exit_78_and_keeps_its_spool() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = node(t.path(), "diverted-node", &[]);
    let mut a = start_agent(&c.url(), &n, &token(&data, "enroll", Some("acme")), "200ms", &[]);
    wait_for("3 reports", Duration::from_secs(30), || (reports(&data, "diverted-node") >= 3).then_some(()));
    let h = host(&data, "diverted-node").expect("host");
    let host_id = h["host_id"].as_str().expect("id").to_string();
    let (code, _, err) = run(collector_cmd(&data).args(["hosts", "revoke", &host_id, "--reason", "diverted"]));
    assert_eq!(code, 0, "{err}");
    let (exit, took) = exit_within(&mut a.child, Duration::from_secs(20));
    assert_eq!(exit, Some(78), "the agent stops for good (after {took:?})");
    let st = a.status();
    assert_eq!(st["host_id"], host_id.as_str(), "state kept: {st}");
    assert!(n.state.join("spool").is_dir(), "the spool is kept");
    let (_, m) = http_get(&c.http, "/metrics", None);
    assert!(m.contains("gpuattest_streams_active 0"), "the revoked host's stream is closed: {m}");
}

#[test]
fn metrics_name_the_fleet_and_pass_the_linters() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = node(t.path(), "metered-node", &[]);
    let mut a = start_agent(&c.url(), &n, &token(&data, "enroll", Some("acme")), "200ms", &[]);
    wait_for("3 reports", Duration::from_secs(30), || (reports(&data, "metered-node") >= 3).then_some(()));
    a.kill9();
    let (code, text) = http_get(&c.http, "/metrics", None);
    assert_eq!(code, 200);
    gpuattest_collector::metrics::lint(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for family in [
        "gpuattest_build_info{version=",
        "gpuattest_streams_active ",
        "# TYPE gpuattest_flags_open gauge",
        "gpuattest_host_last_report_timestamp_seconds{host_id=\"metered-node-",
        "gpuattest_host_sequence_gaps{host_id=\"metered-node-",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics:\n{text}");
    }
    assert!(text.contains("tenant=\"acme\""), "{text}");
    // Prometheus's own linter, where it is installed (CI installs it: Debian's prometheus package).
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match promtool {
        Ok(mut child) => {
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
            let out = child.wait_with_output().expect("promtool");
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
        }
        Err(e) => {
            assert!(std::env::var_os("GPUATTEST_REQUIRE_PROMTOOL").is_none(), "promtool is required here: {e}");
            eprintln!("promtool not installed ({e}); /metrics checked by the built-in linter only");
        }
    }
}

#[test]
fn the_agents_local_listener_serves_its_metrics_and_health() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = node(t.path(), "self-aware-node", &[]);
    let listen = gpuattest_tests::free_addr();
    let mut a =
        start_agent(&c.url(), &n, &token(&data, "enroll", Some("acme")), "200ms", &["--metrics-listen", &listen]);
    wait_for("3 reports", Duration::from_secs(30), || (reports(&data, "self-aware-node") >= 3).then_some(()));
    let text = wait_for("the agent's /metrics", Duration::from_secs(10), || {
        let (code, text) = http_get(&listen, "/metrics", None);
        (code == 200 && text.contains("gpuattest_agent_last_ack_timestamp_seconds 1")).then_some(text)
    });
    gpuattest_collector::metrics::lint(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for family in [
        "gpuattest_agent_spool_bytes ",
        "gpuattest_agent_reports_unacked ",
        "# TYPE gpuattest_agent_nvml_errors_total counter",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert_eq!(http_get(&listen, "/healthz", None).0, 200);
    assert_eq!(http_get(&listen, "/nothing", None).0, 404);
    a.kill9();
}

/// The Grafana dashboard is a dashboard model Grafana loads (the fields its schema requires, panels
/// on the 24-column grid, unique ids) and every series it queries is one the binaries export.
#[test]
fn the_grafana_dashboard_queries_only_series_that_exist() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/gpuattest-dashboard.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    for key in ["uid", "title", "schemaVersion", "panels", "templating", "time"] {
        assert!(!d[key].is_null(), "{key} missing");
    }
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "a current schema version");
    let fleet = gpuattest_collector::metrics::FleetGauges {
        flags_open: vec![("high".into(), "r".into(), 1)],
        hosts: vec![gpuattest_collector::store::HostGauge { last_report_ms: Some(1), ..Default::default() }],
        log_unsequenced: 0,
    };
    let exported = format!(
        "{}{}{}",
        gpuattest_collector::metrics::Metrics::default().render(),
        fleet.render(),
        gpuattest_agent::metrics::AgentMetrics::default().render(0, 0)
    );
    let families: std::collections::BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate panel id: {p}");
        assert!(p["type"].is_string() && p["title"].is_string(), "{p}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24 && g["h"].as_u64().is_some() && g["y"].as_u64().is_some(), "{p}");
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("gpuattest_") || word.starts_with("process_") {
                    let family = word.strip_suffix("_bucket").unwrap_or(word);
                    assert!(families.contains(family), "panel {:?} queries {word}, which nothing exports", p["title"]);
                }
            }
        }
    }
}

/// Issue 21 item 8: the review UI and API over HTTPS, verified against the CA (openssl s_client), and
/// no plaintext answer on the same port.
#[test]
fn the_review_ui_and_api_are_served_over_https() {
    let t = tempfile::tempdir().expect("tmp");
    let pki_dir = t.path().join("pki");
    std::fs::create_dir_all(&pki_dir).expect("mkdir");
    let Some(pki) = gpuattest_tests::make_pki(&pki_dir) else { return };
    let data = t.path().join("data");
    let s = |p: &std::path::Path| p.display().to_string();
    let c = Collector::start_with(
        &data,
        "127.0.0.1:0",
        &["--http-tls-cert", &s(&pki.server.0), "--http-tls-key", &s(&pki.server.1)],
    );
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &c.http, "-servername", "localhost", "-CAfile", &s(&pki.ca)])
        .args(["-verify_return_error", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    std::io::Write::write_all(
        &mut client.stdin.take().expect("stdin"),
        b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .expect("request");
    let out = client.wait_with_output().expect("response");
    let response = String::from_utf8_lossy(&out.stdout);
    assert!(response.starts_with("HTTP/1.1 200"), "{response} {}", String::from_utf8_lossy(&out.stderr));
    assert!(response.contains("\"ready\":true"), "{response}");
    // Plaintext on the HTTPS port gets no HTTP answer.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(&c.http).expect("connect");
    plain.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    plain.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "a plaintext request was answered");
}

/// `bench` refuses what it cannot run with one line that names the flag and the range, exit 64, before
/// it starts a store, a listener or an agent.
#[test]
fn bench_refuses_bad_flags_with_one_line_naming_the_flag() {
    let t = tempfile::tempdir().expect("tmp");
    let cases: &[(&[&str], &str)] = &[
        (&["--agents", "0"], "--agents must be 1 to 100000; got 0"),
        (&["--agents", "5000000"], "--agents must be 1 to 100000"),
        (&["--seconds", "0"], "--seconds must be 1 to 86400"),
        (&["--seconds", "9999999"], "--seconds must be 1 to 86400"),
        (&["--replicas", "0"], "--replicas must be 1 to 16"),
        (&["--replicas", "99", "--database", "postgres://nowhere.invalid/x"], "--replicas must be 1 to 16"),
        (&["--replicas", "2"], "--replicas needs --database"),
        (&["--interval", "0s"], "--interval must be more than 0"),
        (&["--interval", "soon"], "--interval:"),
        (&["--interval=-1s"], "--interval:"),
        (&["--review-reports", "0"], "--review-reports must be 1 to 10000000"),
        (&["--review-reports", "99999999999"], "--review-reports must be 1 to 10000000"),
    ];
    for (args, expect) in cases {
        let (code, out, err) = run(collector_cmd(t.path()).arg("bench").args(*args));
        assert_eq!(code, 64, "bench {args:?}: {err}");
        assert!(out.is_empty(), "bench {args:?} printed {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "bench {args:?}: one line, got {err}");
        assert!(lines[0].contains(expect), "bench {args:?}: {err}");
    }
    // A value that is not a number at all is the argument parser's refusal: non-zero, naming the flag.
    let (code, _, err) = run(collector_cmd(t.path()).args(["bench", "--agents=-3"]));
    assert_ne!(code, 0);
    assert!(err.contains("--agents"), "{err}");
    assert!(std::fs::read_dir(t.path()).expect("data dir").next().is_none(), "a refused bench wrote nothing");
}

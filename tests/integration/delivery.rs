//! Delivery that loses nothing: crashes and outages on both sides, spool overflow and damage. Every
//! test ends with exact accounting from `hosts list` and the agent's `status`.

use std::time::{Duration, Instant};

use gpuattest_tests::{Collector, flags, free_addr, host, token, wait_for};

use crate::streaming::{assert_exact, node, reports, start_agent};

fn url(addr: &str) -> String {
    format!("http://{addr}")
}

#[test]
fn collector_killed_five_times_during_a_stream() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let addr = free_addr();
    let mut c = Collector::start_with(&data, &addr, &[]);
    let n = node(t.path(), "node-c", &[]);
    let mut agent = start_agent(&url(&addr), &n, &token(&data, "enroll", None), "100ms", &[]);
    for round in 1..=5u64 {
        wait_for("reports before the kill", Duration::from_secs(30), || {
            (reports(&data, "node-c") >= 5 * round).then_some(())
        });
        c.kill9();
        std::thread::sleep(Duration::from_millis(300));
        c = Collector::start_with(&data, &addr, &[]);
    }
    wait_for("reports after the last restart", Duration::from_secs(30), || {
        (reports(&data, "node-c") >= 30).then_some(())
    });
    agent.stop();
    assert_exact(&data, &agent, "node-c");
    assert!(flags(&data).iter().all(|f| f["rule"] != "sequence-gap" && f["rule"] != "chain-break"));
}

#[test]
fn collector_down_for_two_minutes_then_the_spool_drains() {
    let outage = Duration::from_secs(120);
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let addr = free_addr();
    let mut c = Collector::start_with(&data, &addr, &[]);
    let n = node(t.path(), "node-o", &[]);
    let mut agent = start_agent(&url(&addr), &n, &token(&data, "enroll", None), "200ms", &[]);
    wait_for("first reports", Duration::from_secs(30), || (reports(&data, "node-o") >= 3).then_some(()));
    c.kill9();
    std::thread::sleep(outage);
    let spooled = agent.status()["spooled"].as_u64().unwrap_or(0);
    assert!(spooled >= 400, "the agent kept observing during the outage: {spooled} spooled");
    let restarted = Instant::now();
    let _c = Collector::start_with(&data, &addr, &[]);
    wait_for("the spool to drain", Duration::from_secs(120), || {
        (agent.status()["spooled"].as_u64() == Some(0)).then_some(())
    });
    eprintln!("FIGURE: {spooled} spooled reports drained {:?} after the collector restarted", restarted.elapsed());
    agent.stop();
    assert_exact(&data, &agent, "node-o");
}

#[test]
fn spool_overflow_is_recorded_as_a_signed_gap_and_flagged() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let addr = free_addr();
    let mut c = Collector::start_with(&data, &addr, &[]);
    let n = node(t.path(), "node-s", &[]);
    let mut agent = start_agent(&url(&addr), &n, &token(&data, "enroll", None), "20ms", &["--spool-max", "64KiB"]);
    wait_for("first reports", Duration::from_secs(30), || (reports(&data, "node-s") >= 2).then_some(()));
    c.kill9();
    // 64 KiB holds a few dozen reports; observe long enough to overflow it several times.
    std::thread::sleep(Duration::from_secs(6));
    let _c = Collector::start_with(&data, &addr, &[]);
    // At a 20 ms interval there are always a report or two in flight: wait for the backlog made while
    // the collector was down, then let SIGTERM's drain deliver the rest.
    let backlog = agent.status()["last_seq"].as_u64().unwrap_or(0);
    wait_for("the backlog to be acknowledged", Duration::from_secs(60), || {
        (agent.status()["acked_seq"].as_u64() >= Some(backlog)).then_some(())
    });
    agent.stop();
    let st = agent.status();
    assert_eq!(st["spooled"], 0, "the drain on SIGTERM delivered the rest: {st}");
    let h = host(&data, "node-s").expect("host");
    assert_eq!(h["gaps"], 0, "every dropped report is covered by a gap record: {h}");
    let recorded = h["recorded_gaps"].as_u64().unwrap_or(0);
    assert!(recorded > 0, "{h}");
    assert_eq!(h["reports"].as_u64().map(|r| r + recorded), st["last_seq"].as_u64(), "{h} {st}");
    assert_eq!(h["last_seq"], st["last_seq"]);
    let gap_flags: Vec<_> = flags(&data).into_iter().filter(|f| f["rule"] == "sequence-gap").collect();
    assert!(gap_flags.iter().any(|f| f["summary"].as_str().is_some_and(|s| s.contains("dropped"))), "{gap_flags:?}");
}

#[test]
fn a_damaged_spool_segment_is_detected_and_the_rest_delivered() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let addr = free_addr();
    let mut c = Collector::start_with(&data, &addr, &[]);
    let n = node(t.path(), "node-d", &[]);
    let tok = token(&data, "enroll", None);
    let mut agent = start_agent(&url(&addr), &n, &tok, "100ms", &[]);
    wait_for("first reports", Duration::from_secs(30), || (reports(&data, "node-d") >= 2).then_some(()));
    c.kill9();
    wait_for("reports to spool", Duration::from_secs(30), || {
        (agent.status()["spooled"].as_u64() >= Some(20)).then_some(())
    });
    agent.kill9();
    // Flip one byte inside a record in the middle of the spool.
    let seg = std::fs::read_dir(n.state.join("spool"))
        .expect("spool dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&seg, bytes).expect("write segment");
    let _c = Collector::start_with(&data, &addr, &[]);
    let mut agent = start_agent(&url(&addr), &n, &tok, "100ms", &[]);
    wait_for("the spool to drain", Duration::from_secs(60), || {
        (agent.status()["spooled"].as_u64() == Some(0)).then_some(())
    });
    agent.stop();
    let st = agent.status();
    let h = host(&data, "node-d").expect("host");
    assert_eq!(h["gaps"], 0, "the damage is accounted for by a signed gap record: {h}");
    let recorded = h["recorded_gaps"].as_u64().unwrap_or(0);
    assert!(recorded >= 1, "{h}");
    assert_eq!(h["reports"].as_u64().map(|r| r + recorded), st["last_seq"].as_u64(), "{h} {st}");
}

#[test]
fn a_revoked_host_is_cut_off_at_once() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = node(t.path(), "node-v", &[]);
    let mut agent = start_agent(&c.url(), &n, &token(&data, "enroll", None), "100ms", &[]);
    wait_for("first reports", Duration::from_secs(30), || (reports(&data, "node-v") >= 3).then_some(()));
    let host_id = host(&data, "node-v").expect("host")["host_id"].as_str().expect("id").to_string();
    let (code, _, err) = gpuattest_tests::run(gpuattest_tests::collector_cmd(&data).args([
        "hosts",
        "revoke",
        &host_id,
        "--reason",
        "chip diverted",
    ]));
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(2));
    let before = reports(&data, "node-v");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reports(&data, "node-v"), before, "no report is stored after revocation");
    assert_eq!(host(&data, "node-v").expect("host")["revoked"], true);
    agent.kill9();
}

/// A throwaway PKI in `dir/pki` and a collector on `dir/data` that requires client certificates
/// signed by its CA: (PKI, collector, its `https://localhost:PORT` URL). `None` without openssl.
fn mtls_collector(dir: &std::path::Path) -> Option<(gpuattest_tests::Pki, Collector, String)> {
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir).expect("mkdir");
    let pki = gpuattest_tests::make_pki(&pki_dir)?;
    let s = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca) = (s(&pki.server.0), s(&pki.server.1), s(&pki.ca));
    let c = Collector::start_with(
        &dir.join("data"),
        "127.0.0.1:0",
        &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca, "--require-client-cert"],
    );
    let port = c.grpc.rsplit(':').next().expect("port").to_string();
    Some((pki, c, format!("https://localhost:{port}")))
}

#[test]
fn mtls_required_refuses_agents_without_a_client_certificate() {
    let t = tempfile::tempdir().expect("tmp");
    let Some((pki, c, https)) = mtls_collector(t.path()) else { return };
    let data = c.data.clone();
    let s = |p: &std::path::Path| p.display().to_string();
    let ca = s(&pki.ca);

    let bare = node(t.path(), "node-bare", &[]);
    let mut refused = start_agent(&https, &bare, &token(&data, "enroll", None), "100ms", &["--tls-ca", &ca]);
    let withcert = node(t.path(), "node-mtls", &[]);
    let (ccert, ckey) = (s(&pki.client.0), s(&pki.client.1));
    let mut agent = start_agent(
        &https,
        &withcert,
        &token(&data, "enroll", None),
        "100ms",
        &["--tls-ca", &ca, "--tls-cert", &ccert, "--tls-key", &ckey],
    );
    wait_for("reports over mTLS", Duration::from_secs(30), || (reports(&data, "node-mtls") >= 5).then_some(()));
    agent.stop();
    assert_exact(&data, &agent, "node-mtls");
    assert!(host(&data, "node-bare").is_none(), "an agent without a client certificate never enrolls");
    assert_eq!(gpuattest_tests::agent_status(&bare.state)["host_id"], serde_json::Value::Null);
    refused.kill9();
}

#[test]
fn plaintext_off_loopback_is_refused_by_both_sides() {
    let t = tempfile::tempdir().expect("tmp");
    let (code, _, err) = gpuattest_tests::run(gpuattest_tests::collector_cmd(t.path()).args([
        "serve",
        "--grpc-listen",
        "0.0.0.0:0",
        "--http-listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("refusing plaintext gRPC on 0.0.0.0:0") && err.lines().count() == 1, "{err}");
    let (code, _, err) =
        gpuattest_tests::run(std::process::Command::new(gpuattest_tests::bin("gpuattest-agent")).args([
            "run",
            "--collector",
            "http://192.0.2.10:7443",
            "--state-dir",
            "/nonexistent",
            "--check-config",
        ]));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("loopback") && err.contains("192.0.2.10"), "{err}");
}

#[test]
fn key_rotation_keeps_spooled_reports_valid_and_history_verifiable() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let addr = free_addr();
    let mut c = Collector::start_with(&data, &addr, &[]);
    let n = node(t.path(), "node-k", &[]);
    let tok = token(&data, "enroll", None);
    let mut agent = start_agent(&url(&addr), &n, &tok, "100ms", &[]);
    wait_for("first reports", Duration::from_secs(30), || (reports(&data, "node-k") >= 3).then_some(()));
    // Leave reports signed by the old key in the spool.
    c.kill9();
    wait_for("reports to spool", Duration::from_secs(30), || {
        (agent.status()["spooled"].as_u64() >= Some(5)).then_some(())
    });
    agent.kill9();
    let old_key = agent.status()["key_id"].clone();
    let _c = Collector::start_with(&data, &addr, &[]);
    // From the daemon's own config file: no flag repeated.
    let config = t.path().join("agent.toml");
    std::fs::write(&config, format!("collector = [\"{}\"]\nstate_dir = \"{}\"\n", url(&addr), n.state.display()))
        .expect("config");
    let (code, out, err) = gpuattest_tests::run(
        std::process::Command::new(gpuattest_tests::bin("gpuattest-agent"))
            .args(["rotate-key", "--config"])
            .arg(&config),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("key rotated"), "{out}");
    let mut agent = start_agent(&url(&addr), &n, &tok, "100ms", &[]);
    assert_ne!(agent.status()["key_id"], old_key);
    wait_for("new-key reports", Duration::from_secs(30), || {
        (agent.status()["spooled"].as_u64() == Some(0)).then_some(())
    });
    let before = reports(&data, "node-k");
    wait_for("more reports", Duration::from_secs(30), || (reports(&data, "node-k") >= before + 3).then_some(()));
    agent.stop();
    assert_exact(&data, &agent, "node-k");
    let v = gpuattest_tests::collector_json(&data, &["reports", "verify", "--json"]);
    assert_eq!(v["checked"], v["valid"], "history signed by both keys re-verifies: {v}");
    assert_eq!(v["chain_breaks"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_not_signed_by_the_current_key_is_refused() {
    use gpuattest_tests::raw::{client, enroll, new_key};
    use ring::signature::KeyPair;
    let t = tempfile::tempdir().expect("tmp");
    let c = Collector::start(t.path());
    let key = new_key();
    let host_id = enroll(&c.url(), &token(t.path(), "enroll", None), &key, "rot").await.expect("enroll");
    let (thief, next) = (new_key(), new_key());
    let msg = gpuattest_proto::rotation_message(&host_id, next.public_key().as_ref(), 0);
    let e = client(&c.url())
        .await
        .rotate_key(gpuattest_proto::pb::RotateKeyRequest {
            host_id: host_id.clone(),
            new_public_key: next.public_key().as_ref().to_vec(),
            last_seq_old_key: 0,
            signature: thief.sign(&msg).as_ref().to_vec(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let ok = client(&c.url())
        .await
        .rotate_key(gpuattest_proto::pb::RotateKeyRequest {
            host_id,
            new_public_key: next.public_key().as_ref().to_vec(),
            last_seq_old_key: 0,
            signature: key.sign(&msg).as_ref().to_vec(),
        })
        .await
        .expect("the current key may vouch");
    assert_eq!(ok.into_inner().new_key_id, gpuattest_proto::key_id(next.public_key().as_ref()).to_vec());
}

#[test]
fn re_enrolling_a_known_machine_needs_an_operator() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let first = node(t.path(), "node-re", &[]);
    let mut a = start_agent(&c.url(), &first, &token(&data, "enroll", None), "100ms", &[]);
    wait_for("first reports", Duration::from_secs(30), || (reports(&data, "node-re") >= 2).then_some(()));
    a.stop();
    // The same machine, its state wiped, tries again with a new token.
    std::fs::remove_dir_all(&first.state).expect("wipe state");
    let tok = token(&data, "enroll", None);
    let mut again = start_agent(&c.url(), &first, &tok, "100ms", &[]);
    let status = wait_for("the refusal", Duration::from_secs(20), || again.child.try_wait().ok().flatten());
    assert!(!status.success(), "the agent gives up on a refused enrollment");
    let old = host(&data, "node-re").expect("host")["host_id"].as_str().expect("id").to_string();
    let (code, _, err) = gpuattest_tests::run(gpuattest_tests::collector_cmd(&data).args([
        "hosts",
        "revoke",
        &old,
        "--reason",
        "reinstalled",
    ]));
    assert_eq!(code, 0, "{err}");
    let mut third = start_agent(&c.url(), &first, &tok, "100ms", &[]);
    wait_for("the new identity's reports", Duration::from_secs(30), || {
        gpuattest_tests::hosts(&data)
            .iter()
            .any(|h| h["hostname"] == "node-re" && h["revoked"] == false && h["reports"].as_u64() >= Some(2))
            .then_some(())
    });
    third.stop();
    again.kill9();
}

/// Issue 21 item 8: with mTLS, a host is bound to its client certificate's key at enrollment; a
/// second node presenting the first node's certificate cannot enroll, and the first host's identity
/// cannot stream over another node's certificate.
#[test]
fn mtls_binds_each_host_to_its_own_client_certificate() {
    let t = tempfile::tempdir().expect("tmp");
    let Some((pki, c, https)) = mtls_collector(t.path()) else { return };
    let data = c.data.clone();
    let s = |p: &std::path::Path| p.display().to_string();
    let ca = s(&pki.ca);
    let first_cert = ["--tls-ca", &ca, "--tls-cert", &s(&pki.client.0), "--tls-key", &s(&pki.client.1)];
    let second_cert = ["--tls-ca", &ca, "--tls-cert", &s(&pki.client2.0), "--tls-key", &s(&pki.client2.1)];
    let one = node(t.path(), "node-one", &[]);
    let mut a = start_agent(&https, &one, &token(&data, "enroll", None), "100ms", &first_cert);
    wait_for("reports over mTLS", Duration::from_secs(30), || (reports(&data, "node-one") >= 3).then_some(()));
    // Another node (its own Ed25519 key) with node-one's certificate: refused at enrollment.
    let two = node(t.path(), "node-two", &[]);
    let mut b = start_agent(&https, &two, &token(&data, "enroll", None), "100ms", &first_cert);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Ok(Some(st)) = b.child.try_wait() {
            break st.code();
        }
        assert!(std::time::Instant::now() < deadline, "the second node was neither refused nor stopped");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(exit, Some(0));
    assert!(host(&data, "node-two").is_none(), "a second host with the first host's certificate never enrolls");
    // node-one's identity over node-two's certificate: its stream is refused, nothing more is stored.
    a.kill9();
    let stored = reports(&data, "node-one");
    let mut a2 = start_agent(&https, &one, "", "100ms", &second_cert);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(reports(&data, "node-one"), stored, "a stream over another node's certificate stored reports");
    a2.kill9();
    b.kill9();
}

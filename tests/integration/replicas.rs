//! Several collector replicas on one PostgreSQL store: an agent that fails over from a killed replica
//! never gets a report stored twice, flags are not duplicated, and a decision made on one replica is
//! what every other one shows.

use std::path::Path;
use std::time::Duration;

use gpuattest_collector::export::keys::{SignedHead, public_key_from_pem};
use gpuattest_collector::tools::scratch::ScratchSchema;
use gpuattest_tests::{Agent, AgentSpec, Collector, Workload, collector_cmd, http_get, http_request, run, wait_for};
use serde_json::Value;

use crate::streaming::node;

/// A collector command on the shared store, printing JSON.
fn shared(data: &Path, url: &str, args: &[&str]) -> Value {
    let (code, out, err) = run(collector_cmd(data).arg("--database").arg(url).args(args));
    assert_eq!(code, 0, "gpuattest-collector {args:?} --database failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed non-JSON ({e}): {out}"))
}

fn host_row(hosts: &Value, name: &str) -> Option<Value> {
    hosts.as_array()?.iter().find(|h| h["hostname"] == name).cloned()
}

/// The node's agent, reporting every 100 ms to `collectors` (failover in that order).
fn start(n: &crate::streaming::Node, collectors: Vec<String>, tok: &Value) -> Agent {
    Agent::start(&AgentSpec {
        collectors,
        token: tok["token"].as_str().expect("token"),
        state_dir: &n.state,
        scenario: &n.scenario,
        hostname: n.name,
        sys_root: &n.sys,
        interval: "100ms",
        extra: &[],
    })
}

/// One export key for every replica, as a mounted Secret would be (group-readable): its file and
/// public PEM.
fn export_key(dir: &Path) -> (std::path::PathBuf, String) {
    let keys = dir.join("keys");
    let (code, pem, err) = run(collector_cmd(&keys).arg("export-key"));
    assert_eq!(code, 0, "{err}");
    let key = keys.join("keys/export.pk8");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o440)).expect("chmod");
    (key, pem)
}

fn stored(data: &Path, url: &str, name: &str) -> u64 {
    host_row(&shared(data, url, &["hosts", "list", "--json"]), name).and_then(|h| h["reports"].as_u64()).unwrap_or(0)
}

#[test]
fn two_replicas_share_one_postgres_and_an_agent_fails_over_without_duplicates() {
    let Some(db) = ScratchSchema::or_skip("two collector replicas") else { return };
    let t = tempfile::tempdir().expect("tmp");
    let (data_a, data_b) = (t.path().join("replica-a"), t.path().join("replica-b"));
    let args = ["--database", db.url.as_str()];
    let (shared_key, pem) = export_key(t.path());
    let env = [("GPUATTEST_EXPORT_KEY", shared_key.as_path())];
    let mut a = Collector::start_env(&data_a, "127.0.0.1:0", &args, &env);
    let b = Collector::start_env(&data_b, "127.0.0.1:0", &args, &env);

    let tok = shared(&data_a, &db.url, &["token", "create", "--role", "enroll", "--tenant", "tenant-a", "--json"]);
    let trainer =
        Workload::start("python3", &["-m", "torch.distributed.run", "train.py", "--model", "deepseek-ai/DeepSeek-V3"]);
    let n = node(t.path(), "node-f", &[trainer.pid()]);
    let mut agent = start(&n, vec![a.url(), b.url()], &tok);
    // A second host writes through replica B at the same time.
    let g = node(t.path(), "node-g", &[]);
    let tok_g = shared(&data_b, &db.url, &["token", "create", "--role", "enroll", "--tenant", "tenant-b", "--json"]);
    let mut agent_g = start(&g, vec![b.url()], &tok_g);
    wait_for("reports through replica A", Duration::from_secs(30), || {
        (stored(&data_b, &db.url, "node-f") >= 10).then_some(())
    });
    // Replica A dies mid-stream; the agent's unacknowledged reports go to B.
    a.kill9();
    let at_kill = stored(&data_b, &db.url, "node-f");
    wait_for("reports through replica B", Duration::from_secs(30), || {
        (stored(&data_b, &db.url, "node-f") >= at_kill + 10).then_some(())
    });
    agent.stop();
    agent_g.stop();
    let st = agent.status();
    assert_eq!(st["spooled"], 0, "{st}");
    assert_eq!(st["acked_seq"], st["last_seq"], "{st}");

    // Replica A comes back; both replicas show every report once and no gaps.
    let a = Collector::start_env(&data_a, "127.0.0.1:0", &args, &env);
    let operator = shared(&data_a, &db.url, &["token", "create", "--role", "operator", "--json"]);
    let operator = operator["token"].as_str().expect("token");
    for (name, c) in [("A", &a), ("B", &b)] {
        let (code, body) = http_get(&c.http, "/api/v1/hosts", Some(operator));
        assert_eq!(code, 200, "{name}: {body}");
        let h = host_row(&serde_json::from_str(&body).expect("json"), "node-f").expect("host listed");
        assert_eq!(h["last_seq"], st["last_seq"], "replica {name}: {h} vs agent {st}");
        assert_eq!(h["reports"], st["last_seq"], "replica {name}: every report stored once: {h}");
        assert_eq!(h["gaps"], 0, "replica {name}: {h}");
    }
    let sg = agent_g.status();
    let hg = host_row(&shared(&data_a, &db.url, &["hosts", "list", "--json"]), "node-g").expect("node-g");
    assert_eq!((hg["reports"].clone(), hg["gaps"].clone()), (sg["last_seq"].clone(), 0.into()), "{hg} vs {sg}");
    let v = shared(&data_b, &db.url, &["reports", "verify", "--json"]);
    let both = st["last_seq"].as_u64().unwrap_or(0) + sg["last_seq"].as_u64().unwrap_or(0);
    assert_eq!((v["checked"].as_u64(), v["chain_breaks"].as_u64()), (Some(both), Some(0)), "{v}");
    assert_eq!(v["checked"], v["valid"], "{v}");

    // The DeepSeek job raised one flag, though both replicas evaluated its reports.
    let flags = shared(&data_a, &db.url, &["flags", "list", "--json"]);
    let flags = flags.as_array().expect("flags");
    let deepseek: Vec<&Value> = flags.iter().filter(|f| f["rule"] == "model-developer").collect();
    assert_eq!(deepseek.len(), 1, "{flags:?}");
    let mut keys: Vec<(String, String, String)> =
        flags.iter().map(|f| (f["rule"].to_string(), f["host_id"].to_string(), f["summary"].to_string())).collect();
    let all = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all, "no flag twice: {flags:?}");
    let id = deepseek[0]["id"].as_i64().expect("id");

    // Both replicas sign the same log head with the one shared key.
    let public = public_key_from_pem(&pem).expect("export key PEM");
    // The sequencer (one of the two, elected) gives the last reports their log indexes apart from
    // their commit: wait until both heads cover every report.
    let heads: Vec<SignedHead> = wait_for("both heads to cover every report", Duration::from_secs(10), || {
        let heads: Vec<SignedHead> = [&a, &b]
            .iter()
            .map(|c| {
                let (code, body) = http_get(&c.http, "/api/v1/log/head", None);
                assert_eq!(code, 200, "{body}");
                serde_json::from_str(&body).expect("head")
            })
            .collect();
        heads.iter().all(|h| h.tree_size == both).then_some(heads)
    });
    assert_eq!((heads[0].tree_size, &heads[0].root_hash), (heads[1].tree_size, &heads[1].root_hash));
    assert_eq!(heads[0].tree_size, both);
    for h in &heads {
        h.verify(&public).expect("signed with the shared key");
    }
    assert!(deepseek[0]["occurrences"].as_u64().is_some_and(|n| n >= 15), "{}", deepseek[0]);

    // A decision on replica B is what replica A shows.
    let reviewer = shared(&data_b, &db.url, &["token", "create", "--role", "reviewer", "--json"]);
    let reviewer = reviewer["token"].as_str().expect("token");
    let (code, body) = http_request(
        &b.http,
        "POST",
        &format!("/api/v1/flags/{id}/decision"),
        Some(reviewer),
        Some(r#"{"decision": "escalate", "reason": "DeepSeek-V3 fine-tune for a restricted party"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&a.http, &format!("/api/v1/flags/{id}"), Some(reviewer));
    assert_eq!(code, 200, "{body}");
    let f: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(f["flag"]["status"], "escalated", "{f}");
}

/// The database drops the collector's session mid-stream (a failover, an administrator's
/// pg_terminate_backend): the batch in flight fails, the agents resend it, the collector reconnects,
/// and nothing is lost or stored twice.
#[test]
fn a_dropped_database_session_loses_nothing() {
    let Some(db) = ScratchSchema::or_skip("dropped database session") else { return };
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let app = format!("gpuattest-drop-{}", std::process::id());
    let url = format!("{}&application_name={app}", db.url);
    let c = Collector::start_with(&data, "127.0.0.1:0", &["--database", &url]);
    let tok = shared(&data, &url, &["token", "create", "--role", "enroll", "--json"]);
    let n = node(t.path(), "node-d", &[]);
    let mut agent = start(&n, vec![c.url()], &tok);
    let terminate = || -> u64 {
        let (code, out, err) = run(std::process::Command::new("psql").arg(&db.url).args([
            "-Atc",
            &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"),
        ]));
        assert_eq!(code, 0, "psql: {err}");
        out.trim().parse().unwrap_or(0)
    };
    for round in 1..=3u64 {
        wait_for("reports before the session is dropped", Duration::from_secs(30), || {
            (stored(&data, &db.url, "node-d") >= 8 * round).then_some(())
        });
        let killed = terminate();
        assert!(killed >= 1, "round {round}: the collector's session was found and dropped");
    }
    wait_for("reports after the last drop", Duration::from_secs(30), || {
        (stored(&data, &db.url, "node-d") >= 32).then_some(())
    });
    agent.stop();
    let st = agent.status();
    let h = host_row(&shared(&data, &db.url, &["hosts", "list", "--json"]), "node-d").expect("host");
    assert_eq!((st["spooled"].as_u64(), st["acked_seq"].clone()), (Some(0), st["last_seq"].clone()), "{st}");
    assert_eq!((h["reports"].clone(), h["gaps"].clone()), (st["last_seq"].clone(), 0.into()), "{h} vs {st}");
    drop(c);
}

/// One `psql` query on the scratch schema, its rows as text.
fn psql(url: &str, query: &str) -> String {
    let (code, out, err) = run(std::process::Command::new("psql").arg(url).args(["-Atc", query]));
    assert_eq!(code, 0, "psql {query}: {err}");
    out.trim().to_string()
}

/// While one host's report transaction is held open on replica A (its host row locked, as a commit
/// stuck mid-way holds it), another host's reports commit through replica B; the held host's own
/// reports wait (its order is its row's), and go on once the transaction ends. With the store-wide
/// lock every write transaction took before, B's reports waited too.
#[test]
fn a_held_transaction_of_one_host_does_not_hold_up_another_host_on_another_replica() {
    let Some(db) = ScratchSchema::or_skip("held host transaction") else { return };
    let t = tempfile::tempdir().expect("tmp");
    let (data_a, data_b) = (t.path().join("replica-a"), t.path().join("replica-b"));
    let a = Collector::start_with(&data_a, "127.0.0.1:0", &["--database", &db.url]);
    let b = Collector::start_with(&data_b, "127.0.0.1:0", &["--database", &db.url]);
    let tok = shared(&data_a, &db.url, &["token", "create", "--role", "enroll", "--json"]);
    let (na, nb) = (node(t.path(), "node-held", &[]), node(t.path(), "node-free", &[]));
    let mut agent_a = start(&na, vec![a.url()], &tok);
    let tok_b = shared(&data_b, &db.url, &["token", "create", "--role", "enroll", "--json"]);
    let mut agent_b = start(&nb, vec![b.url()], &tok_b);
    wait_for("both hosts reporting", Duration::from_secs(30), || {
        (stored(&data_a, &db.url, "node-held") >= 3 && stored(&data_a, &db.url, "node-free") >= 3).then_some(())
    });

    // A session of our own locks node-held's row and keeps its transaction open.
    let app = format!("gpuattest-holder-{}", std::process::id());
    let mut holder = std::process::Command::new("psql")
        .arg(format!("{}&application_name={app}", db.url))
        .args(["-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let mut stdin = holder.stdin.take().expect("stdin");
    std::io::Write::write_all(
        &mut stdin,
        b"BEGIN;\nSELECT host_id FROM hosts WHERE hostname = 'node-held' FOR UPDATE;\n",
    )
    .expect("send");
    wait_for("the holder to hold the row", Duration::from_secs(10), || {
        let state = psql(
            &db.url,
            &format!("SELECT state || ' ' || query FROM pg_stat_activity WHERE application_name = '{app}'"),
        );
        (state.starts_with("idle in transaction") && state.contains("FOR UPDATE")).then_some(())
    });
    let (held_at, free_at) = (stored(&data_a, &db.url, "node-held"), stored(&data_a, &db.url, "node-free"));
    wait_for("the other host's reports committing through replica B", Duration::from_secs(15), || {
        (stored(&data_a, &db.url, "node-free") >= free_at + 10).then_some(())
    });
    assert_eq!(stored(&data_a, &db.url, "node-held"), held_at, "the held host's reports wait for its row");

    std::io::Write::write_all(&mut stdin, b"COMMIT;\n").expect("commit");
    drop(stdin);
    assert!(holder.wait().expect("psql").success());
    wait_for("the held host's reports after the release", Duration::from_secs(30), || {
        (stored(&data_a, &db.url, "node-held") >= held_at + 5).then_some(())
    });
    agent_a.stop();
    agent_b.stop();
    for (agent, name) in [(&agent_a, "node-held"), (&agent_b, "node-free")] {
        let st = agent.status();
        let h = host_row(&shared(&data_b, &db.url, &["hosts", "list", "--json"]), name).expect("host");
        assert_eq!((h["reports"].clone(), h["gaps"].clone()), (st["last_seq"].clone(), 0.into()), "{h} vs {st}");
    }
    drop((a, b));
}

/// The replica that sequences the transparency log is killed (kill -9) while agents stream through
/// both replicas: the other replica is elected, every acknowledged report is sequenced exactly once,
/// the log is dense, and a consistency proof shows the log after the failover extends the head signed
/// before it.
#[test]
fn the_sequencers_replica_killed_mid_batch_loses_and_repeats_no_log_entry() {
    let Some(db) = ScratchSchema::or_skip("sequencer failover") else { return };
    let t = tempfile::tempdir().expect("tmp");
    let (key, pem) = export_key(t.path());
    let env = [("GPUATTEST_EXPORT_KEY", key.as_path())];
    let args = ["--database", db.url.as_str()];
    let dirs = [t.path().join("replica-1"), t.path().join("replica-2")];
    let mut replicas = [
        Some(Collector::start_env(&dirs[0], "127.0.0.1:0", &args, &env)),
        Some(Collector::start_env(&dirs[1], "127.0.0.1:0", &args, &env)),
    ];
    let urls: Vec<String> = replicas.iter().flatten().map(Collector::url).collect();
    let tok = shared(&dirs[0], &db.url, &["token", "create", "--role", "enroll", "--uses", "4", "--json"]);
    let mut agents: Vec<(Agent, String)> = (0..4)
        .map(|i| {
            let name = format!("node-s{i}");
            let n = node(t.path(), Box::leak(name.clone().into_boxed_str()), &[]);
            // Half the agents start on each replica; each fails over to the other.
            let order = if i % 2 == 0 { urls.clone() } else { urls.iter().rev().cloned().collect() };
            (start(&n, order, &tok), name)
        })
        .collect();
    wait_for("reports from every host", Duration::from_secs(30), || {
        agents.iter().all(|(_, n)| stored(&dirs[1], &db.url, n) >= 5).then_some(())
    });
    // Which replica sequences: the one whose sequencer session holds the election lock.
    let pids: Vec<u32> = replicas.iter().flatten().map(|c| c.child.id()).collect();
    let leader = || -> Option<usize> {
        let names = psql(
            &db.url,
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'gpuattest-sequencer-%'",
        );
        pids.iter().position(|p| names.lines().any(|n| n == format!("gpuattest-sequencer-{p}")))
    };
    let first = wait_for("a sequencer elected", Duration::from_secs(10), leader);
    let survivor = 1 - first;
    let head = |c: &Collector| -> SignedHead {
        let (code, body) = http_get(&c.http, "/api/v1/log/head", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("head")
    };
    let before = head(replicas[survivor].as_ref().expect("running"));
    assert!(before.tree_size > 0, "the log is being sequenced before the kill: {before:?}");
    // Killed while its passes run back to back under the agents' load.
    replicas[first].as_mut().expect("running").kill9();
    replicas[first] = None;
    let took = std::time::Instant::now();
    wait_for("the other replica elected", Duration::from_secs(10), || (leader() == Some(survivor)).then_some(()));
    let failover = took.elapsed();
    let at_kill: Vec<u64> = agents.iter().map(|(_, n)| stored(&dirs[1], &db.url, n)).collect();
    wait_for("every host reporting through the survivor", Duration::from_secs(30), || {
        agents.iter().zip(&at_kill).all(|((_, n), k)| stored(&dirs[1], &db.url, n) >= k + 5).then_some(())
    });
    let mut acknowledged = 0;
    for (agent, _) in &mut agents {
        agent.stop();
        let st = agent.status();
        assert_eq!(st["acked_seq"], st["last_seq"], "{st}");
        acknowledged += st["last_seq"].as_u64().expect("last_seq");
    }
    // The survivor sequences what the dead one left queued (its pass rolled back with its session).
    let v = wait_for("every report sequenced", Duration::from_secs(15), || {
        let v = shared(&dirs[1], &db.url, &["reports", "verify", "--json"]);
        (v["unsequenced"] == 0).then_some(v)
    });
    assert_eq!((v["checked"].as_u64(), v["valid"].as_u64()), (Some(acknowledged), Some(acknowledged)), "{v}");
    assert_eq!((v["sequenced"].as_u64(), v["unlogged"].as_u64()), (Some(acknowledged), Some(0)), "{v}");
    let dense =
        psql(&db.url, "SELECT count(*) || ' ' || max(idx) || ' ' || count(DISTINCT (host_id, seq)) FROM log_leaves");
    assert_eq!(dense, format!("{acknowledged} {acknowledged} {acknowledged}"), "dense, each report once");
    let after = head(replicas[survivor].as_ref().expect("running"));
    assert_eq!(after.tree_size, acknowledged);

    // The log after the failover extends the head the survivor signed before it.
    let proof_file = t.path().join("consistency.json");
    let (code, proof, err) = run(collector_cmd(&dirs[1])
        .args(["--database", &db.url, "log", "consistency", "--from", &before.tree_size.to_string()])
        .env("GPUATTEST_EXPORT_KEY", &key));
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&proof).expect("proof");
    assert_eq!(p["from"]["root_hash"], serde_json::to_value(&before.root_hash).expect("root"), "{p}");
    std::fs::write(&proof_file, &proof).expect("write");
    let pem_file = t.path().join("export.pem");
    std::fs::write(&pem_file, &pem).expect("pem");
    let (code, out, err) =
        run(collector_cmd(&dirs[1]).arg("log").arg("verify-consistency").arg(&proof_file).arg("--key").arg(&pem_file));
    assert_eq!(code, 0, "{out}{err}");
    eprintln!(
        "sequencer failover: replica {} killed at log size {}; replica {} elected in {:?}; {} reports, log dense",
        first + 1,
        before.tree_size,
        survivor + 1,
        failover,
        acknowledged
    );
}

//! Real agents on the simulated NVML library streaming to a real collector.

use std::time::Duration;

use gpuattest_tests::{
    Agent, AgentSpec, Collector, Workload, collector_json, flags, host, token, wait_for, write_scenario, write_sysfs,
};

/// A simulated GPU host: its name, agent state directory, scenario and sysfs tree.
pub(crate) struct Node {
    pub(crate) name: &'static str,
    pub(crate) state: std::path::PathBuf,
    pub(crate) scenario: std::path::PathBuf,
    pub(crate) sys: std::path::PathBuf,
}

pub(crate) fn node(dir: &std::path::Path, name: &'static str, pids: &[u32]) -> Node {
    let n = Node {
        name,
        state: dir.join(name).join("state"),
        scenario: dir.join(name).join("scenario.json"),
        sys: dir.join(name).join("sys"),
    };
    std::fs::create_dir_all(dir.join(name)).expect("mkdir");
    write_scenario(&n.scenario, name, 4, pids);
    write_sysfs(&n.sys, &[]);
    n
}

fn start(c: &Collector, n: &Node, tok: &str) -> Agent {
    start_agent(&c.url(), n, tok, "200ms", &[])
}

/// Starts the node's agent against `url`.
pub(crate) fn start_agent(url: &str, n: &Node, tok: &str, interval: &str, extra: &[&str]) -> Agent {
    Agent::start(&AgentSpec {
        collectors: vec![url.to_string()],
        token: tok,
        state_dir: &n.state,
        scenario: &n.scenario,
        hostname: n.name,
        sys_root: &n.sys,
        interval,
        extra,
    })
}

/// Reports stored for a hostname.
pub(crate) fn reports(data: &std::path::Path, name: &str) -> u64 {
    host(data, name).and_then(|h| h["reports"].as_u64()).unwrap_or(0)
}

/// The exact accounting every delivery test ends with: what the agent says it made and had
/// acknowledged equals what the collector stored, each once, with no gaps.
pub(crate) fn assert_exact(data: &std::path::Path, a: &Agent, name: &str) {
    let st = a.status();
    let h = host(data, name).expect("host listed");
    assert_eq!(st["spooled"], 0, "{name}: agent still has spooled reports: {st}");
    assert_eq!(st["acked_seq"], st["last_seq"], "{name}: {st}");
    assert_eq!(h["last_seq"], st["last_seq"], "{name}: collector {h} vs agent {st}");
    assert_eq!(h["reports"], st["last_seq"], "{name}: every report stored once: {h}");
    assert_eq!(h["gaps"], 0, "{name}: {h}");
    assert_eq!(h["host_id"], st["host_id"]);
}

#[test]
fn two_agents_stream_to_one_collector_and_every_report_verifies() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let trainer =
        Workload::start("python3", &["-m", "torch.distributed.run", "train.py", "--model", "deepseek-ai/DeepSeek-V3"]);
    let server = Workload::start("vllm", &["serve", "meta-llama/Llama-3.1-8B-Instruct"]);
    let a = node(t.path(), "node-a", &[trainer.pid(), trainer.pid()]);
    let b = node(t.path(), "node-b", &[server.pid()]);
    let mut agent_a = start(&c, &a, &token(&data, "enroll", Some("tenant-a")));
    let mut agent_b = start(&c, &b, &token(&data, "enroll", Some("tenant-b")));
    wait_for("5 reports from each host", Duration::from_secs(30), || {
        (reports(&data, "node-a") >= 5 && reports(&data, "node-b") >= 5).then_some(())
    });
    agent_a.stop();
    agent_b.stop();
    assert_exact(&data, &agent_a, "node-a");
    assert_exact(&data, &agent_b, "node-b");

    let v = collector_json(&data, &["reports", "verify", "--json"]);
    assert_eq!(v["checked"], v["valid"], "{v}");
    assert_eq!(v["invalid"], serde_json::json!([]));
    assert_eq!(v["chain_breaks"], 0);

    let fl = flags(&data);
    let deepseek: Vec<_> = fl.iter().filter(|f| f["rule"] == "model-developer").collect();
    assert_eq!(deepseek.len(), 1, "one flag for the one DeepSeek job, updated as evidence grows: {fl:?}");
    let f = deepseek[0];
    assert_eq!(f["severity"], "high");
    assert_eq!(f["tenant"], "tenant-a");
    assert_eq!(f["pid"], trainer.pid());
    assert_eq!(f["gpu_uuids"].as_array().map(Vec::len), Some(2));
    assert!(f["occurrences"].as_u64().is_some_and(|n| n >= 5), "{f}");
    assert!(f["summary"].as_str().is_some_and(|s| s.contains("node-a") && s.contains(&trainer.pid().to_string())));
    assert!(
        fl.iter().all(|f| f["host_id"] != host(&data, "node-b").expect("b")["host_id"]),
        "Llama inference is not flagged"
    );
}

#[test]
fn agent_killed_five_times_keeps_its_chain() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = node(t.path(), "node-r", &[]);
    let tok = token(&data, "enroll", None);
    let mut agent = start(&c, &n, &tok);
    for round in 1..=5u64 {
        wait_for("reports before the kill", Duration::from_secs(30), || {
            (reports(&data, "node-r") >= 3 * round).then_some(())
        });
        agent.kill9();
        agent = start(&c, &n, &tok);
    }
    wait_for("reports after the last restart", Duration::from_secs(30), || {
        (reports(&data, "node-r") >= 12).then_some(())
    });
    agent.stop();
    assert_exact(&data, &agent, "node-r");
    let v = collector_json(&data, &["reports", "verify", "--json"]);
    assert_eq!(v["chain_breaks"], 0, "the hash chain survives restarts: {v}");
    assert!(flags(&data).iter().all(|f| f["rule"] != "chain-break" && f["rule"] != "sequence-gap"));
}

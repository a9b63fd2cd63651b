//! Jobs across hosts from real agent runs on the simulator: a two-host torchrun job is one job, judged
//! training, with its GPU time and operations summed over both hosts; a vLLM server is inference;
//! compute thresholds and GPUs that move between hosts raise flags (and do not when they should not).

use std::time::Duration;

use gpuattest_collector::tools::demo::traces;
use gpuattest_tests::{Collector, Workload, collector_json, flags, host, play_trace, token, wait_for};
use serde_json::{Value, json};

use crate::streaming::{node, reports, start_agent};

const H100_BF16_DENSE: f64 = 989.5e12;

fn trainer(rank: u32) -> Workload {
    Workload::start_with_env(
        "python3",
        &["-m", "torch.distributed.run", "--nnodes=2", "train.py", "--model", "deepseek-ai/DeepSeek-V3"],
        &[
            ("TORCHELASTIC_RUN_ID", "ft-42"),
            ("MASTER_ADDR", "node-a"),
            ("MASTER_PORT", "29500"),
            ("WORLD_SIZE", "2"),
            ("RANK", if rank == 0 { "0" } else { "1" }),
        ],
    )
}

fn jobs(data: &std::path::Path) -> Vec<Value> {
    collector_json(data, &["jobs", "list", "--json"]).as_array().cloned().unwrap_or_default()
}

#[test]
fn a_two_host_training_job_is_one_job_and_an_inference_server_is_inference() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let (w0, w1) = (trainer(0), trainer(1));
    let server = Workload::start(
        "python3",
        &["-m", "vllm.entrypoints.openai.api_server", "--model", "meta-llama/Llama-3.1-8B-Instruct"],
    );
    let a = node(t.path(), "node-a", &[w0.pid()]);
    let b = node(t.path(), "node-b", &[w1.pid()]);
    let s = node(t.path(), "node-s", &[server.pid()]);
    // What the GPUs do decides the verdict: the trainers step in a rhythm, the server answers requests.
    play_trace(&a.scenario, 0, traces::training(1), 20);
    play_trace(&b.scenario, 0, traces::training(2), 20);
    play_trace(&s.scenario, 0, traces::serving(3), 20);
    let mut agents: Vec<_> = [&a, &b, &s]
        .iter()
        .map(|n| {
            start_agent(&c.url(), n, &token(&data, "enroll", Some("acme")), "200ms", &["--sample-interval", "20ms"])
        })
        .collect();
    wait_for("10 reports from each host", Duration::from_secs(40), || {
        ["node-a", "node-b", "node-s"].iter().all(|h| reports(&data, h) >= 10).then_some(())
    });
    for ag in &mut agents {
        ag.stop();
    }

    let all = jobs(&data);
    let train = all
        .iter()
        .find(|j| j["job_key"].as_str().is_some_and(|k| k.ends_with("|torchrun:ft-42@node-a:29500")))
        .expect("the torchrun job");
    assert_eq!(train["hosts"].as_array().map(Vec::len), Some(2), "one job across both hosts: {train}");
    assert_eq!(train["gpus"], 2, "{train}");
    assert_eq!(train["verdict"]["kind"], "training", "{train}");
    assert!(train["verdict"]["reasons"].as_array().is_some_and(|r| r.len() >= 2), "it explains itself: {train}");
    // Both hosts' GPU time is in the one total, at the utilisation each report saw (the trace's steps
    // and all-reduces): upper bound = Σ utilisation × window × peak.
    let gpu_seconds = train["gpu_hours"].as_f64().expect("gpu_hours") * 3600.0;
    assert!(gpu_seconds > 2.0 * 9.0 * 0.2 * 0.5, "both hosts' windows are counted: {gpu_seconds} s");
    let upper = train["ops_upper_bound"].as_f64().expect("upper");
    let ev = &train["evidence"];
    let mean_util = ev["util_sum"].as_f64().expect("util_sum") / ev["util_samples"].as_f64().expect("samples") / 100.0;
    assert!((0.3..0.99).contains(&mean_util), "steps and all-reduces: {mean_util}");
    let expected = gpu_seconds * H100_BF16_DENSE * mean_util;
    assert!((upper - expected).abs() / expected < 0.05, "upper bound {upper:e} vs {expected:e}");
    let estimate = train["ops_estimate"].as_f64().expect("estimate");
    assert!((estimate - 0.4 * upper).abs() / upper < 1e-9, "estimate at the default 40%: {estimate:e}");
    assert!(train["energy_joules"].as_f64().is_some_and(|e| e > 0.0), "{train}");

    let serve = all
        .iter()
        .find(|j| {
            j["hosts"].as_array().is_some_and(|h| h.len() == 1 && h[0] == host(&data, "node-s").expect("s")["host_id"])
        })
        .expect("the server job");
    assert_eq!(serve["verdict"]["kind"], "inference", "{serve}");

    let fl = flags(&data);
    let deepseek: Vec<_> = fl.iter().filter(|f| f["rule"] == "model-developer").collect();
    assert_eq!(deepseek.len(), 1, "one flag for the job across its two hosts: {deepseek:?}");
    assert!(deepseek[0]["occurrences"].as_u64().is_some_and(|n| n >= 20), "both hosts' reports update it");
    assert!(fl.iter().all(|f| f["rule"] != "compute-threshold"), "far below 1e24 operations: {fl:?}");
    assert!(fl.iter().all(|f| f["rule"] != "gpu-moved"), "each host has its own GPUs: {fl:?}");
}

#[test]
fn a_job_crossing_a_compute_threshold_is_flagged() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    // Thresholds an operator might use for a pilot; the second is out of reach.
    std::fs::write(
        data.join("policy.toml"),
        "extend_builtin = true\n[compute]\nthresholds = [{operations = 1e14, severity = \"medium\"}, {operations = 1e26, severity = \"high\"}]\n",
    )
    .expect("policy");
    let c = Collector::start(&data);
    let w = trainer(0);
    let n = node(t.path(), "node-c", &[w.pid()]);
    let mut ag = start_agent(&c.url(), &n, &token(&data, "enroll", Some("acme")), "200ms", &[]);
    let f = wait_for("a compute-threshold flag", Duration::from_secs(30), || {
        flags(&data).into_iter().find(|f| f["rule"] == "compute-threshold")
    });
    ag.stop();
    assert_eq!(f["severity"], "medium", "{f}");
    let s = f["summary"].as_str().unwrap_or_default();
    assert!(s.contains("torchrun:ft-42") && s.contains("1e14"), "{s}");
    let flag = collector_json(&data, &["flags", "show", &f["id"].to_string(), "--json"]);
    let ev = &flag["flag"]["evidence"];
    assert!(ev["ops_upper_bound"].as_f64().is_some_and(|o| o >= 1e14), "{flag}");
    assert_eq!(ev["threshold"], json!(1e14));
}

#[test]
fn a_gpu_that_appears_on_a_second_host_is_flagged() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let x = node(t.path(), "node-x", &[]);
    let y = node(t.path(), "node-y", &[]);
    // node-y's simulator is seeded like node-x's: the same GPU UUIDs and serials, as when chips are
    // pulled from one server and installed in another.
    std::fs::copy(&x.scenario, &y.scenario).expect("same chips");
    let mut ax = start_agent(&c.url(), &x, &token(&data, "enroll", Some("acme")), "200ms", &[]);
    wait_for("reports from node-x", Duration::from_secs(30), || (reports(&data, "node-x") >= 3).then_some(()));
    ax.stop();
    assert!(flags(&data).iter().all(|f| f["rule"] != "gpu-moved"), "one host alone is not a move");
    let mut ay = start_agent(&c.url(), &y, &token(&data, "enroll", Some("acme")), "200ms", &[]);
    wait_for("reports from node-y", Duration::from_secs(30), || (reports(&data, "node-y") >= 3).then_some(()));
    ay.stop();
    let moved: Vec<_> = flags(&data).into_iter().filter(|f| f["rule"] == "gpu-moved").collect();
    assert_eq!(moved.len(), 4, "each of the four GPUs moved once: {moved:?}");
    let hx = host(&data, "node-x").expect("x")["host_id"].clone();
    let hy = host(&data, "node-y").expect("y")["host_id"].clone();
    for f in &moved {
        assert_eq!(f["severity"], "high");
        assert_eq!(f["host_id"], hy, "the flag is on the host the chip moved to");
        let s = f["summary"].as_str().unwrap_or_default();
        assert!(s.contains(hx.as_str().unwrap_or_default()) && s.contains("node-y"), "{s}");
    }
}

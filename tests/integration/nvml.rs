//! The agent's NVML backend against the simulated library, scenario by scenario, with exact expected
//! output: the same nvml-wrapper code path that runs against the driver's libnvidia-ml.so.1.

use std::process::Command;

use gpuattest_tests::{bin, run, sim_lib};
use serde_json::{Value, json};

fn inspect(scenario: &str) -> Value {
    let t = tempfile::tempdir().expect("tmp");
    let path = t.path().join("scenario.json");
    std::fs::write(&path, scenario).expect("write");
    let (code, out, err) = run(Command::new(bin("gpuattest-agent"))
        .args(["inspect", "--json", "--nvml-lib"])
        .arg(sim_lib())
        .arg("--sys-root")
        .arg(t.path())
        .env("GPUATTEST_NVML_SIM", &path));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("json")
}

fn pick(g: &Value, keys: &[&str]) -> Value {
    Value::Object(keys.iter().map(|k| (k.to_string(), g[*k].clone())).collect())
}

#[test]
fn mig_split_gpu_reports_processes_per_instance() {
    let obs = inspect(
        r#"{"seed": "mig", "gpus": [{"mig": [
            {"uuid": "MIG-11111111-2222-3333-4444-555555555555", "processes": [{"pid": 101, "used_memory_bytes": 5000000000}]},
            {"uuid": "MIG-66666666-7777-8888-9999-000000000000", "processes": [{"pid": 202, "used_memory_bytes": 7000000000}]},
            {"uuid": "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}
        ]}]}"#,
    );
    let g = &obs["gpus"][0];
    assert_eq!(g["mig_enabled"], true);
    assert_eq!(
        g["mig_devices"],
        json!([
            {"index": 0, "uuid": "MIG-11111111-2222-3333-4444-555555555555", "memory_total_bytes": 10_334_765_056u64,
             "processes": [{"pid": 101, "used_memory_bytes": 5_000_000_000u64, "mps": false}]},
            {"index": 1, "uuid": "MIG-66666666-7777-8888-9999-000000000000", "memory_total_bytes": 10_334_765_056u64,
             "processes": [{"pid": 202, "used_memory_bytes": 7_000_000_000u64, "mps": false}]},
            {"index": 2, "uuid": "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "memory_total_bytes": 10_334_765_056u64, "processes": []}
        ])
    );
    // The parent GPU lists every instance's processes, as the driver does.
    let pids: Vec<u64> = g["processes"].as_array().expect("list").iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert_eq!(pids, vec![101, 202]);
}

#[test]
fn mixed_host_with_mps_accounting_and_samples() {
    let obs = inspect(
        r#"{"seed": "mixed", "gpus": [
            {},
            {"name": "NVIDIA A100-SXM4-80GB", "architecture": 7, "compute_capability": [8, 0], "pci_bus_id": "00000000:07:00.0",
             "memory_total_bytes": 85899345920, "accounting": true,
             "processes": [{"pid": 300, "used_memory_bytes": 1000, "sm_util_pct": 88}, {"pid": 301, "used_memory_bytes": 2000, "mps": true}]},
            {"name": "NVIDIA L40S", "architecture": 8, "compute_capability": [8, 9], "unsupported": ["serial", "mig"], "power_mw": 300000,
             "processes": [{"pid": 400, "used_memory_bytes": 3000}]}
        ]}"#,
    );
    let gpus = obs["gpus"].as_array().expect("gpus");
    assert_eq!(
        gpus.iter().map(|g| pick(g, &["name", "architecture", "compute_capability"])).collect::<Vec<_>>(),
        vec![
            json!({"name": "NVIDIA H100 80GB HBM3", "architecture": "Hopper", "compute_capability": "9.0"}),
            json!({"name": "NVIDIA A100-SXM4-80GB", "architecture": "Ampere", "compute_capability": "8.0"}),
            json!({"name": "NVIDIA L40S", "architecture": "Ada", "compute_capability": "8.9"}),
        ]
    );
    let a100 = &gpus[1];
    assert_eq!(
        a100["processes"],
        json!([{"pid": 300, "used_memory_bytes": 1000, "mps": false}, {"pid": 301, "used_memory_bytes": 2000, "mps": true}])
    );
    assert_eq!(
        a100["accounting"][0],
        json!({"pid": 300, "gpu_util_pct": 88, "memory_util_pct": 41, "max_memory_bytes": 1000, "time_ms": a100["accounting"][0]["time_ms"]})
    );
    let samples: Vec<(u64, u64)> = a100["process_utilization"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| (s["pid"].as_u64().unwrap_or(0), s["sm_pct"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(samples, vec![(300, 88), (301, 97)]);
    let l40s = &gpus[2];
    assert_eq!(l40s["serial"], "");
    assert_eq!(l40s["mig_enabled"], Value::Null);
    assert_eq!(l40s["power_mw"], 300_000);
    let missing: Vec<&str> =
        l40s["unavailable"].as_array().expect("list").iter().filter_map(|u| u["field"].as_str()).collect();
    assert_eq!(missing, vec!["serial", "mig_mode"]);
    let procs: Vec<u64> = obs["processes"].as_array().expect("p").iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert!(procs.contains(&300) && procs.contains(&301) && procs.contains(&400));
}

#[test]
fn host_with_no_gpus() {
    let obs = inspect(r#"{"gpus": []}"#);
    assert_eq!(obs["gpus"], json!([]));
    assert_eq!(obs["processes"], json!([]));
    assert_eq!(obs["driver_version"], "550.90.07");
}

#[test]
fn a_driver_lacking_newer_calls_degrades_those_fields_only() {
    let obs = inspect(
        r#"{"gpus": [{"missing": ["nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetArchitecture"],
                      "processes": [{"pid": 77, "used_memory_bytes": 1}]}]}"#,
    );
    let g = &obs["gpus"][0];
    assert_eq!((g["energy_mj"].clone(), g["architecture"].clone()), (Value::Null, Value::Null));
    let reasons: Vec<(String, String)> = g["unavailable"]
        .as_array()
        .expect("list")
        .iter()
        .map(|u| (u["field"].as_str().unwrap_or("").to_string(), u["reason"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("energy".into(), "driver lacks this call".into()),
            ("architecture".into(), "driver lacks this call".into()),
            ("mps_processes".into(), "driver lacks this call".into())
        ]
    );
    // Everything else is still read.
    assert_eq!((g["power_mw"].as_u64(), g["processes"][0]["pid"].as_u64()), (Some(645_000), Some(77)));
    assert!(g["uuid"].as_str().is_some_and(|u| u.starts_with("GPU-")));
}

#[test]
fn a_lost_gpu_keeps_the_rest_of_the_host_observable() {
    let obs = inspect(r#"{"gpus": [{}, {"lost": true}, {}]}"#);
    let lost: Vec<bool> = obs["gpus"].as_array().expect("gpus").iter().map(|g| g["lost"] == true).collect();
    assert_eq!(lost, vec![false, true, false]);
    assert_eq!(obs["gpus"][1]["unavailable"], json!([{"field": "device", "reason": "GPU is lost"}]));
    assert!(obs["gpus"][2]["serial"].as_str().is_some_and(|s| s.len() == 13));
}

#[test]
fn energy_counter_advances_with_power() {
    let first = inspect(r#"{"gpus": [{"power_mw": 700000, "energy_mj": 5000}]}"#);
    assert!(first["gpus"][0]["energy_mj"].as_u64().is_some_and(|e| (5000..5000 + 700 * 5_000).contains(&e)), "{first}");
}

fn inspect_with_nonce(scenario: &str, nonce: &str) -> (i32, Value, String) {
    let t = tempfile::tempdir().expect("tmp");
    let path = t.path().join("scenario.json");
    std::fs::write(&path, scenario).expect("write");
    let (code, out, err) = run(Command::new(bin("gpuattest-agent"))
        .args(["inspect", "--json", "--attest-nonce", nonce, "--nvml-lib"])
        .arg(sim_lib())
        .arg("--sys-root")
        .arg(t.path())
        .env("GPUATTEST_NVML_SIM", &path));
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[test]
fn confidential_computing_gpus_attest_to_the_nonce_they_are_given() {
    use base64::Engine;
    let nonce = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let (code, obs, err) = inspect_with_nonce(r#"{"seed": "cc", "confidential_compute": {}, "gpus": [{}, {}]}"#, nonce);
    assert_eq!(code, 0, "{err}");
    assert_eq!(obs["confidential_compute"], json!({"enabled": true, "accepting_work": true, "unavailable": null}));
    let atts = obs["attestations"].as_array().expect("attestations");
    assert_eq!(atts.len(), 2);
    for (a, g) in atts.iter().zip(obs["gpus"].as_array().expect("gpus")) {
        assert_eq!(a["gpu_uuid"], g["uuid"]);
        assert_eq!(a["nonce_hex"], nonce);
        assert_eq!(a["error"], Value::Null, "{a}");
        let report =
            base64::engine::general_purpose::STANDARD.decode(a["report_base64"].as_str().expect("b64")).expect("b64");
        let nonce_bytes: Vec<u8> =
            (0..32).map(|i| u8::from_str_radix(&nonce[2 * i..2 * i + 2], 16).expect("hex")).collect();
        assert!(report.ends_with(&nonce_bytes), "the report is bound to the nonce");
        assert!(
            report
                .windows(g["uuid"].as_str().expect("uuid").len())
                .any(|w| w == g["uuid"].as_str().expect("uuid").as_bytes())
        );
        assert!(!a["cert_chain_base64"].as_str().unwrap_or_default().is_empty());
    }
    // CC present but off: state read, nothing attested.
    let (_, off, _) = inspect_with_nonce(
        r#"{"confidential_compute": {"enabled": false, "accepting_work": false}, "gpus": [{}]}"#,
        nonce,
    );
    assert_eq!(off["confidential_compute"]["enabled"], false);
    assert_eq!(off["attestations"], json!([]));
    // A driver without confidential computing (the default): the reason, and the observation goes on.
    let (_, plain, _) = inspect_with_nonce(r#"{"gpus": [{}]}"#, nonce);
    assert_eq!(plain["confidential_compute"]["unavailable"], "not supported");
    assert_eq!(plain["gpus"].as_array().map(Vec::len), Some(1));
    // A bad nonce is a usage error with one line.
    let (code, _, err) = inspect_with_nonce("{}", "abc");
    assert_eq!(code, 64);
    assert!(err.trim().lines().count() == 1 && err.contains("--attest-nonce"), "{err}");
}

#[test]
fn nvlink_fabric_cluster_and_clique_are_read_where_the_driver_has_them() {
    let obs = inspect(
        r#"{"seed": "nvl72", "gpus": [
            {"name": "NVIDIA GB200", "fabric": {"cluster_uuid": "5f2d0c6e-8a1b-4c3d-9e7f-0a1b2c3d4e5f", "clique_id": 32766, "state": 3}},
            {},
            {"missing": ["nvmlDeviceGetGpuFabricInfo"]}
        ]}"#,
    );
    let g = obs["gpus"].as_array().expect("gpus");
    assert_eq!(
        g[0]["fabric"],
        json!({"cluster_uuid": "5f2d0c6e-8a1b-4c3d-9e7f-0a1b2c3d4e5f", "clique_id": 32766, "state": 3, "status": 0})
    );
    assert_eq!((g[1]["fabric"].clone(), g[1]["fabric_unavailable"].clone()), (Value::Null, json!("not supported")));
    assert_eq!(g[2]["fabric_unavailable"], "driver lacks this call");
    // Fabric information is optional: it never marks the GPU's other fields unavailable.
    assert!(g.iter().all(|x| x["unavailable"].as_array().is_some_and(|u| u.iter().all(|e| e["field"] != "fabric"))));
}

/// The 1 Hz sampler end to end: a trace played by the simulator comes back as signed per-window
/// statistics with its rhythm; counters the driver lacks are listed as unavailable, not retried.
#[test]
fn sampled_counters_reach_the_report_with_their_rhythm() {
    use gpuattest_tests::{Collector, host, http_get, play_trace, token, wait_for};
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    let n = crate::streaming::node(t.path(), "node-tel", &[std::process::id()]);
    // Four-sample steps: three of compute with quiet links, one of all-reduce; memory climbs for the
    // whole 20 s loop, so the first reports never straddle its wrap.
    let trace: Vec<Value> = (0..400)
        .map(|i| {
            let compute = i % 4 < 3;
            json!({"util_pct": if compute { 96 } else { 20 }, "mem_util_pct": 38, "power_w": if compute { 650.0 } else { 200.0 },
                   "sm_clock_mhz": 1755, "nvlink_tx_kbps": if compute { 500_000 } else { 40_000_000 },
                   "memory_used_bytes": 30_000_000_000u64 + i * 1_000_000})
        })
        .collect();
    play_trace(&n.scenario, 0, trace, 50);
    let mut s: Value = serde_json::from_str(&std::fs::read_to_string(&n.scenario).expect("read")).expect("json");
    s["gpus"][1]["missing"] = json!(["nvmlDeviceGetPcieThroughput"]);
    s["gpus"][1]["unsupported"] = json!(["nvlink"]);
    std::fs::write(&n.scenario, s.to_string()).expect("write");
    let mut a = crate::streaming::start_agent(
        &c.url(),
        &n,
        &token(&data, "enroll", Some("acme")),
        "1s",
        &["--sample-interval", "50ms"],
    );
    let reviewer = token(&data, "reviewer", None);
    let report = wait_for("a report with a full history", std::time::Duration::from_secs(60), || {
        let h = host(&data, "node-tel")?;
        let seq = h["last_seq"].as_u64()?;
        let (code, body) =
            http_get(&c.http, &format!("/api/v1/reports/{}/{seq}", h["host_id"].as_str()?), Some(&reviewer));
        // `hosts list` reads the store from another process; the API may answer a moment later.
        if code != 200 {
            return None;
        }
        let r: Value = serde_json::from_str(&body).ok()?;
        (r["decoded"]["gpus"][0]["telemetry"]["series"][0]["history"].as_u64()? >= 40).then_some(r)
    });
    a.stop();
    let tel = &report["decoded"]["gpus"][0]["telemetry"];
    assert_eq!(tel["sample_ms"], 50, "{tel}");
    assert!(tel["samples"].as_u64().is_some_and(|n| (10..=30).contains(&n)), "about 20 samples a window: {tel}");
    let series = |name: &str| tel["series"].as_array().and_then(|v| v.iter().find(|s| s["metric"] == name).cloned());
    let util = series("gpu_util").expect("utilisation");
    assert_eq!((util["min"].as_u64(), util["max"].as_u64()), (Some(200), Some(960)), "{util}");
    assert_eq!(util["period_ms"], 200, "a four-sample step at 50 ms: {util}");
    // Sampling and playing are not phase-locked (as with a real GPU): the peak is strong, not perfect.
    assert!(util["period_strength"].as_u64() > Some(400), "{util}");
    let link = series("nvlink_tx").expect("nvlink from the data counters");
    assert_eq!(link["period_ms"], 200, "{link}");
    assert!(link["max"].as_u64() > Some(20_000_000), "the all-reduce burst: {link}");
    assert!(series("sm_clock").is_some_and(|s| s["mean"] == 1755), "{tel}");
    assert!(tel["memory_used_trend_bytes_per_s"].as_i64().is_some_and(|v| v > 0), "memory grows: {tel}");
    let other = &report["decoded"]["gpus"][1]["telemetry"];
    let unavailable: Vec<&str> =
        other["unavailable"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
    assert_eq!(unavailable, ["pcie_tx", "pcie_rx", "nvlink_tx", "nvlink_rx"], "{other}");
    assert!(
        other["series"]
            .as_array()
            .is_some_and(|s| s.iter().all(|x| !x["metric"].as_str().unwrap_or("").starts_with("pcie")))
    );
}

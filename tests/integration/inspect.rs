//! `gpuattest-agent inspect` against the simulated NVML library, prepared sysfs trees and real
//! processes.

use std::process::Command;

use gpuattest_tests::{Workload, bin, run, sim_lib, write_scenario, write_sysfs};
use serde_json::Value;

fn inspect(scenario: Option<&std::path::Path>, sys: &std::path::Path) -> Value {
    let mut cmd = Command::new(bin("gpuattest-agent"));
    cmd.args(["inspect", "--json", "--nvml-lib"]).arg(sim_lib()).arg("--sys-root").arg(sys);
    cmd.env_remove("GPUATTEST_NVML_SIM");
    if let Some(s) = scenario {
        cmd.env("GPUATTEST_NVML_SIM", s);
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "inspect failed: {err}");
    serde_json::from_str(&out).expect("inspect JSON")
}

#[test]
fn default_scenario_is_eight_distinct_h100s() {
    let t = tempfile::tempdir().expect("tmp");
    let obs = inspect(None, t.path());
    let gpus = obs["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 8);
    for field in ["uuid", "serial", "pci_bus_id"] {
        let mut v: Vec<&str> = gpus.iter().map(|g| g[field].as_str().expect("string")).collect();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 8, "{field} values must be distinct");
    }
    for g in gpus {
        assert!(g["uuid"].as_str().is_some_and(|u| u.starts_with("GPU-") && u.len() == 40));
        assert_eq!(g["name"], "NVIDIA H100 80GB HBM3");
        assert_eq!(g["memory_total_bytes"], 85_520_809_984u64);
        assert_eq!(g["processes"], serde_json::json!([]));
    }
    assert_eq!(obs["gpu_source"], "simulated");
    assert_eq!(obs["processes"], serde_json::json!([]));
    assert_eq!(obs["accelerators"], serde_json::json!([]));
}

#[test]
fn missing_library_is_one_clear_line() {
    let (code, out, err) = run(Command::new(bin("gpuattest-agent")).args([
        "inspect",
        "--json",
        "--nvml-lib",
        "/nonexistent/libnvidia-ml.so.1",
    ]));
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/libnvidia-ml.so.1") && err.contains("--nvml-lib"), "{err}");
}

#[test]
fn init_failure_is_one_clear_line() {
    let t = tempfile::tempdir().expect("tmp");
    let s = t.path().join("s.json");
    std::fs::write(&s, r#"{"init_error": "driver_not_loaded"}"#).expect("write");
    let (code, _, err) = run(Command::new(bin("gpuattest-agent"))
        .args(["inspect", "--json", "--nvml-lib"])
        .arg(sim_lib())
        .env("GPUATTEST_NVML_SIM", &s));
    assert_ne!(code, 0);
    let line = err.lines().last().unwrap_or_default();
    assert!(line.contains("libgpuattest_nvml_sim.so") && line.to_lowercase().contains("driver"), "{err}");
}

#[test]
fn real_process_is_attributed_and_redacted_and_ascend_is_listed() {
    let t = tempfile::tempdir().expect("tmp");
    let secret = "hf_ThisIsATestSecretThatMustBeRedacted42";
    let w = Workload::start_with_env(
        "python3",
        &["train.py", "--model", "deepseek-ai/DeepSeek-V3", "--hf-token", secret, "--db=postgres://u:pw123@db/x"],
        &[
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"),
            ("OPENAI_API_KEY", "sk-proj-envsecretenvsecretenvsecret"),
            ("WORLD_SIZE", "16"),
            ("RANK", "3"),
            ("SLURM_JOB_ID", "4242"),
        ],
    );
    let scenario = t.path().join("s.json");
    write_scenario(&scenario, "inspect-host", 2, &[w.pid()]);
    let sys = t.path().join("sys");
    write_sysfs(
        &sys,
        &[("0000:18:00.0", "0x10de", "0x2330", "0x030200"), ("0000:c1:00.0", "0x19e5", "0xd802", "0x120000")],
    );
    let obs = inspect(Some(&scenario), &sys);
    let text = obs.to_string();
    for leaked in [secret, "pw123", "wJalrXUtnFEMIK7MDENG", "envsecret"] {
        assert!(!text.contains(leaked), "a secret leaked ({leaked}): {text}");
    }
    let procs = obs["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 1);
    let p = &procs[0];
    assert_eq!(p["pid"], w.pid());
    assert_eq!(p["gpu_uuids"], serde_json::json!([obs["gpus"][0]["uuid"]]));
    assert_eq!(
        p["cmdline"],
        "python3 train.py --model deepseek-ai/DeepSeek-V3 --hf-token [REDACTED] --db=postgres://u:[REDACTED]@db/x"
    );
    for k in ["container_id", "pod_uid", "slurm_job_id"] {
        assert!(p.get(k).is_some(), "{k} must be present (null where unknown)");
    }
    assert_eq!(p["models"], serde_json::json!([]));
    assert_eq!(p["env"], serde_json::json!({"RANK": "3", "SLURM_JOB_ID": "4242", "WORLD_SIZE": "16"}));
    assert_eq!(p["launch"]["world_size"], 16);
    assert_eq!(p["launch"]["rank"], 3);
    let acc = obs["accelerators"].as_array().expect("accelerators");
    assert_eq!(acc.len(), 1, "{acc:?}");
    assert_eq!(acc[0]["vendor"], "Huawei");
    assert_eq!(acc[0]["product"], "Ascend 910B");
    assert_eq!(acc[0]["pci_address"], "0000:c1:00.0");
}

#[test]
fn lost_gpu_and_unsupported_fields_degrade_only_themselves() {
    let t = tempfile::tempdir().expect("tmp");
    let s = t.path().join("s.json");
    std::fs::write(&s, r#"{"gpus": [{"lost": true}, {"unsupported": ["serial", "power"]}, {}]}"#).expect("write");
    let obs = inspect(Some(&s), t.path());
    let gpus = obs["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 3);
    assert_eq!(gpus[0]["lost"], true);
    assert_eq!(gpus[1]["lost"], false);
    assert_eq!(gpus[1]["serial"], "");
    assert_eq!(gpus[1]["power_mw"], Value::Null);
    let reasons: Vec<&str> =
        gpus[1]["unavailable"].as_array().expect("list").iter().filter_map(|u| u["field"].as_str()).collect();
    assert_eq!(reasons, vec!["serial", "power"]);
    assert!(gpus[2]["serial"].as_str().is_some_and(|s| s.len() == 13));
}

//! The README's demo command, as a newcomer runs it.

use std::process::Command;

use gpuattest_tests::{bin, collector_json, run};

#[test]
fn demo_ends_with_a_deepseek_flag_and_clean_hosts() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("demo-data");
    let (code, out, err) = run(Command::new(bin("gpuattest-collector"))
        .args(["demo", "--seconds", "6", "--interval", "500ms", "--data"])
        .arg(&data)
        .env_remove("GPUATTEST_DATA"));
    assert_eq!(code, 0, "demo failed: {err}\n{out}");
    assert!(out.contains("review UI: http://127.0.0.1:"), "{out}");
    let table = out.split("== flags ==").nth(1).expect("a flags table");
    assert!(
        table.lines().any(|l| l.contains("HIGH")
            && l.contains("model-developer")
            && l.contains("deepseek-ai/DeepSeek-V3")
            && l.contains("GPU-")),
        "{table}"
    );
    assert!(!out.contains("hf_DemoSecret") && !err.contains("hf_DemoSecret"), "the demo's planted token leaked");
    let hosts = collector_json(&data, &["hosts", "list", "--json"]);
    let hosts = hosts.as_array().expect("array");
    assert_eq!(hosts.len(), 4);
    for h in hosts {
        assert!(h["reports"].as_u64().is_some_and(|r| r > 0), "{h}");
        assert_eq!(h["gaps"], 0, "{h}");
    }
    let tenants: std::collections::BTreeSet<_> = hosts.iter().filter_map(|h| h["tenant"].as_str()).collect();
    assert_eq!(tenants.len(), 2);
    // Every demo host answers from here; gpu-node-04 is registered in Frankfurt: the Ashburn landmark
    // proves it is not there.
    for h in hosts {
        let verdict = h["location"]["verdict"].as_str().unwrap_or_default();
        if h["hostname"] == "gpu-node-04" {
            assert_eq!(verdict, "inconsistent", "{h}");
        } else {
            assert_ne!(verdict, "inconsistent", "{h}");
        }
    }
    assert!(out.contains("location: inconsistent (landmark ashburn"), "{out}");
}

//! Tenants on a running collector: the tenant file and the real OFAC SDN list named by a policy that is
//! hot-reloaded; a tenant whose parent is listed and headquartered in a country of concern is flagged
//! for both, a clean tenant is not; a broken policy edit keeps the running policy; and
//! `policy reevaluate` marks flags a changed policy no longer raises.

use std::path::Path;
use std::time::Duration;

use gpuattest_tests::{Collector, collector_cmd, collector_json, flags, run, token, wait_for};
use serde_json::Value;

use crate::streaming::{node, reports, start_agent};

const TENANTS: &str = r#"
[[tenant]]
id = "acme-ai"
legal_name = "Acme AI, Inc."
country = "US"

[[tenant]]
id = "northwind"
legal_name = "Northwind Compute GmbH"
country = "DE"
parent = "Boyle Chemical Company Limited"
parent_country = "CN"
"#;

fn sdn() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/test-data/lists/ofac_sdn_2024-05-03.csv")
}

fn audit_actions(data: &Path) -> Vec<String> {
    let (_, out, _) = run(collector_cmd(data).args(["audit", "--json"]));
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["action"].as_str().map(str::to_string))
        .collect()
}

fn tenant_flags(data: &Path) -> Vec<Value> {
    flags(data).into_iter().filter(|f| f["rule"].as_str().is_some_and(|r| r.starts_with("tenant-"))).collect()
}

#[test]
fn tenant_findings_follow_the_hot_reloaded_policy_and_reevaluation() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("tenants.toml"), TENANTS).expect("tenants");
    let c = Collector::start(&data);
    let a = node(t.path(), "node-acme", &[]);
    let n = node(t.path(), "node-north", &[]);
    let mut agents = vec![
        start_agent(&c.url(), &a, &token(&data, "enroll", Some("acme-ai")), "200ms", &[]),
        start_agent(&c.url(), &n, &token(&data, "enroll", Some("northwind")), "200ms", &[]),
    ];
    wait_for("reports", Duration::from_secs(30), || (reports(&data, "node-north") >= 3).then_some(()));
    assert!(tenant_flags(&data).is_empty(), "the built-in policy names no tenant file");

    // The operator adds the tenant file and the SDN list; the running collector picks it up.
    let policy =
        format!("extend_builtin = true\ntenants = \"tenants.toml\"\nscreening_lists = [\"{}\"]\n", sdn().display());
    std::fs::write(data.join("policy.toml"), &policy).expect("policy");
    let found = wait_for("tenant flags after the reload", Duration::from_secs(30), || {
        let f = tenant_flags(&data);
        (f.len() == 2).then_some(f)
    });
    for f in &found {
        assert_eq!(f["tenant"], "northwind", "only the tenant with the listed parent: {f}");
        assert_eq!(f["host_id"], "tenant:northwind", "one flag per tenant and rule: {f}");
    }
    let screening = found.iter().find(|f| f["rule"] == "tenant-screening").expect("screening flag");
    assert_eq!(screening["severity"], "critical");
    assert!(
        screening["summary"].as_str().is_some_and(|s| s.contains("BOYLE CHEMICAL CO., LTD.") && s.contains("16907"))
    );
    let parent = found.iter().find(|f| f["rule"] == "tenant-parent-country").expect("parent-country flag");
    assert_eq!(parent["severity"], "high");
    assert!(audit_actions(&data).iter().any(|a| a == "policy.reload"));

    // A broken edit: refused, audited, and the running policy stays in force.
    let digest = |f: &Value| f["policy_digest"].as_str().unwrap_or_default().to_string();
    let before = digest(&tenant_flags(&data)[0]);
    std::fs::write(data.join("policy.toml"), "extend_builtin = tru\n").expect("broken policy");
    wait_for("the refusal in the audit log", Duration::from_secs(30), || {
        audit_actions(&data).iter().any(|a| a == "policy.reload-refused").then_some(())
    });
    let seen = reports(&data, "node-north");
    wait_for("more reports", Duration::from_secs(30), || (reports(&data, "node-north") >= seen + 3).then_some(()));
    let still = tenant_flags(&data);
    assert!(still.iter().all(|f| digest(f) == before), "flags still judged by the previous policy: {still:?}");
    for ag in &mut agents {
        ag.stop();
    }
    drop(c);

    // Counsel drops the tenant file from the policy: re-evaluation marks what it no longer raises.
    std::fs::write(data.join("policy.toml"), "extend_builtin = true\n").expect("policy");
    let o = collector_json(&data, &["policy", "reevaluate", "--json"]);
    assert!(o["reports"].as_u64().is_some_and(|r| r >= 6), "{o}");
    assert_eq!(o["no_longer_raised"].as_array().map(Vec::len), Some(2), "{o}");
    for f in tenant_flags(&data) {
        let shown = collector_json(&data, &["flags", "show", &f["id"].to_string(), "--json"]);
        let note = &shown["flag"]["evidence"]["not_raised_by"];
        assert_eq!(note["policy_digest"], o["policy_digest"], "{shown}");
        assert_eq!(shown["flag"]["status"], "open", "a reviewer decides, not the re-evaluation");
    }
    assert!(audit_actions(&data).iter().any(|a| a == "policy.reevaluate"));
}

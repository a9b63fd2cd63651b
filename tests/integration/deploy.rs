//! The shipped reference configurations pass `--check-config` on both binaries, and broken ones are
//! refused with one line naming the file, the line or key, and exit code 78 (configuration).

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuattest_tests::{bin, collector_cmd, run};

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

fn agent_check(config: &Path) -> (i32, String, String) {
    run(Command::new(bin("gpuattest-agent"))
        .args(["run", "--check-config", "--config"])
        .arg(config)
        .env_remove("GPUATTEST_ENROLL_TOKEN")
        .env_remove("GPUATTEST_NVML_LIB"))
}

fn collector_check(data: &Path, args: &[&str]) -> (i32, String, String) {
    run(collector_cmd(data).arg("serve").args(args).arg("--check-config"))
}

#[test]
fn reference_configs_pass_check_config() {
    for f in ["config/agent.toml", "config/agent-full.toml"] {
        let (code, out, err) = agent_check(&deploy(f));
        assert_eq!(code, 0, "{f}: {err}");
        assert_eq!(out.trim(), "configuration is valid", "{f}");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    for f in ["config/collector.toml", "config/collector-full.toml"] {
        let path = deploy(f);
        let (code, out, err) = collector_check(tmp.path(), &["--config", path.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.starts_with("configuration is valid"), "{f}: {out}");
    }
    let policy = deploy("config/policy.toml");
    let (code, out, err) = collector_check(tmp.path(), &["--policy", policy.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    // The example extends the built-in policy, so its digest differs from the built-in one.
    let (_, builtin, _) = collector_check(tmp.path(), &[]);
    assert_ne!(out, builtin, "the example policy is in force");
}

fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    lines[0]
}

#[test]
fn broken_configs_are_refused_with_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let agent_cases = [
        (
            "typo.toml",
            "collector = [\"http://127.0.0.1:7443\"]\nstate_dir = \"/x\"\nintervall = \"10s\"\n",
            "intervall",
        ),
        ("type.toml", "collector = \"http://127.0.0.1:7443\"\n", "collector"),
        ("plain.toml", "collector = [\"http://10.0.0.5:7443\"]\nstate_dir = \"/x\"\n", "https"),
        ("nostate.toml", "collector = [\"http://127.0.0.1:7443\"]\n", "--state-dir"),
        (
            "spool.toml",
            "collector = [\"http://127.0.0.1:7443\"]\nstate_dir = \"/x\"\nspool_max = \"1KiB\"\n",
            "spool_max",
        ),
        (
            "kubelet.toml",
            "collector = [\"http://127.0.0.1:7443\"]\nstate_dir = \"/x\"\nkubelet_url = \"http://10.1.1.1:10255/pods\"\n",
            "kubelet_url",
        ),
    ];
    for (name, text, needle) in agent_cases {
        let p = write(name, text);
        let (code, _, err) = agent_check(&p);
        assert_eq!(code, 78, "{name}: {err}");
        let line = one_line(&err);
        assert!(line.contains(name) && line.contains(needle), "{name}: {line}");
    }

    let data = tmp.path().join("data");
    let collector_cases: [(&str, &str, &str); 9] = [
        ("c-db-scheme.toml", "database = \"mysql://u:hunter2@db/x\"\n", "only postgres://"),
        // TLS that could not authenticate the server is refused before connecting, saying what to add.
        ("c-db-tls.toml", "database = \"postgres://u:hunter2@db.internal/x?sslmode=require\"\n", "sslrootcert="),
        (
            "c-db-ca.toml",
            "database = \"postgres://u:hunter2@db.internal/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n",
            "/nonexistent/ca.pem",
        ),
        ("c-db-port.toml", "database = \"postgres://u:hunter2@127.0.0.1:notaport/x\"\n", "postgres://user"),
        // Nothing listens on port 1: one line naming the URL (password hidden) and what to check.
        ("c-db-down.toml", "database = \"postgres://u:hunter2@127.0.0.1:1/x\"\n", "u:***@127.0.0.1:1/x"),
        ("c-typo.toml", "data = \"/x\"\ngrpc_listn = \"0.0.0.0:7443\"\n", "grpc_listn"),
        ("c-addr.toml", "http_listen = \"everywhere\"\n", "http_listen"),
        ("c-plain.toml", "grpc_listen = \"0.0.0.0:7443\"\n", "plaintext"),
        (
            "c-tls.toml",
            "[tls]\ncert = \"/nonexistent/collector.pem\"\nkey = \"/nonexistent/collector.key\"\n",
            "/nonexistent/collector.pem",
        ),
    ];
    for (name, text, needle) in collector_cases {
        let p = write(name, text);
        let (code, _, err) = collector_check(&data, &["--config", p.to_str().expect("utf-8")]);
        assert_eq!(code, 78, "{name}: {err}");
        let line = one_line(&err);
        assert!(line.contains(needle) && !line.contains("hunter2"), "{name}: {line}");
    }
    let bad_policy = write("bad-policy.toml", "[[model_patterns]]\npattern = \"x/*\"\nseverity = \"apocalyptic\"\n");
    let (code, _, err) = collector_check(&data, &["--policy", bad_policy.to_str().expect("utf-8")]);
    assert_eq!(code, 78, "{err}");
    let line = one_line(&err);
    assert!(line.contains("bad-policy.toml") && line.contains("line"), "{line}");
    assert!(!data.exists(), "a refused configuration creates no store");
}

/// `backup` while an agent streams into a running collector: the copy is consistent (every report in
/// it verifies, hash chains unbroken), carries the export key, and a collector restored from it serves.
#[test]
fn online_backup_restores_to_a_verifiable_store() {
    use crate::streaming::{node, reports, start_agent};
    use gpuattest_tests::{Collector, token, wait_for};
    use std::time::Duration;

    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    // A policy whose tenant file lives outside the data directory: the backup must carry it.
    let elsewhere = tmp.path().join("etc-policy");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    std::fs::write(elsewhere.join("tenants.toml"), "[[tenant]]\nid = \"acme\"\nlegal_name = \"Acme\"\n")
        .expect("tenants");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(
        data.join("policy.toml"),
        format!("extend_builtin = true\ntenants = \"{}\"\n", elsewhere.join("tenants.toml").display()),
    )
    .expect("policy");
    let c = Collector::start(&data);
    let n = node(tmp.path(), "backup-node", &[]);
    let tok = token(&data, "enroll", Some("acme"));
    let mut a = start_agent(&c.url(), &n, &tok, "100ms", &[]);
    wait_for("reports stored", Duration::from_secs(30), || (reports(&data, "backup-node") >= 10).then_some(()));
    let out = tmp.path().join("backup");
    let (code, text, err) = run(collector_cmd(&data).args(["backup", "--out"]).arg(&out));
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("keys/export.pk8"), "{text}");
    let manifest = std::fs::read_to_string(out.join("policy-files/MANIFEST.tsv")).expect("manifest");
    assert!(manifest.contains(&elsewhere.join("tenants.toml").display().to_string()), "{manifest}");
    assert!(std::fs::read_to_string(out.join("policy-files/00-tenants.toml")).expect("copy").contains("acme"));
    let (code, _, err) = run(collector_cmd(&data).args(["backup", "--out"]).arg(&out));
    assert_eq!(code, 64, "a second backup into the same directory is refused: {err}");
    a.stop();
    drop(c);

    // Restore: the copied directory is a data directory as it stands.
    let (code, text, err) = run(collector_cmd(&out).args(["reports", "verify", "--json"]));
    assert_eq!(code, 0, "restored store verifies: {text} {err}");
    let backed_up = reports(&out, "backup-node");
    assert!(backed_up >= 10, "{backed_up} reports in the backup");
    assert!(backed_up <= reports(&data, "backup-node"));
    let key = |d: &Path| run(collector_cmd(d).arg("export-key")).1;
    assert_eq!(key(&out), key(&data), "the export signing key came along");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("keys/export.pk8")).expect("key").permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the copied key is private");
    let _restored = Collector::start(&out);
}

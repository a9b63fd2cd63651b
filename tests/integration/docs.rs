//! The documents run: every `gpuattest-collector` and `gpuattest-agent` command in a fenced block of
//! `README.md` and `deploy/README.md` is run as written against a scratch collector, with the guide's
//! system paths (`/etc/gpuattest`, `/var/lib/gpuattest-collector`, ...) moved into a scratch root and
//! the guide's config files installed there as the guide installs them. A command must exit 0, or, for
//! one that serves or measures (demo, bench, serve), still be running after a few seconds without
//! having failed. Shell lines around them (install, systemctl, kubectl, docker) are the operator's and
//! are not run here; `deploy/check.sh` checks the files they install.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpuattest_tests::{Collector, bin_dir};

/// The commands of one Markdown file: fenced lines (continuations joined) that run a gpuattest binary,
/// each from where the binary's name starts (after `cargo build ... &&`), trailing comments removed.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            continue;
        }
        let line = line.trim_end();
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let full = match full.find("  #").or_else(|| full.find(" # ")) {
            Some(i) => full[..i].trim_end().to_string(),
            None => full,
        };
        let cmd = full.trim_start();
        if cmd.starts_with('#') {
            continue;
        }
        let start = ["./target/release/gpuattest-", "gpuattest-collector ", "gpuattest-agent "]
            .iter()
            .filter_map(|p| cmd.find(p))
            .min();
        if let Some(i) = start
            && (i == 0 || cmd[..i].trim_end().ends_with("&&"))
        {
            out.push(cmd[i..].to_string());
        }
    }
    out
}

/// Moves the guide's system paths into `root`, and the repository's relative paths to it (each in
/// one pass: a path already moved is not moved again).
fn rewrite(text: &str, root: &Path, repo: &Path) -> String {
    let r = root.display();
    let moves = [
        ("./target/release/".to_string(), format!("{}/", bin_dir().display())),
        ("/var/lib/gpuattest-collector".to_string(), format!("{r}/var/lib/gpuattest-collector")),
        ("/var/lib/gpuattest".to_string(), format!("{r}/var/lib/gpuattest")),
        ("/etc/gpuattest".to_string(), format!("{r}/etc/gpuattest")),
        ("/backup/".to_string(), format!("{r}/backup/")),
        (" collector/test-data/".to_string(), format!(" {}/collector/test-data/", repo.display())),
        (" my-policy.toml".to_string(), format!(" {r}/my-policy.toml")),
    ];
    let mut out = text.to_string();
    for (i, (from, _)) in moves.iter().enumerate() {
        out = out.replace(from.as_str(), &format!("\u{1}{i}\u{1}"));
    }
    for (i, (_, to)) in moves.iter().enumerate() {
        out = out.replace(&format!("\u{1}{i}\u{1}"), to);
    }
    out
}

/// Commands that serve or measure until stopped: they pass once running without having failed.
fn long_running(cmd: &str) -> bool {
    [" demo", " bench", " serve --grpc-listen", " landmark serve"].iter().any(|w| cmd.contains(w))
        && !cmd.contains("--check-config")
}

/// SIGTERM to the child's whole process group (a demo stops its agents), SIGKILL after 15 s.
fn stop_group(child: &mut std::process::Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    let _ = child.wait();
}

#[test]
fn every_command_in_the_readme_and_the_operator_guide_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = tempfile::tempdir().expect("tmp");
    let root = t.path().to_path_buf();
    let etc = root.join("etc/gpuattest");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::create_dir_all(root.join("backup")).expect("backup");
    std::fs::create_dir_all(root.join("var/lib")).expect("var/lib");
    // Installed as the guide installs them (section 1 and 2), paths moved into the scratch root.
    for (from, to) in [("collector-full.toml", "collector.toml"), ("agent-full.toml", "agent.toml")] {
        let text = std::fs::read_to_string(repo.join("deploy/config").join(from)).expect("config");
        std::fs::write(etc.join(to), rewrite(&text, &root, &repo)).expect("install config");
    }
    std::fs::write(etc.join("enroll-token"), "gpa_not_yet_minted\n").expect("token file");
    std::fs::copy(repo.join("deploy/config/policy.toml"), root.join("my-policy.toml")).expect("policy");
    std::fs::copy(repo.join("deploy/config/tenants.toml"), root.join("tenants.toml")).expect("tenants");
    // The scratch collector the commands talk to, on the guide's data directory.
    let data = root.join("var/lib/gpuattest-collector");
    let _collector = Collector::start(&data);
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = Vec::new();
    for doc in ["README.md", "deploy/README.md"] {
        let text = std::fs::read_to_string(repo.join(doc)).expect("document");
        for cmd in commands(&text) {
            let line = rewrite(&cmd, &root, &repo);
            use std::os::unix::process::CommandExt;
            // A process group of its own, so a demo's agents and workloads stop with it.
            let mut child = Command::new("bash")
                .args(["-c", &line])
                .process_group(0)
                .current_dir(&root)
                .env("PATH", &path)
                .env("GPUATTEST_DATA", &data)
                .env_remove("GPUATTEST_DATABASE")
                .env("GPUATTEST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("bash");
            let started = Instant::now();
            let limit = if long_running(&cmd) { Duration::from_secs(4) } else { Duration::from_secs(60) };
            let status = loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break Some(s);
                }
                if started.elapsed() > limit {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match status {
                Some(s) => {
                    let err = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
                    assert!(s.success(), "{doc}: `{cmd}` failed ({s}): {}", err.unwrap_or_default());
                }
                None => {
                    stop_group(&mut child);
                    assert!(long_running(&cmd), "{doc}: `{cmd}` did not finish within {limit:?}");
                }
            }
            ran.push(format!("{doc}: {cmd}"));
        }
    }
    let expect_at_least =
        ["token create --role enroll --tenant acme-ai --uses 500 --ttl 7d", "reports verify", "--check-config"];
    for e in expect_at_least {
        assert!(ran.iter().any(|r| r.contains(e)), "no command with {e:?} was found in the documents: {ran:#?}");
    }
    eprintln!("{} documented commands ran:\n{}", ran.len(), ran.join("\n"));
}

#[test]
fn the_command_extractor_reads_fences_continuations_and_comments() {
    let md = "text `gpuattest-collector x` outside\n```sh\n# comment\ncargo build && ./target/release/gpuattest-collector demo --seconds 3\ngpuattest-collector token create \\\n  --role enroll   # one node\ninstall -m 0755 gpuattest-agent /usr/bin/\n```\n";
    assert_eq!(
        commands(md),
        vec![
            "./target/release/gpuattest-collector demo --seconds 3",
            "gpuattest-collector token create   --role enroll"
        ]
    );
    let _ = PathBuf::new();
}

//! Kubernetes enrichment end to end: a real process placed in a real Kubernetes-shaped cgroup (v1,
//! cgroupfs driver, burstable QoS), on a simulated GPU; a stand-in kubelet serving the pod list over
//! HTTPS to the right bearer token only; `inspect --json` carries the pod's namespace, name, labels,
//! service account and owner. With a wrong token the process is still reported, unenriched.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use gpuattest_tests::{Workload, bin, make_pki, run, sim_lib, write_scenario};
use serde_json::{Value, json};

/// A cgroup under the v1 `pids` hierarchy, removed on drop. `None` when cgroups cannot be created here
/// (not root, or no writable v1 hierarchy), unless GPUATTEST_REQUIRE_CGROUPS is set.
struct PodCgroup(PathBuf);

impl PodCgroup {
    fn create(pod_uid: &str, container: &str) -> Option<PodCgroup> {
        let root = Path::new("/sys/fs/cgroup/pids");
        let dir = root.join("kubepods/burstable").join(format!("pod{pod_uid}")).join(container);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(PodCgroup(dir)),
            Err(e) => {
                assert!(
                    std::env::var_os("GPUATTEST_REQUIRE_CGROUPS").is_none(),
                    "cannot create {}: {e}",
                    dir.display()
                );
                eprintln!("cannot create a cgroup here ({e}); the kubelet enrichment test was skipped");
                None
            }
        }
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move the process into the cgroup");
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Deepest first; the process is gone by now (it is dropped before this guard).
        let mut d = self.0.clone();
        for _ in 0..4 {
            let _ = std::fs::remove_dir(&d);
            if !d.pop() {
                break;
            }
        }
    }
}

struct Kubelet(Child, u16);

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_kubelet(dir: &Path, cert: &Path, key: &Path, token: &str, pods: &Value) -> Kubelet {
    let list = dir.join("pods.json");
    std::fs::write(&list, pods.to_string()).expect("pod list");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/kubelet.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([cert, key])
        .arg(token)
        .arg(&list)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs the stand-in kubelet");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read port");
    let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect("listening PORT");
    Kubelet(child, port)
}

#[test]
fn inspect_enriches_a_pod_process_from_the_kubelet() {
    let t = tempfile::tempdir().expect("tmp");
    let Some(pki) = make_pki(t.path()) else { return };
    let uid = format!("{:08x}-9b4d-4e8a-b6c5-0d1e2f3a4b5c", std::process::id());
    let container = "9b0e2c4d1f3a5b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";
    let Some(cg) = PodCgroup::create(&uid, container) else { return };
    let w = Workload::start("python3", &["-m", "vllm.entrypoints.openai.api_server", "--model", "Qwen/Qwen2-7B"]);
    cg.adopt(w.pid());

    let token = "kubelet-test-token-not-a-secret-elsewhere";
    let pods = json!({"kind": "PodList", "apiVersion": "v1", "items": [
        {"metadata": {"name": "vllm-qwen-7d9f", "namespace": "tenant-borealis", "uid": uid,
                      "labels": {"app": "vllm", "gpuattest.io/tenant": "borealis-labs"},
                      "ownerReferences": [{"kind": "ReplicaSet", "name": "vllm-qwen-7d9f", "controller": true}]},
         "spec": {"serviceAccountName": "inference"}},
        {"metadata": {"name": "other", "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000"}}
    ]});
    let k = start_kubelet(t.path(), &pki.server.0, &pki.server.1, token, &pods);
    let scenario = t.path().join("scenario.json");
    write_scenario(&scenario, "kube", 2, &[w.pid()]);
    let tok_file = t.path().join("token");
    let inspect = |token: &str| {
        std::fs::write(&tok_file, token).expect("token");
        let (code, out, err) = run(Command::new(bin("gpuattest-agent"))
            .args(["inspect", "--json", "--nvml-lib"])
            .arg(sim_lib())
            .args(["--kubelet-url", &format!("https://127.0.0.1:{}/pods", k.1), "--kubelet-ca"])
            .arg(&pki.ca)
            .arg("--kubelet-token-file")
            .arg(&tok_file)
            .env("GPUATTEST_NVML_SIM", &scenario));
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains(token), "the bearer token never reaches the log");
        let obs: Value = serde_json::from_str(&out).expect("json");
        obs["processes"].as_array().expect("processes").iter().find(|p| p["pid"] == w.pid()).cloned().expect("pid")
    };

    let p = inspect(token);
    assert_eq!(p["pod_uid"], uid.as_str(), "attribution from the real cgroup");
    assert_eq!(p["container_id"], container);
    assert_eq!(p["attribution"]["qos_class"], "burstable");
    assert_eq!(
        p["pod"],
        json!({"namespace": "tenant-borealis", "name": "vllm-qwen-7d9f", "service_account": "inference",
               "owner": "ReplicaSet/vllm-qwen-7d9f",
               "labels": {"app": "vllm", "gpuattest.io/tenant": "borealis-labs"}})
    );
    assert_eq!(p["launch"]["kind"], "inference");

    let p = inspect("a-wrong-token");
    assert_eq!(p["pod_uid"], uid.as_str());
    assert!(p["pod"].is_null(), "a refused kubelet leaves the process unenriched: {}", p["pod"]);
    drop(w);
    drop(cg);
}

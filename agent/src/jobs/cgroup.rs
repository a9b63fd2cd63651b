//! Job attribution from `/proc/<pid>/cgroup`: which container, Kubernetes pod, Slurm job or systemd
//! unit a process belongs to. One small function per source of truth; each is tested on cgroup paths
//! as the runtimes really write them (cgroup v1 and v2, systemd and cgroupfs drivers).

use serde::Serialize;

/// Largest cgroup file read; real ones are well under 4 KiB even with every v1 controller.
pub const MAX_CGROUP_BYTES: usize = 64 * 1024;

/// What the cgroup paths say about a process's job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Container id (64 hex) from docker, containerd, CRI-O or podman.
    pub container_id: Option<String>,
    /// The runtime that named the container.
    pub runtime: Option<String>,
    /// Kubernetes pod UID, normalised to the dashed form.
    pub pod_uid: Option<String>,
    /// Kubernetes QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub qos_class: Option<String>,
    /// Slurm job id.
    pub slurm_job_id: Option<String>,
    /// Slurm step (`batch`, `extern`, `0`, ...).
    pub slurm_step: Option<String>,
    /// systemd unit (service or scope) outside any container.
    pub systemd_unit: Option<String>,
}

/// Parses a whole `/proc/<pid>/cgroup` file (v1 lines `N:ctrl:path`, v2 line `0::path`).
pub fn parse(content: &str) -> (Attribution, Vec<String>) {
    let mut att = Attribution::default();
    let mut paths = Vec::new();
    for line in content.lines().take(256) {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if path.is_empty() || path.len() > 4096 || paths.iter().any(|p| p == path) {
            continue;
        }
        paths.push(path.to_string());
        let a = attribute_path(path);
        att.container_id = att.container_id.or(a.container_id);
        att.runtime = att.runtime.or(a.runtime);
        att.pod_uid = att.pod_uid.or(a.pod_uid);
        att.qos_class = att.qos_class.or(a.qos_class);
        att.slurm_job_id = att.slurm_job_id.or(a.slurm_job_id);
        att.slurm_step = att.slurm_step.or(a.slurm_step);
        att.systemd_unit = att.systemd_unit.or(a.systemd_unit);
    }
    // On hybrid hosts some controllers still show the runtime's own service (slurmd.service,
    // containerd.service); a job found on any line is the answer, not that unit.
    if att.container_id.is_some() || att.pod_uid.is_some() || att.slurm_job_id.is_some() {
        att.systemd_unit = None;
    }
    (att, paths)
}

/// Attributes one cgroup path.
pub fn attribute_path(path: &str) -> Attribution {
    let (container_id, runtime) = container(path).unzip();
    let (pod_uid, qos_class) = match kubernetes(path) {
        Some((uid, qos)) => (Some(uid), Some(qos)),
        None => (None, None),
    };
    let (slurm_job_id, slurm_step) = match slurm(path) {
        Some((job, step)) => (Some(job), step),
        None => (None, None),
    };
    let systemd_unit =
        if container_id.is_none() && pod_uid.is_none() && slurm_job_id.is_none() { systemd(path) } else { None };
    Attribution { container_id, runtime, pod_uid, qos_class, slurm_job_id, slurm_step, systemd_unit }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Container runtimes: systemd driver (`docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`) and cgroupfs driver (`/docker/<id>`, `/kubepods/.../<id>`).
pub fn container(path: &str) -> Option<(String, String)> {
    for seg in path.split('/').rev() {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        for (prefix, runtime) in [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
            ("containerd-", "containerd"),
        ] {
            if let Some(id) = seg.strip_prefix(prefix)
                && is_hex64(id)
            {
                return Some((id.to_ascii_lowercase(), runtime.into()));
            }
        }
        if is_hex64(seg) {
            let runtime = if path.contains("/docker/") {
                "docker"
            } else if path.contains("libpod") {
                "podman"
            } else {
                "containerd"
            };
            return Some((seg.to_ascii_lowercase(), runtime.into()));
        }
    }
    None
}

fn normalise_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    let ok = uid.len() == 36
        && uid.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    ok.then_some(uid)
}

/// Kubernetes pods: `kubepods-burstable-pod<uid_with_underscores>.slice` (systemd driver) or
/// `/kubepods/besteffort/pod<uid-with-dashes>/` (cgroupfs). Guaranteed pods sit directly under kubepods.
pub fn kubernetes(path: &str) -> Option<(String, String)> {
    if !path.contains("kubepods") {
        return None;
    }
    let qos = if path.contains("besteffort") {
        "besteffort"
    } else if path.contains("burstable") {
        "burstable"
    } else {
        "guaranteed"
    };
    for seg in path.split('/') {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        let tail = seg.rsplit('-').next().unwrap_or(seg);
        for candidate in [tail, seg] {
            if let Some(raw) = candidate.strip_prefix("pod")
                && let Some(uid) = normalise_uid(raw)
            {
                return Some((uid, qos.into()));
            }
        }
    }
    None
}

/// Slurm: v1 `/slurm/uid_1000/job_42/step_0/task_0`, v2 `/system.slice/slurmstepd.scope/job_42/step_batch`.
pub fn slurm(path: &str) -> Option<(String, Option<String>)> {
    if !path.contains("slurm") {
        return None;
    }
    let mut job = None;
    let mut step = None;
    for seg in path.split('/') {
        if let Some(j) = seg.strip_prefix("job_")
            && !j.is_empty()
            && j.bytes().all(|b| b.is_ascii_digit())
        {
            job = Some(j.to_string());
        } else if let Some(s) = seg.strip_prefix("step_")
            && !s.is_empty()
        {
            step = Some(s.to_string());
        }
    }
    job.map(|j| (j, step))
}

/// systemd units outside containers: the last `*.service` or `*.scope` segment.
pub fn systemd(path: &str) -> Option<String> {
    path.split('/').rev().find(|s| s.ends_with(".service") || s.ends_with(".scope")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e9c1b2a7d8e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    #[test]
    fn docker_systemd_driver_v2() {
        let (a, _) = parse(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(a.container_id.as_deref(), Some(ID));
        assert_eq!(a.runtime.as_deref(), Some("docker"));
        assert_eq!(a.systemd_unit, None);
    }

    #[test]
    fn docker_cgroupfs_driver_v1() {
        let text = format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        let (a, paths) = parse(&text);
        assert_eq!(a.container_id.as_deref(), Some(ID));
        assert_eq!(paths.len(), 1);
    }

    #[test]
    fn kubernetes_systemd_burstable_containerd() {
        let p = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-{ID}.scope"
        );
        let a = attribute_path(&p);
        assert_eq!(a.pod_uid.as_deref(), Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert_eq!(a.qos_class.as_deref(), Some("burstable"));
        assert_eq!(a.runtime.as_deref(), Some("containerd"));
    }

    #[test]
    fn kubernetes_cgroupfs_guaranteed_crio() {
        let p = format!("/kubepods/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/crio-{ID}");
        let a = attribute_path(&p);
        assert_eq!(a.pod_uid.as_deref(), Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert_eq!(a.qos_class.as_deref(), Some("guaranteed"));
        assert_eq!(a.runtime.as_deref(), Some("cri-o"));
    }

    #[test]
    fn slurm_v1_and_v2() {
        let a = attribute_path("/slurm/uid_1000/job_4242/step_0/task_0");
        assert_eq!((a.slurm_job_id.as_deref(), a.slurm_step.as_deref()), (Some("4242"), Some("0")));
        let b = attribute_path("/system.slice/slurmstepd.scope/job_77/step_batch/user/task_0");
        assert_eq!((b.slurm_job_id.as_deref(), b.slurm_step.as_deref()), (Some("77"), Some("batch")));
        assert_eq!(b.systemd_unit, None);
    }

    #[test]
    fn systemd_unit_and_user_session() {
        assert_eq!(attribute_path("/system.slice/vllm.service").systemd_unit.as_deref(), Some("vllm.service"));
        assert_eq!(
            attribute_path("/user.slice/user-1000.slice/session-3.scope").systemd_unit.as_deref(),
            Some("session-3.scope")
        );
    }

    /// Every captured `/proc/<pid>/cgroup` under `test-data/cgroup/` against its expected attribution.
    #[test]
    fn captured_cgroup_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/cgroup");
        let mut checked = 0;
        for e in std::fs::read_dir(&dir).expect("test-data/cgroup") {
            let path = e.expect("entry").path();
            if path.extension().and_then(|x| x.to_str()) != Some("cgroup") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let expected: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(path.with_extension("expected.json")).expect("expected file"),
            )
            .expect("expected JSON");
            let (att, _) = parse(&text);
            assert_eq!(serde_json::to_value(&att).expect("json"), expected, "{}", path.display());
            checked += 1;
        }
        assert!(checked >= 14, "only {checked} captured files found");
    }

    #[test]
    fn hostile_content_is_bounded_and_ignored() {
        let (a, p) = parse("garbage\n::\n0::\n\u{0}\u{1}:x\n");
        assert_eq!(a, Attribution::default());
        assert!(p.is_empty());
        let long = format!("0::/{}\n", "a/".repeat(5000));
        assert!(parse(&long).1.is_empty());
        assert_eq!(attribute_path("/docker/notahexid").container_id, None);
        assert_eq!(attribute_path("/kubepods/podnot-a-uid").pod_uid, None);
        assert_eq!(attribute_path("/slurm/job_/step_").slurm_job_id, None);
    }
}

//! Who a GPU process is: its command line (redacted), owner, executable, start time and the job it
//! belongs to, read from `/proc` (or a prepared tree passed in as `proc_root`).
//!
//! Every file here is written by, or on behalf of, an untrusted workload, so every read is bounded and
//! nothing read is trusted beyond being shown to a reviewer.

pub mod cgroup;
pub mod env;
pub mod launch;
pub mod redact;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use cgroup::Attribution;
pub use launch::Launch;

/// Largest command line kept (the kernel allows far more; a reviewer needs far less).
pub const MAX_CMDLINE_BYTES: usize = 64 * 1024;
/// Arguments beyond this many are dropped (with a marker).
pub const MAX_ARGS: usize = 512;

/// What `/proc` says about one process.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Host pid.
    pub pid: u32,
    /// Command line, secrets redacted; empty when the process is gone or unreadable.
    pub cmdline: String,
    /// Resolved `/proc/<pid>/exe`, when readable.
    pub exe: Option<String>,
    /// Real uid.
    pub uid: Option<u32>,
    /// Start time in clock ticks since boot, the pid-reuse guard.
    pub start_time_ticks: Option<u64>,
    /// Job attribution from cgroups.
    pub attribution: Attribution,
    /// The raw cgroup paths.
    pub cgroups: Vec<String>,
    /// Allow-listed environment variables (see [`env::ALLOWED`]).
    pub env: BTreeMap<String, String>,
    /// How it was launched.
    pub launch: Launch,
    /// Checkpoint-like files it has open for writing.
    pub writing: Vec<String>,
    /// User name of `uid`, from the host's passwd file.
    pub user: Option<String>,
}

pub(crate) use crate::files::read_bounded;

/// Splits a NUL-separated cmdline into arguments, bounded and lossily decoded.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    let mut args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .take(MAX_ARGS + 1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.len() > MAX_ARGS {
        args.truncate(MAX_ARGS);
        args.push("[...]".into());
    }
    args
}

/// Parses field 22 (starttime) of `/proc/<pid>/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; starttime is field 22, the 20th of these.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Parses the real uid from `/proc/<pid>/status`.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// Reads only the start time of `pid` (the PID-reuse guard re-checks it).
pub fn read_process_start(proc_root: &Path, pid: u32) -> Option<u64> {
    read_bounded(&proc_root.join(pid.to_string()).join("stat"), 8 * 1024)
        .and_then(|b| parse_stat_start_time(&String::from_utf8_lossy(&b)))
}

/// Reads what `/proc/<pid>` says about a process. Missing files give empty fields, never an error:
/// a process may exit between NVML listing it and the agent reading it.
pub fn read_process(proc_root: &Path, pid: u32) -> ProcessFacts {
    let dir = proc_root.join(pid.to_string());
    let cmdline = read_bounded(&dir.join("cmdline"), MAX_CMDLINE_BYTES)
        .map(|raw| redact::redact_argv(&split_cmdline(&raw)))
        .unwrap_or_default();
    let exe = std::fs::read_link(dir.join("exe")).ok().map(|p| p.display().to_string());
    let uid = read_bounded(&dir.join("status"), 16 * 1024).and_then(|b| parse_status_uid(&String::from_utf8_lossy(&b)));
    let start_time_ticks =
        read_bounded(&dir.join("stat"), 8 * 1024).and_then(|b| parse_stat_start_time(&String::from_utf8_lossy(&b)));
    let (attribution, cgroups) = read_bounded(&dir.join("cgroup"), cgroup::MAX_CGROUP_BYTES)
        .map(|b| cgroup::parse(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let env = read_bounded(&dir.join("environ"), env::MAX_ENVIRON_BYTES).map(|b| env::filter(&b)).unwrap_or_default();
    let launch = launch::detect(&cmdline, &env);
    ProcessFacts {
        pid,
        cmdline,
        exe,
        uid,
        start_time_ticks,
        attribution,
        cgroups,
        launch,
        env,
        writing: open_for_writing(&dir),
        user: uid.and_then(user_name),
    }
}

/// Checkpoint-like regular files the process has open for writing (at most 32): evidence of training.
pub fn open_for_writing(pid_dir: &Path) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(pid_dir.join("fd")) else { return Vec::new() };
    let mut out = Vec::new();
    for e in fds.flatten().take(65_536) {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let shown = target.to_string_lossy().into_owned();
        let lower = shown.to_ascii_lowercase();
        let checkpointish = crate::models::looks_like_model(&lower)
            || lower.ends_with(".distcp")
            || lower.contains("checkpoint")
            || lower.contains("ckpt");
        if !shown.starts_with('/') || !checkpointish {
            continue;
        }
        let info = read_bounded(&pid_dir.join("fdinfo").join(e.file_name()), 4096).unwrap_or_default();
        let flags = String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
        // O_WRONLY = 1, O_RDWR = 2.
        if flags.is_some_and(|f| f & 3 != 0) && std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
            out.push(shown);
            if out.len() >= 32 {
                break;
            }
        }
    }
    out
}

/// The user name of `uid` from `/etc/passwd` (bounded read).
pub fn user_name(uid: u32) -> Option<String> {
    let raw = read_bounded(Path::new("/etc/passwd"), 4 * 1024 * 1024)?;
    String::from_utf8_lossy(&raw).lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.chars().take(64).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let stat = "4242 (evil) name) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat_start_time(stat), Some(987_654));
        assert_eq!(parse_stat_start_time("garbage"), None);
        assert_eq!(parse_stat_start_time("1 (x) S"), None);
    }

    #[test]
    fn status_uid() {
        assert_eq!(parse_status_uid("Name:\tpython\nUid:\t1000\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(parse_status_uid("Uid:\tx\n"), None);
    }

    #[test]
    fn cmdline_is_bounded() {
        let raw: Vec<u8> = std::iter::repeat_n(b"a\0".as_slice(), 10_000).flatten().copied().collect();
        let args = split_cmdline(&raw);
        assert_eq!(args.len(), MAX_ARGS + 1);
        assert_eq!(args.last().map(String::as_str), Some("[...]"));
        assert_eq!(split_cmdline(b"\xff\xfe\0x"), vec!["\u{fffd}\u{fffd}".to_string(), "x".to_string()]);
    }

    #[test]
    fn checkpoint_open_for_writing_is_seen() {
        let t = tempfile::tempdir().expect("tmp");
        let ckpt = t.path().join("checkpoint-100.safetensors");
        let _w = std::fs::File::create(&ckpt).expect("create");
        let _r = std::fs::File::open(t.path()).expect("dir");
        let me = Path::new("/proc").join(std::process::id().to_string());
        let writing = open_for_writing(&me);
        assert!(writing.contains(&ckpt.display().to_string()), "{writing:?}");
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let facts = read_process(Path::new("/proc"), me);
        assert!(!facts.cmdline.is_empty());
        assert!(facts.start_time_ticks.is_some());
        assert!(facts.uid.is_some());
        let gone = read_process(Path::new("/proc"), u32::MAX);
        assert_eq!(gone.cmdline, "");
    }
}

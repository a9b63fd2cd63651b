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
    /// Large files it has open for writing, whatever their names.
    pub large_writes: Vec<OpenWrite>,
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
    let (writing, large_writes) = open_for_writing(&dir);
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
        writing,
        large_writes,
        user: uid.and_then(user_name),
    }
}

/// A large regular file open for writing: a checkpoint or adapter being saved, whatever its name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OpenWrite {
    /// The path as the process sees it.
    pub path: String,
    /// Its size when last looked at.
    pub size_bytes: u64,
    /// Its last modification, Unix ms.
    pub modified_unix_ms: i64,
    /// The filesystem type from the process's mount table (`nfs4`, `lustre`, `ext4`, ...), where found.
    pub fs_type: String,
    /// The descriptor, so the size can be looked at again cheaply.
    #[serde(skip)]
    pub fd: u32,
}

/// Files at least this big, open for writing, are reported whatever their names.
pub const LARGE_WRITE_BYTES: u64 = 32 * 1024 * 1024;

/// Regular files the process has open for writing: the checkpoint-like names (at most 32), evidence a
/// tenant controls, and every file of at least [`LARGE_WRITE_BYTES`] (at most 16), evidence it does
/// not: renaming a checkpoint does not make it small.
pub fn open_for_writing(pid_dir: &Path) -> (Vec<String>, Vec<OpenWrite>) {
    let Ok(fds) = std::fs::read_dir(pid_dir.join("fd")) else { return (Vec::new(), Vec::new()) };
    let (mut named, mut large) = (Vec::new(), Vec::new());
    for e in fds.flatten().take(65_536) {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let shown = target.to_string_lossy().into_owned();
        if !shown.starts_with('/') {
            continue;
        }
        let lower = shown.to_ascii_lowercase();
        let checkpointish = crate::models::looks_like_model(&lower)
            || lower.ends_with(".distcp")
            || lower.contains("checkpoint")
            || lower.contains("ckpt");
        let Ok(meta) = std::fs::metadata(e.path()) else { continue };
        let big = meta.is_file() && meta.len() >= LARGE_WRITE_BYTES;
        if !(checkpointish || big) || !meta.is_file() {
            continue;
        }
        let info = read_bounded(&pid_dir.join("fdinfo").join(e.file_name()), 4096).unwrap_or_default();
        let flags = String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
        // O_WRONLY = 1, O_RDWR = 2.
        if flags.is_none_or(|f| f & 3 == 0) {
            continue;
        }
        if checkpointish && named.len() < 32 {
            named.push(shown.clone());
        }
        if big && large.len() < 16 {
            large.push(OpenWrite {
                size_bytes: meta.len(),
                modified_unix_ms: modified_ms(&meta),
                fd: e.file_name().to_str().and_then(|n| n.parse().ok()).unwrap_or(0),
                path: shown,
                fs_type: String::new(),
            });
        }
    }
    if !large.is_empty() {
        let mounts = read_bounded(&pid_dir.join("mountinfo"), 512 * 1024).unwrap_or_default();
        let mounts = String::from_utf8_lossy(&mounts);
        for w in &mut large {
            w.fs_type = fs_type_of(&mounts, &w.path).unwrap_or_default();
        }
    }
    (named, large)
}

fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

/// Looks at large writes again (size and modification time through the held descriptor numbers);
/// a descriptor that now names another file, or none, drops the entry.
pub fn refresh_large_writes(pid_dir: &Path, writes: &mut Vec<OpenWrite>) {
    writes.retain_mut(|w| {
        let fd = pid_dir.join("fd").join(w.fd.to_string());
        let same = std::fs::read_link(&fd).is_ok_and(|t| t.to_string_lossy() == w.path);
        match std::fs::metadata(&fd) {
            Ok(m) if same && m.is_file() => {
                w.size_bytes = m.len();
                w.modified_unix_ms = modified_ms(&m);
                true
            }
            _ => false,
        }
    });
}

/// The filesystem type of the longest mount point above `path` in a `/proc/<pid>/mountinfo` text.
pub fn fs_type_of(mountinfo: &str, path: &str) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let (Some(mount_point), Some(fs)) = (left.split(' ').nth(4), right.split(' ').next()) else { continue };
        let under = path == mount_point
            || mount_point == "/"
            || path.strip_prefix(mount_point).is_some_and(|rest| rest.starts_with('/'));
        if under && best.is_none_or(|(len, _)| mount_point.len() >= len) {
            best = Some((mount_point.len(), fs));
        }
    }
    best.map(|(_, fs)| fs.chars().take(32).collect())
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
    fn large_writes_are_found_by_size_not_name() {
        use std::io::Write;
        let t = tempfile::tempdir().expect("tmp");
        let innocent = t.path().join("cache.bin");
        let big = std::fs::File::create(&innocent).expect("create");
        big.set_len(LARGE_WRITE_BYTES + 1).expect("sparse");
        let small_ckpt = t.path().join("step-1.ckpt");
        let mut small = std::fs::File::create(&small_ckpt).expect("create");
        small.write_all(b"x").expect("write");
        let read_only = std::fs::File::open(&innocent).expect("open");
        let (named, mut large) = open_for_writing(Path::new("/proc/self"));
        assert!(named.iter().any(|n| n.ends_with("step-1.ckpt")), "{named:?}");
        let mine: Vec<_> = large.iter().filter(|w| w.path.ends_with("cache.bin")).collect();
        assert_eq!(mine.len(), 1, "opened for writing once, read-only once: {large:?}");
        assert_eq!(mine[0].size_bytes, LARGE_WRITE_BYTES + 1);
        assert!(!mine[0].fs_type.is_empty(), "{mine:?}");
        big.set_len(LARGE_WRITE_BYTES * 2).expect("grow");
        refresh_large_writes(Path::new("/proc/self"), &mut large);
        assert!(large.iter().any(|w| w.path.ends_with("cache.bin") && w.size_bytes == LARGE_WRITE_BYTES * 2));
        drop((big, read_only));
        refresh_large_writes(Path::new("/proc/self"), &mut large);
        assert!(large.iter().all(|w| !w.path.ends_with("cache.bin")), "closed: dropped");
    }

    #[test]
    fn fs_types_come_from_the_longest_mount_point() {
        let m = [
            "22 1 8:1 / / rw - ext4 /dev/sda1 rw",
            "40 22 0:50 / /mnt/fsx rw - lustre 10.0.0.1@tcp:/fsx rw",
            "41 22 0:51 / /mnt/fs rw - nfs4 srv:/x rw",
        ]
        .join("\n");
        let m = m.as_str();
        assert_eq!(fs_type_of(m, "/mnt/fsx/run/state.bin").as_deref(), Some("lustre"));
        assert_eq!(fs_type_of(m, "/mnt/fs/a").as_deref(), Some("nfs4"));
        assert_eq!(fs_type_of(m, "/mnt/fsxy/a").as_deref(), Some("ext4"));
        assert_eq!(fs_type_of("garbage without separator", "/a"), None);
    }

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
        let (writing, _) = open_for_writing(&me);
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

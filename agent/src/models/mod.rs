//! Model identification from the files themselves: which weights a GPU process has open (file
//! descriptors and memory maps under `/proc`), and what they are, read from headers only.
//!
//! Model files are written by tenants and read by a root daemon, so they are hostile input: every read
//! is bounded, only regular files are opened (never FIFOs, sockets or devices, and never in blocking
//! mode), files a process has open are read through `/proc/<pid>/fd/N` (which also reaches deleted
//! files and other mount namespaces), and paths from `/proc/<pid>/maps` are resolved inside the
//! process's root, checked against the device and inode the kernel listed.
//!
//! # Layout
//! - [`safetensors`], [`gguf`], [`pytorch`]: the header parsers.
//! - [`config`]: `config.json` and model directories.
//! - this file: the fingerprint type, format detection, discovery and the cache.

pub mod config;
pub mod gguf;
pub mod pytorch;
pub mod safetensors;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

/// A model file or directory identified from its headers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Fingerprint {
    /// The path as the process (or the operator) names it.
    pub path: String,
    /// `safetensors`, `gguf-v3`, `pytorch-zip`, `onnx`, `tensorrt`, `directory`.
    pub format: String,
    /// SHA-256 (hex) of the header bytes.
    pub header_sha256: String,
    /// Tensors declared (storages, for PyTorch zips).
    pub tensor_count: u64,
    /// Parameters, from the tensor shapes.
    pub parameter_count: u64,
    /// Architecture class, e.g. `DeepseekV3ForCausalLM`.
    pub architecture: Option<String>,
    /// `model_type` (config.json) or `general.architecture` (GGUF).
    pub model_type: Option<String>,
    /// Model name.
    pub name: Option<String>,
    /// Publishing organisation.
    pub organization: Option<String>,
    /// Models this one derives from.
    pub base_models: Vec<String>,
    /// Tensor dtypes seen.
    pub dtypes: Vec<String>,
    /// Other identifying keys (hyperparameters, tokenizer, metadata).
    pub metadata: BTreeMap<String, String>,
    /// File size, bytes (sum of weight files for a directory).
    pub size_bytes: u64,
}

/// Why a file could not be fingerprinted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// Not a regular file (FIFO, socket, device, directory where a file was expected).
    #[error("not a regular file ({0}); never read")]
    NotRegular(String),
    /// The header ends early.
    #[error("truncated: {0}")]
    Truncated(String),
    /// The header is malformed or absurd.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Not a model format this agent knows.
    #[error("unknown format")]
    Unknown,
    /// The OS refused.
    #[error("cannot read: {0}")]
    Io(String),
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    gpuattest_proto::hex(b)
}

pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    hex(c.finish().as_ref())
}

pub(crate) fn clip(s: &str, n: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(n).collect()
}

/// Reads exactly `n` bytes, growing the buffer as data arrives (so a lying length cannot make us
/// allocate more than the file really holds).
pub(crate) fn read_exact_bounded(r: &mut impl Read, n: usize, what: &str) -> Result<Vec<u8>, ModelError> {
    let mut v = Vec::with_capacity(n.min(1 << 20));
    r.take(n as u64).read_to_end(&mut v).map_err(|e| ModelError::Io(e.to_string()))?;
    if v.len() != n {
        return Err(ModelError::Truncated(format!("{what}: wanted {n} bytes, file has {}", v.len())));
    }
    Ok(v)
}

/// Opens a path read-only without blocking (a FIFO would otherwise hang the agent) and without
/// acquiring a controlling terminal, then refuses anything that is not a regular file.
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), ModelError> {
    open_regular_with(path, false)
}

/// As [`open_regular`]; with `no_follow`, a link at the last step is refused (O_NOFOLLOW), so a path
/// resolved inside a process's root cannot be swapped for a link between resolving and opening.
pub fn open_regular_with(path: &Path, no_follow: bool) -> Result<(File, std::fs::Metadata), ModelError> {
    const O_NONBLOCK: i32 = 0o4000;
    const O_NOCTTY: i32 = 0o400;
    // Linux's value differs by architecture (asm-generic vs arm, arm64 and powerpc).
    #[cfg(any(target_arch = "aarch64", target_arch = "arm", target_arch = "powerpc", target_arch = "powerpc64"))]
    const O_NOFOLLOW: i32 = 0o100000;
    #[cfg(not(any(target_arch = "aarch64", target_arch = "arm", target_arch = "powerpc", target_arch = "powerpc64")))]
    const O_NOFOLLOW: i32 = 0o400000;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK | O_NOCTTY | if no_follow { O_NOFOLLOW } else { 0 })
        .open(path)
        .map_err(|e| ModelError::Io(e.to_string()))?;
    let meta = f.metadata().map_err(|e| ModelError::Io(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(ModelError::NotRegular(format!("{:?}", meta.file_type())));
    }
    Ok((f, meta))
}

/// The format a file's name suggests.
pub fn looks_like_model(name: &str) -> bool {
    let lower = name.trim_end_matches(" (deleted)").to_ascii_lowercase();
    [".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".engine", ".plan", ".trt"]
        .iter()
        .any(|e| lower.ends_with(e))
}

fn first8(m: &[u8; 9]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&m[..8]);
    a
}

/// Fingerprints an open regular file by its magic bytes (the name is only a hint).
///
/// # Errors
/// [`ModelError`] from the parser, or [`ModelError::Unknown`].
pub fn fingerprint_file(f: &mut File, len: u64, name: &str) -> Result<Fingerprint, ModelError> {
    let mut magic = [0u8; 9];
    let got = read_exact_bounded(f, (len.min(9)) as usize, "magic").map(|v| {
        magic[..v.len()].copy_from_slice(&v);
        v.len()
    })?;
    f.seek(SeekFrom::Start(0)).map_err(|e| ModelError::Io(e.to_string()))?;
    let lower = name.to_ascii_lowercase();
    let mut fp = if got >= 4 && &magic[..4] == b"GGUF" {
        gguf::fingerprint(f, len)?
    } else if got >= 4 && magic[..4] == [0x50, 0x4b, 0x03, 0x04] {
        pytorch::fingerprint(f, len)?
    } else if lower.ends_with(".safetensors")
        || (got == 9 && magic[8] == b'{' && u64::from_le_bytes(first8(&magic)) < len)
    {
        safetensors::fingerprint(f, len)?
    } else if lower.ends_with(".onnx")
        || lower.ends_with(".engine")
        || lower.ends_with(".plan")
        || lower.ends_with(".trt")
    {
        // Opaque formats: identified by a hash of their first 64 KiB and their size.
        let head = read_exact_bounded(f, len.min(64 * 1024) as usize, "header")?;
        let format = if lower.ends_with(".onnx") { "onnx" } else { "tensorrt" };
        Fingerprint { format: format.into(), header_sha256: sha256_hex(&[&head]), ..Default::default() }
    } else {
        return Err(ModelError::Unknown);
    };
    fp.size_bytes = len;
    Ok(fp)
}

/// Fingerprints what the operator names: a model file or a model directory.
///
/// # Errors
/// [`ModelError`] when the path is neither a readable model file nor a directory with a config.json or
/// weight files.
pub fn fingerprint_path(path: &Path) -> Result<Fingerprint, ModelError> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    let mut fp = if meta.is_dir() {
        config::fingerprint_dir(path)?
    } else {
        let (mut f, meta) = open_regular(path)?;
        let mut fp = fingerprint_file(&mut f, meta.len(), &path.to_string_lossy())?;
        if let Some(dir) = path.parent() {
            config::enrich_from_dir(&mut fp, dir);
        }
        fp
    };
    fp.path = path.display().to_string();
    Ok(fp)
}

/// A model file some process has open, and how to reach it safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The path as the process sees it (what reviewers read).
    pub shown: String,
    /// Where the agent opens it (`/proc/<pid>/fd/N`, or the maps path resolved in the process root).
    pub open: PathBuf,
    /// For maps entries: the (device, inode) the kernel listed, checked after opening.
    pub expect: Option<(u64, u64)>,
    /// The directory that holds it, as the process sees it, inside the process's root (for
    /// config.json and tokenizer_config.json beside the weights).
    pub dir_in_root: Option<InRoot>,
}

/// A directory as a process sees it, and that process's root: every file in it is resolved inside the
/// root (links, absolute or relative, and `..` never leave it) and opened without following a link
/// at the last step, so a tenant's `config.json -> /etc/...` names nothing of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRoot {
    /// `/proc/<pid>/root`.
    pub root: PathBuf,
    /// The directory's path as the process sees it.
    pub dir: String,
}

impl InRoot {
    /// Where `name` in this directory is, inside the root; `None` if it does not exist there.
    pub fn resolve(&self, name: &str) -> Option<PathBuf> {
        resolve_in_root(&self.root, &format!("{}/{name}", self.dir.trim_end_matches('/')))
    }
}

/// Resolves `path` (absolute, as the process sees it) inside `root` the way `openat2(RESOLVE_IN_ROOT)`
/// would: symlinks, absolute or relative, and `..` can never leave `root`. At most 16 links.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_string).rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here: PathBuf = root.join(done.iter().collect::<PathBuf>()).join(&comp);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 16 {
                    return None;
                }
                let target = std::fs::read_link(&here).ok()?;
                if target.is_absolute() {
                    done.clear();
                }
                let parts: Vec<String> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                for p in parts.into_iter().rev() {
                    pending.push(p);
                }
            }
            Ok(_) => done.push(comp),
            Err(_) => return None,
        }
    }
    Some(root.join(done.iter().collect::<PathBuf>()))
}

/// Model files process `pid` has open or mapped, read from `proc_root`. Bounded: at most 64k fds and
/// 4 MiB of maps are read, at most 256 candidates returned.
pub fn discover(proc_root: &Path, pid: u32) -> Vec<Candidate> {
    let pdir = proc_root.join(pid.to_string());
    let root = pdir.join("root");
    let mut out: Vec<Candidate> = Vec::new();
    let in_root_dir = |shown: &str| -> Option<InRoot> {
        let parent = Path::new(shown.trim_end_matches(" (deleted)")).parent()?.to_string_lossy().into_owned();
        Some(InRoot { root: root.clone(), dir: parent })
    };
    if let Ok(fds) = std::fs::read_dir(pdir.join("fd")) {
        for e in fds.flatten().take(65_536) {
            let Ok(target) = std::fs::read_link(e.path()) else { continue };
            let shown = target.to_string_lossy().into_owned();
            if !shown.starts_with('/') || !looks_like_model(&shown) || out.iter().any(|c| c.shown == shown) {
                continue;
            }
            let dir_in_root = in_root_dir(&shown);
            out.push(Candidate { shown, open: e.path(), expect: None, dir_in_root });
            if out.len() >= 256 {
                return out;
            }
        }
    }
    if let Some(maps) = crate::files::read_bounded(&pdir.join("maps"), 4 * 1024 * 1024) {
        for line in String::from_utf8_lossy(&maps).lines() {
            let mut f = line.splitn(6, ' ');
            let (_, _, _, dev, inode) = (f.next(), f.next(), f.next(), f.next(), f.next());
            let Some(shown) = f.next().map(str::trim_start) else { continue };
            if !shown.starts_with('/') || !looks_like_model(shown) || out.iter().any(|c| c.shown == shown) {
                continue;
            }
            let (Some(dev), Some(inode)) = (dev, inode.and_then(|i| i.parse::<u64>().ok())) else { continue };
            let Some((maj, min)) = dev.split_once(':') else { continue };
            let (Ok(maj), Ok(min)) = (u64::from_str_radix(maj, 16), u64::from_str_radix(min, 16)) else { continue };
            let Some(open) = resolve_in_root(&root, shown.trim_end_matches(" (deleted)")) else { continue };
            let dev = (maj << 8) | (min & 0xff) | ((min & !0xff) << 12);
            out.push(Candidate {
                shown: shown.to_string(),
                open,
                expect: Some((dev, inode)),
                dir_in_root: in_root_dir(shown),
            });
            if out.len() >= 256 {
                break;
            }
        }
    }
    out
}

/// Fingerprints by (device, inode, size, mtime): a file is parsed once, however many processes and
/// observations see it.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<(u64, u64, u64, i64), Result<Fingerprint, ModelError>>,
}

/// Entries kept before the cache is cleared.
const CACHE_MAX: usize = 4096;

impl Cache {
    /// Fingerprints one candidate, from the cache when the file is unchanged.
    pub fn fingerprint(&mut self, c: &Candidate) -> Result<Fingerprint, ModelError> {
        let (mut f, meta) = open_regular(&c.open)?;
        if let Some((dev, ino)) = c.expect
            && (meta.dev() != dev || meta.ino() != ino)
        {
            return Err(ModelError::Invalid("the file at this path is not the one the process mapped".into()));
        }
        let key = (meta.dev(), meta.ino(), meta.len(), meta.mtime());
        if self.entries.len() >= CACHE_MAX && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        let result = self
            .entries
            .entry(key)
            .or_insert_with(|| {
                let mut fp = fingerprint_file(&mut f, meta.len(), &c.shown)?;
                if let Some(dir) = &c.dir_in_root {
                    config::enrich_with(&mut fp, |name| dir.resolve(name), true);
                }
                Ok(fp)
            })
            .clone();
        result.map(|mut fp| {
            fp.path = c.shown.clone();
            fp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_9_config_files_beside_weights_resolve_inside_the_process_root() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("proc/77/root");
        let model = root.join("models/m");
        std::fs::create_dir_all(&model).expect("mkdir");
        std::fs::create_dir_all(root.join("models/blobs")).expect("mkdir");
        // Outside the tenant's root, a host file that looks like a config.
        let host_file = t.path().join("host-secret.json");
        std::fs::write(&host_file, br#"{"model_type": "host-secret"}"#).expect("write");
        std::os::unix::fs::symlink(&host_file, model.join("config.json")).expect("absolute link out");
        std::os::unix::fs::symlink("../../../../../host-secret.json", model.join("tokenizer_config.json"))
            .expect("climbing link out");
        // What the agent did before: the directory resolved in the root, the file joined to it and
        // opened by the host's rules, so the tenant's absolute link read the host's file.
        let mut leaked = Fingerprint::default();
        config::enrich_from_dir(&mut leaked, &model);
        assert_eq!(leaked.model_type.as_deref(), Some("host-secret"), "the naive join follows the link out");
        let dir = InRoot { root: root.clone(), dir: "/models/m".into() };
        assert_eq!(dir.resolve("config.json"), None, "the absolute link is read inside the root");
        assert_eq!(dir.resolve("tokenizer_config.json"), None, "the climbing link stops at the root");
        let mut fp = Fingerprint::default();
        config::enrich_with(&mut fp, |n| dir.resolve(n), true);
        assert_eq!(fp.model_type, None, "nothing of the host file: {fp:?}");
        // The Hugging Face cache's own links (snapshot -> ../blobs) still work inside the root.
        std::fs::remove_file(model.join("config.json")).expect("rm");
        std::fs::write(root.join("models/blobs/cfg"), br#"{"model_type": "deepseek_v3"}"#).expect("write");
        std::os::unix::fs::symlink("../blobs/cfg", model.join("config.json")).expect("link in");
        config::enrich_with(&mut fp, |n| dir.resolve(n), true);
        assert_eq!(fp.model_type.as_deref(), Some("deepseek_v3"));
    }

    #[test]
    fn resolve_in_root_never_escapes() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("models/blobs")).expect("mkdir");
        std::fs::create_dir_all(root.join("models/snap")).expect("mkdir");
        std::fs::write(root.join("models/blobs/abc"), b"x").expect("write");
        std::os::unix::fs::symlink("../blobs/abc", root.join("models/snap/config.json")).expect("link");
        std::os::unix::fs::symlink("/etc/passwd", root.join("models/snap/evil")).expect("link");
        std::os::unix::fs::symlink("../../../../../../etc/passwd", root.join("models/snap/evil2")).expect("link");
        std::os::unix::fs::symlink("loop", root.join("models/snap/loop")).expect("link");
        assert_eq!(resolve_in_root(&root, "/models/snap/config.json"), Some(root.join("models/blobs/abc")));
        // Absolute and climbing links stay inside the root (and there is no etc/passwd there).
        assert_eq!(resolve_in_root(&root, "/models/snap/evil"), None);
        assert_eq!(resolve_in_root(&root, "/models/snap/evil2"), None);
        assert_eq!(resolve_in_root(&root, "/models/snap/loop"), None);
        assert_eq!(resolve_in_root(&root, "/../../models/blobs/abc"), Some(root.join("models/blobs/abc")));
    }

    #[test]
    fn fifos_and_devices_are_never_read() {
        let t = tempfile::tempdir().expect("tmp");
        let fifo = t.path().join("weights.safetensors");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        // Opening must not block, and the FIFO must be refused.
        assert!(matches!(open_regular(&fifo), Err(ModelError::NotRegular(_))));
        assert!(matches!(open_regular(Path::new("/dev/zero")), Err(ModelError::NotRegular(_))));
        assert!(matches!(fingerprint_path(t.path().join("nope.gguf").as_path()), Err(ModelError::Io(_))));
    }
}

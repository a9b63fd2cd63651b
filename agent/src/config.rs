//! The agent's configuration file (TOML). Every key mirrors a `run` flag; flags win over the file.
//! See `deploy/config/agent.toml` (minimal) and `deploy/config/agent-full.toml` (every key, commented).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest config file read.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The configuration file's contents.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Collector addresses, tried in order.
    pub collector: Option<Vec<String>>,
    /// One-time enrollment token (prefer `enroll_token_file` so it is not in a world-readable file).
    pub enroll_token: Option<String>,
    /// A file holding the enrollment token.
    pub enroll_token_file: Option<PathBuf>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Observation interval, e.g. `10s`.
    pub interval: Option<String>,
    /// GPU counter sampling interval, e.g. `1s` (at most the observation interval).
    pub sample_interval: Option<String>,
    /// NVML library.
    pub nvml_lib: Option<PathBuf>,
    /// `/proc` root.
    pub proc_root: Option<PathBuf>,
    /// `/sys` root.
    pub sys_root: Option<PathBuf>,
    /// Hostname override.
    pub hostname: Option<String>,
    /// Spool bound, e.g. `256MiB`.
    pub spool_max: Option<String>,
    /// CA certificate (PEM) that signed the collector's certificate, for https:// collectors.
    pub tls_ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), for collectors that require mTLS.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// On shutdown, how long to keep delivering the spool, e.g. `5s`.
    pub drain_timeout: Option<String>,
    /// A local listener for `/metrics` and `/healthz`, e.g. `127.0.0.1:9108`. Off when absent.
    pub metrics_listen: Option<String>,
    /// The kubelet's pod list for Kubernetes enrichment, e.g. `https://127.0.0.1:10250/pods`. Off when absent.
    pub kubelet_url: Option<String>,
    /// Bearer token file for the kubelet (the agent's service-account token).
    pub kubelet_token_file: Option<PathBuf>,
    /// CA (PEM) of the kubelet's serving certificate.
    pub kubelet_ca: Option<PathBuf>,
    /// Accept any kubelet serving certificate (self-signed ones).
    pub kubelet_insecure_skip_tls_verify: Option<bool>,
    /// How long a fetched pod list is used, e.g. `30s`.
    pub kubelet_refresh: Option<String>,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong, with line and key where known.
    pub reason: String,
}

impl FileConfig {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and the line and key for syntax and type errors.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let err = |reason: String| ConfigError { path: path.display().to_string(), reason };
        let bytes = crate::files::read_bounded(path, MAX_CONFIG_BYTES + 1)
            .ok_or_else(|| err("cannot read the file; check the path and permissions".into()))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| err(format!("not UTF-8 ({e})")))?;
        let cfg: FileConfig = toml::from_str(text).map_err(|e| err(e.to_string().replace('\n', " ")))?;
        if let Some(i) = &cfg.interval {
            gpuattest_proto::units::parse_duration(i).map_err(|e| err(format!("key `interval`: {e}")))?;
        }
        if let Some(i) = &cfg.sample_interval {
            gpuattest_proto::units::parse_duration(i).map_err(|e| err(format!("key `sample_interval`: {e}")))?;
        }
        if let Some(c) = &cfg.collector {
            for a in c {
                crate::transport::check_address(a).map_err(|e| err(format!("key `collector`: {e}")))?;
            }
        }
        Ok(cfg)
    }
}

/// Flags of `run`, `inspect` and `--check-config`, before merging with the file.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--collector`, repeated.
    pub collector: Vec<String>,
    /// `--enroll-token`.
    pub enroll_token: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--interval`.
    pub interval: Option<String>,
    /// `--sample-interval`.
    pub sample_interval: Option<String>,
    /// `--nvml-lib` / `GPUATTEST_NVML_LIB`.
    pub nvml_lib: Option<PathBuf>,
    /// `--proc-root`.
    pub proc_root: Option<PathBuf>,
    /// `--sys-root`.
    pub sys_root: Option<PathBuf>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--spool-max`.
    pub spool_max: Option<String>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--kubelet-*`.
    pub kubelet: KubeletFlags,
}

/// `--kubelet-url`, `--kubelet-token-file`, `--kubelet-ca`, `--kubelet-insecure-skip-tls-verify`,
/// `--kubelet-refresh` (on `run` and `inspect`).
#[derive(Debug, Clone, Default)]
pub struct KubeletFlags {
    /// URL of the pod list.
    pub url: Option<String>,
    /// Bearer token file.
    pub token_file: Option<PathBuf>,
    /// CA (PEM).
    pub ca: Option<PathBuf>,
    /// Accept any serving certificate.
    pub insecure_skip_tls_verify: bool,
    /// Refresh interval.
    pub refresh: Option<String>,
}

impl KubeletFlags {
    /// Merges these flags over the file's `kubelet_*` keys; `None` when enrichment is off.
    ///
    /// # Errors
    /// A line naming the setting that is wrong.
    pub fn resolve(self, file: &FileConfig) -> Result<Option<crate::kubelet::KubeletConfig>, String> {
        let Some(url) = self.url.or_else(|| file.kubelet_url.clone()) else {
            return Ok(None);
        };
        let refresh_text = self.refresh.or_else(|| file.kubelet_refresh.clone()).unwrap_or_else(|| "30s".into());
        let refresh =
            gpuattest_proto::units::parse_duration(&refresh_text).map_err(|e| format!("kubelet_refresh: {e}"))?;
        let cfg = crate::kubelet::KubeletConfig {
            url,
            token_file: self.token_file.or_else(|| file.kubelet_token_file.clone()),
            ca: self.ca.or_else(|| file.kubelet_ca.clone()),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify
                || file.kubelet_insecure_skip_tls_verify.unwrap_or(false),
            refresh,
        };
        // Validate now (URL policy, CA file) so a bad setting stops start-up, not the first observation.
        crate::kubelet::Kubelet::new(cfg.clone())?;
        Ok(Some(cfg))
    }
}

/// Everything `run` needs, after merging flags over the file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The daemon's settings.
    pub run: crate::run::RunConfig,
    /// NVML library.
    pub nvml_lib: PathBuf,
    /// Host paths.
    pub paths: crate::observe::HostPaths,
    /// Kubernetes enrichment, when configured.
    pub kubelet: Option<crate::kubelet::KubeletConfig>,
    /// Things worth telling the operator that do not stop the agent.
    pub warnings: Vec<String>,
}

impl Settings {
    /// Merges flags over an optional file; flags win.
    ///
    /// # Errors
    /// [`ConfigError`] when a required setting is missing or a value is invalid.
    pub fn merge(flags: Flags, file: Option<(&Path, FileConfig)>) -> Result<Settings, ConfigError> {
        let (path, file) = match file {
            Some((p, f)) => (p.display().to_string(), f),
            None => ("command line".to_string(), FileConfig::default()),
        };
        let err = |reason: String| ConfigError { path: path.clone(), reason };
        let kubelet = flags.kubelet.resolve(&file).map_err(err)?;
        let collectors = if flags.collector.is_empty() { file.collector.unwrap_or_default() } else { flags.collector };
        if collectors.is_empty() {
            return Err(err("no collector address; pass --collector URL (repeat it for failover)".into()));
        }
        for c in &collectors {
            crate::transport::check_address(c).map_err(|e| err(e.to_string()))?;
        }
        let state_dir = flags
            .state_dir
            .or(file.state_dir)
            .ok_or_else(|| err("no state directory; pass --state-dir DIR (for example /var/lib/gpuattest)".into()))?;
        let interval_text = flags.interval.or(file.interval).unwrap_or_else(|| "10s".into());
        let interval =
            gpuattest_proto::units::parse_duration(&interval_text).map_err(|e| err(format!("interval: {e}")))?;
        if interval.is_zero() {
            return Err(err("interval must be more than 0".into()));
        }
        let sample_text = flags.sample_interval.or(file.sample_interval).unwrap_or_else(|| "1s".into());
        let sample_interval = gpuattest_proto::units::parse_duration(&sample_text)
            .map_err(|e| err(format!("sample_interval: {e}")))?
            .min(interval);
        if sample_interval < std::time::Duration::from_millis(10) {
            return Err(err(format!("sample_interval {sample_text} is below the 10ms minimum; 1s is the default")));
        }
        let mut warnings = Vec::new();
        // The token file is needed only until the host is enrolled; operators delete it afterwards.
        let enroll_token = match (flags.enroll_token.or(file.enroll_token), file.enroll_token_file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => match crate::files::read_bounded(&f, 4096) {
                Some(b) => Some(String::from_utf8_lossy(&b).trim().to_string()).filter(|t| !t.is_empty()),
                None => {
                    warnings.push(format!(
                        "enroll_token_file {} is not readable; that is fine once this host is enrolled, otherwise write the token from `gpuattest-collector token create --role enroll` there",
                        f.display()
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        let spool_text = flags.spool_max.or(file.spool_max).unwrap_or_else(|| "256MiB".into());
        let spool_max_bytes =
            gpuattest_proto::units::parse_size(&spool_text).map_err(|e| err(format!("spool_max: {e}")))?;
        if spool_max_bytes < 64 * 1024 {
            return Err(err(format!("spool_max {spool_text} is below the 64KiB minimum")));
        }
        let tls = crate::transport::Tls::load(
            flags.tls_ca.or(file.tls_ca).as_deref(),
            flags.tls_cert.or(file.tls_cert).as_deref(),
            flags.tls_key.or(file.tls_key).as_deref(),
        )
        .map_err(err)?;
        let drain_text = flags.drain_timeout.or(file.drain_timeout).unwrap_or_else(|| "5s".into());
        let drain_timeout =
            gpuattest_proto::units::parse_duration(&drain_text).map_err(|e| err(format!("drain_timeout: {e}")))?;
        let metrics_listen = match flags.metrics_listen.or(file.metrics_listen) {
            None => None,
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|_| {
                err(format!("metrics_listen `{}` is not an address; write it like 127.0.0.1:9108", a.escape_debug()))
            })?),
        };
        Ok(Settings {
            run: crate::run::RunConfig {
                tls,
                drain_timeout,
                metrics_listen,
                collectors,
                enroll_token,
                state_dir,
                interval,
                sample_interval,
                spool_max_bytes,
                window: 256,
            },
            nvml_lib: flags.nvml_lib.or(file.nvml_lib).unwrap_or_else(crate::gpu::NvmlSource::default_lib),
            paths: crate::observe::HostPaths {
                proc_root: flags.proc_root.or(file.proc_root).unwrap_or_else(|| "/proc".into()),
                sys_root: flags.sys_root.or(file.sys_root).unwrap_or_else(|| "/sys".into()),
                hostname: flags.hostname.or(file.hostname),
            },
            kubelet,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &[u8]) -> Result<FileConfig, ConfigError> {
        let t = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(t.path(), text).expect("write");
        FileConfig::load(t.path())
    }

    #[test]
    fn good_file() {
        let c =
            load(b"collector = [\"http://127.0.0.1:7443\"]\nstate_dir = \"/var/lib/gpuattest\"\ninterval = \"10s\"\n")
                .expect("load");
        assert_eq!(c.interval.as_deref(), Some("10s"));
    }

    #[test]
    fn bad_files_name_line_and_key() {
        let e = load(b"state_dir = \"/x\"\nintervall = \"10s\"\n").expect_err("unknown key");
        assert!(e.to_string().contains("intervall") && e.to_string().contains("line 2"), "{e}");
        let e = load(b"interval = 10\n").expect_err("wrong type");
        assert!(e.to_string().contains("interval"), "{e}");
        let e = load(b"interval = \"ten\"\n").expect_err("bad duration");
        assert!(e.to_string().contains("key `interval`"), "{e}");
        assert!(load(b"\xff\xfe").expect_err("encoding").to_string().contains("UTF-8"));
        assert!(load(b"collector = [\"http://10.1.1.1:1\"]").expect_err("policy").to_string().contains("loopback"));
        assert!(load(&vec![b'#'; MAX_CONFIG_BYTES + 10]).is_err());
        assert_eq!(load(b"").expect("empty is fine"), FileConfig::default());
    }
}

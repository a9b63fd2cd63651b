//! The agent's configuration: one struct for flags and the TOML file. Every key is a `run` flag of the
//! same name; flags win over the file.
//! See `deploy/config/agent.toml` (minimal) and `deploy/config/agent-full.toml` (every key, commented).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest config file read.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The agent's settings: one struct for the command line and the file. Every file key is the flag of
/// the same name (`state_dir` is `--state-dir`); flags win, field by field ([`Config::over`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Collector addresses, tried in order.
    #[arg(long)]
    pub collector: Option<Vec<String>>,
    /// One-time enrollment token (prefer `enroll_token_file` so it is not in a world-readable file).
    #[arg(long, env = "GPUATTEST_ENROLL_TOKEN", hide_env_values = true)]
    pub enroll_token: Option<String>,
    /// A file holding the enrollment token.
    #[arg(long)]
    pub enroll_token_file: Option<PathBuf>,
    /// State directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Observation interval, e.g. `10s`.
    #[arg(long)]
    pub interval: Option<String>,
    /// GPU counter sampling interval, e.g. `1s` (at most the observation interval).
    #[arg(long)]
    pub sample_interval: Option<String>,
    /// NVML library.
    #[arg(long, env = "GPUATTEST_NVML_LIB")]
    pub nvml_lib: Option<PathBuf>,
    /// `/proc` root.
    #[arg(long)]
    pub proc_root: Option<PathBuf>,
    /// `/sys` root.
    #[arg(long)]
    pub sys_root: Option<PathBuf>,
    /// Hostname override.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Spool bound, e.g. `256MiB`.
    #[arg(long)]
    pub spool_max: Option<String>,
    /// CA certificate (PEM) that signed the collector's certificate, for https:// collectors.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), for collectors that require mTLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// On shutdown, how long to keep delivering the spool, e.g. `5s`.
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// A local listener for `/metrics` and `/healthz`, e.g. `127.0.0.1:9108`. Off when absent.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// The kubelet's pod list for Kubernetes enrichment, e.g. `https://127.0.0.1:10250/pods`. Off when absent.
    #[arg(long)]
    pub kubelet_url: Option<String>,
    /// Bearer token file for the kubelet (the agent's service-account token).
    #[arg(long)]
    pub kubelet_token_file: Option<PathBuf>,
    /// CA (PEM) of the kubelet's serving certificate.
    #[arg(long)]
    pub kubelet_ca: Option<PathBuf>,
    /// Accept any kubelet serving certificate (self-signed ones).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub kubelet_insecure_skip_tls_verify: Option<bool>,
    /// How long a fetched pod list is used, e.g. `30s`.
    #[arg(long)]
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

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and the line and key for syntax and type errors.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |reason: String| ConfigError { path: path.display().to_string(), reason };
        let bytes = crate::files::read_bounded(path, MAX_CONFIG_BYTES + 1)
            .ok_or_else(|| err("cannot read the file; check the path and permissions".into()))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| err(format!("not UTF-8 ({e})")))?;
        let cfg: Config = toml::from_str(text).map_err(|e| err(e.to_string().replace('\n', " ")))?;
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

impl Config {
    /// These settings (flags) over `file`'s: each setting given here wins.
    #[must_use]
    pub fn over(self, file: Config) -> Config {
        Config {
            collector: self.collector.or(file.collector),
            enroll_token: self.enroll_token.or(file.enroll_token),
            enroll_token_file: self.enroll_token_file.or(file.enroll_token_file),
            state_dir: self.state_dir.or(file.state_dir),
            interval: self.interval.or(file.interval),
            sample_interval: self.sample_interval.or(file.sample_interval),
            nvml_lib: self.nvml_lib.or(file.nvml_lib),
            proc_root: self.proc_root.or(file.proc_root),
            sys_root: self.sys_root.or(file.sys_root),
            hostname: self.hostname.or(file.hostname),
            spool_max: self.spool_max.or(file.spool_max),
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            kubelet_url: self.kubelet_url.or(file.kubelet_url),
            kubelet_token_file: self.kubelet_token_file.or(file.kubelet_token_file),
            kubelet_ca: self.kubelet_ca.or(file.kubelet_ca),
            kubelet_insecure_skip_tls_verify: self
                .kubelet_insecure_skip_tls_verify
                .or(file.kubelet_insecure_skip_tls_verify),
            kubelet_refresh: self.kubelet_refresh.or(file.kubelet_refresh),
        }
    }

    /// The NVML library (the driver's `libnvidia-ml.so.1` unless set) and where the host is read from.
    pub fn host(&self) -> (PathBuf, crate::observe::HostPaths) {
        let paths = crate::observe::HostPaths {
            proc_root: self.proc_root.clone().unwrap_or_else(|| "/proc".into()),
            sys_root: self.sys_root.clone().unwrap_or_else(|| "/sys".into()),
            hostname: self.hostname.clone(),
        };
        (self.nvml_lib.clone().unwrap_or_else(crate::gpu::NvmlSource::default_lib), paths)
    }

    /// Kubernetes enrichment; `None` when no kubelet URL is set.
    ///
    /// # Errors
    /// A line naming the setting that is wrong.
    pub fn kubelet(&self) -> Result<Option<crate::kubelet::KubeletConfig>, String> {
        let Some(url) = self.kubelet_url.clone() else {
            return Ok(None);
        };
        let refresh_text = self.kubelet_refresh.clone().unwrap_or_else(|| "30s".into());
        let refresh =
            gpuattest_proto::units::parse_duration(&refresh_text).map_err(|e| format!("kubelet_refresh: {e}"))?;
        let cfg = crate::kubelet::KubeletConfig {
            url,
            token_file: self.kubelet_token_file.clone(),
            ca: self.kubelet_ca.clone(),
            insecure_skip_tls_verify: self.kubelet_insecure_skip_tls_verify.unwrap_or(false),
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
    pub fn merge(flags: Config, file: Option<(&Path, Config)>) -> Result<Settings, ConfigError> {
        let (path, file) = match file {
            Some((p, f)) => (p.display().to_string(), f),
            None => ("command line".to_string(), Config::default()),
        };
        let err = |reason: String| ConfigError { path: path.clone(), reason };
        let c = flags.over(file);
        let kubelet = c.kubelet().map_err(err)?;
        let (nvml_lib, paths) = c.host();
        let collectors = c.collector.unwrap_or_default();
        if collectors.is_empty() {
            return Err(err("no collector address; pass --collector URL (repeat it for failover)".into()));
        }
        for c in &collectors {
            crate::transport::check_address(c).map_err(|e| err(e.to_string()))?;
        }
        let state_dir = c
            .state_dir
            .ok_or_else(|| err("no state directory; pass --state-dir DIR (for example /var/lib/gpuattest)".into()))?;
        let interval_text = c.interval.unwrap_or_else(|| "10s".into());
        let interval =
            gpuattest_proto::units::parse_duration(&interval_text).map_err(|e| err(format!("interval: {e}")))?;
        if interval.is_zero() {
            return Err(err("interval must be more than 0".into()));
        }
        let sample_text = c.sample_interval.unwrap_or_else(|| "1s".into());
        let sample_interval = gpuattest_proto::units::parse_duration(&sample_text)
            .map_err(|e| err(format!("sample_interval: {e}")))?
            .min(interval);
        if sample_interval < std::time::Duration::from_millis(10) {
            return Err(err(format!("sample_interval {sample_text} is below the 10ms minimum; 1s is the default")));
        }
        let mut warnings = Vec::new();
        // The token file is needed only until the host is enrolled; operators delete it afterwards.
        let enroll_token = match (c.enroll_token, c.enroll_token_file) {
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
        let spool_text = c.spool_max.unwrap_or_else(|| "256MiB".into());
        let spool_max_bytes =
            gpuattest_proto::units::parse_size(&spool_text).map_err(|e| err(format!("spool_max: {e}")))?;
        if spool_max_bytes < 64 * 1024 {
            return Err(err(format!("spool_max {spool_text} is below the 64KiB minimum")));
        }
        let tls = crate::transport::Tls::load(c.tls_ca.as_deref(), c.tls_cert.as_deref(), c.tls_key.as_deref())
            .map_err(err)?;
        let drain_text = c.drain_timeout.unwrap_or_else(|| "5s".into());
        let drain_timeout =
            gpuattest_proto::units::parse_duration(&drain_text).map_err(|e| err(format!("drain_timeout: {e}")))?;
        let metrics_listen = match c.metrics_listen {
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
            nvml_lib,
            paths,
            kubelet,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &[u8]) -> Result<Config, ConfigError> {
        let t = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(t.path(), text).expect("write");
        Config::load(t.path())
    }

    #[test]
    fn good_file() {
        let c =
            load(b"collector = [\"http://127.0.0.1:7443\"]\nstate_dir = \"/var/lib/gpuattest\"\ninterval = \"10s\"\n")
                .expect("load");
        assert_eq!(c.interval.as_deref(), Some("10s"));
    }

    #[test]
    fn flags_win_field_by_field_and_the_file_fills_the_rest() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            c: Config,
        }
        let flags = Cli::try_parse_from([
            "agent",
            "--collector",
            "http://127.0.0.1:1",
            "--collector",
            "http://127.0.0.1:2",
            "--interval",
            "5s",
            "--kubelet-insecure-skip-tls-verify",
        ])
        .expect("flags")
        .c;
        let file = load(b"collector = [\"http://127.0.0.1:9\"]\nstate_dir = \"/var/lib/x\"\ninterval = \"10s\"\n")
            .expect("file");
        let c = flags.over(file);
        assert_eq!(
            c.collector.as_deref(),
            Some(&["http://127.0.0.1:1".to_string(), "http://127.0.0.1:2".to_string()][..])
        );
        assert_eq!((c.interval.as_deref(), c.state_dir.as_deref()), (Some("5s"), Some(Path::new("/var/lib/x"))));
        assert_eq!(c.kubelet_insecure_skip_tls_verify, Some(true), "a bare switch");
        let s = Settings::merge(c, None).expect("settings");
        assert_eq!((s.run.collectors.len(), s.run.interval), (2, std::time::Duration::from_secs(5)));
        assert_eq!(s.run.sample_interval, std::time::Duration::from_secs(1));
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
        assert_eq!(load(b"").expect("empty is fine"), Config::default());
    }
}

//! The collector's configuration file (TOML) for `serve --config FILE`. Every key mirrors a `serve`
//! flag; flags win over the file. See `deploy/config/collector.toml` (minimal) and
//! `deploy/config/collector-full.toml` (every key, commented).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest config file read.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Default gRPC listener.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7443";
/// Default HTTP listener.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7080";
/// On SIGTERM, how long streams and requests get to finish by default: inside Kubernetes' default
/// 30 s and systemd's 90 s.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// Default data directory.
pub const DEFAULT_DATA: &str = "./gpuattest-data";

/// The configuration file's contents.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the embedded store, keys and (by default) the policy live.
    pub data: Option<PathBuf>,
    /// gRPC listener for agents.
    pub grpc_listen: Option<String>,
    /// HTTP listener for the review UI, the API and `/metrics`.
    pub http_listen: Option<String>,
    /// A policy file instead of `<data>/policy.toml`.
    pub policy: Option<PathBuf>,
    /// A shared PostgreSQL store (`postgres://...`) instead of the embedded one; prefer the
    /// GPUATTEST_DATABASE environment variable when the URL carries a password.
    pub database: Option<String>,
    /// TLS for the gRPC listener.
    pub tls: Option<TlsConfig>,
    /// On SIGTERM, how long streams and requests get to finish (`10s`).
    pub shutdown_grace: Option<String>,
    /// TLS for the HTTP listener (review UI, API, `/metrics`).
    pub http_tls: Option<HttpTlsConfig>,
}

/// The `[http_tls]` table: the review UI and API over HTTPS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
}

/// The `[tls]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA (PEM) whose client certificates agents may present.
    pub client_ca: Option<PathBuf>,
    /// Refuse agents without a client certificate.
    #[serde(default)]
    pub require_client_cert: bool,
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
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read the file ({e}); check the path")))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        if meta.len() > MAX_CONFIG_BYTES as u64 {
            return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the file ({e})")))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| err(format!("not UTF-8 ({e})")))?;
        let cfg: FileConfig = toml::from_str(text).map_err(|e| err(e.to_string().replace('\n', " ")))?;
        for (key, v) in [("grpc_listen", &cfg.grpc_listen), ("http_listen", &cfg.http_listen)] {
            if let Some(a) = v {
                check_listen(a).map_err(|e| err(format!("key `{key}`: {e}")))?;
            }
        }
        Ok(cfg)
    }
}

/// A listen address must be `HOST:PORT` (an IP address or `localhost`).
///
/// # Errors
/// What is wrong with it.
pub fn check_listen(addr: &str) -> Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.strip_prefix("localhost:").map(str::parse::<u16>) {
        Some(Ok(_)) => Ok(()),
        _ => Err(format!("`{addr}` is not an address to listen on; write it like 0.0.0.0:7443 or [::]:7443")),
    }
}

/// Settings of `serve` from its flags.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    /// `--data` / `GPUATTEST_DATA`.
    pub data: Option<PathBuf>,
    /// `--grpc-listen`.
    pub grpc_listen: Option<String>,
    /// `--http-listen`.
    pub http_listen: Option<String>,
    /// `--policy`.
    pub policy: Option<PathBuf>,
    /// `--database` / `GPUATTEST_DATABASE`.
    pub database: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--client-ca`.
    pub client_ca: Option<PathBuf>,
    /// `--require-client-cert`.
    pub require_client_cert: bool,
    /// `--shutdown-grace`.
    pub shutdown_grace: Option<String>,
    /// `--http-tls-cert`.
    pub http_tls_cert: Option<PathBuf>,
    /// `--http-tls-key`.
    pub http_tls_key: Option<PathBuf>,
}

/// `serve`'s settings after merging flags over the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSettings {
    /// Data directory.
    pub data: PathBuf,
    /// gRPC listener.
    pub grpc_listen: String,
    /// HTTP listener.
    pub http_listen: String,
    /// Policy file, when not `<data>/policy.toml`.
    pub policy: Option<PathBuf>,
    /// The shared store's URL, when not the embedded store.
    pub database: Option<String>,
    /// TLS material.
    pub tls: TlsConfig,
    /// On SIGTERM, how long streams and requests get to finish.
    pub shutdown_grace: std::time::Duration,
    /// HTTPS for the HTTP listener: certificate and key (PEM).
    pub http_tls: Option<(PathBuf, PathBuf)>,
}

impl ServeSettings {
    /// Merges flags over an optional file; flags win.
    ///
    /// # Errors
    /// [`ConfigError`] for an invalid listen address given as a flag.
    pub fn merge(flags: ServeFlags, file: Option<FileConfig>) -> Result<ServeSettings, ConfigError> {
        let file = file.unwrap_or_default();
        let ftls = file.tls.unwrap_or_default();
        let fhttp = file.http_tls.unwrap_or_default();
        let http_tls = match (flags.http_tls_cert.or(fhttp.cert), flags.http_tls_key.or(fhttp.key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError {
                    path: "command line or config".into(),
                    reason: "--http-tls-cert and --http-tls-key ([http_tls] cert and key) go together".into(),
                });
            }
        };
        let s = ServeSettings {
            data: flags.data.or(file.data).unwrap_or_else(|| DEFAULT_DATA.into()),
            grpc_listen: flags.grpc_listen.or(file.grpc_listen).unwrap_or_else(|| DEFAULT_GRPC_LISTEN.into()),
            http_listen: flags.http_listen.or(file.http_listen).unwrap_or_else(|| DEFAULT_HTTP_LISTEN.into()),
            policy: flags.policy.or(file.policy),
            database: flags.database.or(file.database),
            tls: TlsConfig {
                cert: flags.tls_cert.or(ftls.cert),
                key: flags.tls_key.or(ftls.key),
                client_ca: flags.client_ca.or(ftls.client_ca),
                require_client_cert: flags.require_client_cert || ftls.require_client_cert,
            },
            shutdown_grace: match flags.shutdown_grace.or(file.shutdown_grace) {
                None => DEFAULT_SHUTDOWN_GRACE,
                Some(g) => gpuattest_proto::units::parse_duration(&g)
                    .ok()
                    .filter(|d| *d <= std::time::Duration::from_secs(3600))
                    .ok_or_else(|| ConfigError {
                        path: "command line or config".into(),
                        reason: format!("shutdown grace `{}`: write a duration up to 1h, like 10s", g.escape_debug()),
                    })?,
            },
            http_tls,
        };
        for (flag, a) in [("--grpc-listen", &s.grpc_listen), ("--http-listen", &s.http_listen)] {
            check_listen(a).map_err(|e| ConfigError { path: "command line".into(), reason: format!("{flag}: {e}") })?;
        }
        Ok(s)
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
    fn good_file_and_flags_win() {
        let c =
            load(b"data = \"/srv/c\"\ngrpc_listen = \"0.0.0.0:7443\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n")
                .expect("load");
        let s = ServeSettings::merge(
            ServeFlags { grpc_listen: Some("127.0.0.1:9".into()), ..ServeFlags::default() },
            Some(c),
        )
        .expect("merge");
        assert_eq!(s.grpc_listen, "127.0.0.1:9");
        assert_eq!(s.data, PathBuf::from("/srv/c"));
        assert_eq!(s.http_listen, DEFAULT_HTTP_LISTEN);
        assert_eq!(s.tls.cert.as_deref(), Some(Path::new("/c.pem")));
    }

    #[test]
    fn bad_files_name_line_and_key() {
        let e = load(b"data = \"/x\"\ngrpc_listn = \"0.0.0.0:1\"\n").expect_err("unknown key");
        assert!(e.to_string().contains("grpc_listn") && e.to_string().contains("line 2"), "{e}");
        let e = load(b"[tls]\nrequire_client_cert = \"yes\"\n").expect_err("wrong type");
        assert!(e.to_string().contains("require_client_cert"), "{e}");
        let e = load(b"http_listen = \"everywhere\"\n").expect_err("bad address");
        assert!(e.to_string().contains("key `http_listen`"), "{e}");
        assert!(load(b"\xff\xfe").expect_err("encoding").to_string().contains("UTF-8"));
        assert!(load(&vec![b'#'; MAX_CONFIG_BYTES + 10]).expect_err("huge").to_string().contains("larger"));
        assert!(load(b"[tls\n").is_err());
        assert_eq!(load(b"").expect("empty is fine"), FileConfig::default());
        let dir = tempfile::tempdir().expect("dir");
        assert!(FileConfig::load(dir.path()).expect_err("dir").to_string().contains("regular file"));
    }
}

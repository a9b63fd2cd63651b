//! The commands behind the thin `gpuattest-agent` binary. Each returns `Ok` or a [`CliError`] carrying
//! the exit code: 64 usage, 78 configuration, 1 runtime failure.

use std::path::Path;

use crate::config::{Config, Settings};
use crate::gpu::NvmlSource;
use crate::observe::{Observer, render_text};

/// A failed command: one line for stderr, and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// The line.
    pub message: String,
}

fn fail(code: u8, m: impl std::fmt::Display) -> CliError {
    CliError { code, message: m.to_string() }
}

type Result<T = ()> = std::result::Result<T, CliError>;

/// Writes to stdout; a closed pipe (`... | head`) ends the output quietly instead of panicking.
fn out(text: &str) -> Result {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(fail(1, format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result {
    out(&format!("{}\n", serde_json::to_string_pretty(v).map_err(|e| fail(1, e))?))
}

/// `status`.
///
/// # Errors
/// When the state directory holds corrupt state.
pub fn status(state_dir: &Path, json: bool) -> Result {
    let s = crate::status::status(state_dir).map_err(|e| fail(1, e))?;
    if json {
        return print_json(&s);
    }
    out(&format!(
        "host_id    {}\nlast_seq   {}\nacked_seq  {}\nspooled    {} ({} bytes)\n",
        s.host_id.as_deref().unwrap_or("(not enrolled)"),
        s.last_seq,
        s.acked_seq,
        s.spooled,
        s.spool_bytes
    ))
}

/// `inspect`: one observation, printed; nothing is signed or sent.
///
/// # Errors
/// When NVML cannot be loaded (one line naming the library) or cannot list GPUs.
pub fn inspect(host: Config, config: Option<&Path>, attest_nonce: Option<&str>, json: bool) -> Result {
    let nonce = match attest_nonce {
        None => None,
        Some(h) => {
            let bytes = crate::run::hex_decode(h);
            let ok = h.len() == 64 && bytes.len() == 32;
            Some(<[u8; 32]>::try_from(bytes.as_slice()).ok().filter(|_| ok).ok_or_else(|| {
                fail(
                    64,
                    format!(
                        "--attest-nonce must be 64 hex digits (32 bytes), not {:?}",
                        h.chars().take(80).collect::<String>()
                    ),
                )
            })?)
        }
    };
    let file = config.map(Config::load).transpose().map_err(|e| fail(78, e))?.unwrap_or_default();
    let host = host.over(file);
    let kubelet = host.kubelet().map_err(|e| fail(78, e))?;
    let (nvml_lib, paths) = host.host();
    let gpus = NvmlSource::open(&nvml_lib).map_err(|e| fail(1, e))?;
    let mut observer = Observer::new(Box::new(gpus), paths);
    if let Some(k) = kubelet {
        observer = observer.with_pods(Box::new(crate::kubelet::Kubelet::new(k).map_err(|e| fail(78, e))?));
    }
    let obs = observer.observe_with(crate::run::now_ms(), nonce).map_err(|e| fail(1, e))?;
    if json {
        return print_json(&obs);
    }
    out(&render_text(&obs))
}

/// `run`: the daemon, until SIGINT or SIGTERM. With `check_config`, validates and exits.
///
/// # Errors
/// Configuration errors (78) for the file and settings; runtime errors (1) for NVML, the state
/// directory and enrollment.
pub fn run(flags: Config, config: Option<&Path>, check_config: bool) -> Result {
    let file = match config {
        Some(p) => Some((p, Config::load(p).map_err(|e| fail(78, e))?)),
        None => None,
    };
    let settings = Settings::merge(flags, file).map_err(|e| fail(78, e))?;
    if check_config {
        for w in &settings.warnings {
            eprintln!("gpuattest-agent: warning: {w}");
        }
        println!("configuration is valid");
        return Ok(());
    }
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        // Signals first, so a SIGTERM during start-up still ends in an orderly stop.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signals =
            crate::logging::shutdown_signals().map_err(|e| fail(1, format!("cannot install signal handlers: {e}")))?;
        tokio::spawn(async move {
            signals.await;
            let _ = tx.send(true);
        });
        let gpus = NvmlSource::open(&settings.nvml_lib).map_err(|e| fail(1, e))?;
        let mut observer =
            Observer::new(Box::new(gpus), settings.paths.clone()).with_sample_interval(settings.run.sample_interval);
        if let Some(k) = settings.kubelet.clone() {
            observer = observer.with_pods(Box::new(crate::kubelet::Kubelet::new(k).map_err(|e| fail(78, e))?));
        }
        crate::run::run(settings.run, observer, rx).await.map_err(|e| match e {
            // A revoked host is a configuration state, not a crash: 78 stops systemd's restarts
            // (RestartPreventExitStatus=78) and names the reason in Kubernetes' CrashLoop.
            e @ crate::run::RunError::Revoked(_) => fail(78, e),
            e => fail(1, e),
        })
    })
}

/// `fingerprint PATH`: identify a model file or model directory from its headers.
///
/// # Errors
/// One line naming the path and why it is not a readable model.
pub fn fingerprint(path: &Path, json: bool) -> Result {
    let fp = crate::models::fingerprint_path(path).map_err(|e| fail(1, format!("{}: {e}", path.display())))?;
    if json {
        return print_json(&fp);
    }
    let mut text = format!(
        "{}\n  format       {}\n  header       sha256:{}\n  tensors      {}\n  parameters   {}\n",
        fp.path, fp.format, fp.header_sha256, fp.tensor_count, fp.parameter_count
    );
    for (k, v) in [
        ("architecture", &fp.architecture),
        ("model_type", &fp.model_type),
        ("name", &fp.name),
        ("organization", &fp.organization),
    ] {
        if let Some(v) = v {
            text.push_str(&format!("  {k:<12} {v}\n"));
        }
    }
    if !fp.base_models.is_empty() {
        text.push_str(&format!("  base models  {}\n", fp.base_models.join(", ")));
    }
    out(&text)
}

/// `bench`: observation and fingerprint figures, as JSON.
///
/// # Errors
/// When NVML cannot be loaded or the scratch directory is not writable.
pub fn bench(host: &Config, iterations: u32, scratch: &Path) -> Result {
    let (nvml_lib, paths) = host.host();
    let gpus = NvmlSource::open(&nvml_lib).map_err(|e| fail(1, e))?;
    let figures = crate::bench::run(Box::new(gpus), paths, iterations, scratch).map_err(|e| fail(1, e))?;
    print_json(&figures)
}

/// `rotate-key` from its flags, each defaulting to the daemon's config file where one is given: the
/// state directory, the first collector and the TLS files.
///
/// # Errors
/// Usage (64) for a missing state directory or collector; configuration (78) for the file and TLS.
pub fn rotate_key_with(
    config: Option<&Path>,
    state_dir: Option<std::path::PathBuf>,
    collector: Option<String>,
    [tls_ca, tls_cert, tls_key]: [Option<std::path::PathBuf>; 3],
) -> Result {
    let file = config.map(Config::load).transpose().map_err(|e| fail(78, e))?.unwrap_or_default();
    let state_dir =
        state_dir.or(file.state_dir).ok_or_else(|| fail(64, "--state-dir (or --config with state_dir) is needed"))?;
    let collector = collector
        .or_else(|| file.collector.as_ref().and_then(|c| c.first().cloned()))
        .ok_or_else(|| fail(64, "--collector (or --config with collector) is needed"))?;
    let tls = crate::transport::Tls::load(
        tls_ca.or(file.tls_ca).as_deref(),
        tls_cert.or(file.tls_cert).as_deref(),
        tls_key.or(file.tls_key).as_deref(),
    )
    .map_err(|e| fail(78, e))?;
    rotate_key(&state_dir, &collector, &tls)
}

/// `rotate-key`: the current key vouches for a new one at the collector, then the new key becomes
/// current. Stop the daemon first; restart it afterwards.
///
/// # Errors
/// When the host is not enrolled, the collector refuses, or the state directory is unusable.
pub fn rotate_key(state_dir: &Path, collector: &str, tls: &crate::transport::Tls) -> Result {
    use crate::identity::Identity;
    let chain = crate::state::ChainState::load(state_dir).map_err(|e| fail(1, e))?;
    let host_id = chain.host_id.clone().ok_or_else(|| fail(1, "this host is not enrolled yet; nothing to rotate"))?;
    // The spool may hold a report newer than the state file (a crash between the two writes): the old
    // key must stay valid for everything it signed.
    let last_seq = crate::status::status(state_dir).map_err(|e| fail(1, e))?.last_seq;
    let current = Identity::load_or_create(state_dir).map_err(|e| fail(1, e))?;
    let next = Identity::next_key(state_dir).map_err(|e| fail(1, e))?;
    let new_pk = next.public_key();
    let signature = current.sign(&gpuattest_proto::rotation_message(&host_id, &new_pk, last_seq));
    let req = gpuattest_proto::pb::RotateKeyRequest {
        host_id: host_id.clone(),
        new_public_key: new_pk,
        last_seq_old_key: last_seq,
        signature,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| fail(1, e))?;
    let resp = rt
        .block_on(async {
            let mut client = crate::transport::connect(collector, tls).await?;
            client.rotate_key(req).await.map_err(|s| crate::transport::refused(collector, &s))
        })
        .map_err(|e| fail(1, e))?;
    Identity::commit_next(state_dir, crate::run::now_ms()).map_err(|e| fail(1, e))?;
    out(&format!(
        "host {host_id}: key rotated to {}; reports up to {} stay valid under the old key\n",
        gpuattest_proto::hex(&resp.into_inner().new_key_id),
        last_seq
    ))
}

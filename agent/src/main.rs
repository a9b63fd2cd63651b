//! `gpuattest-agent`: the thin binary over the agent library. Parses arguments, starts tracing and
//! calls [`gpuattest_agent::cli`]. Exit codes: 64 usage, 78 configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gpuattest_agent::{
    cli,
    config::{Flags, KubeletFlags},
    gpu::NvmlSource,
    observe::HostPaths,
};

#[derive(Parser)]
#[command(
    name = "gpuattest-agent",
    version,
    about = "Observe GPUs and their workloads; sign, spool and stream usage reports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The daemon: observe, sign, spool, stream to the collector.
    Run(Box<RunArgs>),
    /// The agent's own view: host id, last and acknowledged sequence numbers, spooled reports.
    Status {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Identify a model file or model directory from its headers.
    Fingerprint {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Replace this host's signing key: the current key vouches for the new one. Stop the daemon first.
    RotateKey {
        /// The daemon's config file: its state_dir, first collector and TLS files, unless given here.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
    /// Benchmark observation cost and sparse-file fingerprinting; prints JSON figures.
    Bench {
        #[command(flatten)]
        host: HostArgs,
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
        /// Where the sparse 1 TB test file is written (and removed).
        #[arg(long, default_value = "/tmp")]
        scratch: PathBuf,
    },
    /// Take one observation of this host and print it (nothing is signed or sent).
    Inspect {
        #[command(flatten)]
        host: HostArgs,
        /// Ask GPUs in confidential-computing mode for attestation reports bound to this nonce (64 hex digits).
        #[arg(long)]
        attest_nonce: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone, Default)]
struct HostArgs {
    /// NVML library [default: libnvidia-ml.so.1].
    #[arg(long, env = "GPUATTEST_NVML_LIB")]
    nvml_lib: Option<PathBuf>,
    #[arg(long)]
    proc_root: Option<PathBuf>,
    #[arg(long)]
    sys_root: Option<PathBuf>,
    /// Report this hostname instead of the kernel's (several simulated hosts on one machine).
    #[arg(long)]
    hostname: Option<String>,
    /// Kubernetes enrichment: the kubelet's pod list, e.g. https://127.0.0.1:10250/pods (off by default).
    #[arg(long)]
    kubelet_url: Option<String>,
    /// Bearer token file for the kubelet.
    #[arg(long)]
    kubelet_token_file: Option<PathBuf>,
    /// CA (PEM) of the kubelet's serving certificate.
    #[arg(long)]
    kubelet_ca: Option<PathBuf>,
    /// Accept any kubelet serving certificate (self-signed).
    #[arg(long)]
    kubelet_insecure_skip_tls_verify: bool,
    /// How long a fetched pod list is used [default: 30s].
    #[arg(long)]
    kubelet_refresh: Option<String>,
}

impl HostArgs {
    fn kubelet(&self) -> KubeletFlags {
        KubeletFlags {
            url: self.kubelet_url.clone(),
            token_file: self.kubelet_token_file.clone(),
            ca: self.kubelet_ca.clone(),
            insecure_skip_tls_verify: self.kubelet_insecure_skip_tls_verify,
            refresh: self.kubelet_refresh.clone(),
        }
    }

    fn split(self) -> (PathBuf, HostPaths) {
        let paths = HostPaths {
            proc_root: self.proc_root.unwrap_or_else(|| "/proc".into()),
            sys_root: self.sys_root.unwrap_or_else(|| "/sys".into()),
            hostname: self.hostname,
        };
        (self.nvml_lib.unwrap_or_else(NvmlSource::default_lib), paths)
    }
}

#[derive(Args)]
struct RunArgs {
    /// Collector address; repeat for failover. Plaintext http:// only to loopback.
    #[arg(long)]
    collector: Vec<String>,
    #[arg(long, env = "GPUATTEST_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Observation interval, e.g. 10s.
    #[arg(long)]
    interval: Option<String>,
    /// GPU counter sampling interval, e.g. 1s [default: 1s, at most the observation interval].
    #[arg(long)]
    sample_interval: Option<String>,
    /// Spool bound, e.g. 256MiB (at least 64KiB); the oldest reports are dropped, with a signed gap
    /// record, beyond it.
    #[arg(long)]
    spool_max: Option<String>,
    /// CA certificate (PEM) of https:// collectors.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for collectors that require mTLS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// On SIGTERM, how long to keep delivering spooled reports before exiting [default: 5s].
    #[arg(long)]
    drain_timeout: Option<String>,
    /// Serve /metrics and /healthz on this local address, e.g. 127.0.0.1:9108 [default: off].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// A TOML file with the same settings; flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    host: HostArgs,
}

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    gpuattest_agent::logging::init(if matches!(args.cmd, Cmd::Run(_)) { "info" } else { "warn" });
    let result = match args.cmd {
        Cmd::Status { state_dir, json } => cli::status(&state_dir, json),
        Cmd::Fingerprint { path, json } => cli::fingerprint(&path, json),
        Cmd::RotateKey { config, state_dir, collector, tls_ca, tls_cert, tls_key } => {
            cli::rotate_key_with(config.as_deref(), state_dir, collector, [tls_ca, tls_cert, tls_key])
        }
        Cmd::Inspect { host, attest_nonce, json } => {
            let kubelet = host.kubelet();
            let (lib, paths) = host.split();
            cli::inspect(&lib, paths, kubelet, attest_nonce.as_deref(), json)
        }
        Cmd::Bench { host, iterations, scratch } => {
            let (lib, paths) = host.split();
            cli::bench(&lib, paths, iterations, &scratch)
        }
        Cmd::Run(a) => {
            let flags = Flags {
                kubelet: a.host.kubelet(),
                collector: a.collector,
                enroll_token: a.enroll_token,
                state_dir: a.state_dir,
                interval: a.interval,
                sample_interval: a.sample_interval,
                nvml_lib: a.host.nvml_lib,
                proc_root: a.host.proc_root,
                sys_root: a.host.sys_root,
                hostname: a.host.hostname,
                spool_max: a.spool_max,
                tls_ca: a.tls_ca,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                drain_timeout: a.drain_timeout,
                metrics_listen: a.metrics_listen,
            };
            cli::run(flags, a.config.as_deref(), a.check_config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", gpuattest_agent::logging::fatal_line("gpuattest-agent", &e.message));
            ExitCode::from(e.code)
        }
    }
}

//! `gpuattest-agent`: the thin binary over the agent library. Parses arguments, starts tracing and
//! calls [`gpuattest_agent::cli`]. Exit codes: 64 usage, 78 configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gpuattest_agent::{cli, config::Config};

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
        /// The host's settings (the same flags as `run`; only the NVML library, the /proc and /sys
        /// roots and the hostname are used).
        #[command(flatten)]
        host: Box<Config>,
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
        /// Where the sparse 1 TB test file is written (and removed).
        #[arg(long, default_value = "/tmp")]
        scratch: PathBuf,
    },
    /// Take one observation of this host and print it (nothing is signed or sent).
    Inspect {
        /// The host's settings (the same flags as `run`; the NVML library, the /proc and /sys roots,
        /// the hostname and the kubelet are used).
        #[command(flatten)]
        host: Box<Config>,
        /// A config file for the same settings; flags win.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Ask GPUs in confidential-computing mode for attestation reports bound to this nonce (64 hex digits).
        #[arg(long)]
        attest_nonce: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    settings: Config,
    /// A TOML file with the same settings; flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
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
        Cmd::Inspect { host, config, attest_nonce, json } => {
            cli::inspect(*host, config.as_deref(), attest_nonce.as_deref(), json)
        }
        Cmd::Bench { host, iterations, scratch } => cli::bench(&host, iterations, &scratch),
        Cmd::Run(a) => cli::run(a.settings, a.config.as_deref(), a.check_config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", gpuattest_agent::logging::fatal_line("gpuattest-agent", &e.message));
            ExitCode::from(e.code)
        }
    }
}

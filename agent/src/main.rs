//! `gpuattest-agent`: the thin binary over the agent library. Parses arguments, starts tracing, loads
//! the config and calls into the library. Exit codes: 64 usage, 78 configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gpuattest_agent::config::{FileConfig, Flags, Settings};
use gpuattest_agent::gpu::NvmlSource;
use gpuattest_agent::observe::Observer;

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
    Run(RunArgs),
    /// The agent's own view: host id, last and acknowledged sequence numbers, spooled reports.
    Status {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Take one observation of this host and print it (nothing is signed or sent).
    Inspect {
        #[command(flatten)]
        host: HostArgs,
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
    #[arg(long)]
    spool_max_mib: Option<u64>,
    /// A TOML file with the same settings; flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    host: HostArgs,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gpuattest-agent: {msg}");
    ExitCode::from(code)
}

fn open_observer(h: &HostArgs, lib: &std::path::Path) -> Result<Observer, ExitCode> {
    let gpus = NvmlSource::open(lib).map_err(|e| fail(1, e))?;
    let paths = gpuattest_agent::observe::HostPaths {
        proc_root: h.proc_root.clone().unwrap_or_else(|| "/proc".into()),
        sys_root: h.sys_root.clone().unwrap_or_else(|| "/sys".into()),
        hostname: h.hostname.clone(),
    };
    Ok(Observer::new(Box::new(gpus), paths))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    gpuattest_agent::logging::init(if matches!(cli.cmd, Cmd::Run(_)) { "info" } else { "warn" });
    match cli.cmd {
        Cmd::Status { state_dir, json } => match gpuattest_agent::run::status(&state_dir) {
            Ok(s) if json => print_json(&s),
            Ok(s) => {
                println!("host_id    {}", s.host_id.as_deref().unwrap_or("(not enrolled)"));
                println!(
                    "last_seq   {}\nacked_seq  {}\nspooled    {} ({} bytes)",
                    s.last_seq, s.acked_seq, s.spooled, s.spool_bytes
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Cmd::Inspect { host, json } => {
            let lib = host.nvml_lib.clone().unwrap_or_else(NvmlSource::default_lib);
            let mut observer = match open_observer(&host, &lib) {
                Ok(o) => o,
                Err(code) => return code,
            };
            match observer.observe(gpuattest_agent::run::now_ms()) {
                Ok(obs) if json => print_json(&obs),
                Ok(obs) => {
                    print!("{}", gpuattest_agent::observe::render_text(&obs));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        Cmd::Run(a) => run(a),
    }
}

fn print_json(v: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

fn run(a: RunArgs) -> ExitCode {
    let file = match &a.config {
        Some(p) => match FileConfig::load(p) {
            Ok(f) => Some((p.as_path(), f)),
            Err(e) => return fail(78, e),
        },
        None => None,
    };
    let flags = Flags {
        collector: a.collector,
        enroll_token: a.enroll_token,
        state_dir: a.state_dir,
        interval: a.interval,
        nvml_lib: a.host.nvml_lib.clone(),
        proc_root: a.host.proc_root.clone(),
        sys_root: a.host.sys_root.clone(),
        hostname: a.host.hostname.clone(),
        spool_max_mib: a.spool_max_mib,
    };
    let settings = match Settings::merge(flags, file) {
        Ok(s) => s,
        Err(e) => return fail(78, e),
    };
    if a.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let gpus = match NvmlSource::open(&settings.nvml_lib) {
        Ok(g) => g,
        Err(e) => return fail(1, e),
    };
    let observer = Observer::new(Box::new(gpus), settings.paths.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            gpuattest_agent::logging::shutdown_signal().await;
            let _ = tx.send(true);
        });
        match gpuattest_agent::run::run(settings.run, observer, rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        }
    })
}

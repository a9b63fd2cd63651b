//! `gpuattest-collector`: the thin binary over the collector library. Parses arguments, starts tracing
//! and calls into the library. Exit codes: 64 usage, 78 configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gpuattest_collector::{demo, policy::Policy, render, server::Collector, store::Store, tokens};

#[derive(Parser)]
#[command(
    name = "gpuattest-collector",
    version,
    about = "Verify and store signed GPU usage reports; flag, review, export"
)]
struct Cli {
    /// Where the embedded store, keys and policy live.
    #[arg(long, global = true, env = "GPUATTEST_DATA", default_value = "./gpuattest-data")]
    data: PathBuf,
    /// A shared PostgreSQL store instead of the embedded one.
    #[arg(long, global = true, env = "GPUATTEST_DATABASE", hide_env_values = true)]
    database: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The collector: gRPC ingest, review UI and HTTP API, /metrics.
    Serve {
        #[arg(long, default_value = "127.0.0.1:7443")]
        grpc_listen: String,
        #[arg(long, default_value = "127.0.0.1:7080")]
        http_listen: String,
        /// Validate the store and policy, then exit.
        #[arg(long)]
        check_config: bool,
    },
    /// The whole system on one machine with simulated GPUs.
    Demo {
        /// Stop after N seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        #[arg(long, default_value = "127.0.0.1:0")]
        http_listen: String,
        /// The agents' observation interval.
        #[arg(long, default_value = "2s")]
        interval: String,
    },
    /// Credentials.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Enrolled hosts.
    Hosts {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Flags raised by policy.
    Flags {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Stored reports.
    Reports {
        #[command(subcommand)]
        cmd: ReportsCmd,
    },
}

#[derive(Subcommand)]
enum ReportsCmd {
    /// Re-verify every stored report's signature and hash chain from the stored bytes; exit 1 if any fails.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a token: enroll (one-time), reviewer, operator, or customer (bound to --tenant).
    Create {
        #[arg(long)]
        role: tokens::Role,
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. 24h (default 24h for enroll, 90 days otherwise).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ListCmd {
    /// List them.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gpuattest-collector: {msg}");
    ExitCode::from(code)
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

fn main() -> ExitCode {
    if std::env::var_os(demo::WORKLOAD_ENV).is_some() {
        demo::run_workload();
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    gpuattest_collector::logging::init(if matches!(cli.cmd, Cmd::Serve { .. }) { "info" } else { "warn" });
    if let Some(db) = &cli.database {
        let scheme = db.split("://").next().unwrap_or("");
        return fail(
            78,
            format!(
                "--database {scheme}://...: the PostgreSQL store is not in this build yet; omit --database to use the embedded store in --data"
            ),
        );
    }
    let open = || Store::open(&cli.data).map(Arc::new);
    let rt = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.cmd {
        Cmd::Token { cmd: TokenCmd::Create { role, tenant, ttl, json } } => {
            let ttl = match ttl.as_deref().map(gpuattest_proto::units::parse_duration).transpose() {
                Ok(t) => t,
                Err(e) => return fail(64, format!("--ttl: {e}")),
            };
            let store = match open() {
                Ok(s) => s,
                Err(e) => return fail(78, e),
            };
            match tokens::mint(&store, role, tenant.as_deref(), ttl, "cli", gpuattest_collector::now_ms()) {
                Ok(t) if json => print_json(&serde_json::json!({"token": t, "role": role.as_str(), "tenant": tenant})),
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(64, e),
            }
        }
        Cmd::Hosts { cmd: ListCmd::List { json } } => match open().and_then(|s| s.hosts(None)) {
            Ok(h) if json => print_json(&h),
            Ok(h) => {
                print!("{}", render::hosts(&h));
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Cmd::Flags { cmd: ListCmd::List { json } } => match open().and_then(|s| s.flags(None)) {
            Ok(f) if json => print_json(&f),
            Ok(f) => {
                print!("{}", render::flags(&f));
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Cmd::Reports { cmd: ReportsCmd::Verify { json } } => match open().and_then(|s| s.verify_all()) {
            Ok(v) => {
                let ok = v.invalid.is_empty() && v.chain_breaks == 0;
                if json {
                    let _ = print_json(&v);
                } else {
                    println!(
                        "{} reports checked: {} valid, {} invalid, {} chain breaks",
                        v.checked,
                        v.valid,
                        v.invalid.len(),
                        v.chain_breaks
                    );
                    for i in &v.invalid {
                        println!("  {} seq {}: {}", i.host_id, i.seq, i.reason);
                    }
                }
                if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            Err(e) => fail(1, e),
        },
        Cmd::Serve { grpc_listen, http_listen, check_config } => {
            let (store, policy) = match (open(), Policy::load_from_data(&cli.data)) {
                (Ok(s), Ok(p)) => (s, p),
                (Err(e), _) => return fail(78, e),
                (_, Err(e)) => return fail(78, e),
            };
            if check_config {
                println!("configuration is valid (store {}, policy {})", store.path().display(), policy.digest());
                return ExitCode::SUCCESS;
            }
            let rt = match rt() {
                Ok(rt) => rt,
                Err(e) => return fail(1, e),
            };
            rt.block_on(async move {
                let grpc = match tokio::net::TcpListener::bind(&grpc_listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        return fail(1, format!("cannot listen on {grpc_listen} (gRPC): {e}"));
                    }
                };
                let http = match tokio::net::TcpListener::bind(&http_listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        return fail(1, format!("cannot listen on {http_listen} (HTTP): {e}"));
                    }
                };
                let (g, h) = (grpc.local_addr().map(|a| a.to_string()), http.local_addr().map(|a| a.to_string()));
                println!("listening grpc={} http={}", g.unwrap_or_default(), h.unwrap_or_default());
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    gpuattest_collector::logging::shutdown_signal().await;
                    let _ = tx.send(true);
                });
                match Collector::new(store, policy).serve(grpc, http, rx).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(1, e),
                }
            })
        }
        Cmd::Demo { seconds, http_listen, interval } => {
            let interval = match gpuattest_proto::units::parse_duration(&interval) {
                Ok(i) if !i.is_zero() => i,
                Ok(_) => return fail(64, "--interval must be more than 0"),
                Err(e) => return fail(64, format!("--interval: {e}")),
            };
            let opts = demo::DemoOptions {
                data: cli.data.clone(),
                duration: seconds.map(std::time::Duration::from_secs),
                http_listen,
                interval,
            };
            match rt() {
                Ok(rt) => match rt.block_on(demo::run(opts)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(1, e),
                },
                Err(e) => fail(1, e),
            }
        }
    }
}

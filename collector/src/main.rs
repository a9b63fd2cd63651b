//! `gpuattest-collector`: the thin binary over the collector library. Parses arguments, starts tracing
//! and calls [`gpuattest_collector::cli`]. Exit codes: 64 usage, 78 configuration, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpuattest_collector::{cli, tokens, tools};

#[derive(Parser)]
#[command(name = "gpuattest-collector", version, about = "Verify and store signed GPU usage reports; flag and review")]
struct Cli {
    /// Where the embedded store, keys and policy live [default: ./gpuattest-data].
    #[arg(long, global = true, env = "GPUATTEST_DATA")]
    data: Option<PathBuf>,
    /// A shared PostgreSQL store instead of the embedded one.
    #[arg(long, global = true, env = "GPUATTEST_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// The collector's TOML config (deploy/config/collector-full.toml): `serve` takes its settings from
    /// it, and every other command its `data` and `database`; flags win.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The collector: gRPC ingest, review UI and HTTP API, /metrics.
    Serve {
        /// Listener for agents (gRPC) [default: 127.0.0.1:7443].
        #[arg(long)]
        grpc_listen: Option<String>,
        /// Listener for the review UI, the API and /metrics [default: 127.0.0.1:7080].
        #[arg(long)]
        http_listen: Option<String>,
        /// A policy file instead of <data>/policy.toml.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Validate the configuration, store, policy and TLS material, then exit.
        #[arg(long)]
        check_config: bool,
        /// gRPC server certificate (PEM); needed for any non-loopback listener.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// gRPC server private key (PEM).
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// CA (PEM) whose client certificates agents may present (mTLS).
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// Refuse agents without a client certificate signed by --client-ca.
        #[arg(long)]
        require_client_cert: bool,
        /// On SIGTERM: how long streams and requests get to finish before the collector exits [default: 10s].
        #[arg(long)]
        shutdown_grace: Option<String>,
        /// HTTPS for the review UI, API and /metrics: certificate chain (PEM).
        #[arg(long)]
        http_tls_cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long)]
        http_tls_key: Option<PathBuf>,
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
    /// A consistent copy of the store, export key and policy, taken while the collector runs.
    Backup {
        /// A new (or empty) directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Credentials: `token create --role enroll|reviewer|operator|customer [--tenant ID] [--ttl 24h]`.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Enrolled hosts: `hosts list`, `hosts revoke HOST_ID --reason TEXT`.
    Hosts {
        #[command(subcommand)]
        cmd: HostsCmd,
    },
    /// Flags raised by policy: `flags list`, `flags show ID`, `flags decide ID --decision D --reason R`.
    Flags {
        #[command(subcommand)]
        cmd: FlagsCmd,
    },
    /// The audit log, newest first: who did what, when.
    Audit {
        #[arg(long, default_value_t = 200)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Jobs across hosts: `jobs list`, `jobs show KEY`.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
    },
    /// The policy: `policy evaluate-model FILE|-`.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Restricted-party screening: `screen check NAME --list FILE`.
    Screen {
        #[command(subcommand)]
        cmd: ScreenCmd,
    },
    /// Write a signed attestation (DSSE envelope, in-toto Statement v1) for one tenant.
    Export {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        out: PathBuf,
        /// Period start: 2026-11-01, 2026-11-01T00:00:00Z, or a duration before now (720h).
        #[arg(long)]
        since: Option<String>,
        /// Period end (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Leave command lines and file paths out; signatures and proofs still verify.
        #[arg(long)]
        redact: bool,
    },
    /// Print the public key that signs exports, as SPKI PEM.
    ExportKey,
    /// Verify an exported attestation offline; exit 0 only when valid.
    Verify {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Location landmarks: `landmark serve`, `landmark key`, `landmark add`, `landmark list`.
    Landmark {
        #[command(subcommand)]
        cmd: LandmarkCmd,
    },
    /// GPU attestation: `attestation verify --report FILE --certs FILE --nonce HEX [--anchor PEM] [--json]`.
    Attestation {
        #[command(subcommand)]
        cmd: AttestationCmd,
    },
    /// The transparency log: `log head`, `log consistency --from N`, `log verify-consistency FILE --key PEM`.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// End-to-end ingest benchmark on this machine, beside the Ed25519 verification ceiling.
    Bench {
        /// Simulated agents (concurrent streams).
        #[arg(long, default_value_t = 64)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Each agent sends one report per interval (e.g. 1s) instead of back to back.
        #[arg(long)]
        interval: Option<String>,
        /// Collector replicas on the one --database store, agents spread across them.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Instead: store this many reports of one host, all behind one flag, and time that flag's
        /// review page.
        #[arg(long)]
        review_reports: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Stored reports: `reports verify` re-verifies signatures and hash chains.
    Reports {
        #[command(subcommand)]
        cmd: VerifyCmd,
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
        /// How many hosts an enroll token may enroll (a fleet token for a DaemonSet).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Hosts this enroll token enrolls are registered at this site (with --site-lon).
        #[arg(long, allow_hyphen_values = true, requires = "site_lon")]
        site_lat: Option<f64>,
        #[arg(long, allow_hyphen_values = true, requires = "site_lat")]
        site_lon: Option<f64>,
        #[arg(long)]
        site_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (printed by `token create --json` and `token list`); audited.
    Revoke { id: String },
    /// Every token: id, role, tenant, expiry, uses, revoked (never the token itself).
    List {
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

#[derive(Subcommand)]
enum HostsCmd {
    /// List them.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a host: its reports and streams are refused from now on.
    Revoke {
        host_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Register where a host is to be (its location is checked against this site).
    SetSite {
        host_id: String,
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        /// The site's name, e.g. iad-2.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum LandmarkCmd {
    /// Run a landmark: agents connect to it and answer timed challenges.
    Serve {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        /// Its Ed25519 key (PKCS#8), created if absent.
        #[arg(long)]
        key: PathBuf,
        /// Challenges per measurement (the minimum round trip counts).
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        /// Pause between challenges.
        #[arg(long, default_value = "100ms")]
        spacing: String,
        /// Pause between measurements of one host.
        #[arg(long, default_value = "60s")]
        every: String,
        /// GPU-bound challenges per measurement, for hosts with GPUs in confidential-computing mode
        /// (each costs the GPU an attestation report); 0 turns them off.
        #[arg(long, default_value_t = 3)]
        gpu_rounds: u32,
    },
    /// Print the landmark key's public half as SPKI PEM (creating the key if absent).
    Key {
        #[arg(long)]
        key: PathBuf,
    },
    /// Register a landmark: its position, public key and the address agents dial.
    Add {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        #[arg(long)]
        key_pem: PathBuf,
        #[arg(long)]
        address: String,
    },
    /// The registered landmarks.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Jobs across hosts: training or inference, GPU-hours, estimated operations.
    List {
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One job with the evidence behind its verdict.
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FlagsCmd {
    /// List them.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One flag with its evidence and decisions.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Record a decision (audited).
    Decide {
        id: i64,
        /// confirm, dismiss or escalate.
        #[arg(long)]
        decision: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Run the policy in force (or --policy FILE) over stored reports; flags it raises, updates or no
    /// longer raises say so.
    Reevaluate {
        /// A policy file instead of <data>/policy.toml.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Only reports received since this time (RFC 3339, or a duration ago like 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The verdict on a model fingerprint (a JSON file from `gpuattest-agent fingerprint --json`, or - for stdin).
    EvaluateModel {
        file: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ScreenCmd {
    /// Screen one party name against list files (format detected from each file).
    Check {
        name: String,
        #[arg(long, required = true)]
        list: Vec<PathBuf>,
        /// Lowest score reported.
        #[arg(long, default_value_t = 0.8)]
        threshold: f64,
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: import a list file and screen names against it; prints JSON figures.
    Bench {
        #[arg(long)]
        list: PathBuf,
        #[arg(long, default_value_t = 20)]
        iterations: u32,
    },
}

#[derive(Subcommand)]
enum AttestationCmd {
    /// Verify one GPU attestation report with its certificate chain against the pinned NVIDIA root.
    Verify {
        /// The SPDM request and response, hex or binary.
        #[arg(long)]
        report: PathBuf,
        /// The certificate chain, PEM, leaf first.
        #[arg(long)]
        certs: PathBuf,
        /// The nonce the report must answer, 64 hex digits.
        #[arg(long)]
        nonce: String,
        /// Roots trusted beside the pinned NVIDIA root (PEM; tests use a generated one).
        #[arg(long)]
        anchor: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Instead of the verdict, time N verifications (chain checked in full, then from the cache)
        /// and print the figures as JSON.
        #[arg(long, value_name = "N")]
        bench: Option<u32>,
    },
}

#[derive(Subcommand)]
enum LogCmd {
    /// Sign and print the current tree head.
    Head,
    /// Prove that the log of size --to (default: now) extends the log of size --from.
    Consistency {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Verify a consistency proof offline.
    VerifyConsistency {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum VerifyCmd {
    /// Re-verify every stored report; exit 1 if any fails.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    if std::env::var_os(tools::demo::WORKLOAD_ENV).is_some() {
        tools::demo::run_workload();
        return ExitCode::SUCCESS;
    }
    if std::env::var_os(gpuattest_collector::tools::bench::AGENTS_ENV).is_some() {
        return gpuattest_collector::tools::bench::agents_main();
    }
    let args = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    gpuattest_collector::logging::init(if matches!(args.cmd, Cmd::Serve { .. }) { "info" } else { "warn" });
    let data_flag = args.data.clone();
    let config = args.config.clone();
    // Commands other than serve read the store's place from the daemon's config where one is given.
    let file = match (&config, matches!(args.cmd, Cmd::Serve { .. })) {
        (Some(p), false) => match gpuattest_collector::config::FileConfig::load(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("{}", gpuattest_collector::logging::fatal_line("gpuattest-collector", &e.to_string()));
                return ExitCode::from(78);
            }
        },
        _ => None,
    };
    let (file_data, file_database) = file.map(|f| (f.data, f.database)).unwrap_or_default();
    let data_given = data_flag.is_some() || file_data.is_some();
    let default_data = args.data.or(file_data).unwrap_or_else(|| gpuattest_collector::config::DEFAULT_DATA.into());
    let data = default_data.as_path();
    let database = args.database.clone().or(file_database);
    let at = cli::Place { data: data.to_path_buf(), database: database.clone(), data_given };
    let result = match args.cmd {
        Cmd::Serve {
            grpc_listen,
            http_listen,
            policy,
            check_config,
            tls_cert,
            tls_key,
            client_ca,
            require_client_cert,
            shutdown_grace,
            http_tls_cert,
            http_tls_key,
        } => {
            let flags = gpuattest_collector::config::ServeFlags {
                data: data_flag,
                database: args.database,
                grpc_listen,
                http_listen,
                policy,
                tls_cert,
                tls_key,
                client_ca,
                require_client_cert,
                shutdown_grace,
                http_tls_cert,
                http_tls_key,
            };
            cli::serve(flags, config.as_deref(), check_config)
        }
        Cmd::Demo { .. } if at.database.is_some() => Err(cli::usage(
            "--database: the demo runs on the embedded store in --data; omit --database (serve and the other commands take it)",
        )),
        Cmd::Demo { seconds, http_listen, interval } => tools::cli::demo(data, seconds, http_listen, &interval),
        Cmd::Token { cmd: TokenCmd::Create { role, tenant, ttl, uses, site_lat, site_lon, site_name, json } } => {
            let site =
                site_lat.zip(site_lon).map(|(lat, lon)| gpuattest_collector::store::Site { name: site_name, lat, lon });
            cli::token_create(&at, role, tenant.as_deref(), ttl.as_deref(), uses, site, json)
        }
        Cmd::Token { cmd: TokenCmd::Revoke { id } } => cli::token_revoke(&at, &id),
        Cmd::Token { cmd: TokenCmd::List { json } } => cli::token_list(&at, json),
        Cmd::Hosts { cmd: HostsCmd::List { json } } => cli::hosts_list(&at, json),
        Cmd::Hosts { cmd: HostsCmd::SetSite { host_id, lat, lon, name } } => {
            cli::location::hosts_set_site(&at, &host_id, lat, lon, name.as_deref())
        }
        Cmd::Landmark {
            cmd: LandmarkCmd::Serve { listen, name, lat, lon, key, rounds, spacing, every, gpu_rounds },
        } => {
            let d = |flag: &str, v: &str| {
                gpuattest_proto::units::parse_duration(v).map_err(|e| cli::usage(format!("--{flag}: {e}")))
            };
            match (d("spacing", &spacing), d("every", &every)) {
                (Ok(spacing), Ok(every)) => cli::location::landmark_serve(
                    &listen,
                    gpuattest_collector::landmark::LandmarkConfig { name, rounds, spacing, every, gpu_rounds },
                    lat,
                    lon,
                    &key,
                ),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Cmd::Landmark { cmd: LandmarkCmd::Key { key } } => cli::location::landmark_key(&key),
        Cmd::Landmark { cmd: LandmarkCmd::Add { name, lat, lon, key_pem, address } } => {
            cli::location::landmark_add(&at, &name, lat, lon, &key_pem, &address)
        }
        Cmd::Landmark { cmd: LandmarkCmd::List { json } } => cli::location::landmark_list(&at, json),
        Cmd::Hosts { cmd: HostsCmd::Revoke { host_id, reason } } => cli::hosts_revoke(&at, &host_id, &reason),
        Cmd::Flags { cmd: FlagsCmd::List { json } } => cli::flags_list(&at, json),
        Cmd::Audit { limit, json } => cli::audit(&at, limit, json),
        Cmd::Jobs { cmd: JobsCmd::List { tenant, limit, json } } => cli::jobs_list(&at, tenant.as_deref(), limit, json),
        Cmd::Jobs { cmd: JobsCmd::Show { job, json } } => cli::jobs_show(&at, &job, json),
        Cmd::Flags { cmd: FlagsCmd::Show { id, json } } => cli::flags_show(&at, id, json),
        Cmd::Flags { cmd: FlagsCmd::Decide { id, decision, reason } } => cli::flags_decide(&at, id, &decision, &reason),
        Cmd::Reports { cmd: VerifyCmd::Verify { json } } => cli::reports_verify(&at, json),
        Cmd::Export { tenant, out, since, until, redact } => {
            cli::export(&at, &cli::ExportArgs { tenant, out, since, until, redact })
        }
        Cmd::ExportKey => cli::export_key(&at),
        Cmd::Attestation { cmd: AttestationCmd::Verify { report, certs, nonce, anchor, json, bench } } => {
            cli::attestation_verify(&report, &certs, &nonce, &anchor, json, bench)
        }
        Cmd::Backup { out } => cli::backup(&at, &out),
        Cmd::Bench { review_reports: Some(n), json, .. } => tools::cli::bench_review(n, at.database.as_deref(), json),
        Cmd::Bench { agents, seconds, interval, replicas, json, review_reports: None } => {
            tools::cli::bench(agents, seconds, interval.as_deref(), at.database.as_deref(), replicas, json)
        }
        Cmd::Policy { cmd: PolicyCmd::EvaluateModel { file, json } } => cli::evaluate_model(&at, &file, json),
        Cmd::Policy { cmd: PolicyCmd::Reevaluate { policy, since, json } } => {
            cli::policy_reevaluate(&at, policy.as_deref(), since.as_deref(), json)
        }
        Cmd::Screen { cmd: ScreenCmd::Bench { list, iterations } } => cli::screen_bench(&list, iterations),
        Cmd::Screen { cmd: ScreenCmd::Check { name, list, threshold, json } } => {
            cli::screen_check(&name, &list, threshold, json)
        }
        Cmd::Verify { file, key, json } => cli::verify(&file, &key, json),
        Cmd::Log { cmd: LogCmd::Head } => cli::log_head(&at),
        Cmd::Log { cmd: LogCmd::Consistency { from, to } } => cli::log_consistency(&at, from, to),
        Cmd::Log { cmd: LogCmd::VerifyConsistency { file, key } } => cli::log_verify_consistency(&file, &key),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", gpuattest_collector::logging::fatal_line("gpuattest-collector", &e.message));
            ExitCode::from(e.code)
        }
    }
}

//! The gpuattest collector: verifies signed usage reports from enrolled hosts, stores them verbatim
//! beside their decoded fields, evaluates policy, raises flags, and serves the review UI and API.
//!
//! # Layout
//! - [`cli`]: the commands behind the binary, with their exit codes.
//! - [`compute`]: jobs across hosts: identity, GPU peak table, operations, training or inference.
//! - [`config`]: `serve --config FILE`, merged under the flags.
//! - [`store`]: the embedded SQLite store, its migrations, and every query.
//! - [`location`]: where a host is, from landmark round-trip times: discs, verdicts, record checks.
//! - [`landmark`]: `landmark serve`, the service that times signed challenges.
//! - [`ingest`]: gRPC enrollment and the report stream (verify, check, commit, acknowledge).
//! - [`policy`]: the rules that turn evidence into flags, from TOML.
//! - [`tenants`]: the tenant file, job-to-tenant mapping, screening and parent-country findings.
//! - [`tokens`]: enrollment and bearer tokens, stored only as hashes.
//! - [`http`]: the review UI, the JSON API with roles, `/healthz`, `/metrics`.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`server`]: runs gRPC and HTTP on listeners passed in, until shutdown.
//! - [`logging`]: tracing set-up and the shutdown signal for the binary.
//! - [`export`]: signed customer attestations (DSSE, in-toto), the transparency log, offline verify.
//! - [`reevaluate`]: `policy reevaluate`, the policy in force over stored evidence.
//! - [`registry`]: model families, developers and listings; `policy evaluate-model`.
//! - [`screening`]: restricted-party lists (OFAC SDN, trade.gov CSL, operator lists) and name matching.
//! - [`severity`], [`files`], [`report_view`]: what the policy, store and review share (flag severity,
//!   bounded reads of operator files, a report as JSON), below all of them.
//! - [`render`]: human-readable tables for the CLI.
//! - [`timefmt`]: RFC 3339 rendering.
//! - [`verify`]: the one report verifier (ingest, `reports verify`, the review page).
//! - [`tools`]: not the collector: the demo, the ingest benchmark and scratch PostgreSQL schemas, over
//!   the public API; no other module imports them (a test checks).
//! - [`evidence`]: GPU attestation evidence in reports: verified (`gpuattest-evidence`) against the
//!   nonces the collector issued, compared with the report and the operator's golden values.

pub mod classify;
pub mod cli;
pub mod compute;
pub mod config;
pub mod evidence;
pub mod export;
pub mod files;
pub mod http;
pub mod ingest;
pub mod landmark;
pub mod location;
pub mod logging;
pub mod merkle;
pub mod metrics;
pub mod policy;
pub mod reevaluate;
pub mod registry;
pub mod render;
pub mod report_view;
pub mod screening;
pub mod server;
pub mod severity;
pub mod store;
pub mod tenants;
pub mod timefmt;
pub mod tokens;
pub mod tools;
pub mod verify;

/// The wall clock, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

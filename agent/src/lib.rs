//! The gpuattest host agent: a daemon on each GPU host that reads accelerator identities and usage
//! through NVML, attributes each GPU process to its job, signs each usage report with the host's
//! Ed25519 key, keeps it in a durable spool, and streams it to the collector until acknowledged.
//!
//! Hardware and the OS come in from outside: the GPU source (the real NVML or the simulated library,
//! through the same nvml-wrapper code), the `/proc` and `/sys` roots, and the shutdown signal.
//!
//! # Layout
//! - [`bench`]: observation and fingerprint benchmarks (`gpuattest-agent bench`).
//! - [`cli`]: the commands behind the binary, with their exit codes.
//! - [`gpu`]: the [`gpu::GpuSource`] trait and the NVML backend.
//! - [`files`]: the one bounded reader of files the agent does not control.
//! - [`jobs`]: process facts from `/proc`, cgroup job attribution, command-line redaction.
//! - [`kubelet`]: optional pod namespace, name, labels and owner from the kubelet's pod list.
//! - [`landmarks`]: answers location landmarks' timed challenges; keeps their signed records for reports.
//! - [`models`]: model files a process has open, identified from their headers.
//! - [`accelerators`]: non-NVML accelerators (Huawei Ascend, AMD, Gaudi, ...) from sysfs.
//! - [`observe`]: one observation of the host, and change detection between observations.
//! - [`report`]: observation to signed, chained protobuf report.
//! - [`identity`]: the signing key and state-directory helpers.
//! - [`state`]: the persistent chain state (host id, sequence, hash, acknowledged).
//! - [`spool`]: the durable, checksummed spool of unacknowledged reports.
//! - [`transport`]: address policy, enrollment and gRPC connection.
//! - [`run`]: the daemon (producer and sender) and `status`.
//! - [`logging`]: tracing set-up and the shutdown signal for the binary.
//! - [`metrics`]: the optional local `/metrics` and `/healthz` listener.
//! - [`config`]: the agent's configuration, from flags and an optional TOML file.

pub mod accelerators;
pub mod bench;
pub mod cli;
pub mod config;
pub mod files;
pub mod gpu;
pub mod identity;
pub mod jobs;
pub mod kubelet;
pub mod landmarks;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod observe;
pub mod report;
pub mod run;
pub mod spool;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod transport;

//! gpuattest integration tests: real collector, agent and workload processes on loopback, over the
//! simulated NVML library. One test binary for the whole crate (link time on small machines).
//!
//! Run `cargo build --workspace` first: the tests start the built binaries.

mod attestation;
mod boundaries;
mod browser;
mod delivery;
mod demo;
mod deploy;
mod docs;
mod evidence;
mod export;
mod hostile;
mod inspect;
mod jobs;
mod kubelet;
mod location;
mod models;
mod nvml;
mod operations;
mod policy;
mod replicas;
mod review;
mod rules;
mod streaming;
mod tenants;
mod workloads;

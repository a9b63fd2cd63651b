//! GPU observation: what the accelerators managed by the NVIDIA driver say about themselves.
//!
//! The rest of the agent sees GPUs only through [`GpuSource`], so that the NVML backend can be swapped
//! for the simulated NVML library (same code path, other `.so`) or, in unit tests, for a plain value.

mod nvml;

use serde::Serialize;

pub use nvml::NvmlSource;

/// Why the GPU backend could not start or observe.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The NVML shared library could not be loaded or initialised.
    #[error(
        "cannot load NVML from {path}: {reason}; install the NVIDIA driver, or pass --nvml-lib PATH \
         (env GPUATTEST_NVML_LIB) naming libnvidia-ml.so.1 or the simulated libgpuattest_nvml_sim.so"
    )]
    Load {
        /// The library that was tried.
        path: String,
        /// What the loader or `nvmlInit` said.
        reason: String,
    },
    /// A host-wide call (device count, driver version) failed.
    #[error("NVML {call} failed: {reason}")]
    Call {
        /// The NVML call.
        call: &'static str,
        /// What NVML said.
        reason: String,
    },
}

/// A source of GPU observations.
pub trait GpuSource: Send {
    /// Takes one observation of every GPU.
    ///
    /// # Errors
    /// [`GpuError::Call`] when the driver cannot even list its GPUs; a single GPU's failures are carried
    /// inside its [`GpuObservation`] instead, so the rest of the observation goes on.
    fn observe(&mut self) -> Result<GpuSnapshot, GpuError>;

    /// Asks every GPU in confidential-computing mode for its attestation report bound to `nonce`, with
    /// its certificate chains. Sources without confidential computing return nothing.
    fn attest(&mut self, _nonce: &[u8; 32]) -> Vec<Attestation> {
        Vec::new()
    }

    /// Asks one GPU (by UUID) for its attestation report over `nonce` (a landmark's GPU-bound
    /// challenge). `None` where the source has no such GPU or no confidential computing.
    fn attest_one(&mut self, _uuid: &str, _nonce: &[u8; 32]) -> Option<Attestation> {
        None
    }

    /// Reads the fast-moving counters of every GPU (utilisation, power, clocks, PCIe and NVLink
    /// throughput, memory used), cheaply enough to call every second. A counter the driver lacks is
    /// asked once and then listed in [`GpuSample::unavailable`]. Sources without counters return
    /// nothing.
    fn sample(&mut self) -> Vec<crate::telemetry::GpuSample> {
        Vec::new()
    }
}

/// Confidential computing as the driver reports it (system-wide in NVML).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ConfCompute {
    /// CC mode is on.
    pub enabled: Option<bool>,
    /// The GPUs accept client work (`GpusReadyState`).
    pub accepting_work: Option<bool>,
    /// Why the state could not be read (most GPUs and drivers: not supported).
    pub unavailable: Option<String>,
}

/// One GPU's attestation report and certificates, raw, bound to a nonce. The collector (or anyone with
/// NVIDIA's verifier) checks them; the agent only carries them, as bytes until the report is built
/// (`inspect --json` shows them as hex and base64).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Attestation {
    /// GPU.
    pub gpu_uuid: String,
    /// The nonce asked with.
    #[serde(rename = "nonce_hex", serialize_with = "as_hex")]
    pub nonce: Vec<u8>,
    /// The SPDM attestation report.
    #[serde(rename = "report_base64", serialize_with = "as_base64")]
    pub report: Vec<u8>,
    /// The CEC attestation report where present.
    #[serde(rename = "cec_report_base64", serialize_with = "as_base64")]
    pub cec_report: Vec<u8>,
    /// The device certificate chain.
    #[serde(rename = "cert_chain_base64", serialize_with = "as_base64")]
    pub cert_chain: Vec<u8>,
    /// The attestation certificate chain.
    #[serde(rename = "attestation_cert_chain_base64", serialize_with = "as_base64")]
    pub attestation_cert_chain: Vec<u8>,
    /// Why there is none, when there is none.
    pub error: Option<String>,
}

fn as_hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&gpuattest_proto::hex(b))
}

fn as_base64<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
}

/// Every GPU at one instant, plus facts about the driver.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuSnapshot {
    /// `nvml` or `simulated`.
    pub source: String,
    /// The driver version NVML reports.
    pub driver_version: Option<String>,
    /// CUDA driver API version, e.g. `12.4`.
    pub cuda_driver_version: Option<String>,
    /// The GPUs, in NVML index order.
    pub gpus: Vec<GpuObservation>,
    /// Confidential-computing state.
    pub confidential_compute: ConfCompute,
}

/// One GPU at one instant.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GpuObservation {
    /// NVML index.
    pub index: u32,
    /// `GPU-...` UUID; empty if it could not be read.
    pub uuid: String,
    /// Board serial; empty if not supported.
    pub serial: String,
    /// Marketing name.
    pub name: String,
    /// PCI bus id, `00000000:18:00.0`.
    pub pci_bus_id: String,
    /// Framebuffer size.
    pub memory_total_bytes: u64,
    /// Framebuffer in use.
    pub memory_used_bytes: Option<u64>,
    /// GPU utilisation over the driver's last sample period, percent.
    pub utilization_gpu_pct: Option<u32>,
    /// Memory-controller utilisation, percent.
    pub utilization_memory_pct: Option<u32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Energy since the driver loaded, millijoules.
    pub energy_mj: Option<u64>,
    /// Board part number.
    pub board_part_number: Option<String>,
    /// NVML brand (`NvidiaRTX`, `Nvidia`, ...).
    pub brand: Option<String>,
    /// Architecture (`Hopper`, `Blackwell`, ...).
    pub architecture: Option<String>,
    /// VBIOS version.
    pub vbios_version: Option<String>,
    /// CUDA compute capability, `9.0`.
    pub compute_capability: Option<String>,
    /// GPU temperature, °C.
    pub temperature_c: Option<u32>,
    /// Graphics clock, MHz.
    pub clock_graphics_mhz: Option<u32>,
    /// SM clock, MHz.
    pub clock_sm_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub clock_memory_mhz: Option<u32>,
    /// MIG mode on (`None` where the GPU cannot say).
    pub mig_enabled: Option<bool>,
    /// MIG instances and their processes.
    pub mig_devices: Vec<MigDevice>,
    /// Compute and MPS processes on this GPU (MIG instances' processes included).
    pub processes: Vec<GpuProcessUsage>,
    /// Per-process utilisation samples since the previous observation.
    pub process_utilization: Vec<ProcessUtilization>,
    /// Accounting statistics per process, where accounting mode is on.
    pub accounting: Vec<ProcessAccounting>,
    /// Fields that could not be read, and why.
    pub unavailable: Vec<Unavailable>,
    /// The GPU fell off the bus or could not be opened.
    pub lost: bool,
    /// What it did since the previous report, from the 1 Hz samples.
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// Its place in an NVLink fabric (cluster and clique), where the driver reports one.
    pub fabric: Option<Fabric>,
    /// Why there is no fabric information (most GPUs: not supported).
    pub fabric_unavailable: Option<String>,
}

/// A GPU's NVLink fabric membership.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Fabric {
    /// Fabric cluster UUID.
    pub cluster_uuid: String,
    /// Clique (NVLink partition) id.
    pub clique_id: u32,
    /// Registration state: 0 not supported, 1 not started, 2 in progress, 3 completed.
    pub state: u8,
    /// Fabric manager status (NVML return code).
    pub status: u32,
}

/// A process's use of one GPU.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct GpuProcessUsage {
    /// Host pid.
    pub pid: u32,
    /// GPU memory it holds, bytes (0 where the driver cannot say).
    pub used_memory_bytes: u64,
    /// Listed by the MPS call (a client of the multi-process service).
    pub mps: bool,
}

/// One MIG instance.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MigDevice {
    /// Instance index on its GPU.
    pub index: u32,
    /// `MIG-...` UUID.
    pub uuid: String,
    /// Instance memory, bytes.
    pub memory_total_bytes: u64,
    /// Processes in this instance.
    pub processes: Vec<GpuProcessUsage>,
}

/// A per-process utilisation sample.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ProcessUtilization {
    /// Host pid.
    pub pid: u32,
    /// SM utilisation, percent.
    pub sm_pct: u32,
    /// Memory utilisation, percent.
    pub memory_pct: u32,
}

/// Accounting statistics of one process.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ProcessAccounting {
    /// Host pid.
    pub pid: u32,
    /// GPU utilisation over the process's lifetime, percent.
    pub gpu_util_pct: Option<u32>,
    /// Memory utilisation over its lifetime, percent.
    pub memory_util_pct: Option<u32>,
    /// Most memory it ever held, bytes.
    pub max_memory_bytes: Option<u64>,
    /// Time its compute context was active, ms (0 while it runs on most drivers).
    pub time_ms: u64,
}

/// A field that could not be read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unavailable {
    /// Field name as in the report.
    pub field: String,
    /// NVML's reason.
    pub reason: String,
}

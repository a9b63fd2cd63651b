//! The JSON scenario format (documented in `../README.md`) and its defaults.
//!
//! Every field has a default, so `{}` is a valid scenario: one host with eight `NVIDIA H100 80GB HBM3`
//! whose UUIDs, serials and PCI bus ids look like a real HGX H100 board's and are stable for a `seed`.

use serde::Deserialize;

/// Largest scenario file the library reads; a bigger one is refused, not half-read.
pub const MAX_SCENARIO_BYTES: u64 = 4 * 1024 * 1024;

/// A simulated host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Makes UUIDs and serials of GPUs that do not set them distinct between simulated hosts.
    pub seed: String,
    /// What `nvmlSystemGetDriverVersion` returns.
    pub driver_version: String,
    /// What `nvmlSystemGetCudaDriverVersion` returns (12040 = CUDA 12.4).
    pub cuda_driver_version: i32,
    /// Make `nvmlInit` fail with this error: `driver_not_loaded`, `no_permission` or `unknown`.
    pub init_error: Option<String>,
    /// The GPUs; absent means eight default H100s.
    pub gpus: Option<Vec<GpuSpec>>,
    /// Confidential computing on this host (absent: the driver does not support it, as on most hosts).
    pub confidential_compute: Option<ConfComputeSpec>,
    /// How long each entry of a GPU's `samples` plays, ms.
    pub sample_ms: u64,
}

/// One step of a played trace: every field is optional and falls back to the GPU's steady value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sample {
    /// GPU utilisation, percent.
    pub util_pct: Option<u32>,
    /// Memory-controller utilisation, percent.
    pub mem_util_pct: Option<u32>,
    /// Power draw, watts.
    pub power_w: Option<f64>,
    /// SM (and graphics) clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// PCIe transmit throughput, KB/s (`nvmlDeviceGetPcieThroughput`'s unit).
    pub pcie_tx_kbps: Option<u32>,
    /// PCIe receive throughput, KB/s.
    pub pcie_rx_kbps: Option<u32>,
    /// NVLink transmit throughput, KB/s: the NVLink data counters advance by it.
    pub nvlink_tx_kbps: Option<u64>,
    /// NVLink receive throughput, KB/s.
    pub nvlink_rx_kbps: Option<u64>,
    /// Framebuffer in use, bytes.
    pub memory_used_bytes: Option<u64>,
}

/// A host in confidential-computing mode (system-wide in NVML; attestation per GPU).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfComputeSpec {
    /// CC on (`ccFeature`).
    pub enabled: bool,
    /// The GPUs accept client work (`nvmlSystemGetConfComputeGpusReadyState`).
    pub accepting_work: bool,
    /// `prod` or `sim` (`environment`).
    pub environment: String,
    /// A directory with each GPU's attestation key and chain: `<uuid>.pk8` (P-384, PKCS#8 DER) and
    /// `<uuid>.pem` (leaf first), plus `<uuid>.untrusted.pem` for the `unknown_root` fault. With it the
    /// library returns structurally real SPDM reports signed with that key; without it, a marker
    /// report no verifier accepts.
    pub evidence_dir: Option<String>,
    /// How long each attestation report takes, ms (real GPUs take tens to hundreds): the floor a
    /// GPU-bound landmark challenge cannot beat.
    pub attestation_ms: u64,
}

impl Default for ConfComputeSpec {
    fn default() -> Self {
        ConfComputeSpec {
            enabled: true,
            accepting_work: true,
            environment: "prod".into(),
            evidence_dir: None,
            attestation_ms: 0,
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: "gpuattest-sim".into(),
            driver_version: "550.90.07".into(),
            cuda_driver_version: 12040,
            init_error: None,
            gpus: None,
            confidential_compute: None,
            sample_ms: 1000,
        }
    }
}

/// One simulated GPU; every field defaults from its index and the scenario seed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuSpec {
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: Option<String>,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: Option<String>,
    /// The board serial (13 digits on data-centre boards).
    pub serial: Option<String>,
    /// `00000000:18:00.0`.
    pub pci_bus_id: Option<String>,
    /// PCI device id of the GPU (high 16 bits) and vendor (low 16 bits), e.g. `0x233010de`.
    pub pci_device_id: Option<u32>,
    /// Board part number, e.g. `692-2G520-0200-000`.
    pub board_part_number: Option<String>,
    /// Framebuffer size in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Memory in use; defaults to the sum of the processes' memory.
    pub memory_used_bytes: Option<u64>,
    /// GPU utilisation, percent.
    pub utilization_gpu_pct: Option<u32>,
    /// Memory-controller utilisation, percent.
    pub utilization_memory_pct: Option<u32>,
    /// Power draw in milliwatts.
    pub power_mw: Option<u32>,
    /// Energy counter at library load, millijoules; it then advances by `power_mw` × elapsed time.
    pub energy_mj: Option<u64>,
    /// Processes running on this GPU.
    pub processes: Vec<ProcessSpec>,
    /// The GPU has fallen off the bus: every call on it returns `NVML_ERROR_GPU_IS_LOST`.
    pub lost: bool,
    /// Fields whose calls return `NVML_ERROR_NOT_SUPPORTED` (`serial`, `power`, `energy`,
    /// `utilization`, `board_part_number`, `processes`, `memory`, `pci`, `name`, `uuid`, `brand`,
    /// `architecture`, `vbios`, `compute_capability`, `temperature`, `clocks`, `mig`, `mps`,
    /// `process_utilization`, `accounting`).
    pub unsupported: Vec<String>,
    /// NVML functions this "driver" lacks: they return `NVML_ERROR_FUNCTION_NOT_FOUND`, as an older
    /// driver does for calls it does not implement (e.g. `nvmlDeviceGetTotalEnergyConsumption`).
    pub missing: Vec<String>,
    /// Every call on this GPU sleeps this long first (a slow or hung driver).
    pub slow_ms: u64,
    /// Corrupts this GPU's attestation (with `confidential_compute.evidence_dir`): one of
    /// `bad_signature`, `wrong_nonce`, `truncated`, `foreign_chain` (another GPU's chain),
    /// `unknown_root` (`<uuid>.untrusted.pem`), `wrong_driver`, `wrong_measurement`.
    pub attestation_fault: Option<String>,
    /// `steady` (default) or `bursty` (on 2 s of every 10 s, like request-driven inference).
    pub utilization_pattern: Option<String>,
    /// `nvmlDeviceGetBrand` value (14 = NVIDIA).
    pub brand: Option<u32>,
    /// `nvmlDeviceGetArchitecture` value (9 = Hopper, 10 = Blackwell).
    pub architecture: Option<u32>,
    /// VBIOS version.
    pub vbios_version: Option<String>,
    /// CUDA compute capability `[major, minor]`.
    pub compute_capability: Option<[i32; 2]>,
    /// GPU temperature, °C.
    pub temperature_c: Option<u32>,
    /// Graphics, SM and memory clocks, MHz.
    pub clocks_mhz: Option<[u32; 3]>,
    /// Accounting mode on: per-process accounting statistics are available.
    pub accounting: bool,
    /// MIG mode on, with these instances.
    pub mig: Option<Vec<MigSpec>>,
    /// NVLink fabric membership (absent: `nvmlDeviceGetGpuFabricInfo` is not supported).
    pub fabric: Option<FabricSpec>,
    /// A trace played one entry per scenario `sample_ms` from load, looping; it overrides the steady
    /// values and `utilization_pattern` for the fields its entries set.
    pub samples: Vec<Sample>,
}

/// A GPU's NVLink fabric membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FabricSpec {
    /// Cluster UUID, `8-4-4-4-12` hex.
    pub cluster_uuid: String,
    /// Clique id.
    pub clique_id: u32,
    /// Registration state (3 = completed).
    pub state: u8,
}

/// A MIG instance.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigSpec {
    /// `MIG-...` UUID; defaults from the seed.
    pub uuid: Option<String>,
    /// Memory of the instance (default 9856 MiB, an H100 1g.10gb).
    pub memory_total_bytes: Option<u64>,
    /// Processes in the instance.
    pub processes: Vec<ProcessSpec>,
}

/// A process on a GPU.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSpec {
    /// Host pid.
    pub pid: u32,
    /// GPU memory the process holds, bytes.
    pub used_memory_bytes: u64,
    /// The process's SM utilisation in per-process samples, percent (default: the GPU's).
    pub sm_util_pct: Option<u32>,
    /// Listed by the MPS call instead of the compute call.
    pub mps: bool,
}

/// A GPU with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// NVML index.
    pub index: u32,
    /// Marketing name.
    pub name: String,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// Board serial.
    pub serial: String,
    /// 32-bit domain form `00000000:BB:DD.F`.
    pub pci_bus_id: String,
    /// PCI device and vendor id.
    pub pci_device_id: u32,
    /// Board part number.
    pub board_part_number: String,
    /// Framebuffer bytes.
    pub memory_total_bytes: u64,
    /// Bytes in use.
    pub memory_used_bytes: u64,
    /// Percent.
    pub utilization_gpu_pct: u32,
    /// Percent.
    pub utilization_memory_pct: u32,
    /// Milliwatts.
    pub power_mw: u32,
    /// Millijoules at load.
    pub energy_mj: u64,
    /// Processes.
    pub processes: Vec<ProcessSpec>,
    /// Fallen off the bus.
    pub lost: bool,
    /// Fields that are not supported.
    pub unsupported: Vec<String>,
    /// Functions that are "not found".
    pub missing: Vec<String>,
    /// Delay per call.
    pub slow_ms: u64,
    /// Attestation corruption.
    pub attestation_fault: Option<String>,
    /// `steady` or `bursty`.
    pub utilization_pattern: String,
    /// Brand code.
    pub brand: u32,
    /// Architecture code.
    pub architecture: u32,
    /// VBIOS.
    pub vbios_version: String,
    /// Compute capability.
    pub compute_capability: [i32; 2],
    /// °C.
    pub temperature_c: u32,
    /// MHz.
    pub clocks_mhz: [u32; 3],
    /// Accounting mode.
    pub accounting: bool,
    /// MIG instances, when MIG mode is on.
    pub mig: Option<Vec<Mig>>,
    /// NVLink fabric membership.
    pub fabric: Option<FabricSpec>,
    /// The played trace (empty: steady values).
    pub samples: Vec<Sample>,
    /// How long each sample plays, ms (at least 1).
    pub sample_ms: u64,
}

/// A MIG instance with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Mig {
    /// `MIG-...`.
    pub uuid: String,
    /// Bytes.
    pub memory_total_bytes: u64,
    /// Processes.
    pub processes: Vec<ProcessSpec>,
}

/// The PCI buses of the eight SXM5 GPUs on an HGX H100 baseboard, in NVML index order.
const HGX_BUSES: [u8; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];
/// What NVML reports as total framebuffer for an H100 80GB HBM3 (81559 MiB).
const H100_MEMORY: u64 = 81_559 * 1024 * 1024;

/// FNV-1a, enough to spread a seed into stable identifiers (not security relevant).
fn fnv(seed: &str, index: u32, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for b in seed.bytes().chain(index.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so nearby indexes differ in every digit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Scenario {
    /// Parses a scenario from JSON text.
    ///
    /// # Errors
    /// The JSON error, with line and column.
    pub fn parse(text: &str) -> Result<Scenario, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The GPUs with defaults applied.
    pub fn resolved_gpus(&self) -> Vec<Gpu> {
        let specs = self.gpus.clone().unwrap_or_else(|| vec![GpuSpec::default(); 8]);
        specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let index = i as u32;
                let a = fnv(&self.seed, index, 1);
                let b = fnv(&self.seed, index, 2);
                let uuid = format!(
                    "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    (a >> 32) as u32,
                    (a >> 16) as u16,
                    a as u16,
                    (b >> 48) as u16,
                    b & 0xffff_ffff_ffff
                );
                let serial = format!("165{:010}", fnv(&self.seed, index, 3) % 10_000_000_000);
                let bus = HGX_BUSES.get(i).copied().unwrap_or(0x18u8.wrapping_add(i as u8));
                let mig_procs = s.mig.iter().flatten().flat_map(|m| m.processes.iter());
                let used_default = s.processes.iter().chain(mig_procs).map(|p| p.used_memory_bytes).sum::<u64>();
                let busy = !s.processes.is_empty() || s.mig.iter().flatten().any(|m| !m.processes.is_empty());
                Gpu {
                    index,
                    name: s.name.unwrap_or_else(|| "NVIDIA H100 80GB HBM3".into()),
                    uuid: s.uuid.unwrap_or(uuid),
                    serial: s.serial.unwrap_or(serial),
                    pci_bus_id: s.pci_bus_id.unwrap_or_else(|| format!("00000000:{bus:02X}:00.0")),
                    pci_device_id: s.pci_device_id.unwrap_or(0x2330_10de),
                    board_part_number: s.board_part_number.unwrap_or_else(|| "692-2G520-0200-000".into()),
                    memory_total_bytes: s.memory_total_bytes.unwrap_or(H100_MEMORY),
                    // The driver reserves about 0.5 GiB even on an idle GPU.
                    memory_used_bytes: s.memory_used_bytes.unwrap_or(used_default + 532_676_608),
                    utilization_gpu_pct: s.utilization_gpu_pct.unwrap_or(if busy { 97 } else { 0 }),
                    utilization_memory_pct: s.utilization_memory_pct.unwrap_or(if busy { 41 } else { 0 }),
                    power_mw: s.power_mw.unwrap_or(if busy { 645_000 } else { 71_000 }),
                    energy_mj: s.energy_mj.unwrap_or(1_000_000_000 + u64::from(index) * 7_919_000),
                    processes: s.processes,
                    lost: s.lost,
                    unsupported: s.unsupported,
                    missing: s.missing,
                    slow_ms: s.slow_ms,
                    attestation_fault: s.attestation_fault,
                    utilization_pattern: s.utilization_pattern.unwrap_or_else(|| "steady".into()),
                    brand: s.brand.unwrap_or(14),
                    architecture: s.architecture.unwrap_or(9),
                    vbios_version: s.vbios_version.unwrap_or_else(|| "96.00.99.00.01".into()),
                    compute_capability: s.compute_capability.unwrap_or([9, 0]),
                    temperature_c: s.temperature_c.unwrap_or(if busy { 64 } else { 33 }),
                    clocks_mhz: s.clocks_mhz.unwrap_or(if busy { [1980, 1980, 2619] } else { [345, 345, 2619] }),
                    accounting: s.accounting,
                    fabric: s.fabric,
                    samples: s.samples,
                    sample_ms: self.sample_ms.max(1),
                    mig: s.mig.map(|m| {
                        m.into_iter()
                            .enumerate()
                            .map(|(j, spec)| {
                                let h = fnv(&self.seed, index * 1000 + j as u32, 4);
                                Mig {
                                    uuid: spec.uuid.unwrap_or_else(|| {
                                        format!(
                                            "MIG-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                                            (h >> 32) as u32,
                                            (h >> 16) as u16,
                                            h as u16,
                                            (h >> 48) as u16,
                                            fnv(&self.seed, j as u32, 5) & 0xffff_ffff_ffff
                                        )
                                    }),
                                    memory_total_bytes: spec.memory_total_bytes.unwrap_or(9856 * 1024 * 1024),
                                    processes: spec.processes,
                                }
                            })
                            .collect()
                    }),
                }
            })
            .collect()
    }
}

impl Gpu {
    /// The trace entry playing at `elapsed_ms`, if the GPU has a trace.
    pub fn sample_at(&self, elapsed_ms: u64) -> Option<&Sample> {
        let n = self.samples.len() as u64;
        (n > 0).then(|| &self.samples[((elapsed_ms / self.sample_ms) % n) as usize])
    }

    /// GPU utilisation at `elapsed_ms` after load: the trace's, else following the pattern.
    pub fn utilization_at(&self, elapsed_ms: u64) -> u32 {
        if let Some(u) = self.sample_at(elapsed_ms).and_then(|s| s.util_pct) {
            return u.min(100);
        }
        match self.utilization_pattern.as_str() {
            "bursty" if elapsed_ms % 10_000 >= 2_000 => 3,
            _ => self.utilization_gpu_pct,
        }
    }

    /// Memory-controller utilisation at `elapsed_ms`.
    pub fn memory_utilization_at(&self, elapsed_ms: u64) -> u32 {
        self.sample_at(elapsed_ms).and_then(|s| s.mem_util_pct).map_or(self.utilization_memory_pct, |u| u.min(100))
    }

    /// Framebuffer in use at `elapsed_ms`.
    pub fn memory_used_at(&self, elapsed_ms: u64) -> u64 {
        self.sample_at(elapsed_ms).and_then(|s| s.memory_used_bytes).unwrap_or(self.memory_used_bytes)
    }

    /// Graphics, SM and memory clocks at `elapsed_ms` (a trace sets the first two).
    pub fn clocks_at(&self, elapsed_ms: u64) -> [u32; 3] {
        match self.sample_at(elapsed_ms).and_then(|s| s.sm_clock_mhz) {
            Some(c) => [c, c, self.clocks_mhz[2]],
            None => self.clocks_mhz,
        }
    }

    /// PCIe throughput at `elapsed_ms`, KB/s: `[tx, rx]` (0 without a trace).
    pub fn pcie_at(&self, elapsed_ms: u64) -> [u32; 2] {
        self.sample_at(elapsed_ms).map_or([0, 0], |s| [s.pcie_tx_kbps.unwrap_or(0), s.pcie_rx_kbps.unwrap_or(0)])
    }

    /// The NVLink data counters at `elapsed_ms`, KiB since load: `[tx, rx]`, the played throughput
    /// integrated exactly (0 without a trace).
    pub fn nvlink_counters_at(&self, elapsed_ms: u64) -> [u64; 2] {
        let tx = self.integrate(elapsed_ms, |s| s.nvlink_tx_kbps.unwrap_or(0));
        let rx = self.integrate(elapsed_ms, |s| s.nvlink_rx_kbps.unwrap_or(0));
        [tx / 1000, rx / 1000]
    }

    /// Σ value × ms over the trace from load to `elapsed_ms`, with the trace's loops taken whole.
    fn integrate(&self, elapsed_ms: u64, value: impl Fn(&Sample) -> u64) -> u64 {
        let n = self.samples.len() as u64;
        if n == 0 {
            return 0;
        }
        let per_loop: u64 = self.samples.iter().map(|s| value(s) * self.sample_ms).sum();
        let step = self.sample_ms;
        let loops = elapsed_ms / (step * n);
        let rest = elapsed_ms % (step * n);
        let whole = (rest / step) as usize;
        let partial = self.samples[..whole].iter().map(|s| value(s) * step).sum::<u64>()
            + value(&self.samples[whole % self.samples.len()]) * (rest % step);
        loops * per_loop + partial
    }

    /// A trace entry's power, mW: its own, else idle draw plus its utilisation's share of (busy -
    /// idle), else the steady value.
    pub fn power_of(&self, s: &Sample) -> u32 {
        match (s.power_w, s.util_pct) {
            (Some(w), _) => (w.clamp(0.0, 4_000_000.0) * 1000.0) as u32,
            (None, Some(u)) => {
                let idle = 71_000u32.min(self.power_mw);
                idle + (self.power_mw - idle) / 100 * u.min(100)
            }
            (None, None) => self.power_mw,
        }
    }

    /// Power at `elapsed_ms`, mW: the trace's, else idle draw plus the share of (busy - idle) that
    /// utilisation takes.
    pub fn power_at(&self, elapsed_ms: u64) -> u32 {
        if let Some(s) = self.sample_at(elapsed_ms) {
            return self.power_of(s);
        }
        match self.utilization_pattern.as_str() {
            "bursty" => {
                let idle = 71_000u32.min(self.power_mw);
                idle + (self.power_mw - idle) / 100 * self.utilization_at(elapsed_ms)
            }
            _ => self.power_mw,
        }
    }

    /// The energy counter at `elapsed_ms`: the start value plus power integrated over time (exactly,
    /// for the patterns and for a played trace), millijoules.
    pub fn energy_at(&self, elapsed_ms: u64) -> u64 {
        if !self.samples.is_empty() {
            return self.energy_mj + self.integrate(elapsed_ms, |s| u64::from(self.power_of(s))) / 1000;
        }
        let added = match self.utilization_pattern.as_str() {
            "bursty" => {
                let (on, off) = (u64::from(self.power_at(0)), u64::from(self.power_at(5_000)));
                let full = elapsed_ms / 10_000;
                let rest = elapsed_ms % 10_000;
                let per_period = on * 2_000 + off * 8_000;
                full * per_period + on * rest.min(2_000) + off * rest.saturating_sub(2_000)
            }
            _ => u64::from(self.power_mw) * elapsed_ms,
        };
        self.energy_mj + added / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_eight_distinct_h100s() {
        let gpus = Scenario::default().resolved_gpus();
        assert_eq!(gpus.len(), 8);
        let mut uuids: Vec<_> = gpus.iter().map(|g| g.uuid.clone()).collect();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), 8);
        for g in &gpus {
            assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
            assert_eq!(g.uuid.len(), 40, "{}", g.uuid);
            assert!(g.uuid.starts_with("GPU-"));
            assert_eq!(g.serial.len(), 13);
            assert_eq!(g.pci_bus_id.len(), 16);
        }
        assert_eq!(gpus[1].pci_bus_id, "00000000:2A:00.0");
    }

    #[test]
    fn seed_changes_identities_but_is_stable() {
        let a = Scenario::parse(r#"{"seed":"host-a"}"#).expect("parse").resolved_gpus();
        let a2 = Scenario::parse(r#"{"seed":"host-a"}"#).expect("parse").resolved_gpus();
        let b = Scenario::parse(r#"{"seed":"host-b"}"#).expect("parse").resolved_gpus();
        assert_eq!(a, a2);
        assert_ne!(a[0].uuid, b[0].uuid);
        assert_ne!(a[0].serial, b[0].serial);
    }

    #[test]
    fn contract_example_parses() {
        let s = Scenario::parse(r#"{"gpus": [{"processes": [{"pid": 4242, "used_memory_bytes": 20000000000}]}, {}]}"#)
            .expect("parse");
        let gpus = s.resolved_gpus();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].processes[0].pid, 4242);
        assert!(gpus[1].processes.is_empty());
    }

    #[test]
    fn energy_advances_by_power_times_time() {
        let g = &Scenario::parse(r#"{"gpus":[{"power_mw": 500000, "energy_mj": 1000}]}"#)
            .expect("parse")
            .resolved_gpus()[0];
        assert_eq!(g.energy_at(0), 1000);
        assert_eq!(g.energy_at(2_000), 1000 + 1_000_000);
        let b = &Scenario::parse(r#"{"gpus":[{"power_mw": 671000, "energy_mj": 0, "utilization_gpu_pct": 100, "utilization_pattern": "bursty"}]}"#)
            .expect("parse")
            .resolved_gpus()[0];
        assert_eq!((b.utilization_at(1_000), b.utilization_at(5_000)), (100, 3));
        // One full period: 2 s at 671 W and 8 s at 71 W + 3% of the rest.
        let expected = (671_000 * 2_000 + u64::from(b.power_at(5_000)) * 8_000) / 1000;
        assert_eq!(b.energy_at(10_000), expected);
        assert!(b.energy_at(10_000) > b.energy_at(9_000));
    }

    #[test]
    fn traces_play_in_order_loop_and_integrate_exactly() {
        let g = &Scenario::parse(
            r#"{"sample_ms": 500, "gpus":[{"energy_mj": 0, "samples": [
                {"util_pct": 90, "power_w": 600, "nvlink_tx_kbps": 1000, "pcie_rx_kbps": 7},
                {"util_pct": 10, "power_w": 100, "mem_util_pct": 55, "sm_clock_mhz": 1200, "memory_used_bytes": 5}
            ]}]}"#,
        )
        .expect("parse")
        .resolved_gpus()[0];
        assert_eq!((g.utilization_at(0), g.utilization_at(499), g.utilization_at(500)), (90, 90, 10));
        assert_eq!(g.utilization_at(1000), 90, "it loops");
        assert_eq!((g.power_at(250), g.power_at(750)), (600_000, 100_000));
        assert_eq!((g.memory_utilization_at(750), g.memory_used_at(750)), (55, 5));
        assert_eq!(g.clocks_at(750), [1200, 1200, 2619]);
        assert_eq!(g.pcie_at(100), [0, 7]);
        // 1.25 s: a whole loop (600 W × 0.5 s + 100 W × 0.5 s) and a quarter second at 600 W.
        assert_eq!(g.energy_at(1250), 300_000 + 50_000 + 150_000);
        // 1,000 KB/s for 0.5 s of each second, then 0.25 s more: 750 KB.
        assert_eq!(g.nvlink_counters_at(1250), [750, 0]);
        for bad in [r#"{"gpus":[{"samples":[{"util":5}]}]}"#, r#"{"gpus":[{"samples":[{"power_w":"x"}]}]}"#] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mig_instances_get_distinct_uuids() {
        let s = Scenario::parse(r#"{"gpus":[{"mig":[{"processes":[{"pid":1,"used_memory_bytes":5}]},{}]}]}"#)
            .expect("parse");
        let g = &s.resolved_gpus()[0];
        let m = g.mig.as_ref().expect("mig");
        assert_eq!(m.len(), 2);
        assert!(m[0].uuid.starts_with("MIG-") && m[0].uuid != m[1].uuid);
        assert_eq!(g.utilization_gpu_pct, 97, "a busy MIG instance makes the GPU busy");
    }

    #[test]
    fn hostile_scenarios_are_errors() {
        for bad in [r#"{"gpus": 7}"#, r#"{"nope": 1}"#, "[", r#"{"gpus":[{"processes":[{"pid":-1}]}]}"#] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
    }
}

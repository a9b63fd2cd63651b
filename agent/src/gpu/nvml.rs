//! The NVML backend, through nvml-wrapper: the real driver's `libnvidia-ml.so.1`, or the simulated
//! library, loaded the same way.

use std::path::{Path, PathBuf};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use tracing::{debug, warn};

use super::{
    Attestation, ConfCompute, GpuError, GpuObservation, GpuProcessUsage, GpuSnapshot, GpuSource, MigDevice,
    ProcessAccounting, ProcessUtilization, Unavailable,
};

/// GPUs read through NVML.
pub struct NvmlSource {
    nvml: Nvml,
    simulated: bool,
    /// Newest per-process utilisation sample seen per GPU UUID, so each observation gets new samples.
    last_sample_us: std::collections::HashMap<String, u64>,
    /// Per GPU index: what the 1 Hz sampler knows (UUID, counters the driver lacks, NVLink counters).
    sampling: Vec<Sampling>,
}

/// The sampler's memory of one GPU.
#[derive(Default)]
struct Sampling {
    uuid: String,
    /// Why each counter is not asked any more (in `telemetry::METRICS` order; memory last).
    lacks: [Option<String>; 9],
    /// The NVLink data counters (KiB) and when they were read.
    nvlink: Option<(std::time::Instant, u64, u64)>,
}

/// Whether an error means the call will never answer on this GPU and driver (so it is not retried).
fn permanent(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::NoPermission
    )
}

/// NVML's NVLink data throughput fields (KiB counters over all links).
const FI_NVLINK_DATA_TX: u32 = 138;
const FI_NVLINK_DATA_RX: u32 = 139;

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource").field("simulated", &self.simulated).finish()
    }
}

/// Whether a library path is gpuattest's simulated NVML.
pub fn is_simulated(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("gpuattest_nvml_sim"))
}

impl NvmlSource {
    /// Loads the NVML library at `lib` and initialises it.
    ///
    /// # Errors
    /// [`GpuError::Load`] naming `lib`, when the file is missing, is not an NVML library, or `nvmlInit`
    /// fails (driver not loaded, no permission).
    pub fn open(lib: &Path) -> Result<Self, GpuError> {
        let load_err = |reason: String| GpuError::Load { path: lib.display().to_string(), reason };
        // A bare soname (libnvidia-ml.so.1) is resolved by the dynamic loader; a path must exist.
        if lib.components().count() > 1 && !lib.exists() {
            return Err(load_err("no such file".into()));
        }
        let nvml = Nvml::builder().lib_path(lib.as_os_str()).init().map_err(|e| load_err(e.to_string()))?;
        let simulated = is_simulated(lib);
        if simulated {
            warn!(
                lib = %lib.display(),
                "USING THE SIMULATED NVML LIBRARY: GPU identities and usage are invented by a scenario file, \
                 not read from hardware; reports from this host are not evidence"
            );
        }
        Ok(NvmlSource { nvml, simulated, last_sample_us: std::collections::HashMap::new(), sampling: Vec::new() })
    }

    /// The library path the agent uses when none is given.
    pub fn default_lib() -> PathBuf {
        PathBuf::from("libnvidia-ml.so.1")
    }
}

fn reason(e: &NvmlError) -> String {
    match e {
        NvmlError::NotSupported => "not supported".into(),
        NvmlError::FailedToLoadSymbol(s) => format!("driver library lacks this call ({s})"),
        NvmlError::FunctionNotFound => "driver lacks this call".into(),
        NvmlError::NoPermission => "no permission".into(),
        NvmlError::GpuLost => "GPU is lost".into(),
        other => other.to_string(),
    }
}

/// Reads one field, recording why it is missing instead of failing the observation.
fn field<T>(unavailable: &mut Vec<Unavailable>, lost: &mut bool, name: &str, r: Result<T, NvmlError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            if matches!(e, NvmlError::GpuLost) {
                *lost = true;
            }
            unavailable.push(Unavailable { field: name.into(), reason: reason(&e) });
            None
        }
    }
}

fn usage(p: ProcessInfo, mps: bool) -> GpuProcessUsage {
    GpuProcessUsage {
        pid: p.pid,
        used_memory_bytes: match p.used_gpu_memory {
            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
        },
        mps,
    }
}

impl NvmlSource {
    /// CC state: system-wide in NVML, read through the first GPU's handle (nvml-wrapper's API).
    fn conf_compute(&self, count: u32) -> ConfCompute {
        if count == 0 {
            return ConfCompute { unavailable: Some("no GPU".into()), ..ConfCompute::default() };
        }
        let device = match self.nvml.device_by_index(0) {
            Ok(d) => d,
            Err(e) => return ConfCompute { unavailable: Some(reason(&e)), ..ConfCompute::default() },
        };
        match device.is_cc_enabled() {
            Ok(enabled) => ConfCompute {
                enabled: Some(enabled),
                accepting_work: device.get_confidential_compute_state().ok(),
                unavailable: None,
            },
            Err(e) => ConfCompute { unavailable: Some(reason(&e)), ..ConfCompute::default() },
        }
    }
}

/// Runs an nvml-wrapper call that slices buffers by sizes the driver reports: a driver that reports
/// more than the buffer holds would panic inside the wrapper; here that is an error for this GPU only.
fn guarded<T>(f: impl FnOnce() -> Result<T, NvmlError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| reason(&e)),
        Err(_) => Err("the driver reported a size larger than its buffer".into()),
    }
}

impl NvmlSource {
    /// One GPU's counters (see [`GpuSource::sample`]).
    fn sample_one(&mut self, index: u32) -> Option<crate::telemetry::GpuSample> {
        use crate::telemetry::{GpuSample, METRICS};
        use nvml_wrapper::enum_wrappers::device::PcieUtilCounter;
        use nvml_wrapper::enums::device::SampleValue;
        use nvml_wrapper::structs::device::FieldId;
        let device = self.nvml.device_by_index(index).ok()?;
        let st = &mut self.sampling[index as usize];
        if st.uuid.is_empty() {
            st.uuid = device.uuid().ok()?;
        }
        let mut out = GpuSample { uuid: st.uuid.clone(), ..GpuSample::default() };
        // Asks a counter unless the driver said it never answers; remembers a permanent refusal.
        fn ask<T>(lacks: &mut Option<String>, f: impl FnOnce() -> Result<T, NvmlError>) -> Option<T> {
            if lacks.is_some() {
                return None;
            }
            match f() {
                Ok(v) => Some(v),
                Err(e) => {
                    if permanent(&e) {
                        debug!(error = %e, "a sampled counter is unavailable; not asking again");
                        *lacks = Some(reason(&e));
                    }
                    None
                }
            }
        }
        let (lacks, v) = (&mut st.lacks, &mut out.values);
        if let Some(u) = ask(&mut lacks[0], || device.utilization_rates()) {
            v[0] = Some(f64::from(u.gpu) * 10.0);
            v[1] = Some(f64::from(u.memory) * 10.0);
        }
        lacks[1] = lacks[0].clone();
        v[2] = ask(&mut lacks[2], || device.power_usage()).map(|mw| f64::from(mw) / 100.0);
        v[3] = ask(&mut lacks[3], || device.clock_info(Clock::SM)).map(f64::from);
        v[4] = ask(&mut lacks[4], || device.pcie_throughput(PcieUtilCounter::Send)).map(f64::from);
        v[5] = ask(&mut lacks[5], || device.pcie_throughput(PcieUtilCounter::Receive)).map(f64::from);
        let ids = [FieldId(FI_NVLINK_DATA_TX), FieldId(FI_NVLINK_DATA_RX)];
        let counters = ask(&mut lacks[6], || {
            let values = guarded(|| device.field_values_for(&ids)).map_err(|_| NvmlError::Unknown)?;
            let mut kib = [0u64; 2];
            for (i, r) in values.into_iter().enumerate().take(2) {
                kib[i] = match r?.value? {
                    SampleValue::U64(x) => x,
                    SampleValue::U32(x) => u64::from(x),
                    SampleValue::I64(x) => x.max(0) as u64,
                    SampleValue::F64(x) => x.max(0.0) as u64,
                };
            }
            Ok(kib)
        });
        lacks[7] = lacks[6].clone();
        if let Some([tx, rx]) = counters {
            let now = std::time::Instant::now();
            if let Some((then, ptx, prx)) = st.nvlink {
                let dt = now.duration_since(then).as_secs_f64();
                // A counter that went backwards (driver reload) starts over; no rate this time.
                if dt > 0.0 && tx >= ptx && rx >= prx {
                    v[6] = Some((tx - ptx) as f64 * 1.024 / dt);
                    v[7] = Some((rx - prx) as f64 * 1.024 / dt);
                }
            }
            st.nvlink = Some((now, tx, rx));
        }
        out.memory_used_bytes = ask(&mut lacks[8], || device.memory_info()).map(|m| m.used);
        out.unavailable = METRICS.iter().zip(lacks.iter()).filter(|(_, l)| l.is_some()).map(|(m, _)| *m).collect();
        Some(out)
    }
}

/// One GPU's attestation report over `nonce`, with its certificate chains (errors recorded, not fatal).
fn attest_device(device: &nvml_wrapper::Device<'_>, nonce: &[u8; 32]) -> Attestation {
    let mut a =
        Attestation { gpu_uuid: device.uuid().unwrap_or_default(), nonce: nonce.to_vec(), ..Attestation::default() };
    match guarded(|| device.confidential_compute_gpu_attestation_report(*nonce)) {
        Ok(r) => {
            a.report = r.attestation_report;
            if r.is_cec_attestation_report_present {
                a.cec_report = r.cec_attestation_report;
            }
        }
        Err(e) => a.error = Some(format!("attestation report: {e}")),
    }
    match guarded(|| device.confidential_compute_gpu_certificate()) {
        Ok(c) => {
            a.cert_chain = c.cert_chain;
            a.attestation_cert_chain = c.attestation_cert_chain;
        }
        Err(e) => a.error = Some(a.error.map_or(format!("certificate: {e}"), |p| format!("{p}; certificate: {e}"))),
    }
    a
}

impl GpuSource for NvmlSource {
    fn sample(&mut self) -> Vec<crate::telemetry::GpuSample> {
        let count = self.nvml.device_count().unwrap_or(0).min(1024);
        if self.sampling.len() != count as usize {
            self.sampling = (0..count).map(|_| Sampling::default()).collect();
        }
        (0..count).filter_map(|i| self.sample_one(i)).collect()
    }

    fn attest(&mut self, nonce: &[u8; 32]) -> Vec<Attestation> {
        let count = self.nvml.device_count().unwrap_or(0);
        if self.conf_compute(count).enabled != Some(true) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for index in 0..count {
            let Ok(device) = self.nvml.device_by_index(index) else { continue };
            out.push(attest_device(&device, nonce));
        }
        out
    }

    fn attest_one(&mut self, uuid: &str, nonce: &[u8; 32]) -> Option<Attestation> {
        // By index, not nvmlDeviceGetHandleByUUID: the same calls as every observation.
        let count = self.nvml.device_count().ok()?;
        let device =
            (0..count).filter_map(|i| self.nvml.device_by_index(i).ok()).find(|d| d.uuid().is_ok_and(|u| u == uuid))?;
        Some(attest_device(&device, nonce))
    }

    fn observe(&mut self) -> Result<GpuSnapshot, GpuError> {
        let count =
            self.nvml.device_count().map_err(|e| GpuError::Call { call: "nvmlDeviceGetCount", reason: reason(&e) })?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let mut obs = GpuObservation { index, ..GpuObservation::default() };
            let device = match self.nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    debug!(index, error = %e, "cannot open GPU");
                    obs.lost = true;
                    obs.unavailable.push(Unavailable { field: "device".into(), reason: reason(&e) });
                    gpus.push(obs);
                    continue;
                }
            };
            match gpuattest_nvml_ext::fabric_info(&self.nvml, &device) {
                Ok(f) => {
                    obs.fabric = Some(super::Fabric {
                        cluster_uuid: f.cluster_uuid,
                        clique_id: f.clique_id,
                        state: f.state,
                        status: f.status,
                    });
                }
                Err(r) => obs.fabric_unavailable = Some(r),
            }
            let (u, l) = (&mut obs.unavailable, &mut obs.lost);
            obs.uuid = field(u, l, "uuid", device.uuid()).unwrap_or_default();
            obs.serial = field(u, l, "serial", device.serial()).unwrap_or_default();
            obs.name = field(u, l, "name", device.name()).unwrap_or_default();
            obs.pci_bus_id = field(u, l, "pci_bus_id", device.pci_info().map(|p| p.bus_id)).unwrap_or_default();
            if let Some(m) = field(u, l, "memory", device.memory_info()) {
                obs.memory_total_bytes = m.total;
                obs.memory_used_bytes = Some(m.used);
            }
            if let Some(r) = field(u, l, "utilization", device.utilization_rates()) {
                obs.utilization_gpu_pct = Some(r.gpu);
                obs.utilization_memory_pct = Some(r.memory);
            }
            obs.power_mw = field(u, l, "power", device.power_usage());
            obs.energy_mj = field(u, l, "energy", device.total_energy_consumption());
            obs.board_part_number = field(u, l, "board_part_number", device.board_part_number());
            obs.brand = field(u, l, "brand", device.brand()).map(|b| format!("{b:?}"));
            obs.architecture = field(u, l, "architecture", device.architecture()).map(|a| format!("{a:?}"));
            obs.vbios_version = field(u, l, "vbios_version", device.vbios_version());
            obs.compute_capability = field(u, l, "compute_capability", device.cuda_compute_capability())
                .map(|c| format!("{}.{}", c.major, c.minor));
            obs.temperature_c = field(u, l, "temperature", device.temperature(TemperatureSensor::Gpu));
            obs.clock_graphics_mhz = field(u, l, "clock_graphics", device.clock_info(Clock::Graphics));
            obs.clock_sm_mhz = field(u, l, "clock_sm", device.clock_info(Clock::SM));
            obs.clock_memory_mhz = field(u, l, "clock_memory", device.clock_info(Clock::Memory));
            if let Some(procs) = field(u, l, "processes", device.running_compute_processes()) {
                obs.processes = procs.into_iter().map(|p| usage(p, false)).collect();
            }
            if let Some(procs) = field(u, l, "mps_processes", device.mps_running_compute_processes()) {
                for p in procs {
                    if !obs.processes.iter().any(|q| q.pid == p.pid) {
                        obs.processes.push(usage(p, true));
                    }
                }
            }
            if let Some(mode) = field(u, l, "mig_mode", device.mig_mode()) {
                obs.mig_enabled = Some(mode.current == 1);
                if mode.current == 1 {
                    let n = field(u, l, "mig_device_count", device.mig_device_count()).unwrap_or(0);
                    for i in 0..n.min(64) {
                        match device.mig_device_by_index(i) {
                            Ok(m) => obs.mig_devices.push(MigDevice {
                                index: i,
                                uuid: m.uuid().unwrap_or_default(),
                                memory_total_bytes: m.memory_info().map(|x| x.total).unwrap_or(0),
                                processes: m
                                    .running_compute_processes()
                                    .map(|ps| ps.into_iter().map(|p| usage(p, false)).collect())
                                    .unwrap_or_default(),
                            }),
                            Err(NvmlError::NotFound) => {}
                            Err(e) => obs
                                .unavailable
                                .push(Unavailable { field: format!("mig_device[{i}]"), reason: reason(&e) }),
                        }
                    }
                }
            }
            let since = self.last_sample_us.get(&obs.uuid).copied();
            match device.process_utilization_stats(since) {
                Ok(samples) => {
                    if let Some(newest) = samples.iter().map(|s| s.timestamp).max() {
                        self.last_sample_us.insert(obs.uuid.clone(), newest);
                    }
                    for smp in samples {
                        let u = ProcessUtilization { pid: smp.pid, sm_pct: smp.sm_util, memory_pct: smp.mem_util };
                        match obs.process_utilization.iter_mut().find(|x| x.pid == smp.pid) {
                            Some(x) => *x = u,
                            None => obs.process_utilization.push(u),
                        }
                    }
                }
                // No samples since the last call is not a failure.
                Err(NvmlError::NotFound) => {}
                Err(e) => obs.unavailable.push(Unavailable { field: "process_utilization".into(), reason: reason(&e) }),
            }
            if device.is_accounting_enabled().unwrap_or(false) {
                for p in obs.processes.clone() {
                    if let Ok(a) = device.accounting_stats_for(p.pid) {
                        obs.accounting.push(ProcessAccounting {
                            pid: p.pid,
                            gpu_util_pct: a.gpu_utilization,
                            memory_util_pct: a.memory_utilization,
                            max_memory_bytes: a.max_memory_usage,
                            time_ms: a.time,
                        });
                    }
                }
            }
            gpus.push(obs);
        }
        Ok(GpuSnapshot {
            confidential_compute: self.conf_compute(count),
            source: if self.simulated { "simulated" } else { "nvml" }.into(),
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_driver_version: self
                .nvml
                .sys_cuda_driver_version()
                .ok()
                .map(|v| format!("{}.{}", v / 1000, v % 1000 / 10)),
            gpus,
        })
    }
}

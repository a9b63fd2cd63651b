//! A simulated NVML: `libgpuattest_nvml_sim.so` exports the NVML C functions the gpuattest agent calls,
//! so the agent's real nvml-wrapper code path runs in CI and in the demo without a GPU.
//!
//! The scenario is JSON named by the `GPUATTEST_NVML_SIM` environment variable and read afresh on every
//! `nvmlInit`; with none, the host has eight `NVIDIA H100 80GB HBM3`. The C types are nvml-wrapper-sys's
//! own, so the layouts are exactly those the wrapper expects. The format is in `README.md` beside this
//! crate.
//!
//! # Layout
//! - [`scenario`]: the JSON format and its defaults.
//! - this file: the exported `nvml*` functions and the state between `nvmlInit` and `nvmlShutdown`.

#![allow(non_snake_case, clippy::missing_safety_doc)]

pub mod scenario;

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};
use std::sync::Mutex;
use std::time::Instant;

use nvml_wrapper_sys::bindings as sys;
use sys::{nvmlDevice_t, nvmlReturn_t};

use scenario::{Gpu, MAX_SCENARIO_BYTES, Scenario};

/// The environment variable that names the scenario file.
pub const SCENARIO_ENV: &str = "GPUATTEST_NVML_SIM";

struct State {
    scenario: Scenario,
    gpus: Vec<Gpu>,
    /// When the scenario was loaded; the energy counters advance from here.
    loaded_at: Instant,
    /// `nvmlInit` calls not yet matched by `nvmlShutdown`.
    refcount: u32,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

const SUCCESS: nvmlReturn_t = sys::nvmlReturn_enum_NVML_SUCCESS;

fn load_scenario() -> Result<Scenario, String> {
    let Some(path) = std::env::var_os(SCENARIO_ENV) else {
        return Ok(Scenario::default());
    };
    let shown = path.to_string_lossy().into_owned();
    let meta = std::fs::metadata(&path).map_err(|e| format!("scenario {shown}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_SCENARIO_BYTES {
        return Err(format!("scenario {shown}: not a regular file of at most {MAX_SCENARIO_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("scenario {shown}: {e}"))?;
    Scenario::parse(&text).map_err(|e| format!("scenario {shown}: {e}"))
}

fn with_state<T>(f: impl FnOnce(&mut State) -> Result<T, nvmlReturn_t>) -> Result<T, nvmlReturn_t> {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_mut() {
        Some(s) if s.refcount > 0 => f(s),
        _ => Err(sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED),
    }
}

fn done(r: Result<(), nvmlReturn_t>) -> nvmlReturn_t {
    match r {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

/// Looks up the GPU behind a handle (handles are index + 1), applying the lost and unsupported faults.
fn with_gpu<T>(device: nvmlDevice_t, field: &str, f: impl FnOnce(&Gpu, &State) -> T) -> Result<T, nvmlReturn_t> {
    with_state(|s| {
        let idx = (device as usize).checked_sub(1).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        let gpu = s.gpus.get(idx).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        if gpu.lost {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        if gpu.unsupported.iter().any(|u| u == field) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        Ok(f(gpu, s))
    })
}

/// Copies `value` and a NUL into a caller buffer of `length` bytes.
///
/// # Safety
/// `buf` must be null or valid for `length` bytes of writes.
unsafe fn write_str(buf: *mut c_char, length: c_uint, value: &str) -> Result<(), nvmlReturn_t> {
    if buf.is_null() {
        return Err(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);
    }
    let bytes = value.as_bytes();
    if bytes.len() + 1 > length as usize {
        return Err(sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller guarantees `buf` holds `length` bytes and we checked `len + 1 <= length`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    Ok(())
}

/// Writes `value` through an out-pointer, refusing null.
///
/// # Safety
/// `out` must be null or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, value: T) -> Result<(), nvmlReturn_t> {
    if out.is_null() {
        return Err(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and the caller guarantees it is valid for a write of `T`.
    unsafe { out.write(value) };
    Ok(())
}

fn init() -> nvmlReturn_t {
    let scenario = match load_scenario() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gpuattest-nvml-sim: {e}");
            return sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;
        }
    };
    if let Some(err) = &scenario.init_error {
        return match err.as_str() {
            "driver_not_loaded" => sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED,
            "no_permission" => sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION,
            "lib_rm_version_mismatch" => sys::nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH,
            _ => sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN,
        };
    }
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let refcount = guard.as_ref().map_or(0, |s| s.refcount) + 1;
    let gpus = scenario.resolved_gpus();
    *guard = Some(State { scenario, gpus, loaded_at: Instant::now(), refcount });
    SUCCESS
}

/// `nvmlInit_v2`: reads the scenario.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    init()
}

/// `nvmlInitWithFlags`: as `nvmlInit_v2`; flags are accepted and ignored.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    init()
}

/// `nvmlShutdown`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_mut() {
        Some(s) if s.refcount > 0 => {
            s.refcount -= 1;
            SUCCESS
        }
        _ => sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED,
    }
}

/// `nvmlErrorString`: a static description of a return code.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    let s: &'static [u8] = match result {
        sys::nvmlReturn_enum_NVML_SUCCESS => b"Success\0",
        sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => b"Uninitialized\0",
        sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => b"Invalid Argument\0",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => b"Not Supported\0",
        sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => b"GPU is lost\0",
        sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

/// `nvmlSystemGetDriverVersion`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> nvmlReturn_t {
    let v = match with_state(|s| Ok(s.scenario.driver_version.clone())) {
        Ok(v) => v,
        Err(e) => return e,
    };
    // SAFETY: the caller passes a buffer of `length` bytes, as NVML requires.
    done(unsafe { write_str(version, length, &v) })
}

/// `nvmlSystemGetCudaDriverVersion`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(v: *mut c_int) -> nvmlReturn_t {
    // SAFETY: NVML's contract: `v` is valid for a write of one int.
    done(with_state(|s| Ok(s.scenario.cuda_driver_version)).and_then(|x| unsafe { write_out(v, x) }))
}

/// `nvmlSystemGetCudaDriverVersion_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> nvmlReturn_t {
    // SAFETY: forwarded with the same contract.
    unsafe { nvmlSystemGetCudaDriverVersion(v) }
}

/// `nvmlDeviceGetCount_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: NVML's contract: `count` is valid for a write of one uint.
    done(with_state(|s| Ok(s.gpus.len() as c_uint)).and_then(|n| unsafe { write_out(count, n) }))
}

/// `nvmlDeviceGetHandleByIndex_v2`: handles are index + 1, never null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) -> nvmlReturn_t {
    let r = with_state(|s| {
        let gpu = s.gpus.get(index as usize).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        if gpu.lost {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        Ok((index as usize + 1) as nvmlDevice_t)
    });
    // SAFETY: NVML's contract: `device` is valid for a write of one handle.
    done(r.and_then(|h| unsafe { write_out(device, h) }))
}

/// `nvmlDeviceGetIndex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: NVML's contract: `index` is valid for a write.
    done(with_gpu(device, "index", |g, _| g.index).and_then(|i| unsafe { write_out(index, i) }))
}

macro_rules! string_getter {
    ($(#[$doc:meta])* $name:ident, $field:literal, $get:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, buf: *mut c_char, length: c_uint) -> nvmlReturn_t {
            let get: fn(&Gpu) -> String = $get;
            match with_gpu(device, $field, |g, _| get(g)) {
                // SAFETY: NVML's contract: `buf` holds `length` bytes.
                Ok(v) => done(unsafe { write_str(buf, length, &v) }),
                Err(e) => e,
            }
        }
    };
}

string_getter!(
    /// `nvmlDeviceGetUUID`.
    nvmlDeviceGetUUID, "uuid", |g| g.uuid.clone()
);
string_getter!(
    /// `nvmlDeviceGetSerial`.
    nvmlDeviceGetSerial, "serial", |g| g.serial.clone()
);
string_getter!(
    /// `nvmlDeviceGetName`.
    nvmlDeviceGetName, "name", |g| g.name.clone()
);
string_getter!(
    /// `nvmlDeviceGetBoardPartNumber`.
    nvmlDeviceGetBoardPartNumber, "board_part_number", |g| g.board_part_number.clone()
);

/// Parses `00000000:18:00.0` into (domain, bus, device).
fn parse_bus_id(id: &str) -> (u32, u32, u32) {
    let mut parts = id.split([':', '.']);
    let mut next = || parts.next().and_then(|p| u32::from_str_radix(p, 16).ok()).unwrap_or(0);
    (next(), next(), next())
}

/// `nvmlDeviceGetPciInfo_v3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(device: nvmlDevice_t, pci: *mut sys::nvmlPciInfo_t) -> nvmlReturn_t {
    let r = with_gpu(device, "pci", |g, _| {
        let (domain, bus, dev) = parse_bus_id(&g.pci_bus_id);
        // SAFETY: an all-zero nvmlPciInfo_t (integers and char arrays) is a valid value.
        let mut info: sys::nvmlPciInfo_t = unsafe { std::mem::zeroed() };
        info.domain = domain;
        info.bus = bus;
        info.device = dev;
        info.pciDeviceId = g.pci_device_id;
        info.pciSubSystemId = 0x16c1_10de;
        let legacy = format!("{:04X}:{bus:02X}:{dev:02X}.0", domain & 0xffff);
        for (dst, src) in info.busId.iter_mut().zip(g.pci_bus_id.bytes().take(31)) {
            *dst = src as c_char;
        }
        for (dst, src) in info.busIdLegacy.iter_mut().zip(legacy.bytes().take(15)) {
            *dst = src as c_char;
        }
        info
    });
    // SAFETY: NVML's contract: `pci` is valid for a write.
    done(r.and_then(|i| unsafe { write_out(pci, i) }))
}

/// `nvmlDeviceGetMemoryInfo` (v1 struct).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut sys::nvmlMemory_t) -> nvmlReturn_t {
    let r = with_gpu(device, "memory", |g, _| sys::nvmlMemory_t {
        total: g.memory_total_bytes,
        used: g.memory_used_bytes,
        free: g.memory_total_bytes.saturating_sub(g.memory_used_bytes),
    });
    // SAFETY: NVML's contract: `memory` is valid for a write.
    done(r.and_then(|m| unsafe { write_out(memory, m) }))
}

/// `nvmlDeviceGetMemoryInfo_v2`: checks the struct version the caller sets, as the driver does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut sys::nvmlMemory_v2_t,
) -> nvmlReturn_t {
    if memory.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let expected = (std::mem::size_of::<sys::nvmlMemory_v2_t>() | (2 << 24)) as c_uint;
    // SAFETY: non-null and valid for reads per NVML's contract; the caller sets `version` first.
    let version = unsafe { (*memory).version };
    if version != expected {
        return sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    let r = with_gpu(device, "memory", |g, _| sys::nvmlMemory_v2_t {
        version,
        total: g.memory_total_bytes,
        reserved: 536_870_912,
        used: g.memory_used_bytes,
        free: g.memory_total_bytes.saturating_sub(g.memory_used_bytes).saturating_sub(536_870_912),
    });
    // SAFETY: checked non-null above; valid for a write per NVML's contract.
    done(r.and_then(|m| unsafe { write_out(memory, m) }))
}

/// `nvmlDeviceGetUtilizationRates`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    u: *mut sys::nvmlUtilization_t,
) -> nvmlReturn_t {
    let r = with_gpu(device, "utilization", |g, _| sys::nvmlUtilization_t {
        gpu: g.utilization_gpu_pct,
        memory: g.utilization_memory_pct,
    });
    // SAFETY: NVML's contract: `u` is valid for a write.
    done(r.and_then(|v| unsafe { write_out(u, v) }))
}

/// `nvmlDeviceGetPowerUsage`, milliwatts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: NVML's contract: `power` is valid for a write.
    done(with_gpu(device, "power", |g, _| g.power_mw).and_then(|p| unsafe { write_out(power, p) }))
}

/// `nvmlDeviceGetTotalEnergyConsumption`, millijoules: the start value plus power × elapsed time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    let r = with_gpu(device, "energy", |g, s| {
        let elapsed_ms = s.loaded_at.elapsed().as_millis() as u64;
        g.energy_mj + u64::from(g.power_mw) * elapsed_ms / 1000
    });
    // SAFETY: NVML's contract: `energy` is valid for a write.
    done(r.and_then(|e| unsafe { write_out(energy, e) }))
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`: the count-then-fill protocol of the real driver.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut sys::nvmlProcessInfo_t,
) -> nvmlReturn_t {
    if count.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let procs = match with_gpu(device, "processes", |g, _| g.processes.clone()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    // SAFETY: checked non-null; NVML's contract makes it valid for reads and writes.
    let capacity = unsafe { *count } as usize;
    // SAFETY: as above.
    unsafe { *count = procs.len() as c_uint };
    if procs.len() > capacity || (infos.is_null() && !procs.is_empty()) {
        return sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (i, p) in procs.iter().enumerate() {
        let info = sys::nvmlProcessInfo_t {
            pid: p.pid,
            usedGpuMemory: p.used_memory_bytes,
            gpuInstanceId: u32::MAX,
            computeInstanceId: u32::MAX,
        };
        // SAFETY: `infos` holds `capacity` entries and `i < procs.len() <= capacity`.
        unsafe { infos.add(i).write(info) };
    }
    SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_id_parses() {
        assert_eq!(parse_bus_id("00000000:2A:00.0"), (0, 0x2a, 0));
        assert_eq!(parse_bus_id("garbage"), (0, 0, 0));
    }

    #[test]
    fn layouts_match_nvml_headers() {
        // Sizes from nvml.h (x86_64); nvml-wrapper-sys generated these types from the same header.
        assert_eq!(std::mem::size_of::<sys::nvmlPciInfo_t>(), 68);
        assert_eq!(std::mem::size_of::<sys::nvmlMemory_v2_t>(), 40);
        assert_eq!(std::mem::size_of::<sys::nvmlProcessInfo_t>(), 24);
        assert_eq!(std::mem::size_of::<sys::nvmlUtilization_t>(), 8);
    }
}

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
//! - [`spdm`]: the attestation reports of GPUs in confidential-computing mode.
//! - `counters`: what a GPU is doing: utilisation, power, energy, per-process samples, accounting,
//!   PCIe and NVLink throughput, fabric membership.
//! - `cc`: the confidential-computing functions (state, settings, attestation reports, certificates).
//! - this file: the exported `nvml*` functions and the state between `nvmlInit` and `nvmlShutdown`.

#![allow(non_snake_case, clippy::missing_safety_doc)]

mod cc;
mod counters;

pub mod scenario;
pub mod spdm;

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};
use std::sync::Mutex;
use std::time::Instant;

use nvml_wrapper_sys::bindings as sys;
use sys::{nvmlDevice_t, nvmlReturn_t};

use scenario::{Gpu, MAX_SCENARIO_BYTES, Mig, ProcessSpec, Scenario};

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

/// What a handle names: a GPU, or one MIG instance on it.
struct Target<'a> {
    gpu: &'a Gpu,
    mig: Option<&'a Mig>,
}

/// Handles are `gpu index + 1`, with `(mig index + 1) << 16` added for MIG instances.
fn handle(gpu: usize, mig: Option<usize>) -> nvmlDevice_t {
    (gpu + 1 + mig.map_or(0, |m| (m + 1) << 16)) as nvmlDevice_t
}

/// Looks up the GPU (or MIG instance) behind a handle and applies the faults: slow calls, lost GPUs,
/// missing functions (`call`) and unsupported fields (`field`).
fn with_gpu<T>(
    device: nvmlDevice_t,
    call: &str,
    field: &str,
    f: impl FnOnce(Target<'_>, &State) -> T,
) -> Result<T, nvmlReturn_t> {
    let slow = with_state(|s| {
        let idx =
            ((device as usize) & 0xffff).checked_sub(1).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        Ok(s.gpus.get(idx).map_or(0, |g| g.slow_ms))
    })?;
    if slow > 0 {
        std::thread::sleep(std::time::Duration::from_millis(slow));
    }
    with_state(|s| {
        let raw = device as usize;
        let idx = (raw & 0xffff).checked_sub(1).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        let gpu = s.gpus.get(idx).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        let mig = match raw >> 16 {
            0 => None,
            m => Some(
                gpu.mig.as_ref().and_then(|v| v.get(m - 1)).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?,
            ),
        };
        if gpu.lost {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        if gpu.missing.iter().any(|m| m == call) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND);
        }
        if gpu.unsupported.iter().any(|u| u == field) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        Ok(f(Target { gpu, mig }, s))
    })
}

fn elapsed_ms(s: &State) -> u64 {
    s.loaded_at.elapsed().as_millis() as u64
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
        sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => b"Function Not Found\0",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND => b"Not Found\0",
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
        Ok(handle(index as usize, None))
    });
    // SAFETY: NVML's contract: `device` is valid for a write of one handle.
    done(r.and_then(|h| unsafe { write_out(device, h) }))
}

/// `nvmlDeviceGetIndex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: NVML's contract: `index` is valid for a write.
    done(
        with_gpu(device, "nvmlDeviceGetIndex", "index", |t, _| t.gpu.index)
            .and_then(|i| unsafe { write_out(index, i) }),
    )
}

macro_rules! string_getter {
    ($(#[$doc:meta])* $name:ident, $field:literal, $get:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, buf: *mut c_char, length: c_uint) -> nvmlReturn_t {
            let get: fn(&Target<'_>) -> String = $get;
            match with_gpu(device, stringify!($name), $field, |t, _| get(&t)) {
                // SAFETY: NVML's contract: `buf` holds `length` bytes.
                Ok(v) => done(unsafe { write_str(buf, length, &v) }),
                Err(e) => e,
            }
        }
    };
}

string_getter!(
    /// `nvmlDeviceGetUUID`.
    nvmlDeviceGetUUID, "uuid", |t| t.mig.map_or_else(|| t.gpu.uuid.clone(), |m| m.uuid.clone())
);
string_getter!(
    /// `nvmlDeviceGetSerial`.
    nvmlDeviceGetSerial, "serial", |t| t.gpu.serial.clone()
);
string_getter!(
    /// `nvmlDeviceGetName`.
    nvmlDeviceGetName, "name", |t| t.mig.map_or_else(|| t.gpu.name.clone(), |_| format!("{} MIG 1g.10gb", t.gpu.name))
);
string_getter!(
    /// `nvmlDeviceGetBoardPartNumber`.
    nvmlDeviceGetBoardPartNumber, "board_part_number", |t| t.gpu.board_part_number.clone()
);
string_getter!(
    /// `nvmlDeviceGetVbiosVersion`.
    nvmlDeviceGetVbiosVersion, "vbios", |t| t.gpu.vbios_version.clone()
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
    let r = with_gpu(device, "nvmlDeviceGetPciInfo_v3", "pci", |t, _| {
        let g = t.gpu;
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
    let r = with_gpu(device, "nvmlDeviceGetMemoryInfo", "memory", |t, s| {
        let (total, used) = memory_of(&t, s);
        sys::nvmlMemory_t { total, used, free: total.saturating_sub(used) }
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
    let r = with_gpu(device, "nvmlDeviceGetMemoryInfo_v2", "memory", |t, s| {
        let (total, used) = memory_of(&t, s);
        sys::nvmlMemory_v2_t {
            version,
            total,
            reserved: 536_870_912,
            used,
            free: total.saturating_sub(used).saturating_sub(536_870_912),
        }
    });
    // SAFETY: checked non-null above; valid for a write per NVML's contract.
    done(r.and_then(|m| unsafe { write_out(memory, m) }))
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut sys::nvmlProcessInfo_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded with NVML's contract.
    unsafe { running_processes(device, "nvmlDeviceGetComputeRunningProcesses_v3", false, count, infos) }
}

/// `nvmlDeviceGetMPSComputeRunningProcesses_v3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut sys::nvmlProcessInfo_t,
) -> nvmlReturn_t {
    // SAFETY: forwarded with NVML's contract.
    unsafe { running_processes(device, "nvmlDeviceGetMPSComputeRunningProcesses_v3", true, count, infos) }
}

macro_rules! value_getter {
    ($(#[$doc:meta])* $name:ident, $field:literal, $ty:ty, $get:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, out: *mut $ty) -> nvmlReturn_t {
            let get: fn(&Target<'_>, &State) -> $ty = $get;
            // SAFETY: NVML's contract: `out` is valid for a write.
            done(with_gpu(device, stringify!($name), $field, |t, s| get(&t, s)).and_then(|v| unsafe { write_out(out, v) }))
        }
    };
}

value_getter!(
    /// `nvmlDeviceGetBrand`.
    nvmlDeviceGetBrand, "brand", sys::nvmlBrandType_t, |t, _| t.gpu.brand
);
value_getter!(
    /// `nvmlDeviceGetArchitecture`.
    nvmlDeviceGetArchitecture, "architecture", sys::nvmlDeviceArchitecture_t, |t, _| t.gpu.architecture
);
value_getter!(
    /// `nvmlDeviceGetMaxMigDeviceCount`: the number of instances (not the profile maximum).
    nvmlDeviceGetMaxMigDeviceCount, "mig", c_uint, |t, _| t.gpu.mig.as_ref().map_or(0, |m| m.len() as c_uint)
);
value_getter!(
    /// `nvmlDeviceGetAccountingMode`.
    nvmlDeviceGetAccountingMode, "accounting", sys::nvmlEnableState_t, |t, _| t.gpu.accounting as sys::nvmlEnableState_t
);

/// `nvmlDeviceGetCudaComputeCapability`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    let r =
        with_gpu(device, "nvmlDeviceGetCudaComputeCapability", "compute_capability", |t, _| t.gpu.compute_capability);
    // SAFETY: NVML's contract: both are valid for a write.
    done(r.and_then(|[a, b]| unsafe { write_out(major, a).and_then(|()| write_out(minor, b)) }))
}

/// `nvmlDeviceGetTemperature` (GPU sensor only).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: sys::nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    if sensor != sys::nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
        return sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
    }
    // SAFETY: NVML's contract: `temp` is valid for a write.
    done(
        with_gpu(device, "nvmlDeviceGetTemperature", "temperature", |t, _| t.gpu.temperature_c)
            .and_then(|v| unsafe { write_out(temp, v) }),
    )
}

/// `nvmlDeviceGetClockInfo`: graphics, SM and memory clocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    kind: sys::nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    let i = match kind {
        sys::nvmlClockType_enum_NVML_CLOCK_GRAPHICS => 0,
        sys::nvmlClockType_enum_NVML_CLOCK_SM => 1,
        sys::nvmlClockType_enum_NVML_CLOCK_MEM => 2,
        _ => return sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
    };
    // SAFETY: NVML's contract: `clock` is valid for a write.
    done(
        with_gpu(device, "nvmlDeviceGetClockInfo", "clocks", |t, s| t.gpu.clocks_at(elapsed_ms(s))[i])
            .and_then(|v| unsafe { write_out(clock, v) }),
    )
}

/// `nvmlDeviceGetMigMode`: enabled when the scenario lists instances.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    let r = with_gpu(device, "nvmlDeviceGetMigMode", "mig", |t, _| c_uint::from(t.gpu.mig.is_some()));
    // SAFETY: NVML's contract: both are valid for a write.
    done(r.and_then(|m| unsafe { write_out(current, m).and_then(|()| write_out(pending, m)) }))
}

/// `nvmlDeviceGetMigDeviceHandleByIndex`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    let r = with_gpu(device, "nvmlDeviceGetMigDeviceHandleByIndex", "mig", |t, _| {
        let n = t.gpu.mig.as_ref().map_or(0, Vec::len);
        ((index as usize) < n).then(|| handle(t.gpu.index as usize, Some(index as usize)))
    })
    .and_then(|h| h.ok_or(sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND));
    // SAFETY: NVML's contract: `mig` is valid for a write.
    done(r.and_then(|h| unsafe { write_out(mig, h) }))
}

fn memory_of(t: &Target<'_>, s: &State) -> (u64, u64) {
    match t.mig {
        Some(m) => (m.memory_total_bytes, m.processes.iter().map(|p| p.used_memory_bytes).sum::<u64>() + 12_582_912),
        None => (t.gpu.memory_total_bytes, t.gpu.memory_used_at(elapsed_ms(s))),
    }
}

/// The processes a handle lists: a MIG instance's own, or a whole GPU's (all instances included, as
/// the driver reports them on the parent).
pub(crate) fn processes_of(t: &Target<'_>, mps: bool) -> Vec<ProcessSpec> {
    let all: Vec<ProcessSpec> = match t.mig {
        Some(m) => m.processes.clone(),
        None => {
            t.gpu.processes.iter().chain(t.gpu.mig.iter().flatten().flat_map(|m| m.processes.iter())).cloned().collect()
        }
    };
    all.into_iter().filter(|p| p.mps == mps).collect()
}

/// The count-then-fill protocol of the real driver, shared by the compute and MPS calls.
///
/// # Safety
/// `count` null or valid for read and write; `infos` null or valid for `*count` entries.
unsafe fn running_processes(
    device: nvmlDevice_t,
    call: &str,
    mps: bool,
    count: *mut c_uint,
    infos: *mut sys::nvmlProcessInfo_t,
) -> nvmlReturn_t {
    if count.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let field = if mps { "mps" } else { "processes" };
    let procs = match with_gpu(device, call, field, |t, _| processes_of(&t, mps)) {
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

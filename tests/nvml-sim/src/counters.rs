//! What a GPU is doing, as the played trace or the steady values say: utilisation, power and energy,
//! per-process utilisation samples, accounting statistics, PCIe and NVLink throughput, and NVLink
//! fabric membership.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::*;

/// `nvmlDeviceGetUtilizationRates`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    u: *mut sys::nvmlUtilization_t,
) -> nvmlReturn_t {
    let r = with_gpu(device, "nvmlDeviceGetUtilizationRates", "utilization", |t, s| sys::nvmlUtilization_t {
        gpu: t.gpu.utilization_at(elapsed_ms(s)),
        memory: t.gpu.memory_utilization_at(elapsed_ms(s)),
    });
    // SAFETY: NVML's contract: `u` is valid for a write.
    done(r.and_then(|v| unsafe { write_out(u, v) }))
}

/// `nvmlDeviceGetPowerUsage`, milliwatts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: NVML's contract: `power` is valid for a write.
    done(
        with_gpu(device, "nvmlDeviceGetPowerUsage", "power", |t, s| t.gpu.power_at(elapsed_ms(s)))
            .and_then(|p| unsafe { write_out(power, p) }),
    )
}

/// `nvmlDeviceGetTotalEnergyConsumption`, millijoules: the start value plus power × elapsed time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    let r = with_gpu(device, "nvmlDeviceGetTotalEnergyConsumption", "energy", |t, s| t.gpu.energy_at(elapsed_ms(s)));
    // SAFETY: NVML's contract: `energy` is valid for a write.
    done(r.and_then(|e| unsafe { write_out(energy, e) }))
}

/// `nvmlDeviceGetProcessUtilization`: one sample per process, newer than `last_seen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    samples: *mut sys::nvmlProcessUtilizationSample_t,
    count: *mut c_uint,
    last_seen: std::ffi::c_ulonglong,
) -> nvmlReturn_t {
    if count.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let list = match with_gpu(device, "nvmlDeviceGetProcessUtilization", "process_utilization", |t, s| {
        let util = t.gpu.utilization_at(elapsed_ms(s));
        let mem = t.gpu.memory_utilization_at(elapsed_ms(s));
        processes_of(&t, false)
            .into_iter()
            .chain(processes_of(&t, true))
            .map(|p| (p.pid, p.sm_util_pct.unwrap_or(util), mem))
            .collect::<Vec<_>>()
    }) {
        Ok(l) if now_us > last_seen => l,
        Ok(_) => Vec::new(),
        Err(e) => return e,
    };
    // SAFETY: checked non-null; valid for reads and writes per NVML's contract.
    let capacity = unsafe { *count } as usize;
    // SAFETY: as above.
    unsafe { *count = list.len() as c_uint };
    if samples.is_null() || list.len() > capacity {
        return if list.is_empty() {
            sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND
        } else {
            sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
        };
    }
    for (i, (pid, sm, mem)) in list.iter().enumerate() {
        let sample = sys::nvmlProcessUtilizationSample_t {
            pid: *pid,
            timeStamp: now_us,
            smUtil: *sm,
            memUtil: *mem,
            encUtil: 0,
            decUtil: 0,
        };
        // SAFETY: `samples` holds `capacity` entries and `i < list.len() <= capacity`.
        unsafe { samples.add(i).write(sample) };
    }
    SUCCESS
}

/// `nvmlDeviceGetAccountingStats`: for processes on this GPU while accounting mode is on.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAccountingStats(
    device: nvmlDevice_t,
    pid: c_uint,
    stats: *mut sys::nvmlAccountingStats_t,
) -> nvmlReturn_t {
    let r = with_gpu(device, "nvmlDeviceGetAccountingStats", "accounting", |t, s| {
        if !t.gpu.accounting {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        let p = processes_of(&t, false)
            .into_iter()
            .chain(processes_of(&t, true))
            .find(|p| p.pid == pid)
            .ok_or(sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND)?;
        Ok(sys::nvmlAccountingStats_t {
            gpuUtilization: p.sm_util_pct.unwrap_or(t.gpu.utilization_gpu_pct),
            memoryUtilization: t.gpu.utilization_memory_pct,
            maxMemoryUsage: p.used_memory_bytes,
            time: elapsed_ms(s),
            startTime: 0,
            isRunning: 1,
            reserved: [0; 5],
        })
    })
    .and_then(|r| r);
    // SAFETY: NVML's contract: `stats` is valid for a write.
    done(r.and_then(|v| unsafe { write_out(stats, v) }))
}

/// `nvmlDeviceGetPcieThroughput`: the trace's PCIe throughput, KB/s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPcieThroughput(
    device: nvmlDevice_t,
    counter: sys::nvmlPcieUtilCounter_t,
    value: *mut c_uint,
) -> nvmlReturn_t {
    let i = match counter {
        sys::nvmlPcieUtilCounter_enum_NVML_PCIE_UTIL_TX_BYTES => 0,
        sys::nvmlPcieUtilCounter_enum_NVML_PCIE_UTIL_RX_BYTES => 1,
        _ => return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
    };
    let r = with_gpu(device, "nvmlDeviceGetPcieThroughput", "pcie", |t, s| t.gpu.pcie_at(elapsed_ms(s))[i]);
    // SAFETY: NVML's contract: `value` is valid for a write.
    done(r.and_then(|v| unsafe { write_out(value, v) }))
}

/// NVML's NVLink data throughput fields (`NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX` / `_RX`): counters in
/// KiB, summed over links.
const FI_NVLINK_DATA_TX: c_uint = 138;
const FI_NVLINK_DATA_RX: c_uint = 139;

/// `nvmlDeviceGetFieldValues`: the NVLink data counters (field `nvlink` in `unsupported` turns them
/// off); every other field answers `NVML_ERROR_NOT_SUPPORTED` in its own slot, as the driver does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: nvmlDevice_t,
    count: c_int,
    values: *mut sys::nvmlFieldValue_t,
) -> nvmlReturn_t {
    if values.is_null() || !(0..=1024).contains(&count) {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let counters = match with_gpu(device, "nvmlDeviceGetFieldValues", "", |t, s| {
        (!t.gpu.unsupported.iter().any(|u| u == "nvlink")).then(|| t.gpu.nvlink_counters_at(elapsed_ms(s)))
    }) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    for i in 0..count as usize {
        // SAFETY: the caller passes `count` entries; `i < count`.
        let v = unsafe { &mut *values.add(i) };
        v.timestamp = now_us;
        v.latencyUsec = 0;
        let slot = match (v.fieldId, counters) {
            (FI_NVLINK_DATA_TX, Some(c)) => Some(c[0]),
            (FI_NVLINK_DATA_RX, Some(c)) => Some(c[1]),
            _ => None,
        };
        match slot {
            Some(kib) => {
                v.valueType = sys::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
                v.nvmlReturn = SUCCESS;
                v.value = sys::nvmlValue_t { ullVal: kib };
            }
            None => v.nvmlReturn = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
        }
    }
    SUCCESS
}

/// `nvmlDeviceGetGpuFabricInfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfo(
    device: nvmlDevice_t,
    info: *mut sys::nvmlGpuFabricInfo_t,
) -> nvmlReturn_t {
    let r = with_gpu(device, "nvmlDeviceGetGpuFabricInfo", "fabric", |t, _| t.gpu.fabric.clone())
        .and_then(|f| f.ok_or(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED))
        .and_then(|f| {
            let hex: String = f.cluster_uuid.chars().filter(char::is_ascii_hexdigit).collect();
            if hex.len() != 32 {
                return Err(sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN);
            }
            let mut uuid = [0u8; 16];
            for (i, b) in uuid.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN)?;
            }
            Ok(sys::nvmlGpuFabricInfo_t { clusterUuid: uuid, status: SUCCESS, cliqueId: f.clique_id, state: f.state })
        });
    // SAFETY: NVML's contract: `info` is valid for a write of one struct.
    done(r.and_then(|v| unsafe { write_out(info, v) }))
}

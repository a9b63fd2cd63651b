//! Confidential computing: the system-wide CC state and settings, and each GPU's attestation report
//! and certificate chains (real SPDM with an evidence directory, a marker report without one).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::*;

fn cc<T>(f: impl FnOnce(&scenario::ConfComputeSpec) -> T) -> Result<T, nvmlReturn_t> {
    with_state(|s| s.scenario.confidential_compute.as_ref().map(f).ok_or(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED))
}

fn environment(spec: &scenario::ConfComputeSpec) -> c_uint {
    if spec.environment == "sim" { sys::NVML_CC_SYSTEM_ENVIRONMENT_SIM } else { sys::NVML_CC_SYSTEM_ENVIRONMENT_PROD }
}

/// `nvmlSystemGetConfComputeState`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeState(state: *mut sys::nvmlConfComputeSystemState_t) -> nvmlReturn_t {
    let r = cc(|c| sys::nvmlConfComputeSystemState_t {
        environment: environment(c),
        ccFeature: if c.enabled { sys::NVML_CC_SYSTEM_FEATURE_ENABLED } else { sys::NVML_CC_SYSTEM_FEATURE_DISABLED },
        devToolsMode: sys::NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
    });
    // SAFETY: NVML's contract: `state` is valid for a write of one struct.
    done(r.and_then(|v| unsafe { write_out(state, v) }))
}

/// `nvmlSystemGetConfComputeSettings` (a versioned struct: the caller sets `version`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeSettings(
    settings: *mut sys::nvmlSystemConfComputeSettings_t,
) -> nvmlReturn_t {
    if settings.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let expected = (std::mem::size_of::<sys::nvmlSystemConfComputeSettings_v1_t>() | (1 << 24)) as c_uint;
    // SAFETY: non-null, and NVML's contract makes it valid for reads and writes of one struct.
    if unsafe { (*settings).version } != expected {
        return sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    let r = cc(|c| sys::nvmlSystemConfComputeSettings_v1_t {
        version: expected,
        environment: environment(c),
        ccFeature: if c.enabled { sys::NVML_CC_SYSTEM_FEATURE_ENABLED } else { sys::NVML_CC_SYSTEM_FEATURE_DISABLED },
        devToolsMode: sys::NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
        multiGpuMode: sys::NVML_CC_SYSTEM_MULTIGPU_NONE,
    });
    // SAFETY: as above.
    done(r.and_then(|v| unsafe { write_out(settings, v) }))
}

/// `nvmlSystemGetConfComputeGpusReadyState`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetConfComputeGpusReadyState(ready: *mut c_uint) -> nvmlReturn_t {
    let r = cc(|c| {
        if c.accepting_work {
            sys::NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
        } else {
            sys::NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
        }
    });
    // SAFETY: NVML's contract: `ready` is valid for a write.
    done(r.and_then(|v| unsafe { write_out(ready, v) }))
}

/// A GPU on a host in CC mode (`NOT_SUPPORTED` otherwise), through the usual fault checks: its UUID,
/// attestation fault, the next GPU's UUID (for `foreign_chain`), the evidence directory, and the
/// driver and VBIOS versions.
struct CcGpu {
    uuid: String,
    name: String,
    fault: Option<String>,
    next_uuid: String,
    evidence_dir: Option<String>,
    driver: String,
    vbios: String,
}

fn cc_gpu(device: nvmlDevice_t, call: &str) -> Result<CcGpu, nvmlReturn_t> {
    with_gpu(device, call, "confidential_compute", |t, s| {
        let cc = s.scenario.confidential_compute.as_ref().filter(|c| c.enabled)?;
        let next = s.gpus.iter().map(|g| g.uuid.clone()).cycle().nth(t.gpu.index as usize + 1);
        Some(CcGpu {
            uuid: t.gpu.uuid.clone(),
            name: t.gpu.name.clone(),
            fault: t.gpu.attestation_fault.clone(),
            next_uuid: next.unwrap_or_default(),
            evidence_dir: cc.evidence_dir.clone(),
            driver: s.scenario.driver_version.clone(),
            vbios: t.gpu.vbios_version.clone(),
        })
    })
    .and_then(|u| u.ok_or(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED))
    .and_then(|g| match &g.fault {
        Some(f) if !spdm::FAULTS.contains(&f.as_str()) => {
            eprintln!("gpuattest-nvml-sim: unknown attestation_fault `{f}`; use one of {:?}", spdm::FAULTS);
            Err(sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN)
        }
        _ => Ok(g),
    })
}

/// Reads a file of the evidence directory, at most 64 KiB.
fn evidence_file(dir: &str, name: &str) -> Result<Vec<u8>, nvmlReturn_t> {
    use std::io::Read;
    let path = std::path::Path::new(dir).join(name);
    let mut out = Vec::new();
    std::fs::File::open(&path).and_then(|f| f.take(64 * 1024).read_to_end(&mut out)).map_err(|e| {
        eprintln!("gpuattest-nvml-sim: {}: {e}", path.display());
        sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN
    })?;
    Ok(out)
}

/// The marker report of a scenario without an evidence directory: the GPU's UUID and the caller's
/// nonce, which nobody could mistake for NVIDIA's (and no verifier accepts).
pub const SIM_REPORT_MARKER: &[u8] = b"GPUATTEST-SIMULATED-ATTESTATION-REPORT;uuid=";

/// `nvmlDeviceGetConfComputeGpuAttestationReport`: the caller sets `nonce`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuAttestationReport(
    device: nvmlDevice_t,
    report: *mut sys::nvmlConfComputeGpuAttestationReport_t,
) -> nvmlReturn_t {
    if report.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let gpu = match cc_gpu(device, "nvmlDeviceGetConfComputeGpuAttestationReport") {
        Ok(g) => g,
        Err(e) => return e,
    };
    // The GPU's own time to measure and sign, outside the library's lock (as a real driver call).
    let took = cc(|c| c.attestation_ms).unwrap_or(0);
    if took > 0 {
        std::thread::sleep(std::time::Duration::from_millis(took.min(60_000)));
    }
    // SAFETY: non-null, valid for reads and writes of one struct by NVML's contract.
    let out = unsafe { &mut *report };
    let body = match &gpu.evidence_dir {
        Some(dir) => {
            let key = match evidence_file(dir, &format!("{}.pk8", gpu.uuid)) {
                Ok(k) => k,
                Err(e) => return e,
            };
            match spdm::report(
                &out.nonce,
                spdm::Signer { uuid: &gpu.uuid, name: &gpu.name, driver: &gpu.driver, vbios: &gpu.vbios },
                &key,
                gpu.fault.as_deref(),
            ) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("gpuattest-nvml-sim: {e}");
                    return sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;
                }
            }
        }
        None => {
            let mut body = SIM_REPORT_MARKER.to_vec();
            body.extend_from_slice(gpu.uuid.as_bytes());
            body.extend_from_slice(b";nonce=");
            body.extend_from_slice(&out.nonce);
            body
        }
    };
    let n = body.len().min(out.attestationReport.len());
    out.attestationReport[..n].copy_from_slice(&body[..n]);
    out.attestationReportSize = n as c_uint;
    out.isCecAttestationReportPresent = 0;
    out.cecAttestationReportSize = 0;
    SUCCESS
}

/// `nvmlDeviceGetConfComputeGpuCertificate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeGpuCertificate(
    device: nvmlDevice_t,
    cert: *mut sys::nvmlConfComputeGpuCertificate_t,
) -> nvmlReturn_t {
    if cert.is_null() {
        return sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
    }
    let gpu = match cc_gpu(device, "nvmlDeviceGetConfComputeGpuCertificate") {
        Ok(g) => g,
        Err(e) => return e,
    };
    // SAFETY: as above.
    let out = unsafe { &mut *cert };
    let (chain, att) = match &gpu.evidence_dir {
        Some(dir) => {
            let name = match gpu.fault.as_deref() {
                Some("foreign_chain") => format!("{}.pem", gpu.next_uuid),
                Some("unknown_root") => format!("{}.untrusted.pem", gpu.uuid),
                _ => format!("{}.pem", gpu.uuid),
            };
            match evidence_file(dir, &name) {
                // NVML returns the device chain and the attestation chain; the simulated GPU signs
                // its reports with its device key, so both are the same chain.
                Ok(pem) => (pem.clone(), pem),
                Err(e) => return e,
            }
        }
        None => (
            format!(
                "-----BEGIN CERTIFICATE-----\nSIMULATED DEVICE CERTIFICATE FOR {}\n-----END CERTIFICATE-----\n",
                gpu.uuid
            )
            .into_bytes(),
            format!(
                "-----BEGIN CERTIFICATE-----\nSIMULATED ATTESTATION CERTIFICATE FOR {}\n-----END CERTIFICATE-----\n",
                gpu.uuid
            )
            .into_bytes(),
        ),
    };
    let n = chain.len().min(out.certChain.len());
    out.certChain[..n].copy_from_slice(&chain[..n]);
    out.certChainSize = n as c_uint;
    let m = att.len().min(out.attestationCertChain.len());
    out.attestationCertChain[..m].copy_from_slice(&att[..m]);
    out.attestationCertChainSize = m as c_uint;
    SUCCESS
}

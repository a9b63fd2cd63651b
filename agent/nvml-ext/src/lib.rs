//! NVML calls that nvml-wrapper 0.13 does not wrap, made through the library nvml-wrapper already
//! loaded. The agent crate forbids unsafe code; each call here is one small `unsafe` block with its
//! safety argument, reviewed on its own.

use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

/// A GPU's place in an NVLink fabric (GB200 NVL72 and similar): which cluster and clique it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricInfo {
    /// The fabric cluster's UUID, `8-4-4-4-12` hex.
    pub cluster_uuid: String,
    /// The clique (NVLink partition) within the cluster.
    pub clique_id: u32,
    /// Registration state: 0 not supported, 1 not started, 2 in progress, 3 completed.
    pub state: u8,
    /// The fabric manager's status for this GPU (an NVML return code; 0 is success).
    pub status: u32,
}

fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `nvmlDeviceGetGpuFabricInfo` for `device`.
///
/// # Errors
/// Why there is no answer: the driver lacks the call, the GPU is not on a fabric (not supported), or
/// another NVML error.
#[allow(unsafe_code)]
pub fn fabric_info(nvml: &Nvml, device: &Device<'_>) -> Result<FabricInfo, String> {
    let sym =
        nvml.lib().nvmlDeviceGetGpuFabricInfo.as_ref().map_err(|e| format!("driver library lacks this call ({e})"))?;
    // SAFETY: `nvmlGpuFabricInfo_t` is plain C data (byte array, integers), for which all-zero bytes
    // are a valid value.
    let mut info: sys::nvmlGpuFabricInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the handle comes from a live `Device` of this same `Nvml` (the borrow keeps it alive),
    // and `info` is a valid, exclusive pointer to one `nvmlGpuFabricInfo_t`, as the call requires. The
    // call writes only within that struct.
    let rc = unsafe { sym(device.handle(), &mut info) };
    match rc {
        sys::nvmlReturn_enum_NVML_SUCCESS => Ok(FabricInfo {
            cluster_uuid: uuid(&info.clusterUuid),
            clique_id: info.cliqueId,
            state: info.state,
            status: info.status,
        }),
        sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => Err("not supported".into()),
        sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => Err("driver lacks this call".into()),
        sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => Err("GPU is lost".into()),
        other => Err(format!("NVML error {other}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_uuids_are_formatted_like_nvidia_smi() {
        let b = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(super::uuid(&b), "12345678-9abc-def0-0123-456789abcdef");
    }
}

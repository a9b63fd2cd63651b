//! safetensors: an 8-byte little-endian header length, then a JSON header mapping tensor names to
//! `{dtype, shape, data_offsets}`, plus an optional `__metadata__` object of strings. Only the header
//! is read; the cost does not grow with the file.

use std::collections::BTreeSet;
use std::io::Read;

use serde_json::Value;

use super::{Fingerprint, ModelError, read_exact_bounded};

/// Largest header accepted (the biggest real ones, for thousands of tensors, are a few MiB).
pub const MAX_HEADER_BYTES: u64 = 64 * 1024 * 1024;

/// Fingerprints a safetensors stream of `file_len` bytes.
///
/// # Errors
/// [`ModelError`] for a header length beyond the file or the bound, invalid JSON, or tensors whose
/// shapes or offsets do not add up.
pub fn fingerprint(r: &mut impl Read, file_len: u64) -> Result<Fingerprint, ModelError> {
    let mut len_bytes = [0u8; 8];
    r.read_exact(&mut len_bytes).map_err(|_| ModelError::Truncated("safetensors header length".into()))?;
    let n = u64::from_le_bytes(len_bytes);
    if !(2..=MAX_HEADER_BYTES).contains(&n) || n > file_len.saturating_sub(8) {
        return Err(ModelError::Invalid(format!(
            "safetensors header length {n} is outside 2..={} for a {file_len}-byte file",
            MAX_HEADER_BYTES.min(file_len.saturating_sub(8))
        )));
    }
    let header = read_exact_bounded(r, n as usize, "safetensors header")?;
    let json: Value =
        serde_json::from_slice(&header).map_err(|e| ModelError::Invalid(format!("safetensors header JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| ModelError::Invalid("safetensors header is not a JSON object".into()))?;
    let mut fp = Fingerprint {
        format: "safetensors".into(),
        header_sha256: super::sha256_hex(&[&len_bytes, &header]),
        ..Default::default()
    };
    let mut dtypes = BTreeSet::new();
    let data_len = file_len - 8 - n;
    for (name, t) in obj {
        if name == "__metadata__" {
            if let Some(meta) = t.as_object() {
                for (k, v) in meta.iter().take(256) {
                    if let Some(s) = v.as_str() {
                        fp.metadata.insert(super::clip(k, 128), super::clip(s, 1024));
                    }
                }
            }
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Invalid(format!("tensor {name:?} has no dtype")))?;
        let shape = t
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| ModelError::Invalid(format!("tensor {name:?} has no shape")))?;
        let mut count: u64 = 1;
        for d in shape {
            let d = d
                .as_u64()
                .ok_or_else(|| ModelError::Invalid(format!("tensor {name:?} has a non-integer dimension")))?;
            count =
                count.checked_mul(d).ok_or_else(|| ModelError::Invalid(format!("tensor {name:?} shape overflows")))?;
        }
        if let Some(off) = t.get("data_offsets").and_then(Value::as_array)
            && let (Some(a), Some(b)) = (off.first().and_then(Value::as_u64), off.get(1).and_then(Value::as_u64))
            && (a > b || b > data_len)
        {
            return Err(ModelError::Invalid(format!(
                "tensor {name:?} data_offsets [{a}, {b}] lie outside the {data_len}-byte data"
            )));
        }
        fp.tensor_count += 1;
        fp.parameter_count = fp.parameter_count.saturating_add(count);
        if dtypes.len() < 16 {
            dtypes.insert(super::clip(dtype, 16));
        }
    }
    fp.dtypes = dtypes.into_iter().collect();
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed safetensors file with the given header JSON and `data` bytes.
    pub(crate) fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    fn fp(bytes: &[u8]) -> Result<Fingerprint, ModelError> {
        fingerprint(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn counts_tensors_and_parameters() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[4,8],"data_offsets":[0,64]},"b":{"dtype":"F32","shape":[3],"data_offsets":[64,76]}}"#;
        let f = fp(&file(h, 76)).expect("fingerprint");
        assert_eq!((f.tensor_count, f.parameter_count), (2, 35));
        assert_eq!(f.dtypes, vec!["BF16".to_string(), "F32".to_string()]);
        assert_eq!(f.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(f.header_sha256.len(), 64);
    }

    #[test]
    fn hostile_headers_are_errors() {
        // Declared length far beyond the file.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(fp(&huge).is_err());
        // Truncated before the length ends.
        assert!(matches!(fp(&[1, 2, 3]), Err(ModelError::Truncated(_))));
        // Invalid UTF-8 / JSON.
        assert!(fp(&file("\u{0}\u{1}not json", 0)).is_err());
        let bad = [8u8, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, b'{', b'}', 0, 0, 0, 0];
        assert!(fp(&bad).is_err());
        // Deep nesting stops at serde_json's recursion limit rather than the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(fp(&file(&deep, 0)).is_err());
        // Shape overflow and offsets outside the data.
        assert!(
            fp(&file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#, 0)).is_err()
        );
        assert!(fp(&file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#, 8)).is_err());
        assert!(fp(&file(r#"{"a":{"shape":[2]}}"#, 0)).is_err());
        assert!(fp(&file("[1,2]", 0)).is_err());
    }
}

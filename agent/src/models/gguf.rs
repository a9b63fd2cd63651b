//! GGUF (llama.cpp) v2 and v3: magic `GGUF`, version, tensor count, metadata key/value pairs, then
//! tensor infos. Only the header is read, under a byte budget; every count and length is checked
//! against what is left of the budget before anything is allocated.

use std::io::Read;

use super::{Fingerprint, ModelError};

/// Most header bytes read (tokenizer vocabularies of 150k+ tokens fit easily).
pub const MAX_HEADER_BYTES: u64 = 128 * 1024 * 1024;
const MAX_DIMS: u32 = 8;

/// A bounded reader that hashes what it reads and refuses to go past its budget.
struct Budget<'a, R: Read> {
    r: &'a mut R,
    left: u64,
    hash: ring::digest::Context,
}

impl<R: Read> Budget<'_, R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, ModelError> {
        if n > self.left {
            return Err(ModelError::Invalid(format!("GGUF {what} of {n} bytes exceeds the header budget")));
        }
        let v = super::read_exact_bounded(self.r, n as usize, what)?;
        self.left -= n;
        self.hash.update(&v);
        Ok(v)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let n = self.u64(what)?;
        if n > 16 * 1024 * 1024 {
            return Err(ModelError::Invalid(format!("GGUF {what} string length {n} is absurd")));
        }
        Ok(String::from_utf8_lossy(&self.bytes(n, what)?).into_owned())
    }
}

/// A metadata value, kept only where the fingerprint needs it.
enum Val {
    Str(String),
    Int(u64),
    Array(u64),
    Other,
}

fn scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn read_value<R: Read>(b: &mut Budget<'_, R>, t: u32, depth: u32) -> Result<Val, ModelError> {
    if let Some(size) = scalar_size(t) {
        let raw = b.bytes(size, "value")?;
        let mut a = [0u8; 8];
        a[..raw.len()].copy_from_slice(&raw);
        return Ok(match t {
            4 | 10 => Val::Int(u64::from_le_bytes(a)),
            0 | 2 => Val::Int(u64::from_le_bytes(a)),
            _ => Val::Other,
        });
    }
    match t {
        8 => Ok(Val::Str(b.string("string value")?)),
        9 if depth == 0 => {
            let et = b.u32("array type")?;
            let n = b.u64("array length")?;
            if let Some(size) = scalar_size(et) {
                let total =
                    n.checked_mul(size).ok_or_else(|| ModelError::Invalid("GGUF array size overflows".into()))?;
                // Skip in bounded chunks, still hashing them.
                let mut left = total;
                while left > 0 {
                    let step = left.min(1 << 20);
                    b.bytes(step, "array data")?;
                    left -= step;
                }
            } else {
                if n > b.left / 8 {
                    return Err(ModelError::Invalid(format!("GGUF array of {n} elements cannot fit in the header")));
                }
                for _ in 0..n {
                    read_value(b, et, depth + 1)?;
                }
            }
            Ok(Val::Array(n))
        }
        9 => Err(ModelError::Invalid("GGUF nested arrays are not supported".into())),
        other => Err(ModelError::Invalid(format!("GGUF value type {other} is unknown"))),
    }
}

/// Fingerprints a GGUF stream.
///
/// # Errors
/// [`ModelError`] for a wrong magic or version, truncation, or counts and lengths beyond the budget.
pub fn fingerprint(r: &mut impl Read, file_len: u64) -> Result<Fingerprint, ModelError> {
    let mut b =
        Budget { r, left: MAX_HEADER_BYTES.min(file_len), hash: ring::digest::Context::new(&ring::digest::SHA256) };
    if b.bytes(4, "magic")? != b"GGUF" {
        return Err(ModelError::Invalid("not a GGUF file (magic)".into()));
    }
    let version = b.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(ModelError::Invalid(format!("GGUF version {version} is not 2 or 3")));
    }
    let n_tensors = b.u64("tensor count")?;
    let n_kv = b.u64("metadata count")?;
    // Each entry takes at least 8 (tensor) or 12 (kv) bytes: counts beyond that are lies.
    if n_tensors > b.left / 8 || n_kv > b.left / 12 {
        return Err(ModelError::Invalid(format!(
            "GGUF declares {n_tensors} tensors and {n_kv} keys, more than the file can hold"
        )));
    }
    let mut fp = Fingerprint { format: format!("gguf-v{version}"), ..Default::default() };
    let mut base_models = Vec::new();
    for _ in 0..n_kv {
        let key = b.string("key")?;
        let t = b.u32("value type")?;
        let v = read_value(&mut b, t, 0)?;
        match (key.as_str(), v) {
            ("general.architecture", Val::Str(s)) => fp.model_type = Some(super::clip(&s, 128)),
            ("general.name", Val::Str(s)) => fp.name = Some(super::clip(&s, 256)),
            ("general.organization", Val::Str(s)) => fp.organization = Some(super::clip(&s, 256)),
            ("tokenizer.ggml.tokens", Val::Array(n)) => {
                fp.metadata.insert("tokenizer.vocab_size".into(), n.to_string());
            }
            (k, Val::Str(s))
                if k.starts_with("general.base_model.") && k.ends_with(".name") && base_models.len() < 16 =>
            {
                base_models.push(super::clip(&s, 256));
            }
            (k, Val::Str(s))
                if matches!(
                    k,
                    "general.basename"
                        | "general.size_label"
                        | "general.finetune"
                        | "general.license"
                        | "tokenizer.ggml.pre"
                        | "tokenizer.ggml.model"
                ) || k.starts_with("general.base_model.") =>
            {
                fp.metadata.insert(k.to_string(), super::clip(&s, 256));
            }
            (k, Val::Int(n))
                if fp.metadata.len() < 256
                    && [
                        ".block_count",
                        ".embedding_length",
                        ".expert_count",
                        ".head_count",
                        ".context_length",
                        ".vocab_size",
                    ]
                    .iter()
                    .any(|suffix| k.ends_with(suffix)) =>
            {
                fp.metadata.insert(super::clip(k, 128), n.to_string());
            }
            _ => {}
        }
    }
    fp.base_models = base_models;
    for _ in 0..n_tensors {
        b.string("tensor name")?;
        let dims = b.u32("tensor dimensions")?;
        if dims > MAX_DIMS {
            return Err(ModelError::Invalid(format!("GGUF tensor with {dims} dimensions")));
        }
        let mut count: u64 = 1;
        for _ in 0..dims {
            count = count
                .checked_mul(b.u64("dimension")?)
                .ok_or_else(|| ModelError::Invalid("GGUF tensor shape overflows".into()))?;
        }
        b.u32("tensor type")?;
        b.u64("tensor offset")?;
        fp.tensor_count += 1;
        fp.parameter_count = fp.parameter_count.saturating_add(count);
    }
    fp.header_sha256 = crate::models::hex(b.hash.finish().as_ref());
    fp.architecture = fp.model_type.clone();
    Ok(fp)
}

/// Writes a GGUF v3 header (test and benchmark helper): string metadata, then tensors `(name, dims)`.
pub fn write_header(kv: &[(&str, &str)], tensors: &[(&str, &[u64])]) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    let s = |v: &mut Vec<u8>, x: &str| {
        v.extend_from_slice(&(x.len() as u64).to_le_bytes());
        v.extend_from_slice(x.as_bytes());
    };
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    v.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, val) in kv {
        s(&mut v, k);
        v.extend_from_slice(&8u32.to_le_bytes());
        s(&mut v, val);
    }
    for (name, dims) in tensors {
        s(&mut v, name);
        v.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            v.extend_from_slice(&d.to_le_bytes());
        }
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(bytes: &[u8]) -> Result<Fingerprint, ModelError> {
        fingerprint(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn reads_general_keys_and_tensors() {
        let h = write_header(
            &[
                ("general.architecture", "qwen2"),
                ("general.name", "DeepSeek R1 Distill Qwen 7B"),
                ("general.organization", "Deepseek Ai"),
                ("general.base_model.0.name", "Qwen2.5 Math 7B"),
                ("tokenizer.ggml.pre", "deepseek-r1-qwen"),
            ],
            &[("token_embd.weight", &[3584, 152064]), ("blk.0.attn_q.weight", &[3584, 3584])],
        );
        let f = fp(&h).expect("fingerprint");
        assert_eq!(f.format, "gguf-v3");
        assert_eq!(f.model_type.as_deref(), Some("qwen2"));
        assert_eq!(f.organization.as_deref(), Some("Deepseek Ai"));
        assert_eq!(f.base_models, vec!["Qwen2.5 Math 7B".to_string()]);
        assert_eq!(f.tensor_count, 2);
        assert_eq!(f.parameter_count, 3584 * 152_064 + 3584 * 3584);
        assert_eq!(f.metadata.get("tokenizer.ggml.pre").map(String::as_str), Some("deepseek-r1-qwen"));
    }

    #[test]
    fn file_written_by_another_implementation() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/models/python-written.gguf");
        let bytes = std::fs::read(p).expect("test data");
        let f = fp(&bytes).expect("fingerprint");
        assert_eq!(
            (f.model_type.as_deref(), f.name.as_deref(), f.tensor_count, f.parameter_count),
            (Some("llama"), Some("Test"), 1, 16)
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert!(fp(b"GGUF").is_err());
        assert!(fp(b"GGML\x03\0\0\0").is_err());
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&9u32.to_le_bytes());
        assert!(fp(&v).is_err(), "unknown version");
        // Absurd counts.
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&u64::MAX.to_le_bytes());
        v.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(fp(&v).is_err());
        // A string length far beyond the file.
        let mut v = write_header(&[("general.name", "x")], &[]);
        v[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(fp(&v).is_err());
        // Truncation at every byte of a valid header.
        let good = write_header(&[("general.architecture", "llama")], &[("a", &[2, 2])]);
        for cut in 0..good.len() {
            assert!(fp(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Too many dimensions.
        let mut v = write_header(&[], &[("a", &[1])]);
        let dims_at = 24 + 8 + 1;
        v[dims_at..dims_at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(fp(&v).is_err());
    }
}

//! PyTorch checkpoints saved with `torch.save` (a zip archive: `archive/data.pkl` plus one entry per
//! storage under `archive/data/`). Only the zip central directory is read: entry names are listed and
//! counted. The pickle is never read, let alone unpickled.

use std::io::{Read, Seek, SeekFrom};

use super::{Fingerprint, ModelError};

/// Largest central directory read.
pub const MAX_DIRECTORY_BYTES: u64 = 64 * 1024 * 1024;

fn u16_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?])))
}
fn u32_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?)))
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

fn invalid(m: &str) -> ModelError {
    ModelError::Invalid(format!("zip: {m}"))
}

/// Fingerprints a zip-format PyTorch checkpoint.
///
/// # Errors
/// [`ModelError`] when there is no end-of-central-directory record, or the directory lies outside the
/// file or beyond the bound.
pub fn fingerprint<R: Read + Seek>(r: &mut R, file_len: u64) -> Result<Fingerprint, ModelError> {
    let tail_len = file_len.min(65_535 + 22 + 20);
    r.seek(SeekFrom::Start(file_len - tail_len)).map_err(|e| ModelError::Io(e.to_string()))?;
    let tail = super::read_exact_bounded(r, tail_len as usize, "zip tail")?;
    let eocd = tail
        .windows(4)
        .rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| invalid("no end-of-central-directory record"))?;
    let mut entries = u16_at(&tail, eocd + 10).ok_or_else(|| invalid("short EOCD"))?;
    let mut cd_size = u32_at(&tail, eocd + 12).ok_or_else(|| invalid("short EOCD"))?;
    let mut cd_off = u32_at(&tail, eocd + 16).ok_or_else(|| invalid("short EOCD"))?;
    if (entries == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff) && eocd >= 20 {
        // ZIP64: the locator sits just before the EOCD and points at the ZIP64 EOCD record.
        let loc = eocd - 20;
        if tail.get(loc..loc + 4) != Some(&[0x50, 0x4b, 0x06, 0x07][..]) {
            return Err(invalid("ZIP64 sizes without a ZIP64 locator"));
        }
        let z64 = u64_at(&tail, loc + 8).ok_or_else(|| invalid("short locator"))?;
        if z64 > file_len.saturating_sub(56) {
            return Err(invalid("ZIP64 record outside the file"));
        }
        r.seek(SeekFrom::Start(z64)).map_err(|e| ModelError::Io(e.to_string()))?;
        let rec = super::read_exact_bounded(r, 56, "ZIP64 EOCD")?;
        if rec[..4] != [0x50, 0x4b, 0x06, 0x06] {
            return Err(invalid("bad ZIP64 EOCD signature"));
        }
        entries = u64_at(&rec, 32).ok_or_else(|| invalid("short ZIP64 EOCD"))?;
        cd_size = u64_at(&rec, 40).ok_or_else(|| invalid("short ZIP64 EOCD"))?;
        cd_off = u64_at(&rec, 48).ok_or_else(|| invalid("short ZIP64 EOCD"))?;
    }
    if cd_size > MAX_DIRECTORY_BYTES || cd_off.checked_add(cd_size).is_none_or(|end| end > file_len) {
        return Err(invalid("central directory outside the file or too large"));
    }
    r.seek(SeekFrom::Start(cd_off)).map_err(|e| ModelError::Io(e.to_string()))?;
    let cd = super::read_exact_bounded(r, cd_size as usize, "zip central directory")?;
    let mut fp =
        Fingerprint { format: "pytorch-zip".into(), header_sha256: super::sha256_hex(&[&cd]), ..Default::default() };
    let mut i = 0usize;
    let mut seen = 0u64;
    let mut has_pickle = false;
    while i + 46 <= cd.len() && seen < entries.min(1_000_000) {
        if cd[i..i + 4] != [0x50, 0x4b, 0x01, 0x02] {
            return Err(invalid("bad central directory entry signature"));
        }
        let (n, x, c) = (u16_at(&cd, i + 28), u16_at(&cd, i + 30), u16_at(&cd, i + 32));
        let (Some(n), Some(x), Some(c)) = (n, x, c) else { return Err(invalid("short entry")) };
        let name = cd.get(i + 46..i + 46 + n as usize).ok_or_else(|| invalid("entry name outside the directory"))?;
        let name = String::from_utf8_lossy(name);
        if name.ends_with("data.pkl") {
            has_pickle = true;
        }
        let mut parts = name.rsplitn(3, '/');
        if let (Some(last), Some("data")) = (parts.next(), parts.next())
            && !last.is_empty()
            && last.bytes().all(|b| b.is_ascii_digit())
        {
            fp.tensor_count += 1;
        }
        i += 46 + (n + x + c) as usize;
        seen += 1;
    }
    if !has_pickle {
        return Err(invalid("no data.pkl entry: not a torch.save archive"));
    }
    fp.metadata.insert("zip.entries".into(), seen.to_string());
    fp.metadata
        .insert("tensor_count_is".into(), "storages (parameter counts need the pickle, which is never read)".into());
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored (uncompressed) zip with the given entry names, as torch.save writes them.
    pub(crate) fn zip(names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cd = Vec::new();
        for n in names {
            let off = out.len() as u32;
            out.extend_from_slice(&[0x50, 0x4b, 0x03, 0x04]);
            out.extend_from_slice(&[0u8; 22]);
            out.extend_from_slice(&(n.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(n.as_bytes());
            cd.extend_from_slice(&[0x50, 0x4b, 0x01, 0x02]);
            cd.extend_from_slice(&[0u8; 24]);
            cd.extend_from_slice(&(n.len() as u16).to_le_bytes());
            cd.extend_from_slice(&[0u8; 12]);
            cd.extend_from_slice(&off.to_le_bytes());
            cd.extend_from_slice(n.as_bytes());
        }
        let cd_off = out.len() as u32;
        out.extend_from_slice(&cd);
        out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
        out.extend_from_slice(&(names.len() as u16).to_le_bytes());
        out.extend_from_slice(&(names.len() as u16).to_le_bytes());
        out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_off.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn fp(b: &[u8]) -> Result<Fingerprint, ModelError> {
        fingerprint(&mut std::io::Cursor::new(b), b.len() as u64)
    }

    #[test]
    fn lists_storages_without_reading_the_pickle() {
        let f = fp(&zip(&["archive/data.pkl", "archive/data/0", "archive/data/1", "archive/version"]))
            .expect("fingerprint");
        assert_eq!(f.format, "pytorch-zip");
        assert_eq!(f.tensor_count, 2);
    }

    #[test]
    fn archive_written_by_another_zip_implementation() {
        // Python's zipfile, with torch.save's entry layout (test-data/models/README.md).
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/models/python-zipfile-torch-layout.pt");
        let bytes = std::fs::read(p).expect("test data");
        let f = fp(&bytes).expect("fingerprint");
        assert_eq!(f.tensor_count, 1);
        assert_eq!(f.metadata.get("zip.entries").map(String::as_str), Some("3"));
    }

    #[test]
    fn hostile_archives_are_errors() {
        assert!(fp(b"PK\x03\x04 not really").is_err());
        assert!(fp(&zip(&["just/a/file"])).is_err(), "no pickle: not a checkpoint");
        let mut z = zip(&["archive/data.pkl"]);
        let n = z.len();
        z[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(fp(&z).is_err(), "directory offset outside the file");
        let good = zip(&["archive/data.pkl", "archive/data/0"]);
        for cut in 0..good.len() {
            let _ = fp(&good[..cut]);
        }
    }
}

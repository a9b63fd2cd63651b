//! Bounded reads of files the operator names (policy, tenant and list files, CA bundles): one size
//! limit and one error line per file, for every module that reads them.

use std::path::Path;

/// A regular file of at most `limit` bytes, or one line naming `what` and the path.
pub fn read_bounded_file(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {}: not a regular file", path.display()));
    }
    if meta.len() > limit {
        return Err(format!("{what} {}: larger than {limit} bytes", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

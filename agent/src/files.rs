//! The one bounded reader of files the agent does not control (`/proc`, sysfs, config, keys, the
//! kubelet's token): never more than the caller's limit, whatever the file claims.

use std::io::Read;
use std::path::Path;

/// Reads at most `limit` bytes of a file; `None` when it cannot be opened.
pub fn read_bounded(path: &Path, limit: usize) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(limit as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

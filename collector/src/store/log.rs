//! The transparency log's storage: leaves in commit order, remembered subtrees, and the signed heads.

use super::*;

/// What a transparency-log leaf commits to: host id, NUL, sequence number (big-endian), and the SHA-256
/// of the report's signed bytes. Verifiers rebuild it from an export's subject.
pub fn log_leaf_data(host_id: &str, seq: u64, report_sha256: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(host_id.len() + 41);
    v.extend_from_slice(host_id.as_bytes());
    v.push(0);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(report_sha256);
    v
}

impl Store {
    /// Up to `limit` leaf hashes after the first `skip`, in log order (the leaves a frontier of `skip`
    /// leaves has not seen). Log indexes are dense from 1, so this is a range read on the key.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_leaves_after(&self, skip: u64, limit: u64) -> Result<Vec<[u8; 32]>> {
        self.reader()
            .rows(
                "SELECT leaf_hash FROM log_leaves WHERE idx > ?1 ORDER BY idx LIMIT ?2",
                params![skip as i64, limit as i64],
                |r| {
                    let v: Vec<u8> = r.get(0)?;
                    Ok(v.try_into().unwrap_or([0u8; 32]))
                },
            )
            .map_err(sql("read log leaves"))
    }

    /// Leaves in the transparency log (its indexes are dense from 1).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_size(&self) -> Result<u64> {
        self.reader()
            .row("SELECT COALESCE(MAX(idx), 0) FROM log_leaves", params![], |r| r.u64(0))
            .map_err(sql("read log size"))
            .map(Option::unwrap_or_default)
    }

    /// A remembered perfect subtree root of the log (see `merkle::Stored`).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_subtree(&self, level: u32, index: u64) -> Result<Option<[u8; 32]>> {
        self.reader()
            .row(
                "SELECT hash FROM log_subtrees WHERE level = ?1 AND idx = ?2",
                params![i64::from(level), index as i64],
                |r| {
                    let v: Vec<u8> = r.get(0)?;
                    Ok(<[u8; 32]>::try_from(v.as_slice()).ok())
                },
            )
            .map_err(sql("read log subtree"))
            .map(Option::flatten)
    }

    /// Remembers perfect subtree roots of the log (level, index, root); known ones are kept as they are.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn put_log_subtrees(&self, subtrees: &[(u32, u64, [u8; 32])]) -> Result<()> {
        if subtrees.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer();
        let mut tx = conn.write().map_err(sql("begin"))?;
        for chunk in subtrees.chunks(500) {
            let mut ps = Vec::with_capacity(3 * chunk.len());
            for (level, index, hash) in chunk {
                ps.extend_from_slice(params![i64::from(*level), *index as i64, hash.as_slice()]);
            }
            tx.defer_values(
                "INSERT INTO log_subtrees (level, idx, hash) VALUES ",
                3,
                " ON CONFLICT (level, idx) DO NOTHING",
                &ps,
            )
            .map_err(sql("remember log subtrees"))?;
        }
        tx.commit().map_err(sql("commit log subtrees"))
    }

    /// The first `size` leaf hashes of the transparency log (all of them for `None`).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn log_leaves(&self, size: Option<u64>) -> Result<Vec<[u8; 32]>> {
        self.reader()
            .rows(
                "SELECT leaf_hash FROM log_leaves ORDER BY idx LIMIT ?1",
                params![size.unwrap_or(i64::MAX as u64)],
                |r| {
                    let v: Vec<u8> = r.get(0)?;
                    let mut h = [0u8; 32];
                    if v.len() == 32 {
                        h.copy_from_slice(&v);
                    }
                    Ok(h)
                },
            )
            .map_err(sql("read log"))
    }

    /// Records a signed tree head.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn record_head(&self, size: u64, root: &[u8], signature: &[u8], now: i64) -> Result<()> {
        self.writer()
            .execute(
                "INSERT INTO log_heads (tree_size, root_hash, signature, signed_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![size, root, signature, now],
            )
            .map_err(sql("record tree head"))?;
        Ok(())
    }
}

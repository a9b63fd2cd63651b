//! The transparency log's signed head as the HTTP side keeps it: the log's right edge, extended by the
//! leaves sequenced since the last head, and the sequencer's hook that signs a new head after a pass.

use super::HttpState;
use crate::store::Store;

/// The log's frontier and the last head recorded, so a tree head reads only the new leaves and
/// records a head only when the tree grew.
#[derive(Debug, Default)]
pub struct LogHead {
    frontier: crate::merkle::Frontier,
    recorded: Option<u64>,
}

impl LogHead {
    /// Extends the frontier with the leaves sequenced since the last call, signs the head, and records
    /// it when the tree grew: O(new leaves) reads and hashes.
    ///
    /// # Errors
    /// Reading leaves or recording the head.
    pub fn advance(
        &mut self,
        store: &Store,
        key: &crate::export::ExportKey,
    ) -> Result<crate::export::keys::SignedHead, crate::store::StoreError> {
        for leaf in store.log_leaves_after(self.frontier.size(), LOG_READ_BATCH)? {
            self.frontier.push(leaf);
        }
        let (size, root) = (self.frontier.size(), self.frontier.root());
        let head = key.sign_head(size, &root);
        if self.recorded != Some(size) {
            store.record_head(head.tree_size, &root, head.signature.as_bytes(), crate::now_ms())?;
            self.recorded = Some(size);
        }
        Ok(head)
    }
}

/// The sequencer's hook: after a pass appended leaves, sign and record the new head, at most once per
/// [`HEAD_EVERY`] (a head per 50 ms pass would be a table of heads; `/api/v1/log/head` signs the
/// newest one on demand anyway).
pub fn head_signer(state: &HttpState) -> crate::store::OnSequenced {
    let (store, key, log) = (state.store.clone(), state.export_key.clone(), state.log.clone());
    let mut last: Option<std::time::Instant> = None;
    Box::new(move |_| {
        if last.is_some_and(|at| at.elapsed() < HEAD_EVERY) {
            return;
        }
        last = Some(std::time::Instant::now());
        if let Err(e) = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).advance(&store, &key) {
            tracing::warn!(error = %e, "signing the log's new head failed; the next pass retries");
        }
    })
}

/// The least time between two heads the sequencer signs.
pub const HEAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most new leaves one head request reads; a head that falls further behind catches up over the next
/// requests (each head is still a valid, signed, smaller tree).
const LOG_READ_BATCH: u64 = 1_000_000;

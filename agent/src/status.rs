//! `gpuattest-agent status`: the agent's own view, read from its state directory without changing it.

use std::path::Path;

use crate::identity::{Identity, StateError};
use crate::spool::Spool;
use crate::state::ChainState;

/// What `status` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Host id, once enrolled.
    pub host_id: Option<String>,
    /// Last report sequence number written.
    pub last_seq: u64,
    /// Last acknowledged by a collector.
    pub acked_seq: u64,
    /// Reports not yet acknowledged.
    pub spooled: u64,
    /// Spool bytes on disk.
    pub spool_bytes: u64,
    /// Key id of the agent's signing key, if it has one.
    pub key_id: Option<String>,
}

/// Reads the agent's own view from its state directory without changing anything.
///
/// # Errors
/// [`StateError`] when the state file is corrupt.
pub fn status(state_dir: &Path) -> Result<Status, StateError> {
    let chain = ChainState::load(state_dir)?;
    let (spooled, spool_bytes, spool_last) = Spool::inspect(state_dir, chain.acked_seq)?;
    let key_id = Identity::load_existing(state_dir).map(|i| i.key_id_hex());
    Ok(Status {
        host_id: chain.host_id,
        last_seq: chain.last_seq.max(spool_last),
        acked_seq: chain.acked_seq,
        spooled,
        spool_bytes,
        key_id,
    })
}

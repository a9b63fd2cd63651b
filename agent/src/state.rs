//! The agent's persistent chain state: its host id, the last sequence number it wrote, the hash of that
//! report, and the last sequence number a collector acknowledged. Survives restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{Result, StateError, io_err, write_atomic};

/// `<state-dir>/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChainState {
    /// Host id assigned at enrollment; `None` before enrollment.
    pub host_id: Option<String>,
    /// The collector address that enrolled this host.
    pub enrolled_with: Option<String>,
    /// Last report sequence number written (0 before the first).
    pub last_seq: u64,
    /// SHA-256 (hex) of the last report's bytes; empty before the first.
    pub last_hash: String,
    /// Last sequence number a collector acknowledged.
    pub acked_seq: u64,
    /// Unacknowledged ranges already covered by a signed gap record (dropped or damaged), so a restart
    /// does not record them twice. Pruned as acknowledgements pass them.
    #[serde(default)]
    pub recorded_gaps: Vec<(u64, u64)>,
}

impl ChainState {
    /// The state file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// Loads the state, or the empty state if there is none yet.
    ///
    /// # Errors
    /// [`StateError::Corrupt`] when the file is not valid state.
    pub fn load(state_dir: &Path) -> Result<ChainState> {
        let path = Self::path(state_dir);
        if !path.exists() {
            return Ok(ChainState::default());
        }
        let bytes = crate::files::read_bounded(&path, 64 * 1024)
            .ok_or_else(|| StateError::Io { path: path.clone(), source: std::io::Error::other("cannot read") })?;
        let state: ChainState = serde_json::from_slice(&bytes)
            .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        if state.acked_seq > state.last_seq {
            return Err(StateError::Corrupt {
                path,
                reason: format!("acked_seq {} is beyond last_seq {}", state.acked_seq, state.last_seq),
            });
        }
        Ok(state)
    }

    /// Saves the state atomically.
    ///
    /// # Errors
    /// [`StateError::Io`] naming the file.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = Self::path(state_dir);
        let json = serde_json::to_vec_pretty(self).map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
        write_atomic(&path, &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let t = tempfile::tempdir().expect("tmp");
        assert_eq!(ChainState::load(t.path()).expect("empty"), ChainState::default());
        let s = ChainState {
            host_id: Some("h".into()),
            enrolled_with: None,
            last_seq: 5,
            last_hash: "ab".into(),
            acked_seq: 3,
            recorded_gaps: vec![(4, 4)],
        };
        s.save(t.path()).expect("save");
        assert_eq!(ChainState::load(t.path()).expect("load"), s);
        std::fs::write(ChainState::path(t.path()), b"{\"last_seq\": \"x\"}").expect("w");
        assert!(matches!(ChainState::load(t.path()), Err(StateError::Corrupt { .. })));
        std::fs::write(ChainState::path(t.path()), b"{\"last_seq\": 1, \"acked_seq\": 2, \"last_hash\": \"\"}")
            .expect("w");
        assert!(matches!(ChainState::load(t.path()), Err(StateError::Corrupt { .. })));
    }
}

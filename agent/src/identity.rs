//! The agent's signing key and its persistent state directory.
//!
//! The Ed25519 key is created on first run (ring, PKCS#8 v2) in `<state-dir>/agent.key` with mode 0600
//! and never leaves the host; the collector pins its public key at enrollment.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair};

/// Problems with the state directory or the key in it.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file in the state directory could not be read or written.
    #[error("{path}: {source}; check that --state-dir exists and is writable by the agent")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file is readable by group or others.
    #[error("{path} has mode {mode:o}: a signing key must be private; run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file is not a PKCS#8 Ed25519 key.
    #[error(
        "{path} is not a PKCS#8 Ed25519 key ({reason}); move it aside to let the agent create a new key, then re-enroll"
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// ring's reason.
        reason: String,
    },
    /// A state file holds something the agent cannot read.
    #[error("{path} is corrupt ({reason}); restore it from backup or remove the state directory and re-enroll")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias for state operations.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Creates `dir` (mode 0700) if needed.
///
/// # Errors
/// [`StateError::Io`] when it cannot be created.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
///
/// # Errors
/// [`StateError::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    Ok(())
}

/// The agent's signing identity.
pub struct Identity {
    key: std::sync::Arc<Ed25519KeyPair>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("key_id", &self.key_id_hex()).finish()
    }
}

impl Identity {
    /// Loads `<state_dir>/agent.key`, creating it on first run.
    ///
    /// # Errors
    /// [`StateError`] when the directory is not writable, the key is readable by others, or the file is
    /// not a key.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity> {
        ensure_dir(state_dir)?;
        let path = state_dir.join("agent.key");
        if !path.exists() {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| StateError::BadKey { path: path.clone(), reason: e.to_string() })?;
            write_atomic(&path, doc.as_ref(), 0o600)?;
            tracing::info!(path = %path.display(), "created a new agent signing key");
        }
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::KeyPermissions { path, mode });
        }
        let bytes = crate::files::read_bounded(&path, 4096)
            .ok_or_else(|| StateError::Io { path: path.clone(), source: std::io::Error::other("cannot read") })?;
        let key = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|e| StateError::BadKey { path: path.clone(), reason: e.to_string() })?;
        Ok(Identity { key: std::sync::Arc::new(key) })
    }

    /// Loads an existing key without creating one; `None` when there is none or it is unusable.
    pub fn load_existing(state_dir: &Path) -> Option<Identity> {
        let bytes = crate::files::read_bounded(&state_dir.join("agent.key"), 4096)?;
        Ed25519KeyPair::from_pkcs8(&bytes).ok().map(|key| Identity { key: std::sync::Arc::new(key) })
    }

    /// Prepares the next key for a rotation in `<state_dir>/agent.key.next` (mode 0600), reusing one
    /// left by an interrupted rotation.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written or read back.
    pub fn next_key(state_dir: &Path) -> Result<Identity> {
        let path = state_dir.join("agent.key.next");
        if !path.exists() {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| StateError::BadKey { path: path.clone(), reason: e.to_string() })?;
            write_atomic(&path, doc.as_ref(), 0o600)?;
        }
        let bytes = crate::files::read_bounded(&path, 4096)
            .ok_or_else(|| StateError::Io { path: path.clone(), source: std::io::Error::other("cannot read") })?;
        let key = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| StateError::BadKey { path, reason: e.to_string() })?;
        Ok(Identity { key: std::sync::Arc::new(key) })
    }

    /// Makes the next key current once the collector accepted it; the old key is kept, renamed, for
    /// the record.
    ///
    /// # Errors
    /// [`StateError::Io`].
    pub fn commit_next(state_dir: &Path, now_unix_ms: i64) -> Result<()> {
        let current = state_dir.join("agent.key");
        let retired = state_dir.join(format!("agent.key.retired-{now_unix_ms}"));
        fs::rename(&current, &retired).map_err(io_err(&current))?;
        let next = state_dir.join("agent.key.next");
        fs::rename(&next, &current).map_err(io_err(&next))?;
        fs::File::open(state_dir).and_then(|d| d.sync_all()).map_err(io_err(state_dir))
    }

    /// Signs arbitrary bytes (rotation requests).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).as_ref().to_vec()
    }

    /// The key pair, for signing.
    pub fn key(&self) -> &Ed25519KeyPair {
        &self.key
    }

    /// The signing key, shared with tasks that answer landmark challenges.
    pub fn shared_key(&self) -> std::sync::Arc<Ed25519KeyPair> {
        self.key.clone()
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// SHA-256 of the public key.
    pub fn key_id(&self) -> [u8; 32] {
        gpuattest_proto::key_id(self.key.public_key().as_ref())
    }

    /// Hex key id.
    pub fn key_id_hex(&self) -> String {
        gpuattest_proto::hex(&self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_stable() {
        let t = tempfile::tempdir().expect("tmp");
        let a = Identity::load_or_create(t.path()).expect("create");
        let mode = fs::metadata(t.path().join("agent.key")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(t.path()).expect("load");
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn readable_key_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        Identity::load_or_create(t.path()).expect("create");
        let p = t.path().join("agent.key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Identity::load_or_create(t.path()).expect_err("must refuse");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn garbage_key_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("agent.key");
        write_atomic(&p, b"not a key", 0o600).expect("write");
        let e = Identity::load_or_create(t.path()).expect_err("must refuse");
        assert!(matches!(e, StateError::BadKey { .. }), "{e}");
    }
}

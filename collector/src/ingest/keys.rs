//! Each host's current signing key, kept in memory between its reports, so verifying a report costs
//! no store read (a round trip to the database on the shared store) in the usual case.
//!
//! Only a host's current key is kept, and only as a shortcut for verification: the commit checks the
//! key's standing again inside its transaction (`store::commit::place`), so a key retired after it was
//! kept here, by a rotation on any replica, still signs nothing past its last report; its reports are
//! refused at the commit instead of before it. Any other key id is read from the store.

use std::sync::Mutex;

use crate::store::generations::Generations;
use crate::store::{Result, Store};
use crate::verify::SigningKey;

/// Hosts whose current key is kept per generation (see [`Generations`]): a host that has not reported
/// for a generation has its key read again.
const KEPT_HOSTS: usize = 65_536;

/// A host's current key as last read from the store.
struct Kept {
    key_id: Vec<u8>,
    /// Raw Ed25519.
    public_key: Vec<u8>,
}

/// Each host's current key, by host id.
pub(super) struct CurrentKeys {
    keys: Mutex<Generations<Kept>>,
}

impl Default for CurrentKeys {
    fn default() -> CurrentKeys {
        CurrentKeys { keys: Mutex::new(Generations::new(KEPT_HOSTS)) }
    }
}

impl CurrentKeys {
    /// The key `key_id` of `host_id`: the kept current key when it is that one, else as the store holds
    /// it (kept when it is the host's current key).
    pub(super) fn signing_key(&self, store: &Store, host_id: &str, key_id: &[u8]) -> Result<Option<SigningKey>> {
        if let Some(key) = self.kept(host_id, key_id) {
            return Ok(Some(key));
        }
        let key = store.signing_key(host_id, key_id)?;
        if let Some(k) = key.as_ref().filter(|k| k.valid_through.is_none()) {
            self.lock().put(host_id.to_string(), Kept { key_id: key_id.to_vec(), public_key: k.public_key.clone() });
        }
        Ok(key)
    }

    /// The key `key_id` of `host_id` when it is the kept current key; `None` says "read the store".
    /// Never blocks on anything but this map's lock.
    pub(super) fn kept(&self, host_id: &str, key_id: &[u8]) -> Option<SigningKey> {
        let mut keys = self.lock();
        let kept = keys.take(host_id)?;
        // Put back (kept young), whichever key this report names.
        let hit = (kept.key_id == key_id).then(|| kept.public_key.clone());
        keys.put(host_id.to_string(), kept);
        hit.map(|public_key| SigningKey { public_key, valid_through: None })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<Kept>> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

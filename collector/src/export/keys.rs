//! The export key (Ed25519, `<data>/keys/export.pk8`, mode 0600, created on first use, or one shared by
//! every replica of a shared store, named by `GPUATTEST_EXPORT_KEY`), its public form as SPKI PEM for
//! customers, and signed tree heads of the transparency log.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use super::merkle::Hash;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Domain-separation prefix of tree-head signatures.
pub const TREE_HEAD_CONTEXT: &[u8] = b"gpuattest.v1.TreeHead\0";

/// The collector's export signing key.
pub struct ExportKey {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportKey").field("key_id", &self.key_id()).finish()
    }
}

/// Names a key file every replica loads (a mounted Secret) instead of `<data>/keys/export.pk8`.
pub const EXPORT_KEY_ENV: &str = "GPUATTEST_EXPORT_KEY";

impl ExportKey {
    /// The key `GPUATTEST_EXPORT_KEY` names when set, else `<data>/keys/export.pk8` (created on first use).
    ///
    /// # Errors
    /// As [`ExportKey::load_shared`] and [`ExportKey::load_or_create_in`].
    pub fn load_or_create(data: &Path) -> Result<ExportKey, String> {
        match std::env::var_os(EXPORT_KEY_ENV) {
            Some(p) if !p.is_empty() => Self::load_shared(Path::new(&p)),
            _ => Self::load_or_create_in(data),
        }
    }

    /// Loads a key several replicas share: it must exist (it is never created here) and must not be
    /// readable by every user; group access is allowed, as Kubernetes gives mounted Secrets.
    ///
    /// # Errors
    /// A sentence naming the file and what to do.
    pub fn load_shared(path: &Path) -> Result<ExportKey, String> {
        use std::os::unix::fs::PermissionsExt;
        let err = |e: &dyn std::fmt::Display| format!("{EXPORT_KEY_ENV}={}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| {
            err(&format!("{e}; create the shared key once with `gpuattest-collector --data DIR export-key` and copy DIR/keys/export.pk8 there"))
        })?;
        if !meta.is_file() || meta.len() > 4096 {
            return Err(err(&"not a key file (a PKCS#8 Ed25519 key of a few dozen bytes)"));
        }
        if meta.permissions().mode() & 0o007 != 0 {
            return Err(err(&format!("readable by every user; run `chmod o-rwx {}`", path.display())));
        }
        let bytes = std::fs::read(path).map_err(|e| err(&e))?;
        let key = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| err(&e))?;
        Ok(ExportKey { key })
    }

    /// Loads `<data>/keys/export.pk8`, creating it on first use.
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be created, read, is readable by others, or is not a key.
    pub fn load_or_create_in(data: &Path) -> Result<ExportKey, String> {
        Self::load_or_create_at(&data.join("keys").join("export.pk8"))
    }

    /// Loads the PKCS#8 Ed25519 key at `path`, creating it (0600, its directory 0700 when new) on first
    /// use: the export key, and a landmark's key.
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be created, read, is readable by others, or is not a key.
    pub fn load_or_create_at(path: &Path) -> Result<ExportKey, String> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|e| err(&e))?;
            let mut f =
                std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path).map_err(|e| err(&e))?;
            std::io::Write::write_all(&mut f, doc.as_ref()).map_err(|e| err(&e))?;
            f.sync_all().map_err(|e| err(&e))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| err(&e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!("{} is readable by others; run `chmod 600 {}`", path.display(), path.display()));
        }
        if meta.len() > 4096 {
            return Err(err(&"not a key file (a PKCS#8 Ed25519 key of a few dozen bytes)"));
        }
        let bytes = std::fs::read(path).map_err(|e| err(&e))?;
        let key = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| err(&e))?;
        Ok(ExportKey { key })
    }

    /// The raw public key (32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Signs bytes.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).as_ref().to_vec()
    }

    /// SPKI DER of the public key.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut v = SPKI_PREFIX.to_vec();
        v.extend_from_slice(self.key.public_key().as_ref());
        v
    }

    /// The public key as SPKI PEM.
    pub fn spki_pem(&self) -> String {
        let b = B64.encode(self.spki_der());
        let lines: Vec<&str> = b.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// SHA-256 (hex) of the SPKI DER: the DSSE key id.
    pub fn key_id(&self) -> String {
        gpuattest_proto::hex(&gpuattest_proto::sha256(&self.spki_der()))
    }

    /// Signs a tree head.
    pub fn sign_head(&self, tree_size: u64, root: &Hash) -> SignedHead {
        SignedHead {
            tree_size,
            root_hash: gpuattest_proto::hex(root),
            signature: B64.encode(self.sign(&tree_head_message(tree_size, root))),
        }
    }
}

/// What a tree-head signature covers: context, size (big-endian), root.
pub fn tree_head_message(tree_size: u64, root: &Hash) -> Vec<u8> {
    let mut m = TREE_HEAD_CONTEXT.to_vec();
    m.extend_from_slice(&tree_size.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// A signed tree head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedHead {
    /// Leaves in the tree.
    pub tree_size: u64,
    /// Root hash, hex.
    pub root_hash: String,
    /// Base64 Ed25519 signature over [`tree_head_message`].
    pub signature: String,
}

impl SignedHead {
    /// Checks the signature with a raw public key and returns the root.
    ///
    /// # Errors
    /// When the root is malformed or the signature does not verify.
    pub fn verify(&self, public: &[u8]) -> Result<Hash, String> {
        let bytes: Vec<u8> = (0..self.root_hash.len() / 2)
            .filter_map(|i| u8::from_str_radix(self.root_hash.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let root: Hash = bytes.try_into().map_err(|_| format!("tree head {} has a malformed root", self.tree_size))?;
        let sig = B64.decode(&self.signature).map_err(|_| "tree-head signature is not base64".to_string())?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(&tree_head_message(self.tree_size, &root), &sig)
            .map_err(|_| format!("the tree head of size {} is not signed by this key", self.tree_size))?;
        Ok(root)
    }
}

/// Reads an Ed25519 public key from SPKI PEM.
///
/// # Errors
/// A sentence when the text is not an Ed25519 SPKI PEM.
pub fn public_key_from_pem(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PUBLIC KEY-----")
        .collect();
    let der = B64.decode(body.as_bytes()).map_err(|_| "the key file is not a PEM public key".to_string())?;
    if der.len() != 44 || der[..12] != SPKI_PREFIX {
        return Err("the key is not an Ed25519 SubjectPublicKeyInfo (use `gpuattest-collector export-key`)".into());
    }
    Ok(der[12..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_refusals() {
        let t = tempfile::tempdir().expect("tmp");
        let k = ExportKey::load_or_create_in(t.path()).expect("key");
        let again = ExportKey::load_or_create_in(t.path()).expect("same key");
        assert_eq!(k.key_id(), again.key_id());
        let pk = public_key_from_pem(&k.spki_pem()).expect("parse");
        assert_eq!(pk, k.key.public_key().as_ref());
        assert!(public_key_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
        assert!(public_key_from_pem("garbage").is_err());
        let head = k.sign_head(5, &[7; 32]);
        assert_eq!(head.verify(&pk), Ok([7; 32]));
        let mut forged = head.clone();
        forged.tree_size = 6;
        assert!(forged.verify(&pk).is_err());
    }

    #[test]
    fn a_shared_key_is_loaded_never_created_and_never_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().expect("tmp");
        let k = ExportKey::load_or_create_in(t.path()).expect("key");
        let path = t.path().join("keys/export.pk8");
        // A mounted Secret: group-readable is fine.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("chmod");
        assert_eq!(ExportKey::load_shared(&path).expect("shared").key_id(), k.key_id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        let e = ExportKey::load_shared(&path).expect_err("world-readable");
        assert!(e.contains("GPUATTEST_EXPORT_KEY=") && e.contains("chmod o-rwx"), "{e}");
        let e = ExportKey::load_shared(&t.path().join("missing.pk8")).expect_err("missing");
        assert!(e.contains("export-key") && !t.path().join("missing.pk8").exists(), "{e}");
        std::fs::write(t.path().join("junk.pk8"), b"not a key").expect("write");
        std::fs::set_permissions(t.path().join("junk.pk8"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(ExportKey::load_shared(&t.path().join("junk.pk8")).is_err());
    }
}

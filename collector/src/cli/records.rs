//! Backups, exports and their offline verification, and the transparency log's head and proofs.

use super::*;

/// `backup --out DIR`: a consistent copy of the store, the export signing key and the policy file,
/// taken while the collector runs. Restore by copying DIR's contents into an empty `--data`.
///
/// # Errors
/// Usage error when DIR exists and is not empty; runtime errors for the copy.
pub fn backup(at: &Place, out_dir: &Path) -> Result {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if std::fs::read_dir(out_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(usage(format!("{}: not empty; back up into a new directory", out_dir.display())));
    }
    if at.database.is_some() {
        return Err(usage(
            "--database: `backup` copies the embedded store; back the shared store up with PostgreSQL's tools (pg_dump or base backups) and copy --data for the export key",
        ));
    }
    if !at.data.join("gpuattest.db").exists() {
        return Err(usage(format!("{}: no store here; pass the collector's --data", at.data.display())));
    }
    let store = open(at)?;
    let mkdir = |d: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(|e| runtime(format!("{}: {e}", d.display())))
    };
    mkdir(out_dir)?;
    store.backup_into(&out_dir.join("gpuattest.db")).map_err(runtime)?;
    let mut copied = vec!["gpuattest.db".to_string()];
    for rel in ["keys/export.pk8", "policy.toml"] {
        let from = at.data.join(rel);
        if !from.exists() {
            continue;
        }
        let to = out_dir.join(rel);
        if let Some(parent) = to.parent() {
            mkdir(parent)?;
        }
        std::fs::copy(&from, &to).map_err(|e| runtime(format!("copying {}: {e}", from.display())))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| runtime(format!("{}: {e}", to.display())))?;
        copied.push(rel.to_string());
    }
    // The files the policy names (tenant file, screening lists), wherever they live: a restore
    // without them would judge the same evidence by another policy. Kept under policy-files/ with
    // their original paths in a manifest, to be put back where the policy expects them.
    let policy_file = at.data.join("policy.toml");
    if policy_file.exists() {
        let source = crate::policy::PolicySource { path: policy_file, explicit: true };
        let policy = source
            .load()
            .map_err(|e| runtime(format!("the policy does not load, so its files are not backed up: {e}")))?;
        let mut manifest = String::new();
        for (i, from) in policy.sources().iter().enumerate() {
            let name = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
            let rel = format!("policy-files/{i:02}-{name}");
            let to = out_dir.join(&rel);
            if let Some(parent) = to.parent() {
                mkdir(parent)?;
            }
            std::fs::copy(from, &to).map_err(|e| runtime(format!("copying {}: {e}", from.display())))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| runtime(format!("{}: {e}", to.display())))?;
            manifest.push_str(&format!("{rel}\t{}\n", from.display()));
            copied.push(rel);
        }
        if !manifest.is_empty() {
            std::fs::write(out_dir.join("policy-files/MANIFEST.tsv"), manifest)
                .map_err(|e| runtime(format!("writing the manifest: {e}")))?;
        }
    }
    out(&format!(
        "backup written to {} ({}); to restore, stop the collector, copy these into an empty --data directory, then run `gpuattest-collector reports verify`\n",
        out_dir.display(),
        copied.join(", ")
    ))
}

/// `export-key`: the public key that signs exports, as SPKI PEM.
///
/// # Errors
/// When the key cannot be created or read.
pub fn export_key(at: &Place) -> Result {
    let key = crate::export::ExportKey::load_or_create(&at.data).map_err(config)?;
    out(&key.spki_pem())
}

/// Options of `export`.
#[derive(Debug, Clone)]
pub struct ExportArgs {
    /// Tenant.
    pub tenant: String,
    /// Output file.
    pub out: std::path::PathBuf,
    /// Period start.
    pub since: Option<String>,
    /// Period end.
    pub until: Option<String>,
    /// Drop command lines and paths.
    pub redact: bool,
}

/// `export`: write a signed attestation for one tenant.
///
/// # Errors
/// Usage errors for bad times; runtime errors when the tenant has nothing in the period or the file
/// cannot be written.
pub fn export(at: &Place, a: &ExportArgs) -> Result {
    let now = crate::now_ms();
    let since = a
        .since
        .as_deref()
        .map(|s| crate::export::statement::parse_time(s, now))
        .transpose()
        .map_err(usage)?
        .unwrap_or(0);
    let until = a
        .until
        .as_deref()
        .map(|s| crate::export::statement::parse_time(s, now))
        .transpose()
        .map_err(usage)?
        .unwrap_or(now + 1);
    if since >= until {
        return Err(usage("--since must be before --until"));
    }
    let store = open(at)?;
    let policy = Policy::load_from_data(&at.data).map_err(config)?;
    let key = crate::export::ExportKey::load_or_create(&at.data).map_err(config)?;
    let req = crate::export::statement::ExportRequest { tenant: a.tenant.clone(), since, until, redact: a.redact };
    let mut last_shown = std::time::Instant::now();
    let statement = crate::export::statement::build(&store, &key, &req, &policy, |done, total| {
        if total > 5000 && (last_shown.elapsed() > std::time::Duration::from_secs(1) || done == total) {
            eprintln!("exporting: {done}/{total} reports");
            last_shown = std::time::Instant::now();
        }
    })
    .map_err(runtime)?;
    let subjects = statement["subject"].as_array().map_or(0, Vec::len);
    let envelope = crate::export::seal(&statement, &key);
    let text = serde_json::to_vec_pretty(&envelope).map_err(runtime)?;
    let tmp = a.out.with_extension("tmp");
    // 0600: an export may be unredacted (command lines, paths).
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
        .and_then(|()| std::fs::rename(&tmp, &a.out))
        .map_err(|e| runtime(format!("{}: {e}", a.out.display())))?;
    store
        .audit(
            now,
            "cli",
            "export",
            &a.tenant,
            &format!("{subjects} reports, redacted={}, to {}", a.redact, a.out.display()),
        )
        .map_err(runtime)?;
    out(&format!(
        "wrote {} ({subjects} reports of tenant {}, signed by key {})\n",
        a.out.display(),
        a.tenant,
        key.key_id()
    ))
}

/// `verify FILE --key PEM`: exit 0 only when the attestation is valid.
///
/// # Errors
/// One line saying what does not hold.
pub fn verify(file: &Path, key: &Path, json: bool) -> Result {
    let envelope = read_bounded_text(file, "export")?;
    let pem = String::from_utf8(read_bounded_text(key, "key")?)
        .map_err(|_| usage(format!("key {} is not text", key.display())))?;
    match crate::export::verify(&envelope, &pem) {
        Ok(v) if json => print_json(
            &serde_json::json!({"valid": true, "tenant": v.tenant, "subjects": v.subjects, "tree_size": v.tree_size,
                "root_hash": v.root_hash, "location_records": v.location_records, "unsequenced": v.unsequenced}),
        ),
        Ok(v) => out(&format!(
            "valid: tenant {}, {} reports, each included in the log of size {} (root {}); {} location records checked{}\n",
            v.tenant,
            v.subjects,
            v.tree_size,
            v.root_hash,
            v.location_records,
            if v.unsequenced > 0 {
                format!("; {} more reports named as not yet sequenced into the log (unproven)", v.unsequenced)
            } else {
                String::new()
            }
        )),
        Err(e) => Err(runtime(format!("{}: invalid: {e}", file.display()))),
    }
}

/// `log head`: sign and print the current tree head.
///
/// # Errors
/// When the store or key cannot be read.
pub fn log_head(at: &Place) -> Result {
    let store = open(at)?;
    let key = crate::export::ExportKey::load_or_create(&at.data).map_err(config)?;
    // Reports acknowledged and still queued are sequenced first: the head covers every one so far.
    store.sequence_pending().map_err(runtime)?;
    let leaves = store.log_leaves(None).map_err(runtime)?;
    let root = crate::export::merkle::root(&leaves);
    let head = key.sign_head(leaves.len() as u64, &root);
    store.record_head(head.tree_size, &root, head.signature.as_bytes(), crate::now_ms()).map_err(runtime)?;
    print_json(&head)
}

/// `log consistency --from N [--to M]`: a proof that the log of size M extends the log of size N.
///
/// # Errors
/// Usage errors for sizes the log does not have.
pub fn log_consistency(at: &Place, from: u64, to: Option<u64>) -> Result {
    let store = open(at)?;
    let key = crate::export::ExportKey::load_or_create(&at.data).map_err(config)?;
    store.sequence_pending().map_err(runtime)?;
    let leaves = store.log_leaves(None).map_err(runtime)?;
    let to = to.unwrap_or(leaves.len() as u64);
    if from == 0 || from > to || to > leaves.len() as u64 {
        return Err(usage(format!("sizes must satisfy 1 <= --from <= --to <= {} (the log's size)", leaves.len())));
    }
    let upto = &leaves[..to as usize];
    let proof = crate::export::ConsistencyProof {
        from: key.sign_head(from, &crate::export::merkle::root(&upto[..from as usize])),
        to: key.sign_head(to, &crate::export::merkle::root(upto)),
        proof: crate::export::merkle::consistency_proof(from as usize, upto)
            .iter()
            .map(|h| gpuattest_proto::hex(h))
            .collect(),
    };
    print_json(&proof)
}

/// `log verify-consistency FILE --key PEM`.
///
/// # Errors
/// One line saying which check failed.
pub fn log_verify_consistency(file: &Path, key: &Path) -> Result {
    let proof = read_bounded_text(file, "proof")?;
    let pem = String::from_utf8(read_bounded_text(key, "key")?).map_err(|_| usage("the key is not text"))?;
    crate::export::verify_consistency(&proof, &pem)
        .map_err(|e| runtime(format!("{}: invalid: {e}", file.display())))?;
    out("consistent: the newer log extends the older one\n")
}

//! Hosts: enrollment (with its refusals), keys and their rotation, revocation, and the per-host views (`hosts list`, gauges, silence).

use super::*;

/// An enrolled host.
#[derive(Debug, Clone)]
pub struct HostRow {
    /// Host id.
    pub host_id: String,
    /// Hostname at enrollment.
    pub hostname: String,
    /// Tenant the host serves.
    pub tenant: Option<String>,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// SHA-256 of the key.
    pub key_id: Vec<u8>,
    /// Highest stored sequence number.
    pub last_seq: u64,
    /// Revoked at (Unix ms).
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// SHA-256 of the public key of the client certificate it enrolled with (mTLS), if any.
    pub client_key: Option<Vec<u8>>,
}

/// One host on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGauge {
    /// Host id.
    pub host_id: String,
    /// Tenant it was enrolled for.
    pub tenant: Option<String>,
    /// When its last stored report arrived, Unix ms.
    pub last_report_ms: Option<i64>,
    /// Sequence numbers missing and not covered by a signed gap record.
    pub gaps: u64,
}

/// What `hosts list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    /// Host id.
    pub host_id: String,
    /// Hostname.
    pub hostname: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Highest stored sequence number.
    pub last_seq: u64,
    /// Distinct reports stored.
    pub reports: u64,
    /// Sequence numbers between 1 and `last_seq` with no stored report that no signed gap record
    /// accounts for: unexplained loss.
    pub gaps: u64,
    /// Missing sequence numbers the agent accounted for with signed gap records (spool overflow or
    /// damage).
    pub recorded_gaps: u64,
    /// Last report received (RFC 3339).
    pub last_seen: Option<String>,
    /// Enrolled at (RFC 3339).
    pub enrolled_at: String,
    /// Enrolled at, Unix ms.
    #[serde(skip)]
    pub enrolled_at_ms: i64,
    /// Revoked.
    pub revoked: bool,
    /// Each GPU's attestation evidence state (filled by `hosts list` and the hosts API).
    pub gpu_evidence: Vec<GpuEvidenceState>,
    /// The location verdict (filled by `hosts list` and the hosts API).
    pub location: Option<serde_json::Value>,
}

/// Missing sequence numbers of a host that its signed gap records account for: the union of the
/// recorded ranges, less the reports in them that did arrive.
pub(super) fn recorded_missing(conn: &mut Db, host_id: &str) -> Result<u64> {
    let ranges = conn
        .rows(
            "SELECT first_seq, last_seq FROM gap_records WHERE host_id = ?1 ORDER BY first_seq",
            params![host_id],
            |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
        )
        .map_err(sql("read gap records"))?;
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some((_, end)) if a <= *end + 1 => *end = (*end).max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut total = 0u64;
    for (a, b) in merged {
        let stored: i64 = conn
            .row(
                "SELECT COUNT(*) FROM reports WHERE host_id = ?1 AND seq BETWEEN ?2 AND ?3",
                params![host_id, a, b],
                |r| r.get(0),
            )
            .map_err(sql("count recorded range"))?
            .unwrap_or(0);
        total += (b - a + 1 - stored).max(0) as u64;
    }
    Ok(total)
}

/// The key `host_id` holds under `key_id` (see [`Store::signing_key`]), inside any transaction.
pub(super) fn signing_key(conn: &mut Db, host_id: &str, key_id: &[u8]) -> Result<Option<SigningKey>> {
    conn.row(
        "SELECT public_key, CAST(NULL AS BIGINT) FROM hosts WHERE host_id = ?1 AND key_id = ?2 \
         UNION ALL SELECT public_key, valid_through_seq FROM host_keys WHERE host_id = ?1 AND key_id = ?2",
        params![host_id, key_id],
        |r| Ok(SigningKey { public_key: r.get(0)?, valid_through: r.get::<Option<i64>>(1)?.map(|v| v.max(0) as u64) }),
    )
    .map_err(sql("read signing key"))
}

/// `<hostname>-<first 6 hex of key id>`, sanitised: readable in flags, unique per key.
pub(super) fn new_host_id(hostname: &str, key_id: &[u8]) -> String {
    let clean: String =
        hostname.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').take(48).collect();
    let base = if clean.is_empty() { "host".to_string() } else { clean };
    format!("{base}-{}", gpuattest_proto::hex(&key_id[..key_id.len().min(3)]))
}

/// An enrollment refused with a record of it: the audit entry commits, nothing else does. The refusal
/// to return, or the store's error when even the audit entry cannot be written.
fn refused(mut tx: super::db::Tx<'_>, now: i64, token_id: &str, why: &str, message: String) -> StoreError {
    match audit_tx(&mut tx, now, "agent", "enroll.refused", token_id, why)
        .and_then(|()| tx.commit().map_err(sql("commit refusal")))
    {
        Ok(()) => StoreError::Refused(message),
        Err(e) => e,
    }
}

impl Store {
    /// Consumes a one-time enrollment token and pins `public_key` to a new host, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Refused`] with a reason the agent can act on: unknown, used, expired or revoked
    /// token; key already enrolled.
    #[allow(clippy::too_many_arguments)]
    pub fn enroll(
        &self,
        token_hash: &[u8],
        public_key: &[u8],
        key_id: &[u8],
        hostname: &str,
        machine_id: &str,
        facts_json: &str,
        now: i64,
    ) -> Result<HostRow> {
        self.enroll_bound(token_hash, public_key, key_id, hostname, machine_id, facts_json, None, now)
    }

    /// [`Store::enroll`], binding the host to `client_key` (SHA-256 of the public key of the client
    /// certificate it enrolled over mTLS): its streams must present that key. A key another live host
    /// is bound to is refused: two nodes sharing one certificate could not be told apart.
    ///
    /// # Errors
    /// As [`Store::enroll`], and [`StoreError::Refused`] for a client key already bound.
    #[allow(clippy::too_many_arguments)] // The enrollment's facts, each from the request; a struct would only rename them.
    pub fn enroll_bound(
        &self,
        token_hash: &[u8],
        public_key: &[u8],
        key_id: &[u8],
        hostname: &str,
        machine_id: &str,
        facts_json: &str,
        client_key: Option<&[u8]>,
        now: i64,
    ) -> Result<HostRow> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let Some(TokenRow { id: token_id, role, tenant, expires_at, used_at, uses, max_uses, revoked_at }) =
            token_row(&mut tx, token_hash)?
        else {
            return Err(StoreError::Refused(
                "unknown enroll token; mint one with `gpuattest-collector token create --role enroll`".into(),
            ));
        };
        if role != "enroll" {
            return Err(StoreError::Refused(format!("token {token_id} has role {role}, not enroll")));
        }
        if let Some(at) = used_at.filter(|_| uses >= max_uses) {
            let why = format!("token used up ({uses} of {max_uses}, last at {}); host {hostname}", rfc3339(at));
            return Err(refused(
                tx,
                now,
                &token_id,
                &why,
                if max_uses == 1 {
                    format!("enroll token {token_id} was already used at {}; mint a new one", rfc3339(at))
                } else {
                    format!("enroll token {token_id} has enrolled all {max_uses} hosts it allows; mint a new one")
                },
            ));
        }
        if revoked_at.is_some() {
            return Err(StoreError::Refused(format!("enroll token {token_id} is revoked; mint a new one")));
        }
        if expires_at <= now {
            return Err(StoreError::Refused(format!(
                "enroll token {token_id} expired at {}; mint a new one",
                rfc3339(expires_at)
            )));
        }
        let existing: Option<String> = tx
            .row("SELECT host_id FROM hosts WHERE key_id = ?1", params![key_id], |r| r.get(0))
            .map_err(sql("look up key"))?;
        if let Some(h) = existing {
            return Err(StoreError::Refused(format!(
                "this key is already enrolled as host {h}; re-enrolling a known host needs an operator's action"
            )));
        }
        if let Some(ck) = client_key {
            let bound: Option<String> = tx
                .row(
                    "SELECT host_id FROM hosts WHERE client_key_sha256 = ?1 AND revoked_at IS NULL",
                    params![ck],
                    |r| r.get(0),
                )
                .map_err(sql("look up client key"))?;
            if let Some(h) = bound {
                let why = format!("client certificate key bound to {h}; host {hostname}");
                return Err(refused(
                    tx,
                    now,
                    &token_id,
                    &why,
                    format!(
                        "this client certificate's key is already bound to host {h}: give each node a certificate (and key) of its own"
                    ),
                ));
            }
        }
        // The same machine (machine id and hostname) enrolling again with a new key is a re-enrollment:
        // it needs an operator's action, so a stolen token cannot quietly take over a host's identity.
        if !machine_id.is_empty() {
            let known: Option<String> = tx
                .row(
                    "SELECT host_id FROM hosts WHERE machine_id = ?1 AND hostname = ?2 AND revoked_at IS NULL",
                    params![machine_id, hostname],
                    |r| r.get(0),
                )
                .map_err(sql("look up machine"))?;
            if let Some(h) = known {
                let why = format!("re-enrollment of {h} without operator action");
                return Err(refused(
                    tx,
                    now,
                    &token_id,
                    &why,
                    format!(
                        "machine {machine_id} ({hostname}) is already enrolled as host {h}; an operator must revoke it first (`gpuattest-collector hosts revoke {h} --reason ...`)"
                    ),
                ));
            }
        }
        let host_id = new_host_id(hostname, key_id);
        tx.execute(
            "INSERT INTO hosts (host_id, hostname, machine_id, tenant, public_key, key_id, enrolled_at, enroll_token_id, facts, client_key_sha256) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![&host_id, hostname, machine_id, &tenant, public_key, key_id, now, &token_id, facts_json, client_key],
        )
        .map_err(sql("insert host"))?;
        tx.execute("UPDATE tokens SET used_at = ?1, uses = uses + 1 WHERE id = ?2", params![now, &token_id])
            .map_err(sql("mark token used"))?;
        audit_tx(&mut tx, now, &format!("token:{token_id}"), "host.enroll", &host_id, &format!("hostname={hostname}"))?;
        tx.commit().map_err(sql("commit enrollment"))?;
        Ok(HostRow {
            host_id,
            hostname: hostname.to_string(),
            tenant,
            public_key: public_key.to_vec(),
            key_id: key_id.to_vec(),
            last_seq: 0,
            revoked_at: None,
            revoked_reason: None,
            client_key: client_key.map(<[u8]>::to_vec),
        })
    }

    /// One host.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn host(&self, host_id: &str) -> Result<Option<HostRow>> {
        self.reader()
            .row(
                "SELECT host_id, hostname, tenant, public_key, key_id, last_seq, revoked_at, revoked_reason, client_key_sha256 FROM hosts WHERE host_id = ?1",
                params![host_id],
                |r| {
                    Ok(HostRow {
                        host_id: r.get(0)?,
                        hostname: r.get(1)?,
                        tenant: r.get(2)?,
                        public_key: r.get(3)?,
                        key_id: r.get(4)?,
                        last_seq: r.u64(5)?,
                        revoked_at: r.get(6)?,
                        revoked_reason: r.get(7)?,
                        client_key: r.get(8)?,
                    })
                },
            )
            .map_err(sql("look up host"))
    }

    /// Every host with its report accounting, optionally only one tenant's.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn hosts(&self, tenant: Option<&str>) -> Result<Vec<HostSummary>> {
        let mut conn = self.reader();
        let mut hosts = conn
            .rows(
                "SELECT h.host_id, h.hostname, h.tenant, h.last_seq, \
                   (SELECT COUNT(*) FROM reports r WHERE r.host_id = h.host_id), h.last_seen, h.enrolled_at, h.revoked_at \
                 FROM hosts h WHERE (CAST(?1 AS TEXT) IS NULL OR h.tenant = ?1) ORDER BY h.hostname, h.host_id",
                params![tenant],
                |r| {
                    let last_seq = r.u64(3)?;
                    let reports = r.u64(4)?;
                    Ok(HostSummary {
                        host_id: r.get(0)?,
                        hostname: r.get(1)?,
                        tenant: r.get(2)?,
                        last_seq,
                        reports,
                        gaps: last_seq.saturating_sub(reports),
                        recorded_gaps: 0,
                        last_seen: r.get::<Option<i64>>(5)?.map(rfc3339),
                        enrolled_at: rfc3339(r.get(6)?),
                        enrolled_at_ms: r.get(6)?,
                        revoked: r.get::<Option<i64>>(7)?.is_some(),
                        gpu_evidence: Vec::new(),
                        location: None,
                    })
                },
            )
            .map_err(sql("list hosts"))?;
        for h in hosts.iter_mut().filter(|h| h.gaps > 0) {
            let recorded = recorded_missing(&mut conn, &h.host_id)?;
            h.recorded_gaps = recorded.min(h.gaps);
            h.gaps -= h.recorded_gaps;
        }
        Ok(hosts)
    }

    /// Replaces a host's key with `new_public_key`, retiring the current one: reports up to
    /// `valid_through_seq` still verify against it. Idempotent when the new key is already current.
    ///
    /// # Errors
    /// [`StoreError::Refused`] when the host is unknown or revoked, or the new key belongs to another
    /// host.
    pub fn rotate_key(
        &self,
        host_id: &str,
        new_public_key: &[u8],
        valid_through_seq: u64,
        now: i64,
    ) -> Result<Vec<u8>> {
        let new_key_id = gpuattest_proto::key_id(new_public_key).to_vec();
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let current: Option<(Vec<u8>, Vec<u8>, Option<i64>)> = tx
            .row("SELECT public_key, key_id, revoked_at FROM hosts WHERE host_id = ?1", params![host_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(sql("read host key"))?;
        let Some((old_pk, old_id, revoked)) = current else {
            return Err(StoreError::Refused(format!("host {host_id} is not enrolled")));
        };
        if revoked.is_some() {
            return Err(StoreError::Refused(format!("host {host_id} is revoked")));
        }
        if old_id == new_key_id {
            return Ok(new_key_id);
        }
        let taken: Option<String> = tx
            .row("SELECT host_id FROM hosts WHERE key_id = ?1", params![&new_key_id], |r| r.get(0))
            .map_err(sql("check new key"))?;
        if let Some(other) = taken {
            return Err(StoreError::Refused(format!("the new key is already enrolled as host {other}")));
        }
        tx.execute(
            "INSERT INTO host_keys (host_id, key_id, public_key, valid_through_seq, retired_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
            params![host_id, &old_id, &old_pk, valid_through_seq, now],
        )
        .map_err(sql("retire key"))?;
        tx.execute(
            "UPDATE hosts SET public_key = ?1, key_id = ?2 WHERE host_id = ?3",
            params![new_public_key, &new_key_id, host_id],
        )
        .map_err(sql("install key"))?;
        audit_tx(
            &mut tx,
            now,
            &format!("host:{host_id}"),
            "host.rotate-key",
            host_id,
            &format!(
                "{} -> {} (old key valid through seq {valid_through_seq})",
                gpuattest_proto::hex(&old_id),
                gpuattest_proto::hex(&new_key_id)
            ),
        )?;
        tx.commit().map_err(sql("commit rotation"))?;
        Ok(new_key_id)
    }

    /// The key `host_id` holds under `key_id` now: its current key, or a retired one with the last
    /// sequence number it may sign. Read at every check, never cached by a stream.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn signing_key(&self, host_id: &str, key_id: &[u8]) -> Result<Option<SigningKey>> {
        signing_key(&mut self.reader(), host_id, key_id)
    }

    /// Revokes a host: its streams and reports are refused from now on. Returns `false` when there is no
    /// such host.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn revoke_host(&self, host_id: &str, actor: &str, reason: &str, now: i64) -> Result<bool> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute(
                "UPDATE hosts SET revoked_at = ?1, revoked_reason = ?2 WHERE host_id = ?3 AND revoked_at IS NULL",
                params![now, reason, host_id],
            )
            .map_err(sql("revoke host"))?;
        if n == 1 {
            audit_tx(&mut tx, now, actor, "host.revoke", host_id, reason)?;
        }
        tx.commit().map_err(sql("commit revocation"))?;
        Ok(n == 1)
    }

    /// Every host not revoked, with its last report and unexplained gaps, for `/metrics`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn host_gauges(&self) -> Result<Vec<HostGauge>> {
        let mut conn = self.reader();
        let mut hosts = conn
            .rows(
                "SELECT h.host_id, h.tenant, h.last_seen, h.last_seq, \
                   (SELECT COUNT(*) FROM reports r WHERE r.host_id = h.host_id) \
                 FROM hosts h WHERE h.revoked_at IS NULL ORDER BY h.host_id",
                params![],
                |r| {
                    Ok(HostGauge {
                        host_id: r.get(0)?,
                        tenant: r.get(1)?,
                        last_report_ms: r.get(2)?,
                        gaps: r.u64(3)?.saturating_sub(r.u64(4)?),
                    })
                },
            )
            .map_err(sql("read host gauges"))?;
        for h in hosts.iter_mut().filter(|h| h.gaps > 0) {
            h.gaps -= recorded_missing(&mut conn, &h.host_id)?.min(h.gaps);
        }
        Ok(hosts)
    }

    /// Hosts revoked at or after `since` (Unix ms, the revoking clock): (host id, reason).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn revoked_since(&self, since: i64) -> Result<Vec<(String, String)>> {
        self.reader()
            .rows(
                "SELECT host_id, COALESCE(revoked_reason, '') FROM hosts WHERE revoked_at >= ?1",
                params![since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql("read revocations"))
    }

    /// Hosts (not revoked, with a known interval) whose last report is older than `intervals` times
    /// their interval: (host id, hostname, last seen, last seq).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn silent_hosts(&self, now: i64, intervals: u32) -> Result<Vec<(String, String, i64, u64)>> {
        self.reader()
            .rows(
                "SELECT host_id, hostname, last_seen, last_seq FROM hosts \
                 WHERE revoked_at IS NULL AND interval_ms IS NOT NULL AND last_seen IS NOT NULL \
                   AND last_seen < ?1 - interval_ms * ?2",
                params![now, intervals],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.u64(3)?)),
            )
            .map_err(sql("find silent hosts"))
    }
}

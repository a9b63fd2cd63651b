//! Tokens: minted (only their hashes stored), listed, revoked, and looked up by hash at enrollment and on every API call.

use super::*;

/// A token to insert (only its hash is kept).
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Short public id.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// `enroll`, `reviewer`, `operator`, `customer`.
    pub role: String,
    /// Tenant binding.
    pub tenant: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// Who minted it.
    pub created_by: String,
    /// How many hosts an enroll token may enroll (1 for every other role).
    pub max_uses: u32,
}

/// A stored token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    /// Short public id.
    pub id: String,
    /// Role.
    pub role: String,
    /// Tenant binding.
    pub tenant: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms of the last enrollment made with it.
    pub used_at: Option<i64>,
    /// Enrollments made with it.
    pub uses: i64,
    /// Enrollments it allows.
    pub max_uses: i64,
    /// Unix ms, for revoked tokens.
    pub revoked_at: Option<i64>,
}

/// What `token list` shows of a token (never its hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    /// Short public id (for `token revoke`).
    pub id: String,
    /// Role.
    pub role: String,
    /// Tenant binding.
    pub tenant: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Last enrollment made with it, RFC 3339.
    pub last_used_at: Option<String>,
    /// RFC 3339, for revoked tokens.
    pub revoked_at: Option<String>,
    /// Enrollments made with it.
    pub uses: u64,
    /// Enrollments it allows.
    pub max_uses: u64,
    /// Who minted it.
    pub created_by: String,
}

pub(super) fn token_row(conn: &mut Db, hash: &[u8]) -> Result<Option<TokenRow>> {
    conn.row(
        "SELECT id, role, tenant, expires_at, used_at, revoked_at, uses, max_uses FROM tokens WHERE hash = ?1",
        params![hash],
        |r| {
            Ok(TokenRow {
                id: r.get(0)?,
                role: r.get(1)?,
                tenant: r.get(2)?,
                expires_at: r.get(3)?,
                used_at: r.get(4)?,
                revoked_at: r.get(5)?,
                uses: r.get(6)?,
                max_uses: r.get(7)?,
            })
        },
    )
    .map_err(sql("look up token"))
}

impl Store {
    /// Every token, newest first (hashes are never returned).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn tokens(&self) -> Result<Vec<TokenSummary>> {
        self.reader()
            .rows(
                "SELECT id, role, tenant, created_at, expires_at, used_at, revoked_at, uses, max_uses, created_by \
                 FROM tokens ORDER BY created_at DESC, id",
                params![],
                |r| {
                    Ok(TokenSummary {
                        id: r.get(0)?,
                        role: r.get(1)?,
                        tenant: r.get(2)?,
                        created_at: rfc3339(r.get(3)?),
                        expires_at: rfc3339(r.get(4)?),
                        last_used_at: r.get::<Option<i64>>(5)?.map(rfc3339),
                        revoked_at: r.get::<Option<i64>>(6)?.map(rfc3339),
                        uses: r.u64(7)?,
                        max_uses: r.u64(8)?,
                        created_by: r.get(9)?,
                    })
                },
            )
            .map_err(sql("list tokens"))
    }

    /// Inserts a token (by hash) and audits it.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn insert_token(&self, t: &NewToken) -> Result<()> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        tx.execute(
            "INSERT INTO tokens (id, hash, role, tenant, created_at, expires_at, created_by, max_uses) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![&t.id, &t.hash, &t.role, &t.tenant, t.created_at, t.expires_at, &t.created_by, t.max_uses],
        )
        .map_err(sql("insert token"))?;
        audit_tx(
            &mut tx,
            t.created_at,
            &t.created_by,
            "token.create",
            &t.id,
            &format!("role={} tenant={} max_uses={}", t.role, t.tenant.as_deref().unwrap_or("-"), t.max_uses),
        )?;
        tx.commit().map_err(sql("commit token"))
    }

    /// Revokes a token by its public id; returns `false` when there is no such live token.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn revoke_token(&self, id: &str, actor: &str, now: i64) -> Result<bool> {
        let mut conn = self.conn();
        let mut tx = conn.write().map_err(sql("begin"))?;
        let n = tx
            .execute("UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL", params![now, id])
            .map_err(sql("revoke token"))?;
        if n == 1 {
            audit_tx(&mut tx, now, actor, "token.revoke", id, "")?;
        }
        tx.commit().map_err(sql("commit token revocation"))?;
        Ok(n == 1)
    }

    /// Looks a token up by its hash.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>> {
        token_row(&mut self.reader(), hash)
    }
}

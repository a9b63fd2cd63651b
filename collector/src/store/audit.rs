//! The audit log: who did what to which token, host or flag, and when; written in the same transaction as the act.

use super::*;

/// An audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Entry id.
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    /// Who (token id or `cli`).
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Detail.
    pub detail: String,
}

pub(super) fn audit_tx(tx: &mut Db, at: i64, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at, actor, action, target, detail],
    )
    .map_err(sql("audit"))?;
    Ok(())
}

pub(super) fn audit_row(r: &Row<'_>) -> Result<AuditRow, DbError> {
    Ok(AuditRow {
        id: r.get(0)?,
        at: rfc3339(r.get(1)?),
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        detail: r.get(5)?,
    })
}

impl Store {
    /// Appends to the audit log.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn audit(&self, at: i64, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        audit_tx(&mut self.conn(), at, actor, action, target, detail)
    }

    /// The audit log, newest first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>> {
        self.reader()
            .rows(
                "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
                params![limit],
                audit_row,
            )
            .map_err(sql("read audit"))
    }
}

//! Credentials: one-time enrollment tokens for agents and bearer tokens for people (reviewer, operator,
//! customer bound to one tenant). Tokens are 256 random bits; only their SHA-256 is stored.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::store::{NewToken, Store, StoreError, TokenRow};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One-time agent enrollment.
    Enroll,
    /// Security reviewer: reads flags and decides them.
    Reviewer,
    /// Operator: hosts, audit, tokens.
    Operator,
    /// Customer: sees only its own tenant.
    Customer,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Enroll => "enroll",
            Role::Reviewer => "reviewer",
            Role::Operator => "operator",
            Role::Customer => "customer",
        }
    }

    /// How long a token of this role lives unless told otherwise.
    pub fn default_ttl(self) -> Duration {
        match self {
            Role::Enroll => Duration::from_secs(24 * 3600),
            _ => Duration::from_secs(90 * 24 * 3600),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enroll" => Ok(Role::Enroll),
            "reviewer" => Ok(Role::Reviewer),
            "operator" => Ok(Role::Operator),
            "customer" => Ok(Role::Customer),
            _ => Err(format!("unknown role `{s}`; use enroll, reviewer, operator or customer")),
        }
    }
}

/// SHA-256 of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    gpuattest_proto::sha256(token.trim().as_bytes())
}

/// Most hosts one fleet enrollment token may enroll.
pub const MAX_ENROLL_USES: u32 = 100_000;

/// Mints a token, stores its hash and returns the token (shown once). An enroll token may enroll up
/// to `uses` hosts (a fleet token for a DaemonSet); every other token has `uses` 1.
///
/// # Errors
/// [`StoreError::Refused`] for a customer token without a tenant; [`StoreError::Sql`].
pub fn mint(
    store: &Store,
    role: Role,
    tenant: Option<&str>,
    ttl: Option<Duration>,
    uses: u32,
    actor: &str,
    now: i64,
) -> Result<String, StoreError> {
    if uses != 1 && role != Role::Enroll {
        return Err(StoreError::Refused("--uses applies to enroll tokens only".into()));
    }
    if !(1..=MAX_ENROLL_USES).contains(&uses) {
        return Err(StoreError::Refused(format!("--uses must be 1 to {MAX_ENROLL_USES}")));
    }
    if role == Role::Customer && tenant.is_none() {
        return Err(StoreError::Refused("a customer token is bound to one tenant: pass --tenant ID".into()));
    }
    // Reviewers and operators see every tenant; a tenant on their token would promise a scope that
    // nothing enforces, so it is refused rather than ignored.
    if matches!(role, Role::Reviewer | Role::Operator) && tenant.is_some() {
        return Err(StoreError::Refused(format!(
            "a {role} token sees every tenant and takes no --tenant; mint a customer token for one tenant's view"
        )));
    }
    if let Some(t) = tenant
        && (t.is_empty() || t.len() > 128 || t.chars().any(char::is_control))
    {
        return Err(StoreError::Refused("--tenant must be 1 to 128 printable characters".into()));
    }
    let mut raw = [0u8; 32];
    SystemRandom::new().fill(&mut raw).map_err(|_| StoreError::Refused("the system random generator failed".into()))?;
    let token = format!("gpa_{}", gpuattest_proto::hex(&raw));
    let h = hash(&token);
    let ttl = ttl.unwrap_or_else(|| role.default_ttl());
    store.insert_token(&NewToken {
        id: gpuattest_proto::hex(&h[..6]),
        hash: h,
        role: role.as_str().to_string(),
        tenant: tenant.map(str::to_string),
        created_at: now,
        expires_at: now.saturating_add(ttl.as_millis() as i64),
        created_by: actor.to_string(),
        max_uses: uses,
    })?;
    Ok(token)
}

/// What a verified credential may see: a customer's access carries its tenant, so a customer without
/// one cannot be represented (and so cannot fall through to every tenant's data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Security reviewer: every tenant.
    Reviewer,
    /// Operator: every tenant.
    Operator,
    /// A customer: its own tenant only.
    Customer {
        /// The tenant it is bound to.
        tenant: String,
    },
}

impl Access {
    /// The role.
    pub fn role(&self) -> Role {
        match self {
            Access::Reviewer => Role::Reviewer,
            Access::Operator => Role::Operator,
            Access::Customer { .. } => Role::Customer,
        }
    }

    /// The one tenant this access is limited to; `None`: every tenant.
    pub fn tenant_scope(&self) -> Option<&str> {
        match self {
            Access::Customer { tenant } => Some(tenant),
            _ => None,
        }
    }
}

/// A person's verified credential.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id (for the audit log).
    pub token_id: String,
    /// What it may see.
    pub access: Access,
}

impl Principal {
    /// The role.
    pub fn role(&self) -> Role {
        self.access.role()
    }
}

/// Checks a bearer token: known, not revoked, not expired, and not an enrollment token.
///
/// # Errors
/// A reason string when the token is not valid.
pub fn authenticate(store: &Store, token: &str, now: i64) -> Result<Principal, String> {
    let row: TokenRow =
        store.token_by_hash(&hash(token)).map_err(|e| e.to_string())?.ok_or_else(|| "unknown token".to_string())?;
    if row.revoked_at.is_some() {
        return Err(format!("token {} is revoked", row.id));
    }
    if row.expires_at <= now {
        return Err(format!("token {} has expired", row.id));
    }
    let access = match (row.role.parse::<Role>()?, row.tenant) {
        (Role::Enroll, _) => return Err("an enroll token cannot be used for the API".into()),
        (Role::Reviewer, _) => Access::Reviewer,
        (Role::Operator, _) => Access::Operator,
        (Role::Customer, Some(tenant)) => Access::Customer { tenant },
        (Role::Customer, None) => return Err(format!("customer token {} names no tenant; mint a new one", row.id)),
    };
    Ok(Principal { token_id: row.id, access })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_12_a_customer_token_without_a_tenant_opens_nothing() {
        let t = tempfile::tempdir().expect("tmp");
        let store = Store::open(t.path()).expect("store");
        // A row no `mint` makes (a customer without a tenant), as an older version or a hand edit might.
        let token = "gpa_no_tenant";
        let h = hash(token);
        store
            .insert_token(&NewToken {
                id: gpuattest_proto::hex(&h[..6]),
                hash: h,
                role: "customer".into(),
                tenant: None,
                created_at: 0,
                expires_at: i64::MAX,
                created_by: "test".into(),
                max_uses: 1,
            })
            .expect("insert");
        let e = authenticate(&store, token, 1).expect_err("refused");
        assert!(e.contains("names no tenant"), "{e}");
        // Minted ones carry their tenant in their access, and reviewers take none.
        let c = mint(&store, Role::Customer, Some("acme"), None, 1, "test", 1).expect("customer");
        let p = authenticate(&store, &c, 2).expect("valid");
        assert_eq!(p.access, Access::Customer { tenant: "acme".into() });
        assert_eq!(p.access.tenant_scope(), Some("acme"));
        assert!(mint(&store, Role::Reviewer, Some("acme"), None, 1, "test", 1).is_err(), "finding 10");
    }
}

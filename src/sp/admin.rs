//! Account administration, one implementation for the two ways in: `rac sp tenant ...` /
//! `rac sp operator ...` on the SP's host, and the admin API (`net::admin`). Each change is
//! checked here, made in the registry and written to the audit log naming who made it;
//! failures carry a stable [`AdminCode`] that the API returns as `{code, message}`.

use serde::{Deserialize, Serialize};

use super::auth;
use super::registry::{
    Actor, AuditPage, AuditQuery, Operator, Registry, RegistryError, TenantAccount,
};
use crate::wire::protocol::ErrorCode;

/// Why an admin request failed: stable codes a script can branch on. The codes the SP
/// protocol has too (`bad_request`, `auth_failed`, `access_denied`, `unknown_tenant`,
/// `internal`) keep its names and meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminCode {
    BadRequest,
    AuthFailed,
    AccessDenied,
    UnknownTenant,
    UnknownOperator,
    UnknownSession,
    UnknownAdminToken,
    /// An account or token of that name exists already.
    AlreadyExists,
    /// No such path.
    NotFound,
    /// The request body is over the admin API's limit.
    TooLarge,
    Internal,
}

impl AdminCode {
    /// The code as the API and the CLI write it (`unknown_tenant`).
    pub fn as_str(self) -> &'static str {
        match self {
            AdminCode::BadRequest => "bad_request",
            AdminCode::AuthFailed => "auth_failed",
            AdminCode::AccessDenied => "access_denied",
            AdminCode::UnknownTenant => "unknown_tenant",
            AdminCode::UnknownOperator => "unknown_operator",
            AdminCode::UnknownSession => "unknown_session",
            AdminCode::UnknownAdminToken => "unknown_admin_token",
            AdminCode::AlreadyExists => "already_exists",
            AdminCode::NotFound => "not_found",
            AdminCode::TooLarge => "too_large",
            AdminCode::Internal => "internal",
        }
    }

    /// Every code, for tables and tests.
    pub const ALL: [AdminCode; 11] = [
        AdminCode::BadRequest,
        AdminCode::AuthFailed,
        AdminCode::AccessDenied,
        AdminCode::UnknownTenant,
        AdminCode::UnknownOperator,
        AdminCode::UnknownSession,
        AdminCode::UnknownAdminToken,
        AdminCode::AlreadyExists,
        AdminCode::NotFound,
        AdminCode::TooLarge,
        AdminCode::Internal,
    ];
}

impl std::fmt::Display for AdminCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for AdminCode {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::BadRequest | ErrorCode::VersionMismatch => AdminCode::BadRequest,
            ErrorCode::AuthFailed | ErrorCode::TokenExpired => AdminCode::AuthFailed,
            ErrorCode::AccessDenied => AdminCode::AccessDenied,
            ErrorCode::UnknownTenant => AdminCode::UnknownTenant,
            _ => AdminCode::Internal,
        }
    }
}

/// A failed admin request: its code and words for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error, utoipa::ToSchema)]
#[error("{message}")]
pub struct AdminError {
    pub code: AdminCode,
    pub message: String,
}

impl AdminError {
    pub fn new(code: AdminCode, message: impl Into<String>) -> Self {
        AdminError {
            code,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for AdminError {
    fn from(e: RegistryError) -> Self {
        let code = match &e {
            RegistryError::UnknownTenant(_) => AdminCode::UnknownTenant,
            RegistryError::UnknownOperator(_) => AdminCode::UnknownOperator,
            RegistryError::UnknownAdminToken(_) => AdminCode::UnknownAdminToken,
            RegistryError::TenantExists(_)
            | RegistryError::OperatorExists(_)
            | RegistryError::AdminTokenExists(_) => AdminCode::AlreadyExists,
            RegistryError::InvalidName(_) => AdminCode::BadRequest,
            RegistryError::Db(_)
            | RegistryError::Postgres(_)
            | RegistryError::Column { .. }
            | RegistryError::Store(_)
            | RegistryError::Hash(_)
            | RegistryError::Io { .. } => {
                tracing::error!("registry error during an admin request: {e}");
                return AdminError::new(AdminCode::Internal, format!("the registry failed: {e}"));
            }
        };
        AdminError::new(code, e.to_string())
    }
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// The shortest operator password taken from a person (a generated one is 32 hex digits).
pub const MIN_CHOSEN_PASSWORD_LEN: usize = 12;

/// The most rows one page of a listing returns.
pub const MAX_PAGE: usize = 1000;

/// Which tenants to list, by name; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct TenantQuery {
    /// Only enabled (`true`) or disabled (`false`) tenants.
    pub enabled: Option<bool>,
    /// Only names containing this text.
    pub name_contains: Option<String>,
    /// The cursor: names after this one (a page's `next`).
    pub after: Option<String>,
    /// The most rows to return (at most [`MAX_PAGE`]).
    pub limit: usize,
}

/// One page of tenants, by name, and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantPage {
    pub tenants: Vec<TenantAccount>,
    pub next: Option<String>,
}

/// Account administration on a registry, as `by`.
pub struct Admin<'a> {
    registry: &'a Registry,
    by: Actor,
}

impl<'a> Admin<'a> {
    pub fn new(registry: &'a Registry, by: Actor) -> Self {
        Admin { registry, by }
    }

    /// Writes a tenant change to the audit log (after it committed: a tenant change is one
    /// row, and its audit row follows it at once).
    fn audit_tenant(&self, name: &str, action: &str, outcome: &str) -> Result<()> {
        Ok(self
            .registry
            .audit_change(&self.by, "tenant", action, ("-", name), outcome)?)
    }

    /// A page of tenants, by name, of those `keep` keeps (the API filters on presence).
    pub fn tenants(
        &self,
        query: &TenantQuery,
        keep: impl Fn(&TenantAccount) -> bool,
    ) -> Result<TenantPage> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut tenants: Vec<TenantAccount> = self
            .registry
            .tenants()?
            .into_iter()
            .filter(|t| query.enabled.is_none_or(|e| t.enabled == e))
            .filter(|t| {
                query
                    .name_contains
                    .as_deref()
                    .is_none_or(|part| t.name.contains(part))
            })
            .filter(|t| query.after.as_deref().is_none_or(|after| *t.name > *after))
            .filter(|t| keep(t))
            .take(limit + 1)
            .collect();
        let next = if tenants.len() > limit {
            tenants.truncate(limit);
            tenants.last().map(|t| t.name.clone())
        } else {
            None
        };
        Ok(TenantPage { tenants, next })
    }

    /// One tenant.
    pub fn tenant(&self, name: &str) -> Result<TenantAccount> {
        self.registry
            .tenants()?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| RegistryError::UnknownTenant(name.to_string()).into())
    }

    /// Adds a tenant and returns its secret (shown once). `tenant_key`, when known in
    /// advance, is the key fingerprint its first connection must present.
    pub fn add_tenant(
        &self,
        name: &str,
        description: &str,
        tenant_key: Option<&str>,
    ) -> Result<String> {
        let tenant_key = tenant_key
            .map(|k| {
                crate::wire::parse_fingerprint(k)
                    .map(|fp| crate::wire::format_fingerprint(&fp))
                    .map_err(|_| {
                        AdminError::new(
                            AdminCode::BadRequest,
                            "tenant_key must be a SHA-256 fingerprint (64 hex digits, colons allowed)",
                        )
                    })
            })
            .transpose()?;
        let secret = self
            .registry
            .add_tenant_with_key(name, description, tenant_key.as_deref())?;
        self.audit_tenant(name, "add", "tenant added")?;
        Ok(secret)
    }

    /// Enables or disables a tenant; a running SP drops a disabled tenant's connection and
    /// sessions within one registry poll.
    pub fn set_tenant_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        self.registry.set_enabled(name, enabled)?;
        let (action, outcome) = if enabled {
            ("enable", "tenant enabled")
        } else {
            ("disable", "tenant disabled")
        };
        self.audit_tenant(name, action, outcome)
    }

    pub fn remove_tenant(&self, name: &str) -> Result<()> {
        self.registry.remove_tenant(name)?;
        self.audit_tenant(name, "remove", "tenant removed")
    }

    /// Issues a new secret (returned once); the old one stops working at once.
    pub fn rotate_secret(&self, name: &str) -> Result<String> {
        let secret = self.registry.rotate_secret(name)?;
        self.audit_tenant(name, "rotate-secret", "tenant secret rotated")?;
        Ok(secret)
    }

    /// Forgets a tenant's recorded key: the next key it presents is recorded.
    pub fn reset_tenant_key(&self, name: &str) -> Result<()> {
        self.registry.reset_tenant_key(name)?;
        self.audit_tenant(name, "reset-key", "tenant key forgotten")
    }

    pub fn operators(&self) -> Result<Vec<Operator>> {
        Ok(self.registry.operators()?)
    }

    /// Adds an operator who may open `tenants` (`*`, a comma-separated list, or empty) and
    /// returns the generated password (shown once).
    pub fn add_operator(&self, name: &str, tenants: &str) -> Result<String> {
        let password = auth::random_hex_16();
        self.registry.add_operator(name, &password, tenants)?;
        self.registry.audit_change(
            &self.by,
            "operator",
            "add",
            (name, "-"),
            &format!("operator added (tenants {:?})", tenants.trim()),
        )?;
        Ok(password)
    }

    /// Sets an operator's password: `chosen`, or a generated one (returned). Revokes every
    /// token of theirs. Returns the generated password, if any, and the tokens revoked.
    pub fn set_operator_password(
        &self,
        name: &str,
        chosen: Option<&str>,
    ) -> Result<(Option<String>, usize)> {
        let (password, generated) = match chosen {
            Some(pw) if pw.chars().count() < MIN_CHOSEN_PASSWORD_LEN => {
                return Err(AdminError::new(
                    AdminCode::BadRequest,
                    format!(
                        "the new password is too short: use at least {MIN_CHOSEN_PASSWORD_LEN} characters; nothing changed"
                    ),
                ));
            }
            Some(pw) => (pw.to_string(), false),
            None => (auth::random_hex_16(), true),
        };
        let revoked = self
            .registry
            .set_operator_password(name, &password, &self.by)?;
        Ok((generated.then_some(password), revoked))
    }

    /// Changes an operator's tenant scope; revokes their tokens. Returns how many.
    pub fn set_operator_tenants(&self, name: &str, tenants: &str) -> Result<usize> {
        Ok(self
            .registry
            .set_operator_tenants(name, tenants, &self.by)?)
    }

    /// Revokes every token of an operator. Returns how many.
    pub fn revoke_operator(&self, name: &str) -> Result<usize> {
        Ok(self
            .registry
            .revoke_operator_tokens_audited(name, &self.by)?)
    }

    /// Removes an operator and their tokens. Returns how many tokens.
    pub fn remove_operator(&self, name: &str) -> Result<usize> {
        Ok(self.registry.remove_operator(name, &self.by)?)
    }

    /// A page of the audit log, newest first (at most [`MAX_PAGE`] rows).
    pub fn audit(&self, query: &AuditQuery) -> Result<AuditPage> {
        if let (Some(since), Some(until)) = (query.since, query.until)
            && since >= until
        {
            return Err(AdminError::new(
                AdminCode::BadRequest,
                format!(
                    "since ({since}) must be before until ({until}): no row can be in that span"
                ),
            ));
        }
        let query = AuditQuery {
            limit: query.limit.clamp(1, MAX_PAGE),
            ..query.clone()
        };
        Ok(self.registry.audit_page(&query)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_written_as_serde_writes_them() {
        for code in AdminCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("json"),
                serde_json::Value::from(code.as_str())
            );
        }
    }

    #[test]
    fn changes_are_audited_with_their_actor_and_errors_keep_their_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::open(&dir.path().join("registry.sqlite")).expect("open");
        let admin = Admin::new(&registry, Actor::AdminToken("ops".into()));
        for name in ["a1", "a2", "b1"] {
            admin.add_tenant(name, "", None).expect("add");
        }
        admin.set_tenant_enabled("a2", false).expect("disable");
        let page = admin
            .tenants(
                &TenantQuery {
                    name_contains: Some("a".into()),
                    limit: 1,
                    ..TenantQuery::default()
                },
                |_| true,
            )
            .expect("page");
        assert_eq!(page.next.as_deref(), Some("a1"));
        let rest = admin
            .tenants(
                &TenantQuery {
                    name_contains: Some("a".into()),
                    after: page.next,
                    limit: 10,
                    ..TenantQuery::default()
                },
                |_| true,
            )
            .expect("page");
        assert_eq!(rest.tenants[0].name, "a2");
        assert_eq!(rest.next, None);
        let err = admin.add_tenant("a1", "", None).expect_err("exists");
        assert_eq!(err.code, AdminCode::AlreadyExists);
        let err = admin.remove_tenant("nobody").expect_err("unknown");
        assert_eq!(err.code, AdminCode::UnknownTenant);
        let err = admin
            .set_operator_password("nobody", Some("long enough password"))
            .expect_err("unknown");
        assert_eq!(err.code, AdminCode::UnknownOperator);
        let err = admin
            .set_operator_password("nobody", Some("short"))
            .expect_err("short");
        assert_eq!(err.code, AdminCode::BadRequest);
        let audit = admin
            .audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .expect("audit");
        let err = admin
            .audit(&AuditQuery {
                since: Some(20),
                until: Some(10),
                limit: 10,
                ..AuditQuery::default()
            })
            .expect_err("empty span");
        assert_eq!(err.code, AdminCode::BadRequest);
        assert_eq!(audit.entries[0].outcome, "tenant disabled");
        assert_eq!(audit.entries[0].tenant, "a2");
        assert_eq!(
            audit.entries[0].console_addr,
            "admin api: token ops: tenant disable"
        );
    }
}

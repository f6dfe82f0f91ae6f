//! Admin API tokens (`rac sp admin-token ...`): random, shown once, stored only as their
//! SHA-256, each named and scoped read-only or read-write. Creating and revoking one is
//! written to the audit log in the same transaction.

use serde::Serialize;

use super::audit::{Actor, audit_admin};
use super::sql::{Row, args};
use super::{Registry, RegistryError, Result};
use crate::sp::auth;
use crate::util::now_unix_secs;

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminScope {
    /// Every `GET`: lists, the audit log, metrics.
    ReadOnly,
    /// Reads and every change.
    ReadWrite,
}

impl AdminScope {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminScope::ReadOnly => "read-only",
            AdminScope::ReadWrite => "read-write",
        }
    }

    fn parse(text: &str) -> AdminScope {
        // Anything but the known write scope reads as read-only: a row this build cannot
        // read grants the least.
        if text == "read-write" {
            AdminScope::ReadWrite
        } else {
            AdminScope::ReadOnly
        }
    }
}

/// An admin token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminToken {
    pub name: String,
    pub scope: AdminScope,
    pub created_at: u64,
    /// When it was last presented, to the second (`None`: never used).
    pub last_used: Option<u64>,
}

/// What every admin token starts with, so a leaked one is recognised (and grep finds it).
pub const ADMIN_TOKEN_PREFIX: &str = "racadm_";

fn admin_token_row(row: &Row) -> Result<AdminToken> {
    Ok(AdminToken {
        name: row.text(0)?,
        scope: AdminScope::parse(&row.text(1)?),
        created_at: row.unsigned(2)?,
        last_used: row.opt_unsigned(3)?,
    })
}

impl Registry {
    /// Creates an admin token named `name` and returns it (shown once, never stored).
    pub fn create_admin_token(&self, name: &str, scope: AdminScope, by: &Actor) -> Result<String> {
        crate::wire::validate_name(name)?;
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", auth::random_hex_32());
        self.write(|db| {
            let inserted = db.execute(
                "INSERT INTO admin_tokens (name, token_hash, scope, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                args![
                    name,
                    auth::sha256_hex(&token),
                    scope.as_str(),
                    now_unix_secs() as i64
                ],
            )?;
            if inserted == 0 {
                return Err(RegistryError::AdminTokenExists(name.to_string()));
            }
            audit_admin(
                db,
                by,
                "admin-token",
                "create",
                ("-", "-"),
                &format!("admin token {name} created ({})", scope.as_str()),
            )
        })?;
        Ok(token)
    }

    /// Every admin token, by name.
    pub fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        self.read(|db| {
            db.query(
                "SELECT name, scope, created_at, last_used FROM admin_tokens ORDER BY name",
                args![],
            )?
            .iter()
            .map(admin_token_row)
            .collect()
        })
    }

    /// Revokes the admin token named `name`: it stops working at its next request.
    pub fn revoke_admin_token(&self, name: &str, by: &Actor) -> Result<()> {
        self.write(|db| {
            if db.execute("DELETE FROM admin_tokens WHERE name = ?1", args![name])? == 0 {
                return Err(RegistryError::UnknownAdminToken(name.to_string()));
            }
            audit_admin(
                db,
                by,
                "admin-token",
                "revoke",
                ("-", "-"),
                &format!("admin token {name} revoked"),
            )
        })
    }

    /// The token a request presented, if it is a live admin token. Marks it used (at most
    /// one write a minute per token, so a scraper does not write on every scrape). That mark
    /// is bookkeeping: when it cannot be written (the registry is locked or read-only) it is
    /// logged and the token still counts, so a read goes on while writes cannot.
    pub fn check_admin_token(&self, token: &str) -> Result<Option<AdminToken>> {
        let found = self.read(|db| {
            db.query_opt(
                "SELECT name, scope, created_at, last_used FROM admin_tokens WHERE token_hash = ?1",
                args![auth::sha256_hex(token)],
            )?
            .map(|row| admin_token_row(&row))
            .transpose()
        })?;
        let now = now_unix_secs();
        if let Some(token) = &found
            && token.last_used.is_none_or(|at| at + 60 <= now)
        {
            let marked = self.write(|db| {
                db.execute(
                    "UPDATE admin_tokens SET last_used = ?2 WHERE name = ?1",
                    args![&token.name, now as i64],
                )
            });
            if let Err(e) = marked {
                tracing::warn!(token = %token.name, "could not record the admin token's use: {e}");
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_stores;
    use super::*;

    on_both_stores! {
    fn admin_tokens_are_stored_hashed_scoped_and_revocable(reg: &Registry) {
        let token = reg
            .create_admin_token("ci", AdminScope::ReadOnly, &Actor::Local)
            .expect("create");
        assert!(token.starts_with(ADMIN_TOKEN_PREFIX));
        assert!(matches!(
            reg.create_admin_token("ci", AdminScope::ReadWrite, &Actor::Local),
            Err(RegistryError::AdminTokenExists(_))
        ));
        let stored = reg
            .read(|db| db.query_opt("SELECT token_hash FROM admin_tokens", &[]))
            .expect("read")
            .expect("row")
            .text(0)
            .expect("text");
        assert_eq!(stored, auth::sha256_hex(&token));
        let checked = reg
            .check_admin_token(&token)
            .expect("check")
            .expect("valid");
        assert_eq!(
            (checked.name.as_str(), checked.scope),
            ("ci", AdminScope::ReadOnly)
        );
        assert!(reg.admin_tokens().expect("list")[0].last_used.is_some());
        assert!(reg.check_admin_token("racadm_00").expect("check").is_none());
        reg.revoke_admin_token("ci", &Actor::Local).expect("revoke");
        assert!(reg.check_admin_token(&token).expect("check").is_none());
        assert!(matches!(
            reg.revoke_admin_token("ci", &Actor::Local),
            Err(RegistryError::UnknownAdminToken(_))
        ));
        let audit = reg.audit_entries(10).expect("audit");
        assert_eq!(audit[0].outcome, "admin token ci revoked");
        assert_eq!(audit[1].outcome, "admin token ci created (read-only)");
    }
    }
}

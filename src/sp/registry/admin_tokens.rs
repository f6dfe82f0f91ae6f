//! Admin API tokens (`rac sp admin-token ...`): random, shown once, stored only as their
//! SHA-256, each named and scoped read-only or read-write. Creating and revoking one is
//! written to the audit log in the same transaction.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::audit::{Actor, audit_admin};
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

impl Registry {
    /// Creates an admin token named `name` and returns it (shown once, never stored).
    pub fn create_admin_token(&self, name: &str, scope: AdminScope, by: &Actor) -> Result<String> {
        crate::wire::validate_name(name)?;
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", auth::random_hex_32());
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO admin_tokens (name, token_hash, scope, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![
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
            &tx,
            by,
            "admin-token",
            "create",
            ("-", "-"),
            &format!("admin token {name} created ({})", scope.as_str()),
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// Every admin token, by name.
    pub fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, scope, created_at, last_used FROM admin_tokens ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok(AdminToken {
                name: row.get(0)?,
                scope: AdminScope::parse(&row.get::<_, String>(1)?),
                created_at: row.get::<_, i64>(2)? as u64,
                last_used: row.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes the admin token named `name`: it stops working at its next request.
    pub fn revoke_admin_token(&self, name: &str, by: &Actor) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM admin_tokens WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(RegistryError::UnknownAdminToken(name.to_string()));
        }
        audit_admin(
            &tx,
            by,
            "admin-token",
            "revoke",
            ("-", "-"),
            &format!("admin token {name} revoked"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The token a request presented, if it is a live admin token. Marks it used (at most
    /// one write a minute per token, so a scraper does not write on every scrape).
    pub fn check_admin_token(&self, token: &str) -> Result<Option<AdminToken>> {
        let hash = auth::sha256_hex(token);
        let conn = self.conn();
        let found = conn
            .query_row(
                "SELECT name, scope, created_at, last_used FROM admin_tokens WHERE token_hash = ?1",
                params![hash],
                |row| {
                    Ok(AdminToken {
                        name: row.get(0)?,
                        scope: AdminScope::parse(&row.get::<_, String>(1)?),
                        created_at: row.get::<_, i64>(2)? as u64,
                        last_used: row.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    })
                },
            )
            .optional()?;
        let now = now_unix_secs();
        if let Some(token) = &found
            && token.last_used.is_none_or(|at| at + 60 <= now)
        {
            conn.execute(
                "UPDATE admin_tokens SET last_used = ?2 WHERE name = ?1",
                params![token.name, now as i64],
            )?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::registry;
    use super::*;

    #[test]
    fn admin_tokens_are_stored_hashed_scoped_and_revocable() {
        let (_dir, reg) = registry();
        let token = reg
            .create_admin_token("ci", AdminScope::ReadOnly, &Actor::Local)
            .expect("create");
        assert!(token.starts_with(ADMIN_TOKEN_PREFIX));
        assert!(matches!(
            reg.create_admin_token("ci", AdminScope::ReadWrite, &Actor::Local),
            Err(RegistryError::AdminTokenExists(_))
        ));
        let stored: String = reg
            .conn()
            .query_row("SELECT token_hash FROM admin_tokens", [], |r| r.get(0))
            .expect("row");
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

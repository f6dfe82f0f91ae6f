//! Operator and tenant accounts: operators with their password hashes and tenant scope,
//! tenants with the hash of their secret. A change to an operator revokes their tokens and is
//! written to the audit log in the same transaction.

use serde::Serialize;

use super::audit::{Actor, audit_admin};
use super::sql::{Sql, Value, args};
use super::{Registry, RegistryError, Result};
use crate::sp::auth;
use crate::util::now_unix_secs;

/// A tenant account as stored (the secret only as its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantAccount {
    pub name: String,
    pub enabled: bool,
    pub description: String,
    pub created_at: u64,
    pub last_seen: Option<u64>,
    /// SHA-256 of the tenant redirector's public key (`AB:CD:..`), recorded on first sight;
    /// `None` until the tenant first connects, or after `rac sp tenant reset-key`.
    pub tenant_key: Option<String>,
    #[serde(skip)]
    pub secret_hash: String,
}

/// An operator allowed to use consoles, and which tenants they may open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Operator {
    pub name: String,
    /// `*` for every tenant, else a comma-separated list of tenant names.
    pub tenants: String,
}

impl Operator {
    pub fn may_open(&self, tenant: &str) -> bool {
        self.tenants == "*" || self.tenants.split(',').any(|t| t.trim() == tenant)
    }
}

/// An operator's tenant scope in its stored form: `*` (every tenant), empty (none), or tenant
/// names separated by commas, each a valid name.
pub fn tenant_scope(list: &str) -> Result<String> {
    let list = list.trim();
    if list == "*" || list.is_empty() {
        return Ok(list.to_string());
    }
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    for name in &names {
        crate::wire::validate_name(name)?;
    }
    Ok(names.join(","))
}

impl Registry {
    /// Adds an operator; `tenants` is `*` or a comma-separated allow list.
    pub fn add_operator(&self, name: &str, password: &str, tenants: &str) -> Result<()> {
        crate::wire::validate_name(name)?;
        let tenants = tenant_scope(tenants)?;
        let hash = auth::hash_password(password).map_err(|e| RegistryError::Hash(e.to_string()))?;
        let inserted = self.write(|db| {
            db.execute(
                "INSERT INTO operators (name, password_hash, tenants, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                args![name, hash, tenants, now_unix_secs() as i64],
            )
        })?;
        if inserted == 0 {
            return Err(RegistryError::OperatorExists(name.to_string()));
        }
        Ok(())
    }

    /// Replaces an operator's password and revokes every token of theirs, in one transaction
    /// (audited). A running SP then ends their sessions and tenant feeds within one registry
    /// poll. Returns how many tokens were revoked.
    pub fn set_operator_password(&self, name: &str, password: &str, by: &Actor) -> Result<usize> {
        // The slow hash runs before the lock is taken.
        let hash = auth::hash_password(password).map_err(|e| RegistryError::Hash(e.to_string()))?;
        self.change_operator(name, "passwd", by, |db| {
            db.execute(
                "UPDATE operators SET password_hash = ?2 WHERE name = ?1",
                args![name, hash],
            )?;
            Ok("password changed".to_string())
        })
    }

    /// Removes an operator and every token of theirs, in one transaction (audited). Returns
    /// how many tokens were revoked.
    pub fn remove_operator(&self, name: &str, by: &Actor) -> Result<usize> {
        self.change_operator(name, "remove", by, |db| {
            db.execute("DELETE FROM operators WHERE name = ?1", args![name])?;
            Ok("operator removed".to_string())
        })
    }

    /// Replaces an operator's tenant scope (`*` or a comma-separated list) and revokes every
    /// token of theirs, in one transaction (audited): the new scope applies from their next
    /// login. Returns how many tokens were revoked.
    pub fn set_operator_tenants(&self, name: &str, tenants: &str, by: &Actor) -> Result<usize> {
        let tenants = tenant_scope(tenants)?;
        self.change_operator(name, "set-tenants", by, |db| {
            let old = db
                .query_opt("SELECT tenants FROM operators WHERE name = ?1", args![name])?
                .ok_or_else(|| RegistryError::UnknownOperator(name.to_string()))?
                .text(0)?;
            db.execute(
                "UPDATE operators SET tenants = ?2 WHERE name = ?1",
                args![name, &tenants],
            )?;
            Ok(format!("tenant scope set to {tenants:?} (was {old:?})"))
        })
    }

    /// One audited change to an existing operator, with all their tokens revoked, as one
    /// transaction: either all of it is on disk or none.
    pub(super) fn change_operator(
        &self,
        name: &str,
        action: &str,
        by: &Actor,
        change: impl FnOnce(&dyn Sql) -> Result<String>,
    ) -> Result<usize> {
        self.write(|db| {
            if db
                .query_opt("SELECT 1 FROM operators WHERE name = ?1", args![name])?
                .is_none()
            {
                return Err(RegistryError::UnknownOperator(name.to_string()));
            }
            let what = change(db)?;
            let revoked = db.execute("DELETE FROM tokens WHERE operator = ?1", args![name])?;
            audit_admin(
                db,
                by,
                "operator",
                action,
                (name, "-"),
                &format!("{what}; {revoked} token(s) revoked"),
            )?;
            Ok(revoked as usize)
        })
    }

    /// The stored password hash of an operator, if there is such an operator.
    pub fn operator_password_hash(&self, name: &str) -> Result<Option<String>> {
        self.read(|db| {
            db.query_opt(
                "SELECT password_hash FROM operators WHERE name = ?1",
                args![name],
            )?
            .map(|row| row.text(0))
            .transpose()
        })
    }

    /// Checks a password. Slow by design (argon2): call from a blocking thread.
    /// An unknown operator costs the same time as a wrong password.
    pub fn verify_operator(&self, name: &str, password: &str) -> Result<Option<Operator>> {
        let row = self.read(|db| {
            db.query_opt(
                "SELECT password_hash, tenants FROM operators WHERE name = ?1",
                args![name],
            )
        })?;
        match row {
            Some(row) => {
                if auth::verify_password(password, &row.text(0)?) {
                    Ok(Some(Operator {
                        name: name.to_string(),
                        tenants: row.text(1)?,
                    }))
                } else {
                    Ok(None)
                }
            }
            None => {
                auth::burn_password_time(password);
                Ok(None)
            }
        }
    }

    pub fn operators(&self) -> Result<Vec<Operator>> {
        self.read(|db| {
            db.query("SELECT name, tenants FROM operators ORDER BY name", args![])?
                .iter()
                .map(|row| {
                    Ok(Operator {
                        name: row.text(0)?,
                        tenants: row.text(1)?,
                    })
                })
                .collect()
        })
    }

    /// Adds a tenant and returns its new secret (shown once, never stored).
    pub fn add_tenant(&self, name: &str, description: &str) -> Result<String> {
        self.add_tenant_with_key(name, description, None)
    }

    /// Adds a tenant whose key is known in advance (`rac sp tenant add --tenant-key`): its
    /// first connection must already present that key.
    pub fn add_tenant_with_key(
        &self,
        name: &str,
        description: &str,
        tenant_key: Option<&str>,
    ) -> Result<String> {
        crate::wire::validate_name(name)?;
        let secret = auth::random_hex_32();
        let inserted = self.write(|db| {
            db.execute(
                "INSERT INTO tenants (name, secret_hash, description, created_at, tenant_key)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                args![
                    name,
                    auth::sha256_hex(&secret),
                    description,
                    now_unix_secs() as i64,
                    tenant_key
                ],
            )
        })?;
        if inserted == 0 {
            return Err(RegistryError::TenantExists(name.to_string()));
        }
        Ok(secret)
    }

    /// One change to an existing tenant's row; an unknown tenant is an error.
    fn change_tenant(&self, name: &str, sql: &str, args: &[Value]) -> Result<()> {
        if self.write(|db| db.execute(sql, args))? == 0 {
            return Err(RegistryError::UnknownTenant(name.to_string()));
        }
        Ok(())
    }

    /// Replaces a tenant's secret; its current connection is dropped by the running SP.
    pub fn rotate_secret(&self, name: &str) -> Result<String> {
        let secret = auth::random_hex_32();
        self.change_tenant(
            name,
            "UPDATE tenants SET secret_hash = ?2 WHERE name = ?1",
            args![name, auth::sha256_hex(&secret)],
        )?;
        Ok(secret)
    }

    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        self.change_tenant(
            name,
            "UPDATE tenants SET enabled = ?2 WHERE name = ?1",
            args![name, enabled],
        )
    }

    pub fn remove_tenant(&self, name: &str) -> Result<()> {
        self.change_tenant(name, "DELETE FROM tenants WHERE name = ?1", args![name])
    }

    /// Forgets a tenant's recorded key, so the next key it presents is recorded instead
    /// (`rac sp tenant reset-key`, after the tenant's server was reinstalled).
    pub fn reset_tenant_key(&self, name: &str) -> Result<()> {
        self.change_tenant(
            name,
            "UPDATE tenants SET tenant_key = NULL WHERE name = ?1",
            args![name],
        )
    }

    /// Records first-seen tenant keys, all in one transaction; a tenant that has a key on
    /// record already keeps it. Returns how many were written.
    pub fn record_tenant_keys(&self, keys: &[(String, String)]) -> Result<usize> {
        self.timed(|| {
            self.write(|db| {
                let mut written = 0;
                for (name, key) in keys {
                    written += db.execute(
                        "UPDATE tenants SET tenant_key = ?2 WHERE name = ?1 AND tenant_key IS NULL",
                        args![name, key],
                    )?;
                }
                Ok(written as usize)
            })
        })
    }

    pub fn set_last_seen(&self, name: &str, at: u64) -> Result<()> {
        self.write(|db| {
            db.execute(
                "UPDATE tenants SET last_seen = ?2 WHERE name = ?1",
                args![name, at as i64],
            )
        })?;
        Ok(())
    }

    /// Every tenant account, by name.
    pub fn tenants(&self) -> Result<Vec<TenantAccount>> {
        self.read(|db| {
            db.query(
                "SELECT name, enabled, description, created_at, last_seen, secret_hash, tenant_key
                 FROM tenants ORDER BY name",
                args![],
            )?
            .iter()
            .map(|row| {
                Ok(TenantAccount {
                    name: row.text(0)?,
                    enabled: row.bool(1)?,
                    description: row.text(2)?,
                    created_at: row.unsigned(3)?,
                    last_seen: row.opt_unsigned(4)?,
                    secret_hash: row.text(5)?,
                    tenant_key: row.opt_text(6)?,
                })
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_stores;
    use super::*;
    use crate::sp::registry::TokenCheck;
    use std::time::Duration;

    on_both_stores! {
    fn tenant_lifecycle(reg: &Registry) {
        let secret = reg.add_tenant("acme", "Acme Corp").expect("add");
        assert_eq!(secret.len(), 64);
        assert!(matches!(
            reg.add_tenant("acme", ""),
            Err(RegistryError::TenantExists(_))
        ));
        let tenants = reg.tenants().expect("list");
        assert_eq!(tenants.len(), 1);
        assert_eq!(tenants[0].secret_hash, auth::sha256_hex(&secret));
        assert!(tenants[0].enabled);
        reg.set_enabled("acme", false).expect("disable");
        assert!(!reg.tenants().expect("list")[0].enabled);
        let new_secret = reg.rotate_secret("acme").expect("rotate");
        assert_ne!(new_secret, secret);
        reg.remove_tenant("acme").expect("remove");
        assert!(matches!(
            reg.remove_tenant("acme"),
            Err(RegistryError::UnknownTenant(_))
        ));
        assert!(matches!(
            reg.add_tenant("../etc", ""),
            Err(RegistryError::InvalidName(_))
        ));
    }

    fn operator_changes_revoke_tokens_and_are_audited(reg: &Registry) {
        reg.add_operator("alice", "first password", "acme")
            .expect("add");
        let ttl = Duration::from_secs(60);
        let old_hash = reg
            .operator_password_hash("alice")
            .expect("hash")
            .expect("stored");
        let token = reg.create_token("alice", ttl).expect("token");
        assert_eq!(
            reg.set_operator_password("alice", "second password", &Actor::Local)
                .expect("passwd"),
            1
        );
        assert_eq!(reg.check_token(&token).expect("check"), TokenCheck::Unknown);
        assert!(
            reg.verify_operator("alice", "first password")
                .expect("v")
                .is_none()
        );
        assert!(
            reg.verify_operator("alice", "second password")
                .expect("v")
                .is_some()
        );
        // A login that checked the old password while it changed gets no token.
        assert_eq!(
            reg.create_token_for_password("alice", &old_hash, ttl, None)
                .expect("create"),
            None
        );
        let new_hash = reg
            .operator_password_hash("alice")
            .expect("hash")
            .expect("stored");
        let token = reg
            .create_token_for_password("alice", &new_hash, ttl, Some("AB"))
            .expect("create")
            .expect("current password");
        assert!(reg.token_expires_at(&token).expect("expiry").is_some());
        // The token carries the key of the console that logged in.
        assert!(matches!(
            reg.check_token(&token).expect("check"),
            TokenCheck::Valid { console_key: Some(k), .. } if k == "AB"
        ));

        assert_eq!(
            reg.set_operator_tenants("alice", " globex , initech ", &Actor::Local)
                .expect("scope"),
            1
        );
        assert_eq!(reg.operators().expect("list")[0].tenants, "globex,initech");
        assert!(matches!(
            reg.set_operator_tenants("alice", "ok,../etc", &Actor::Local),
            Err(RegistryError::InvalidName(_))
        ));
        let token = reg.create_token("alice", ttl).expect("token");
        assert_eq!(
            reg.remove_operator("alice", &Actor::Local).expect("remove"),
            1
        );
        assert_eq!(reg.check_token(&token).expect("check"), TokenCheck::Unknown);
        assert!(reg.token_expires_at(&token).expect("expiry").is_none());
        assert!(matches!(
            reg.remove_operator("alice", &Actor::Local),
            Err(RegistryError::UnknownOperator(_))
        ));
        assert!(matches!(
            reg.set_operator_password("alice", "x", &Actor::Local),
            Err(RegistryError::UnknownOperator(_))
        ));

        let audit = reg.audit_entries(10).expect("audit");
        let outcomes: Vec<_> = audit.iter().map(|e| e.outcome.as_str()).collect();
        assert_eq!(
            outcomes,
            [
                "operator removed; 1 token(s) revoked",
                "tenant scope set to \"globex,initech\" (was \"acme\"); 1 token(s) revoked",
                "password changed; 1 token(s) revoked",
            ]
        );
        assert!(
            audit
                .iter()
                .all(|e| e.operator == "alice" && e.service == "account")
        );
        assert_eq!(audit[2].console_addr, "local: rac sp operator passwd");
    }
    }
}

//! Session tokens: random, stored only as their SHA-256, each with an expiry.

use std::time::Duration;

use super::sql::{Sql, args};
use super::{Actor, Operator, Registry, Result};
use crate::sp::auth;
use crate::util::now_unix_secs;

/// What a presented token is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// A live token, with the console key its login registered (none for a token made
    /// without a login, e.g. by tests or an older console).
    Valid {
        operator: Operator,
        console_key: Option<String>,
    },
    Expired,
    Unknown,
}

/// Drops tokens that expired over a day ago. Expired tokens stay a day, so a session opened
/// with one is not taken for revoked.
fn forget_long_expired(db: &dyn Sql, now: u64) -> Result<()> {
    db.execute(
        "DELETE FROM tokens WHERE expires_at < ?1",
        args![now.saturating_sub(86_400) as i64],
    )?;
    Ok(())
}

impl Registry {
    /// Issues a session token valid for `ttl`. Only its hash is stored.
    pub fn create_token(&self, operator: &str, ttl: Duration) -> Result<String> {
        self.create_token_with_key(operator, ttl, None)
    }

    /// [`create_token`](Self::create_token) bound to a console key: sessions opened with it
    /// are granted to that key.
    pub fn create_token_with_key(
        &self,
        operator: &str,
        ttl: Duration,
        console_key: Option<&str>,
    ) -> Result<String> {
        let token = auth::random_hex_32();
        let now = now_unix_secs();
        self.write(|db| {
            forget_long_expired(db, now)?;
            db.execute(
                "INSERT INTO tokens (token_hash, operator, expires_at, console_key)
                 VALUES (?1, ?2, ?3, ?4)",
                args![
                    auth::sha256_hex(&token),
                    operator,
                    (now + ttl.as_secs()) as i64,
                    console_key
                ],
            )
        })?;
        Ok(token)
    }

    /// Issues a token as [`create_token`](Self::create_token) does, but only while the
    /// operator's stored password hash is still `password_hash` (the one a login just checked):
    /// `None` if the password changed or the operator was removed meanwhile.
    ///
    /// `console_key` is the fingerprint of the key the logging-in console holds: every session
    /// opened with this token is granted to that key alone.
    pub fn create_token_for_password(
        &self,
        operator: &str,
        password_hash: &str,
        ttl: Duration,
        console_key: Option<&str>,
    ) -> Result<Option<String>> {
        let token = auth::random_hex_32();
        let now = now_unix_secs();
        let inserted = self.timed(|| {
            self.write(|db| {
                forget_long_expired(db, now)?;
                db.execute(
                    "INSERT INTO tokens (token_hash, operator, expires_at, console_key)
                     SELECT ?1, name, ?3, ?5 FROM operators WHERE name = ?2 AND password_hash = ?4",
                    args![
                        auth::sha256_hex(&token),
                        operator,
                        (now + ttl.as_secs()) as i64,
                        password_hash,
                        console_key
                    ],
                )
            })
        })?;
        Ok((inserted == 1).then_some(token))
    }

    /// When a stored token expires (seconds since the Unix epoch), if it is stored.
    pub fn token_expires_at(&self, token: &str) -> Result<Option<u64>> {
        self.read(|db| {
            db.query_opt(
                "SELECT expires_at FROM tokens WHERE token_hash = ?1",
                args![auth::sha256_hex(token)],
            )?
            .map(|row| row.unsigned(0))
            .transpose()
        })
    }

    pub fn check_token(&self, token: &str) -> Result<TokenCheck> {
        let row = self.read(|db| {
            db.query_opt(
                "SELECT t.expires_at, t.operator, o.tenants, t.console_key FROM tokens t
                 LEFT JOIN operators o ON o.name = t.operator WHERE t.token_hash = ?1",
                args![auth::sha256_hex(token)],
            )
        })?;
        let Some(row) = row else {
            return Ok(TokenCheck::Unknown);
        };
        // No operator row: the operator was removed (their tokens go with them, but a
        // removal by an older build may have left some).
        let Some(tenants) = row.opt_text(2)? else {
            return Ok(TokenCheck::Unknown);
        };
        if row.unsigned(0)? <= now_unix_secs() {
            return Ok(TokenCheck::Expired);
        }
        Ok(TokenCheck::Valid {
            operator: Operator {
                name: row.text(1)?,
                tenants,
            },
            console_key: row.opt_text(3)?,
        })
    }

    pub fn revoke_token(&self, token: &str) -> Result<()> {
        self.write(|db| {
            db.execute(
                "DELETE FROM tokens WHERE token_hash = ?1",
                args![auth::sha256_hex(token)],
            )
        })?;
        Ok(())
    }

    /// Revokes every token of one operator (a stolen laptop).
    pub fn revoke_operator_tokens(&self, operator: &str) -> Result<usize> {
        let revoked =
            self.write(|db| db.execute("DELETE FROM tokens WHERE operator = ?1", args![operator]))?;
        Ok(revoked as usize)
    }

    /// [`revoke_operator_tokens`](Self::revoke_operator_tokens) for an existing operator, as
    /// `rac sp operator revoke` does it: one transaction, written to the audit log.
    pub fn revoke_operator_tokens_audited(&self, operator: &str, by: &Actor) -> Result<usize> {
        self.change_operator(operator, "revoke", by, |_| Ok("tokens revoked".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_stores;
    use super::*;

    on_both_stores! {
    fn operator_passwords_and_tokens(reg: &Registry) {
        reg.add_operator("alice", "correct horse", "acme,globex")
            .expect("add");
        assert!(reg.verify_operator("alice", "wrong").expect("v").is_none());
        assert!(reg.verify_operator("bob", "x").expect("v").is_none());
        let op = reg
            .verify_operator("alice", "correct horse")
            .expect("v")
            .expect("valid");
        assert!(op.may_open("acme") && !op.may_open("initech"));
        let token = reg
            .create_token("alice", Duration::from_secs(60))
            .expect("token");
        assert_eq!(
            reg.check_token(&token).expect("check"),
            TokenCheck::Valid {
                operator: op,
                console_key: None,
            }
        );
        reg.revoke_token(&token).expect("revoke");
        assert_eq!(reg.check_token(&token).expect("check"), TokenCheck::Unknown);
        let expired = reg
            .create_token("alice", Duration::from_secs(0))
            .expect("token");
        assert_eq!(
            reg.check_token(&expired).expect("check"),
            TokenCheck::Expired
        );
    }
    }
}

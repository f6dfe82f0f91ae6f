//! The SP's registry: operator and tenant accounts, session tokens and the audit log, in one
//! SQLite file in the state dir. Every write is one transaction, so a crash leaves either the
//! old or the new row. Several processes may open the file at once (`rac sp tenant add`
//! while `rac sp run` serves); the server notices their commits through `data_version`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::auth;
use crate::util::now_unix_secs;

/// Why a registry call failed, for callers that branch on it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    #[error("a tenant named {0:?} already exists")]
    TenantExists(String),
    #[error("no operator named {0:?}")]
    UnknownOperator(String),
    #[error("an operator named {0:?} already exists")]
    OperatorExists(String),
    #[error(transparent)]
    InvalidName(#[from] crate::wire::InvalidName),
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A tenant account as stored (the secret only as its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantAccount {
    pub name: String,
    pub enabled: bool,
    pub description: String,
    pub created_at: u64,
    pub last_seen: Option<u64>,
    #[serde(skip)]
    pub secret_hash: String,
}

/// What a presented token is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(Operator),
    Expired,
    Unknown,
}

/// An operator allowed to use consoles, and which tenants they may open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// One audited console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub operator: String,
    pub tenant: String,
    pub service: String,
    pub console_addr: String,
    pub started_at: u64,
    pub ended_at: Option<u64>,
    pub bytes_to_tenant: u64,
    pub bytes_from_tenant: u64,
    pub outcome: String,
}

/// Who was on a side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Console,
    Tenant,
}

impl Party {
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Console => "console",
            Party::Tenant => "tenant",
        }
    }
}

/// How a session ended, as its audit row words it (`AuditEntry::outcome` reads it back as
/// text: older rows and admin actions have words of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Both sides closed cleanly.
    Closed,
    /// One side ended its TLS without close_notify (a killed process, a cut cable).
    ClosedWithoutNotify { by: Party },
    /// Reading from or writing to one side failed.
    Failed { by: Party, error: String },
    /// The SP was shutting down.
    SpShutdown,
    /// The tenant was disabled or removed while the session ran.
    TenantEnded,
    /// The operator's token was revoked (logout, `rac sp operator ...`).
    TokenRevoked,
    /// The SP stopped abruptly while the session ran (written at its next start).
    Interrupted,
}

impl std::fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionOutcome::Closed => f.write_str("closed"),
            SessionOutcome::ClosedWithoutNotify { by } => {
                write!(f, "closed (no close_notify from the {})", by.as_str())
            }
            SessionOutcome::Failed { by, error } => {
                write!(f, "failed: {} side: {error}", by.as_str())
            }
            SessionOutcome::SpShutdown => f.write_str("ended: SP shutting down"),
            SessionOutcome::TenantEnded => f.write_str("ended: tenant disabled or removed"),
            SessionOutcome::TokenRevoked => f.write_str("ended: operator token revoked"),
            SessionOutcome::Interrupted => f.write_str("interrupted: SP stopped"),
        }
    }
}

/// The registry file. A std `Mutex` guards the connection: every call is short and never
/// awaits while holding it; the slow password hash runs outside the lock.
pub struct Registry {
    conn: Mutex<Connection>,
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

/// An account change made from the SP's own command line, as a row of the audit log:
/// operator, `-` for the tenant, `account` for the service, where the change came from, and
/// what it did as the outcome.
fn audit_admin(conn: &Connection, operator: &str, action: &str, outcome: &str) -> Result<()> {
    let now = now_unix_secs() as i64;
    conn.execute(
        "INSERT INTO audit (operator, tenant, service, console_addr, started_at, ended_at, outcome)
         VALUES (?1, '-', 'account', ?2, ?3, ?3, ?4)",
        params![
            operator,
            format!("local: rac sp operator {action}"),
            now,
            outcome
        ],
    )?;
    Ok(())
}

/// The registry file and the companions SQLite keeps beside it in WAL mode.
pub fn registry_files(path: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// Creates an empty registry file with mode 0600 unless one exists (SQLite would create it
/// with the umask's default, usually world-readable).
fn create_private(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RegistryError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Makes `path` (if it exists) accessible to its owner only (`mode`, 0600 or 0700), warning
/// when it was looser.
pub fn tighten(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(RegistryError::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        let now = meta.permissions().mode() & 0o777;
        if now & 0o077 != 0 {
            tracing::warn!(
                "{} was readable by others (mode {now:o}); setting it to {mode:o}",
                path.display()
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
                RegistryError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            })?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    tenants TEXT NOT NULL DEFAULT '*',
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    last_seen INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operator TEXT NOT NULL,
    tenant TEXT NOT NULL,
    service TEXT NOT NULL,
    console_addr TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    bytes_to_tenant INTEGER NOT NULL DEFAULT 0,
    bytes_from_tenant INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL
);
";

impl Registry {
    /// Opens (creating if needed) the registry at `path`. The file and its `-wal` and `-shm`
    /// companions are made readable by their owner only (0600; an existing looser file is
    /// tightened, with a warning): they hold the password and secret hashes and the audit
    /// log. Every commit is synced to disk (`synchronous=FULL`): writes are rare (account
    /// changes, logins, session start and end), and an acknowledged change must survive a
    /// power loss, not only a crash.
    pub fn open(path: &Path) -> Result<Self> {
        create_private(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // SQLite creates `-wal` and `-shm` with the database file's mode; tighten ones left
        // by an older version or another tool.
        for file in registry_files(path) {
            tighten(&file, 0o600)?;
        }
        Ok(Registry {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is still safe to use.
        crate::util::lock(&self.conn)
    }

    /// Changes whenever another connection (another process) commits to the file.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }

    // ---- operators ----

    /// Adds an operator; `tenants` is `*` or a comma-separated allow list.
    pub fn add_operator(&self, name: &str, password: &str, tenants: &str) -> Result<()> {
        crate::wire::validate_name(name)?;
        let tenants = tenant_scope(tenants)?;
        let hash = auth::hash_password(password).map_err(RegistryError::Hash)?;
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO operators (name, password_hash, tenants, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, hash, tenants, now_unix_secs() as i64],
        )?;
        if inserted == 0 {
            return Err(RegistryError::OperatorExists(name.to_string()));
        }
        Ok(())
    }

    /// Replaces an operator's password and revokes every token of theirs, in one transaction
    /// (audited). A running SP then ends their sessions and tenant feeds within one registry
    /// poll. Returns how many tokens were revoked.
    pub fn set_operator_password(&self, name: &str, password: &str) -> Result<usize> {
        // The slow hash runs before the lock is taken.
        let hash = auth::hash_password(password).map_err(RegistryError::Hash)?;
        self.change_operator(name, "passwd", |tx| {
            tx.execute(
                "UPDATE operators SET password_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )?;
            Ok("password changed".to_string())
        })
    }

    /// Removes an operator and every token of theirs, in one transaction (audited). Returns
    /// how many tokens were revoked.
    pub fn remove_operator(&self, name: &str) -> Result<usize> {
        self.change_operator(name, "remove", |tx| {
            tx.execute("DELETE FROM operators WHERE name = ?1", params![name])?;
            Ok("operator removed".to_string())
        })
    }

    /// Replaces an operator's tenant scope (`*` or a comma-separated list) and revokes every
    /// token of theirs, in one transaction (audited): the new scope applies from their next
    /// login. Returns how many tokens were revoked.
    pub fn set_operator_tenants(&self, name: &str, tenants: &str) -> Result<usize> {
        let tenants = tenant_scope(tenants)?;
        self.change_operator(name, "set-tenants", |tx| {
            let old: String = tx.query_row(
                "SELECT tenants FROM operators WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )?;
            tx.execute(
                "UPDATE operators SET tenants = ?2 WHERE name = ?1",
                params![name, tenants],
            )?;
            Ok(format!("tenant scope set to {tenants:?} (was {old:?})"))
        })
    }

    /// One audited change to an existing operator, with all their tokens revoked, as one
    /// transaction: either all of it is on disk or none.
    fn change_operator(
        &self,
        name: &str,
        action: &str,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<String>,
    ) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM operators WHERE name = ?1",
                params![name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Err(RegistryError::UnknownOperator(name.to_string()));
        }
        let what = change(&tx)?;
        let revoked = tx.execute("DELETE FROM tokens WHERE operator = ?1", params![name])?;
        audit_admin(
            &tx,
            name,
            action,
            &format!("{what}; {revoked} token(s) revoked"),
        )?;
        tx.commit()?;
        Ok(revoked)
    }

    /// The stored password hash of an operator, if there is such an operator.
    pub fn operator_password_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT password_hash FROM operators WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Checks a password. Slow by design (argon2): call from a blocking thread.
    /// An unknown operator costs the same time as a wrong password.
    pub fn verify_operator(&self, name: &str, password: &str) -> Result<Option<Operator>> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT password_hash, tenants FROM operators WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match row {
            Some((hash, tenants)) if auth::verify_password(password, &hash) => Ok(Some(Operator {
                name: name.to_string(),
                tenants,
            })),
            Some(_) => Ok(None),
            None => {
                auth::burn_password_time(password);
                Ok(None)
            }
        }
    }

    pub fn operators(&self) -> Result<Vec<Operator>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, tenants FROM operators ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok(Operator {
                name: row.get(0)?,
                tenants: row.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- tokens ----

    /// Issues a session token valid for `ttl`. Only its hash is stored.
    pub fn create_token(&self, operator: &str, ttl: Duration) -> Result<String> {
        let token = auth::random_hex_32();
        let now = now_unix_secs();
        let conn = self.conn();
        // Expired tokens stay a day, so a session opened with one is not taken for revoked.
        conn.execute(
            "DELETE FROM tokens WHERE expires_at < ?1",
            params![now.saturating_sub(86_400) as i64],
        )?;
        conn.execute(
            "INSERT INTO tokens (token_hash, operator, expires_at) VALUES (?1, ?2, ?3)",
            params![
                auth::sha256_hex(&token),
                operator,
                (now + ttl.as_secs()) as i64
            ],
        )?;
        Ok(token)
    }

    /// Issues a token as [`create_token`](Self::create_token) does, but only while the
    /// operator's stored password hash is still `password_hash` (the one a login just checked):
    /// `None` if the password changed or the operator was removed meanwhile.
    pub fn create_token_for_password(
        &self,
        operator: &str,
        password_hash: &str,
        ttl: Duration,
    ) -> Result<Option<String>> {
        let token = auth::random_hex_32();
        let now = now_unix_secs();
        let conn = self.conn();
        conn.execute(
            "DELETE FROM tokens WHERE expires_at < ?1",
            params![now.saturating_sub(86_400) as i64],
        )?;
        let inserted = conn.execute(
            "INSERT INTO tokens (token_hash, operator, expires_at)
             SELECT ?1, name, ?3 FROM operators WHERE name = ?2 AND password_hash = ?4",
            params![
                auth::sha256_hex(&token),
                operator,
                (now + ttl.as_secs()) as i64,
                password_hash
            ],
        )?;
        Ok((inserted == 1).then_some(token))
    }

    /// When a stored token expires (seconds since the Unix epoch), if it is stored.
    pub fn token_expires_at(&self, token: &str) -> Result<Option<u64>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT expires_at FROM tokens WHERE token_hash = ?1",
                params![auth::sha256_hex(token)],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map(|at| at.max(0) as u64))
    }

    pub fn check_token(&self, token: &str) -> Result<TokenCheck> {
        let row: Option<(i64, String, Option<String>)> = self
            .conn()
            .query_row(
                "SELECT t.expires_at, t.operator, o.tenants FROM tokens t
                 LEFT JOIN operators o ON o.name = t.operator WHERE t.token_hash = ?1",
                params![auth::sha256_hex(token)],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None | Some((_, _, None)) => TokenCheck::Unknown,
            Some((expires_at, _, _)) if (expires_at as u64) <= now_unix_secs() => {
                TokenCheck::Expired
            }
            Some((_, name, Some(tenants))) => TokenCheck::Valid(Operator { name, tenants }),
        })
    }

    pub fn revoke_token(&self, token: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM tokens WHERE token_hash = ?1",
            params![auth::sha256_hex(token)],
        )?;
        Ok(())
    }

    /// Revokes every token of one operator (a stolen laptop).
    pub fn revoke_operator_tokens(&self, operator: &str) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM tokens WHERE operator = ?1", params![operator])?)
    }

    /// [`revoke_operator_tokens`](Self::revoke_operator_tokens) for an existing operator, as
    /// `rac sp operator revoke` does it: one transaction, written to the audit log.
    pub fn revoke_operator_tokens_audited(&self, operator: &str) -> Result<usize> {
        self.change_operator(operator, "revoke", |_| Ok("tokens revoked".to_string()))
    }

    // ---- tenants ----

    /// Adds a tenant and returns its new secret (shown once, never stored).
    pub fn add_tenant(&self, name: &str, description: &str) -> Result<String> {
        crate::wire::validate_name(name)?;
        let secret = auth::random_hex_32();
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO tenants (name, secret_hash, description, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, auth::sha256_hex(&secret), description, now_unix_secs() as i64],
        )?;
        if inserted == 0 {
            return Err(RegistryError::TenantExists(name.to_string()));
        }
        Ok(secret)
    }

    /// Replaces a tenant's secret; its current connection is dropped by the running SP.
    pub fn rotate_secret(&self, name: &str) -> Result<String> {
        let secret = auth::random_hex_32();
        let n = self.conn().execute(
            "UPDATE tenants SET secret_hash = ?2 WHERE name = ?1",
            params![name, auth::sha256_hex(&secret)],
        )?;
        if n == 0 {
            return Err(RegistryError::UnknownTenant(name.to_string()));
        }
        Ok(secret)
    }

    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE tenants SET enabled = ?2 WHERE name = ?1",
            params![name, enabled],
        )?;
        if n == 0 {
            return Err(RegistryError::UnknownTenant(name.to_string()));
        }
        Ok(())
    }

    pub fn remove_tenant(&self, name: &str) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM tenants WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(RegistryError::UnknownTenant(name.to_string()));
        }
        Ok(())
    }

    pub fn set_last_seen(&self, name: &str, at: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE tenants SET last_seen = ?2 WHERE name = ?1",
            params![name, at as i64],
        )?;
        Ok(())
    }

    /// Every tenant account, by name.
    pub fn tenants(&self) -> Result<Vec<TenantAccount>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, enabled, description, created_at, last_seen, secret_hash FROM tenants ORDER BY name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(TenantAccount {
                name: row.get(0)?,
                enabled: row.get(1)?,
                description: row.get(2)?,
                created_at: row.get::<_, i64>(3)? as u64,
                last_seen: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                secret_hash: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- audit ----

    /// Records a session's start; the row exists before the first byte is relayed.
    pub fn audit_start(
        &self,
        operator: &str,
        tenant: &str,
        service: &str,
        console_addr: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO audit (operator, tenant, service, console_addr, started_at, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, 'open')",
            params![
                operator,
                tenant,
                service,
                console_addr,
                now_unix_secs() as i64
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a session ended (or why it never started).
    pub fn audit_end(
        &self,
        id: i64,
        bytes_to_tenant: u64,
        bytes_from_tenant: u64,
        outcome: &SessionOutcome,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE audit SET ended_at = ?2, bytes_to_tenant = ?3, bytes_from_tenant = ?4, outcome = ?5
             WHERE id = ?1",
            params![
                id,
                now_unix_secs() as i64,
                bytes_to_tenant as i64,
                bytes_from_tenant as i64,
                outcome.to_string()
            ],
        )?;
        Ok(())
    }

    /// Sessions left open by a previous run that stopped abruptly are closed as such.
    pub fn close_interrupted_sessions(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE audit SET ended_at = ?1, outcome = ?2 WHERE ended_at IS NULL",
            params![
                now_unix_secs() as i64,
                SessionOutcome::Interrupted.to_string()
            ],
        )?)
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_entries(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, operator, tenant, service, console_addr, started_at, ended_at,
                    bytes_to_tenant, bytes_from_tenant, outcome
             FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |row| {
            Ok(AuditEntry {
                id: row.get(0)?,
                operator: row.get(1)?,
                tenant: row.get(2)?,
                service: row.get(3)?,
                console_addr: row.get(4)?,
                started_at: row.get::<_, i64>(5)? as u64,
                ended_at: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                bytes_to_tenant: row.get::<_, i64>(7)? as u64,
                bytes_from_tenant: row.get::<_, i64>(8)? as u64,
                outcome: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("registry.sqlite")).expect("open");
        (dir, reg)
    }

    #[test]
    fn every_commit_is_synced_to_disk() {
        let (_dir, reg) = registry();
        let level: i64 = reg
            .conn()
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("pragma");
        assert_eq!(level, 2, "synchronous=FULL (2), not NORMAL (1)");
    }

    #[cfg(unix)]
    #[test]
    fn the_registry_and_its_wal_and_shm_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, reg) = registry();
        reg.add_tenant("acme", "")
            .expect("a write, so the -wal exists");
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
        };
        for file in registry_files(&dir.path().join("registry.sqlite")) {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        // An existing world-readable registry is tightened when opened.
        drop(reg);
        let path = dir.path().join("registry.sqlite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _reg = Registry::open(&path).expect("reopen");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn tenant_lifecycle() {
        let (_dir, reg) = registry();
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

    #[test]
    fn operator_passwords_and_tokens() {
        let (_dir, reg) = registry();
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
            TokenCheck::Valid(op)
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

    #[test]
    fn operator_changes_revoke_tokens_and_are_audited() {
        let (_dir, reg) = registry();
        reg.add_operator("alice", "first password", "acme")
            .expect("add");
        let ttl = Duration::from_secs(60);
        let old_hash = reg
            .operator_password_hash("alice")
            .expect("hash")
            .expect("stored");
        let token = reg.create_token("alice", ttl).expect("token");
        assert_eq!(
            reg.set_operator_password("alice", "second password")
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
            reg.create_token_for_password("alice", &old_hash, ttl)
                .expect("create"),
            None
        );
        let new_hash = reg
            .operator_password_hash("alice")
            .expect("hash")
            .expect("stored");
        let token = reg
            .create_token_for_password("alice", &new_hash, ttl)
            .expect("create")
            .expect("current password");
        assert!(reg.token_expires_at(&token).expect("expiry").is_some());

        assert_eq!(
            reg.set_operator_tenants("alice", " globex , initech ")
                .expect("scope"),
            1
        );
        assert_eq!(reg.operators().expect("list")[0].tenants, "globex,initech");
        assert!(matches!(
            reg.set_operator_tenants("alice", "ok,../etc"),
            Err(RegistryError::InvalidName(_))
        ));
        let token = reg.create_token("alice", ttl).expect("token");
        assert_eq!(reg.remove_operator("alice").expect("remove"), 1);
        assert_eq!(reg.check_token(&token).expect("check"), TokenCheck::Unknown);
        assert!(reg.token_expires_at(&token).expect("expiry").is_none());
        assert!(matches!(
            reg.remove_operator("alice"),
            Err(RegistryError::UnknownOperator(_))
        ));
        assert!(matches!(
            reg.set_operator_password("alice", "x"),
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

    #[test]
    fn audit_rows_survive_and_interrupted_ones_are_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.sqlite");
        {
            let reg = Registry::open(&path).expect("open");
            let id = reg
                .audit_start("alice", "acme", "backup", "127.0.0.1:5")
                .expect("start");
            reg.audit_end(id, 10, 20, &SessionOutcome::Closed)
                .expect("end");
            reg.audit_start("alice", "acme", "backup", "127.0.0.1:6")
                .expect("start");
        }
        let reg = Registry::open(&path).expect("reopen");
        assert_eq!(reg.close_interrupted_sessions().expect("close"), 1);
        let entries = reg.audit_entries(10).expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].bytes_from_tenant, 20);
        assert!(entries[0].outcome.starts_with("interrupted"));
    }

    #[test]
    fn another_connections_commit_changes_data_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.sqlite");
        let server = Registry::open(&path).expect("open");
        let before = server.data_version().expect("v");
        let cli = Registry::open(&path).expect("open second");
        cli.add_tenant("acme", "").expect("add");
        assert_ne!(server.data_version().expect("v"), before);
    }
}

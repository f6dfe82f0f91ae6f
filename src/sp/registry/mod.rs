//! The SP's registry: operator and tenant accounts, session tokens and the audit log, in one
//! SQLite file in the state dir. Every write is one transaction, so a crash leaves either the
//! old or the new row. Several processes may open the file at once (`rac sp tenant add`
//! while `rac sp run` serves); the server notices their commits through `data_version`.
//!
//! This file opens the registry; its rows are handled by topic: `accounts.rs` (operators and
//! tenants), `tokens.rs`, `admin_tokens.rs`, `audit.rs`, and `schema.rs` (the tables and the file's mode).

mod accounts;
mod admin_tokens;
mod audit;
mod schema;
mod tokens;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

pub use accounts::{Operator, TenantAccount, tenant_scope};
pub use admin_tokens::{ADMIN_TOKEN_PREFIX, AdminScope, AdminToken};
pub use audit::{Actor, AuditEntry, AuditPage, AuditQuery, Party, SessionOutcome};
use schema::{SCHEMA, add_missing_columns, create_private};
pub use schema::{registry_files, tighten};
pub use tokens::TokenCheck;

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
    #[error("no admin token named {0:?}")]
    UnknownAdminToken(String),
    #[error("an admin token named {0:?} already exists")]
    AdminTokenExists(String),
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

/// The registry file. A std `Mutex` guards the connection: every call is short and never
/// awaits while holding it; the slow password hash runs outside the lock.
pub struct Registry {
    conn: Mutex<Connection>,
    /// Where the time of the writes on the session and login paths goes (the SP's metrics).
    write_seconds: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

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
        add_missing_columns(&conn)?;
        // SQLite creates `-wal` and `-shm` with the database file's mode; tighten ones left
        // by an older version or another tool.
        for file in registry_files(path) {
            tighten(&file, 0o600)?;
        }
        Ok(Registry {
            conn: Mutex::new(conn),
            write_seconds: std::sync::OnceLock::new(),
        })
    }

    /// Records how long each write on the session and login paths takes in `histogram`
    /// (the first call wins).
    pub fn observe_writes(&self, histogram: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.write_seconds.set(histogram);
    }

    /// Runs `write`, timing it if [`observe_writes`](Self::observe_writes) asked for it.
    fn timed<T>(&self, write: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let result = write();
        if let Some(histogram) = self.write_seconds.get() {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is still safe to use.
        crate::util::lock(&self.conn)
    }

    /// Whether a write could start now: takes the write lock on a connection of its own and
    /// gives it back at once, committing nothing (so no one's `data_version` moves). Fails
    /// within about 200 ms when another connection holds the lock, and at once when the file
    /// cannot be opened for writing (a read-only file system). For `/readyz`.
    pub fn probe_writable(path: &Path) -> std::result::Result<(), String> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let conn = Connection::open(path).map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::from_millis(200))
            .map_err(|e| e.to_string())?;
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| format!("cannot take the write lock: {e}"))
    }

    /// Changes whenever another connection (another process) commits to the file.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh registry in a temporary dir (kept as long as the dir lives).
    pub(super) fn registry() -> (tempfile::TempDir, Registry) {
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

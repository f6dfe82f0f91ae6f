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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    wal: Arc<WalSync>,
    /// Where the time of the writes on the session and login paths goes (the SP's metrics).
    write_seconds: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

/// How long a session's audit row may stay in the OS's cache before it is on disk.
pub const AUDIT_SYNCED_WITHIN: Duration = Duration::from_secs(1);

/// Syncs the write-ahead log after session audit rows, which commit without waiting for the
/// disk (see [`Registry::write_unsynced`]).
struct WalSync {
    path: PathBuf,
    dirty: AtomicBool,
}

impl WalSync {
    /// Syncs the log if a row was written since the last sync.
    fn sync(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = match std::fs::File::open(&self.path) {
            Ok(wal) => wal.sync_data(),
            // No log (yet, or any more): nothing of it to sync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if synced.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        synced
    }

    /// Syncs every [`AUDIT_SYNCED_WITHIN`] on a thread of its own, as long as the registry
    /// is open.
    fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("registry-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(AUDIT_SYNCED_WITHIN);
                    let Some(wal) = weak.upgrade() else { return };
                    if let Err(e) = wal.sync() {
                        tracing::error!("syncing the registry's log to disk failed: {e}");
                    }
                }
            })
            .map(drop)
    }
}

impl Registry {
    /// Opens (creating if needed) the registry at `path`. The file and its `-wal` and `-shm`
    /// companions are made readable by their owner only (0600; an existing looser file is
    /// tightened, with a warning): they hold the password and secret hashes and the audit
    /// log. Account changes and logins are synced to disk as they commit
    /// (`synchronous=FULL`): an acknowledged change must survive a power loss, not only a
    /// crash. Session audit rows are not waited for ([`Registry::write_unsynced`]).
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
        let [_, wal, _] = registry_files(path);
        for file in registry_files(path) {
            tighten(&file, 0o600)?;
        }
        let wal = Arc::new(WalSync {
            path: wal,
            dirty: AtomicBool::new(false),
        });
        wal.start().map_err(|source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Registry {
            conn: Mutex::new(conn),
            wal,
            write_seconds: std::sync::OnceLock::new(),
        })
    }

    /// Runs a write that commits without syncing to disk: a session's audit rows, written
    /// on the way to its first byte, where an fsync (milliseconds on many disks) would be
    /// most of the time a console waits. The row is in the OS's cache when this returns, so
    /// a crash of the SP loses nothing; the log is synced within [`AUDIT_SYNCED_WITHIN`]
    /// (or by the next synced commit), so a power loss loses at most that last second.
    fn write_unsynced<T>(&self, write: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.timed(|| {
            let conn = self.conn();
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let written = write(&conn);
            let restored = conn.pragma_update(None, "synchronous", "FULL");
            self.wal.dirty.store(true, Ordering::Release);
            let written = written?;
            restored?;
            Ok(written)
        })
    }

    /// Whether every audit row written so far is on disk.
    #[cfg(test)]
    fn audit_synced(&self) -> bool {
        !self.wal.dirty.load(Ordering::Acquire)
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

impl Drop for Registry {
    fn drop(&mut self) {
        if let Err(e) = self.wal.sync() {
            tracing::error!("syncing the registry's log to disk failed: {e}");
        }
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

    fn sync_level(reg: &Registry) -> i64 {
        reg.conn()
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("pragma")
    }

    #[test]
    fn account_changes_are_synced_as_they_commit_and_audit_rows_soon_after() {
        let (_dir, reg) = registry();
        assert_eq!(sync_level(&reg), 2, "synchronous=FULL (2), not NORMAL (1)");
        reg.add_tenant("acme", "").expect("add");
        assert!(reg.audit_synced(), "an account change needs no later sync");
        reg.audit_start("op", "acme", "backup", "127.0.0.1:1")
            .expect("audit row");
        assert_eq!(sync_level(&reg), 2, "back to FULL after an audit row");
        // The sync thread catches up within a second; allow for a slow machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !reg.audit_synced() {
            assert!(
                std::time::Instant::now() < deadline,
                "the audit row was never synced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

//! The SP's registry: operator and tenant accounts, session tokens and the audit log. One
//! SP keeps them in one SQLite file in its state dir; several SP nodes share them in
//! PostgreSQL (`[cluster]` in sp.toml). Every write is one transaction, so a crash leaves
//! either the old or the new row. Several processes may use the registry at once (`rac sp
//! tenant add` while `rac sp run` serves); the server notices account changes, its own and
//! theirs, through [`Registry::data_version`].
//!
//! This file opens the registry and runs statements on the store; the statements are written
//! once against [`sql::Sql`] and grouped by topic: `accounts.rs` (operators and tenants),
//! `tokens.rs`, `admin_tokens.rs`, `audit.rs`. `schema.rs` holds the SQLite file's tables and
//! mode, `postgres.rs` the PostgreSQL store and its migrations.

mod accounts;
mod admin_tokens;
mod audit;
pub mod local_server;
mod postgres;
mod schema;
pub(crate) mod sql;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use self::postgres::PgStore;
pub use self::postgres::PgTarget;
pub use accounts::{Operator, TenantAccount, tenant_scope};
pub use admin_tokens::{ADMIN_TOKEN_PREFIX, AdminScope, AdminToken};
pub use audit::{Actor, AuditEntry, AuditPage, AuditQuery, Party, SessionOutcome};
use schema::{SCHEMA, VERSION_COUNTER, add_missing_columns, create_private};
pub use schema::{registry_files, tighten};
use sql::Sql;
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
    /// (Not a `source`: the message already carries the cause, once.)
    #[error("registry database (PostgreSQL): {}", postgres_reason(.0))]
    Postgres(::postgres::Error),
    #[error("registry: column {index} is not {expected}")]
    Column {
        index: usize,
        expected: &'static str,
    },
    /// The store could not be opened or used: a bad database URL or password, a schema
    /// newer than this build, a connection thread gone.
    #[error("registry: {0}")]
    Store(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<::postgres::Error> for RegistryError {
    fn from(e: ::postgres::Error) -> Self {
        RegistryError::Postgres(e)
    }
}

/// A PostgreSQL error with the server's own words when it sent some (`db error` alone says
/// nothing), and the underlying cause for a connection that failed.
fn postgres_reason(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let text = e.to_string();
    match std::error::Error::source(e).map(|cause| cause.to_string()) {
        Some(cause) if !text.contains(&cause) => format!("{text}: {cause}"),
        _ => text,
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The registry, on one of its two stores.
pub struct Registry {
    store: Store,
    /// Where the time of the writes on the session and login paths goes (the SP's metrics).
    write_seconds: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
    /// The cluster node whose session audit rows this handle writes (see
    /// [`set_node`](Self::set_node)); none on a single SP.
    node: std::sync::OnceLock<String>,
}

enum Store {
    /// A std `Mutex` guards the connection: every call is short and never awaits while
    /// holding it; the slow password hash runs outside the lock.
    Sqlite {
        conn: Mutex<Connection>,
        path: PathBuf,
        wal: Arc<WalSync>,
    },
    Postgres(PgStore),
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
        conn.execute_batch(VERSION_COUNTER)?;
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
        Ok(Registry::on(Store::Sqlite {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            wal,
        }))
    }

    /// Opens the registry in a PostgreSQL database shared by several SP nodes, bringing its
    /// schema up to date (the numbered migrations in `postgres.rs`, each applied once).
    /// Account changes commit synchronously; session audit rows with `synchronous_commit`
    /// off, as on SQLite.
    pub fn open_postgres(target: PgTarget) -> Result<Self> {
        Ok(Registry::on(Store::Postgres(PgStore::open(target)?)))
    }

    fn on(store: Store) -> Self {
        Registry {
            store,
            write_seconds: std::sync::OnceLock::new(),
            node: std::sync::OnceLock::new(),
        }
    }

    /// Where the registry is, for messages: the file, or the database (no password).
    pub fn location(&self) -> String {
        match &self.store {
            Store::Sqlite { path, .. } => path.display().to_string(),
            Store::Postgres(pg) => pg.target().describe(),
        }
    }

    /// Runs reads, outside a transaction (on PostgreSQL, a read that met a restarted
    /// database is run once more on a new connection).
    fn read<T>(&self, work: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        match &self.store {
            Store::Sqlite { conn, .. } => work(&*lock_conn(conn)),
            Store::Postgres(pg) => work(&pg.checkout()),
        }
    }

    /// Runs `work` as one transaction, synced to disk when it commits.
    fn write<T>(&self, work: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        match &self.store {
            Store::Sqlite { conn, .. } => {
                let mut conn = lock_conn(conn);
                let tx = conn.transaction()?;
                let value = work(&*tx)?;
                tx.commit()?;
                Ok(value)
            }
            Store::Postgres(pg) => pg.checkout().transaction(|tx| work(tx)),
        }
    }

    /// Runs a write that commits without syncing to disk: a session's audit rows, written
    /// on the way to its first byte, where an fsync (milliseconds on many disks) would be
    /// most of the time a console waits. The row is in the OS's cache when this returns, so
    /// a crash of the SP loses nothing; the log is synced within [`AUDIT_SYNCED_WITHIN`]
    /// (or by the next synced commit), so a power loss loses at most that last second.
    /// On PostgreSQL the same trade is `synchronous_commit = off` for that transaction (its
    /// WAL writer flushes within a few hundred milliseconds).
    fn write_unsynced<T>(&self, work: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        self.timed(|| match &self.store {
            Store::Sqlite { conn, wal, .. } => {
                let conn = lock_conn(conn);
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                let written = work(&*conn);
                let restored = conn.pragma_update(None, "synchronous", "FULL");
                wal.dirty.store(true, Ordering::Release);
                let written = written?;
                restored?;
                Ok(written)
            }
            Store::Postgres(pg) => pg.checkout().transaction_with(false, |tx| work(tx)),
        })
    }

    /// Whether every audit row written so far is on disk.
    #[cfg(test)]
    fn audit_synced(&self) -> bool {
        match &self.store {
            Store::Sqlite { wal, .. } => !wal.dirty.load(Ordering::Acquire),
            Store::Postgres(_) => true,
        }
    }

    /// Names the cluster node this handle belongs to: its session audit rows carry the name,
    /// and [`close_interrupted_sessions_of`](Self::close_interrupted_sessions_of) finds them
    /// after a crash (the first call wins).
    pub fn set_node(&self, node: &str) {
        let _ = self.node.set(node.to_string());
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

    /// Whether a write could start now, for `/readyz`. SQLite: takes the write lock on a
    /// connection of its own and gives it back at once, committing nothing; fails within
    /// about 200 ms when another connection holds the lock, and at once when SQLite could
    /// open the file only for reading (a read-only file system). PostgreSQL: a write that is
    /// rolled back, on a pooled connection.
    ///
    /// The file is opened through SQLite only, never with `std::fs`: closing any descriptor
    /// of the database file drops every POSIX lock this process holds on it, and then the
    /// next other process to close its connection (a `rac sp tenant ...`) takes itself for
    /// the last one, checkpoints and deletes the write-ahead log under the running SP, whose
    /// later writes nobody else would see. SQLite's own connections share the process's
    /// locks and do not drop them.
    pub fn probe_writable(&self) -> std::result::Result<(), String> {
        match &self.store {
            Store::Sqlite { path, .. } => {
                let conn = Connection::open(path).map_err(|e| e.to_string())?;
                if conn
                    .is_readonly(rusqlite::MAIN_DB)
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("{}: opened read-only", path.display()));
                }
                conn.busy_timeout(Duration::from_millis(200))
                    .map_err(|e| e.to_string())?;
                conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                    .map_err(|e| format!("cannot take the write lock: {e}"))
            }
            Store::Postgres(pg) => {
                let conn = pg.checkout();
                let probed = conn.batch(
                    "BEGIN; SET LOCAL lock_timeout = '200ms'; \
                     UPDATE registry_version SET version = version; ROLLBACK",
                );
                if probed.is_err() {
                    // The batch stopped at the failure, inside its transaction.
                    let _ = conn.batch("ROLLBACK");
                }
                probed.map_err(|e| e.to_string())
            }
        }
    }

    /// Changes whenever a tenant account changes: a counter a trigger moves on every such
    /// change, made through this registry or any other process (`rac sp tenant ...`, another
    /// node of a cluster).
    pub fn data_version(&self) -> Result<i64> {
        self.read(|db| {
            db.query_opt("SELECT version FROM registry_version", &[])?
                .ok_or(RegistryError::Store("registry_version has no row".into()))?
                .int(0)
        })
    }
}

fn lock_conn(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave SQLite half-written (transactions roll
    // back), so a poisoned lock is still safe to use.
    crate::util::lock(conn)
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Store::Sqlite { wal, .. } = &self.store
            && let Err(e) = wal.sync()
        {
            tracing::error!("syncing the registry's log to disk failed: {e}");
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicUsize;

    /// A fresh SQLite registry in a temporary dir (kept as long as the dir lives).
    pub(crate) fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("registry.sqlite")).expect("open");
        (dir, reg)
    }

    /// This test process's PostgreSQL server, started on first use; `None` (with the reason
    /// printed) where PostgreSQL is not installed, which CI does not accept.
    pub(crate) fn postgres_server() -> Option<&'static local_server::LocalPostgres> {
        static SERVER: OnceLock<Option<local_server::LocalPostgres>> = OnceLock::new();
        SERVER
            .get_or_init(|| {
                if !local_server::available() && std::env::var_os("CI").is_none() {
                    eprintln!("skipped: PostgreSQL's server programs are not installed");
                    return None;
                }
                Some(local_server::LocalPostgres::start().expect("starting PostgreSQL"))
            })
            .as_ref()
    }

    /// A fresh PostgreSQL registry: a new database on this process's server.
    pub(crate) fn postgres_registry() -> Option<Registry> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = postgres_server()?;
        let db = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        server.create_database(&db).expect("create database");
        Some(Registry::open_postgres(server.target(&db)).expect("open on PostgreSQL"))
    }

    /// Each `fn name(reg: &Registry) { ... }` becomes a module `name` with two tests, `sqlite`
    /// and `postgres`, running the body on a fresh registry on each store.
    macro_rules! on_both_stores {
        ($($(#[$doc:meta])* fn $name:ident($reg:ident: &Registry) $body:block)*) => {$(
            $(#[$doc])*
            mod $name {
                use super::*;

                fn check($reg: &Registry) $body

                #[test]
                fn sqlite() {
                    let (_dir, reg) = $crate::sp::registry::tests::registry();
                    check(&reg);
                }

                #[test]
                fn postgres() {
                    if let Some(reg) = $crate::sp::registry::tests::postgres_registry() {
                        check(&reg);
                    }
                }
            }
        )*};
    }
    pub(crate) use on_both_stores;

    fn sqlite_conn(reg: &Registry) -> std::sync::MutexGuard<'_, Connection> {
        match &reg.store {
            Store::Sqlite { conn, .. } => lock_conn(conn),
            Store::Postgres(_) => panic!("not a SQLite registry"),
        }
    }

    fn sync_level(reg: &Registry) -> i64 {
        sqlite_conn(reg)
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

    /// A second handle on the same store, as another process or node has.
    fn another_handle(reg: &Registry) -> Registry {
        match &reg.store {
            Store::Sqlite { path, .. } => Registry::open(path).expect("second connection"),
            // Opening the same database finds the schema made and applies nothing.
            Store::Postgres(pg) => Registry::open_postgres(pg.target().clone()).expect("node"),
        }
    }

    on_both_stores! {
        /// The running SP reloads the accounts when `data_version` moves: a change made
        /// through its own handle (the admin API) or another (the CLI, another node) must
        /// move it, and the SP's own `last_seen` notes must not.
        fn a_tenant_change_from_any_handle_moves_data_version(reg: &Registry) {
            let other = another_handle(reg);
            let before = reg.data_version().expect("v");
            other.add_tenant("acme", "").expect("add");
            let added = reg.data_version().expect("v");
            assert_ne!(added, before, "a tenant added elsewhere moves the version");
            reg.set_last_seen("acme", 5).expect("seen");
            other.set_last_seen("acme", 6).expect("seen");
            assert_eq!(reg.data_version().expect("v"), added, "last_seen is no change");
            reg.set_enabled("acme", false).expect("disable");
            let disabled = reg.data_version().expect("v");
            assert_ne!(disabled, added, "a change through this handle moves it too");
            assert!(!other.tenants().expect("list")[0].enabled);
            reg.add_tenant("globex", "").expect("add");
            reg.remove_tenant("globex").expect("remove");
            assert_ne!(reg.data_version().expect("v"), disabled);
            assert!(reg.probe_writable().is_ok());
        }
    }

    #[test]
    fn a_postgres_registry_names_its_place() {
        let Some(reg) = postgres_registry() else {
            return;
        };
        assert!(reg.location().starts_with("postgres://rac@127.0.0.1:"));
    }

    #[test]
    fn on_postgres_a_failed_transaction_leaves_its_connection_clean() {
        let Some(reg) = postgres_registry() else {
            return;
        };
        reg.add_operator("alice", "pw", "*").expect("add");
        // Fails inside the transaction (a duplicate token hash), after a write.
        let failed = reg.write(|db| {
            db.execute(
                "INSERT INTO tokens (token_hash, operator, expires_at) VALUES ('h', 'alice', 1)",
                &[],
            )?;
            db.execute(
                "INSERT INTO tokens (token_hash, operator, expires_at) VALUES ('h', 'alice', 1)",
                &[],
            )
        });
        assert!(
            matches!(failed, Err(RegistryError::Postgres(_))),
            "{failed:?}"
        );
        assert!(
            failed
                .expect_err("dup")
                .to_string()
                .contains("duplicate key"),
            "the server's own words"
        );
        // Every pooled connection still works, and the first insert was rolled back.
        for _ in 0..8 {
            let n = reg
                .read(|db| db.query("SELECT token_hash FROM tokens", &[]))
                .expect("read");
            assert!(n.is_empty());
        }
    }
}

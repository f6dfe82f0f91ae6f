//! The registry file on disk: its tables, and who may read it (the file and the `-wal` and
//! `-shm` SQLite keeps beside it are the owner's alone).

use std::path::Path;

use super::{RegistryError, Result};

pub(super) const SCHEMA: &str = "
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
    last_seen INTEGER,
    tenant_key TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    console_key TEXT
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
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, id);
CREATE INDEX IF NOT EXISTS audit_by_operator ON audit (operator, id);
CREATE TABLE IF NOT EXISTS admin_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used INTEGER
);
";

/// Columns added since the first release, for registries made before them: (table, column,
/// its declaration).
pub(super) const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    ("tenants", "tenant_key", "TEXT"),
    ("tokens", "console_key", "TEXT"),
    // The cluster node that relayed the session ('' on a single SP, and for older rows).
    ("audit", "node", "TEXT NOT NULL DEFAULT ''"),
];

/// A counter moved whenever a tenant account changes (not when the SP notes when it last saw
/// one), by this connection or any other process's: the running SP reloads the accounts when
/// it moves. Made after [`add_missing_columns`] (the trigger names `tenant_key`). PostgreSQL
/// keeps the same counter (`postgres::MIGRATIONS`).
pub(super) const VERSION_COUNTER: &str = "
CREATE TABLE IF NOT EXISTS registry_version (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO registry_version (only_row, version) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS tenant_added AFTER INSERT ON tenants
    BEGIN UPDATE registry_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS tenant_removed AFTER DELETE ON tenants
    BEGIN UPDATE registry_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS tenant_changed
    AFTER UPDATE OF secret_hash, enabled, tenant_key, description ON tenants
    BEGIN UPDATE registry_version SET version = version + 1; END;
";

/// Adds the [`ADDED_COLUMNS`] a registry lacks (an upgrade; nothing else changes).
pub(super) fn add_missing_columns(conn: &rusqlite::Connection) -> Result<()> {
    for (table, column, declaration) in ADDED_COLUMNS {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = stmt.query_map([], |row| row.get::<_, String>(1))?;
        let mut present = false;
        for name in names {
            present |= name? == column;
        }
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
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
pub(super) fn create_private(path: &Path) -> Result<()> {
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

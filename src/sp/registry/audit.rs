//! The audit log: one row per console session (written before its first byte is relayed,
//! closed with its byte counts and how it ended) and one per account change made from the
//! SP's command line.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Registry, Result};
use crate::util::now_unix_secs;

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

/// An account change made from the SP's own command line, as a row of the audit log:
/// operator, `-` for the tenant, `account` for the service, where the change came from, and
/// what it did as the outcome.
pub(super) fn audit_admin(
    conn: &Connection,
    operator: &str,
    action: &str,
    outcome: &str,
) -> Result<()> {
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

impl Registry {
    /// Records a session's start; the row exists before the first byte is relayed.
    pub fn audit_start(
        &self,
        operator: &str,
        tenant: &str,
        service: &str,
        console_addr: &str,
    ) -> Result<i64> {
        self.write_unsynced(|conn| {
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
        })
    }

    /// Records how a session ended (or why it never started).
    pub fn audit_end(
        &self,
        id: i64,
        bytes_to_tenant: u64,
        bytes_from_tenant: u64,
        outcome: &SessionOutcome,
    ) -> Result<()> {
        self.write_unsynced(|conn| {
            conn.execute(
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
        })
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
}

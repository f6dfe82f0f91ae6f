//! The audit log: one row per console session (written before its first byte is relayed,
//! closed with its byte counts and how it ended) and one per account change, made from the
//! SP's command line or its admin API, naming who made it.

use serde::Serialize;

use super::sql::{Row, Sql, Value, args};
use super::{Registry, RegistryError, Result};
use crate::util::now_unix_secs;

/// One audited console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// An SP admin ended it (`DELETE /v1/sessions/ID`).
    EndedByAdmin { by: Actor },
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
            SessionOutcome::EndedByAdmin { by } => write!(f, "ended: by admin ({by})"),
        }
    }
}

/// Who made an account change or ended a session from outside a console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// `rac sp ...` on the SP's host, against the state dir.
    Local,
    /// A request to the admin API with the admin token of this name.
    AdminToken(String),
}

impl Actor {
    /// Where a change came from, as its audit row's address words it.
    fn origin(&self, kind: &str, action: &str) -> String {
        match self {
            Actor::Local => format!("local: rac sp {kind} {action}"),
            Actor::AdminToken(name) => format!("admin api: token {name}: {kind} {action}"),
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Local => f.write_str("local command line"),
            Actor::AdminToken(name) => write!(f, "admin token {name}"),
        }
    }
}

/// An account change as a row of the audit log: the operator and the tenant it concerns
/// (`-` for none), `account` for the service, where the change came from (`by`, the `kind`
/// of account and the action) as the address, and what it did as the outcome.
pub(super) fn audit_admin(
    db: &dyn Sql,
    by: &Actor,
    kind: &str,
    action: &str,
    (operator, tenant): (&str, &str),
    outcome: &str,
) -> Result<()> {
    let now = now_unix_secs() as i64;
    db.execute(
        "INSERT INTO audit (operator, tenant, service, console_addr, started_at, ended_at, outcome)
         VALUES (?1, ?2, 'account', ?3, ?4, ?4, ?5)",
        args![operator, tenant, by.origin(kind, action), now, outcome],
    )?;
    Ok(())
}

/// Which audit rows to read, newest first. Every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub operator: Option<String>,
    /// Rows started at or after this time (Unix seconds).
    pub since: Option<u64>,
    /// Rows started before this time (Unix seconds).
    pub until: Option<u64>,
    /// Rows whose outcome starts with this text (`closed`, `failed`, `ended`, `open`).
    pub outcome: Option<String>,
    /// The cursor: rows older than this id (a page's `next`).
    pub before: Option<i64>,
    /// The most rows to return.
    pub limit: usize,
}

/// One page of the audit log and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<i64>,
}

/// The columns [`audit_row`] reads, in its order.
const AUDIT_COLUMNS: &str = "id, operator, tenant, service, console_addr, started_at, ended_at, \
                             bytes_to_tenant, bytes_from_tenant, outcome";

fn audit_row(row: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.int(0)?,
        operator: row.text(1)?,
        tenant: row.text(2)?,
        service: row.text(3)?,
        console_addr: row.text(4)?,
        started_at: row.unsigned(5)?,
        ended_at: row.opt_unsigned(6)?,
        bytes_to_tenant: row.unsigned(7)?,
        bytes_from_tenant: row.unsigned(8)?,
        outcome: row.text(9)?,
    })
}

impl Registry {
    /// Writes an account change made outside [`change_operator`](Self::change_operator)'s
    /// transaction (a tenant's) to the audit log, as its own commit.
    pub fn audit_change(
        &self,
        by: &Actor,
        kind: &str,
        action: &str,
        subject: (&str, &str),
        outcome: &str,
    ) -> Result<()> {
        self.write(|db| audit_admin(db, by, kind, action, subject, outcome))
    }

    /// Records a session's start; the row exists before the first byte is relayed.
    pub fn audit_start(
        &self,
        operator: &str,
        tenant: &str,
        service: &str,
        console_addr: &str,
    ) -> Result<i64> {
        let node = self.node.get().map_or("", String::as_str);
        self.write_unsynced(|db| {
            db.query_opt(
                "INSERT INTO audit (operator, tenant, service, console_addr, started_at, outcome, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6) RETURNING id",
                args![
                    operator,
                    tenant,
                    service,
                    console_addr,
                    now_unix_secs() as i64,
                    node
                ],
            )?
            .ok_or(RegistryError::Store("an insert returned no id".into()))?
            .int(0)
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
        self.write_unsynced(|db| {
            db.execute(
                "UPDATE audit SET ended_at = ?2, bytes_to_tenant = ?3, bytes_from_tenant = ?4,
                                  outcome = ?5
                 WHERE id = ?1",
                args![
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
    ///
    /// Only for a registry no other SP uses: on a shared database (several nodes), another
    /// node's open sessions are not this one's to close.
    pub fn close_interrupted_sessions(&self) -> Result<usize> {
        let closed = self.write(|db| {
            db.execute(
                "UPDATE audit SET ended_at = ?1, outcome = ?2 WHERE ended_at IS NULL",
                args![
                    now_unix_secs() as i64,
                    SessionOutcome::Interrupted.to_string()
                ],
            )
        })?;
        Ok(closed as usize)
    }

    /// The session rows a cluster node left open when it stopped abruptly (they name it, see
    /// [`set_node`](Self::set_node)), closed as interrupted at its next start: a node that
    /// starts relays no session yet, and other nodes' rows are left alone.
    pub fn close_interrupted_sessions_of(&self, node: &str) -> Result<usize> {
        let closed = self.write(|db| {
            db.execute(
                "UPDATE audit SET ended_at = ?1, outcome = ?2 WHERE ended_at IS NULL AND node = ?3",
                args![
                    now_unix_secs() as i64,
                    SessionOutcome::Interrupted.to_string(),
                    node
                ],
            )
        })?;
        Ok(closed as usize)
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_entries(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        Ok(self
            .audit_page(&AuditQuery {
                limit,
                ..AuditQuery::default()
            })?
            .entries)
    }

    /// One page of the audit log, newest first. The cursor is a row id, so paging is stable
    /// while rows are added: new rows have higher ids and never shift an older page.
    pub fn audit_page(&self, query: &AuditQuery) -> Result<AuditPage> {
        // Only the filters given go into the statement, so the database can walk an index
        // (`audit_by_tenant`, `audit_by_operator`, the row id) instead of the whole table:
        // with 1,000,000 rows, a tenant's page takes milliseconds, not 400.
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        let mut add = |condition: &str, value: Option<Value>| {
            if let Some(value) = value {
                values.push(value);
                conditions.push(condition.replace('?', &format!("?{}", values.len())));
            }
        };
        add("id < ?", query.before.map(Value::Int));
        add("tenant = ?", query.tenant.clone().map(Value::Text));
        add("operator = ?", query.operator.clone().map(Value::Text));
        add("started_at >= ?", query.since.map(|v| Value::Int(v as i64)));
        add("started_at < ?", query.until.map(|v| Value::Int(v as i64)));
        add(
            "substr(outcome, 1, length(CAST(? AS TEXT))) = CAST(? AS TEXT)",
            query.outcome.clone().map(Value::Text),
        );
        // One row more than asked says whether another page follows.
        values.push(Value::Int(query.limit as i64 + 1));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit {} ORDER BY id DESC LIMIT ?{}",
            if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            },
            values.len()
        );
        let mut entries = self.read(|db| {
            db.query(&sql, &values)?
                .iter()
                .map(audit_row)
                .collect::<Result<Vec<_>>>()
        })?;
        let next = if entries.len() > query.limit {
            entries.truncate(query.limit);
            entries.last().map(|e| e.id)
        } else {
            None
        };
        Ok(AuditPage { entries, next })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_stores;
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

    on_both_stores! {
    fn a_node_closes_only_the_rows_it_left_open(reg: &Registry) {
        // A row from before nodes were named, then this node's own.
        let unnamed = reg.audit_start("alice", "acme", "backup", "127.0.0.1:5").expect("start");
        reg.set_node("sp-a");
        let mine = reg.audit_start("alice", "acme", "backup", "127.0.0.1:6").expect("start");
        assert_eq!(reg.close_interrupted_sessions_of("sp-b").expect("close"), 0);
        assert_eq!(reg.close_interrupted_sessions_of("sp-a").expect("close"), 1);
        let entries = reg.audit_entries(10).expect("entries");
        let row = |id| entries.iter().find(|e| e.id == id).expect("row");
        assert!(row(mine).outcome.starts_with("interrupted"), "{entries:?}");
        assert_eq!(row(unnamed).outcome, "open");
    }
    }

    on_both_stores! {
    fn audit_pages_follow_their_cursor_and_filters(reg: &Registry) {
        for i in 0..25 {
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            let id = reg
                .audit_start("alice", tenant, "backup", "127.0.0.1:5")
                .expect("start");
            reg.audit_end(id, 1, 2, &SessionOutcome::Closed)
                .expect("end");
        }
        let mut query = AuditQuery {
            tenant: Some("acme".into()),
            limit: 5,
            ..AuditQuery::default()
        };
        let first = reg.audit_page(&query).expect("page");
        assert_eq!(first.entries.len(), 5);
        // Rows added meanwhile do not shift the next page.
        reg.audit_start("alice", "acme", "backup", "x")
            .expect("start");
        query.before = first.next;
        let mut seen: Vec<i64> = first.entries.iter().map(|e| e.id).collect();
        while query.before.is_some() {
            let page = reg.audit_page(&query).expect("page");
            seen.extend(page.entries.iter().map(|e| e.id));
            query.before = page.next;
        }
        assert_eq!(seen.len(), 13, "every acme row once: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] > w[1]));
        let open = reg
            .audit_page(&AuditQuery {
                outcome: Some("open".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .expect("page");
        assert_eq!(open.entries.len(), 1);
        assert_eq!(open.next, None);
    }
    }
}

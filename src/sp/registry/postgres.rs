//! The registry on PostgreSQL, shared by several SP nodes (`[cluster]` in sp.toml).
//!
//! The registry's interface is blocking (SQLite answers in microseconds, from any thread), so
//! the PostgreSQL store keeps a few connections, each on a thread of its own that owns one
//! blocking client (the `postgres` crate, tokio-postgres underneath). A caller takes an idle
//! connection, hands it statements over a channel and waits for each answer; a transaction
//! keeps its connection until it commits or rolls back. The database driver is the one
//! socket below `net/`: it talks to nothing but the database.
//!
//! The schema is a list of numbered migrations, applied in order under a lock by whichever
//! node (or `rac sp init --postgres`) opens the database first.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use super::sql::{Row, Sql, Value};
use super::{RegistryError, Result};
use crate::util::lock;

/// The schema, one migration per version; a database records the versions it has in
/// `schema_migrations`. Append only: a released migration never changes.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    tenants TEXT NOT NULL DEFAULT '*',
    created_at BIGINT NOT NULL
);
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    tenant_key TEXT
);
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    console_key TEXT
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    operator TEXT NOT NULL,
    tenant TEXT NOT NULL,
    service TEXT NOT NULL,
    console_addr TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    bytes_to_tenant BIGINT NOT NULL DEFAULT 0,
    bytes_from_tenant BIGINT NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit (tenant, id);
CREATE INDEX audit_by_operator ON audit (operator, id);
CREATE INDEX audit_open ON audit (id) WHERE ended_at IS NULL;
CREATE TABLE admin_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used BIGINT
);
-- Moves whenever a tenant account changes (not when a node notes when it last saw one), so
-- every node reloads the accounts within one registry poll (SQLite keeps the same counter).
CREATE TABLE registry_version (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version BIGINT NOT NULL
);
INSERT INTO registry_version (only_row, version) VALUES (TRUE, 0);
CREATE FUNCTION bump_registry_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_version SET version = version + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_changed
    AFTER INSERT OR DELETE OR UPDATE OF secret_hash, enabled, tenant_key, description
    ON tenants FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
",
    ),
    (
        2,
        "
-- The node that relayed a session, so that a node restarted after a crash closes the rows
-- it left open (and only those).
ALTER TABLE audit ADD COLUMN node TEXT NOT NULL DEFAULT '';
",
    ),
];

/// How to reach the database: the URL's parts, and the password kept apart from it (from a
/// file or the environment, never the command line).
#[derive(Clone)]
pub struct PgTarget {
    pub config: postgres::Config,
    /// Connections kept open, each a thread.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Where, and no password.
        f.debug_struct("PgTarget")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgTarget {
    /// Parses a `postgres://user@host:port/db` URL (or a `key=value` string). A password in it
    /// is refused: it would show in `ps` and shell histories; pass `password` instead.
    pub fn new(url: &str, password: Option<&str>) -> Result<Self> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| RegistryError::Store(format!("PostgreSQL URL {:?}: {e}", redact(url))))?;
        if config.get_password().is_some() {
            return Err(RegistryError::Store(
                "the PostgreSQL URL carries a password: put it in a file named by \
                 postgres_password_file, or in RAC_POSTGRES_PASSWORD, not in the URL"
                    .into(),
            ));
        }
        if let Some(password) = password {
            config.password(password);
        }
        config
            .application_name("rac-sp")
            .connect_timeout(Duration::from_secs(5))
            // A database that stops answering (a cut link, a stopped host) fails the
            // statement within seconds instead of holding a registry call forever.
            .tcp_user_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(5));
        Ok(PgTarget {
            config,
            pool_size: 4,
        })
    }

    /// Where it points, for messages (never the password).
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .chain(std::iter::repeat(&5432)),
            )
            .map(|(host, port)| match host {
                postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            self.config.get_user().unwrap_or("?"),
            hosts.join(","),
            self.config.get_dbname().unwrap_or("?")
        )
    }
}

/// `url` with anything after a `:` in its user part hidden.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or_default();
            format!("{}{user}:…{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// What a connection's thread is asked to do.
enum Want {
    /// A statement, answered with how many rows it changed.
    Count,
    /// A statement, answered with its rows.
    Rows,
    /// Statements without arguments in the simple protocol (`BEGIN`, `COMMIT`, migrations).
    Batch,
}

struct Job {
    sql: String,
    args: Vec<Value>,
    want: Want,
    reply: mpsc::SyncSender<Result<Vec<Row>, RegistryError>>,
}

/// An open (or reopening) connection: the sending end of its thread's queue.
struct PgConn {
    jobs: mpsc::Sender<Job>,
}

pub struct PgStore {
    target: PgTarget,
    idle: Mutex<Vec<PgConn>>,
    returned: Condvar,
}

impl PgStore {
    /// Opens `target.pool_size` connections, checks the database answers, and brings its
    /// schema up to date.
    pub fn open(target: PgTarget) -> Result<Self> {
        let size = target.pool_size.max(1);
        let mut idle = Vec::with_capacity(size);
        for i in 0..size {
            let (jobs, queue) = mpsc::channel();
            let config = target.config.clone();
            std::thread::Builder::new()
                .name(format!("registry-pg-{i}"))
                .spawn(move || serve(config, queue))
                .map_err(|e| RegistryError::Store(format!("starting a registry thread: {e}")))?;
            idle.push(PgConn { jobs });
        }
        let store = PgStore {
            target,
            idle: Mutex::new(idle),
            returned: Condvar::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// Takes an idle connection, waiting for one to come back if all are busy.
    pub fn checkout(&self) -> Checkout<'_> {
        let mut idle = lock(&self.idle);
        loop {
            if let Some(conn) = idle.pop() {
                return Checkout {
                    store: self,
                    conn: Some(conn),
                    in_transaction: std::cell::Cell::new(false),
                };
            }
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Applies the migrations the database lacks, one transaction, under a lock so that nodes
    /// starting together apply each once.
    fn migrate(&self) -> Result<()> {
        let conn = self.checkout();
        conn.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )?;
        conn.transaction(|tx| {
            tx.batch("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")?;
            let applied: Vec<i64> = tx
                .query("SELECT version FROM schema_migrations", &[])?
                .iter()
                .map(|row| row.int(0))
                .collect::<Result<_>>()?;
            let newest_known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
            if let Some(newer) = applied.iter().find(|v| **v > newest_known) {
                return Err(RegistryError::Store(format!(
                    "the registry database is at schema version {newer}, newer than this \
                     rac knows ({newest_known}): upgrade rac on this node"
                )));
            }
            for (version, sql) in MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                tracing::info!(version, "applying registry schema migration");
                tx.batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    &[
                        Value::Int(*version),
                        Value::Int(crate::util::now_unix_secs() as i64),
                    ],
                )?;
            }
            Ok(())
        })
    }
}

/// A connection taken from the pool, returned when dropped (rolled back first if a
/// transaction was left open by an error or a panic).
pub struct Checkout<'a> {
    store: &'a PgStore,
    conn: Option<PgConn>,
    in_transaction: std::cell::Cell<bool>,
}

impl Checkout<'_> {
    fn ask(&self, sql: &str, args: &[Value], want: Want) -> Result<Vec<Row>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let stopped = || RegistryError::Store("a registry database thread stopped".into());
        let conn = self.conn.as_ref().ok_or_else(stopped)?;
        conn.jobs
            .send(Job {
                sql: sql.to_string(),
                args: args.to_vec(),
                want,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Statements without arguments, in the simple protocol.
    pub fn batch(&self, sql: &str) -> Result<()> {
        self.ask(sql, &[], Want::Batch).map(drop)
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    /// `synchronous_commit` off for this one transaction when `durable` is false (a session's
    /// audit row: see `Registry::write_unsynced`).
    pub fn transaction_with<T>(
        &self,
        durable: bool,
        work: impl FnOnce(&Self) -> Result<T>,
    ) -> Result<T> {
        // Marked first: a failure after BEGIN (in the same batch) still rolls back.
        self.in_transaction.set(true);
        self.batch(if durable {
            "BEGIN"
        } else {
            "BEGIN; SET LOCAL synchronous_commit TO OFF"
        })?;
        let result = work(self);
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.batch(end);
        self.in_transaction.set(false);
        let value = result?;
        ended?;
        Ok(value)
    }

    pub fn transaction<T>(&self, work: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.transaction_with(true, work)
    }
}

impl Sql for Checkout<'_> {
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64> {
        let rows = self.ask(sql, args, Want::Count)?;
        rows.first().map_or(Ok(0), |row| row.unsigned(0))
    }

    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        self.ask(sql, args, Want::Rows)
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if self.in_transaction.get() {
            let _ = self.batch("ROLLBACK");
        }
        if let Some(conn) = self.conn.take() {
            lock(&self.store.idle).push(conn);
            self.store.returned.notify_one();
        }
    }
}

/// One connection's thread: connects (again, after the database was lost) when a job comes,
/// runs it, answers. Ends when the store is dropped.
///
/// A job that finds the connection closed (the database restarted since the last one) is
/// run once more on a new connection when that cannot repeat a write: a read outside a
/// transaction, or the `BEGIN` that starts one. Inside a transaction the error goes back to
/// the caller, whose transaction is then rolled back.
fn serve(config: postgres::Config, jobs: mpsc::Receiver<Job>) {
    let mut client: Option<Client> = None;
    let mut prepared: HashMap<String, Statement> = HashMap::new();
    let mut in_transaction = false;
    for job in jobs {
        let starts_transaction = matches!(job.want, Want::Batch) && job.sql.starts_with("BEGIN");
        let may_repeat = starts_transaction || (!in_transaction && matches!(job.want, Want::Rows));
        let mut answer = None;
        for _attempt in 0..2 {
            if client.as_ref().is_none_or(Client::is_closed) {
                prepared.clear();
                match config.connect(NoTls) {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        answer = Some(Err(e.into()));
                        break;
                    }
                }
            }
            let Some(c) = client.as_mut() else { break };
            let result = run(c, &mut prepared, &job);
            let lost = matches!(&result, Err(RegistryError::Postgres(e)) if e.is_closed());
            answer = Some(result);
            if !(lost && may_repeat) {
                break;
            }
        }
        if starts_transaction {
            in_transaction = matches!(answer, Some(Ok(_)));
        } else if matches!(job.want, Want::Batch) && (job.sql == "COMMIT" || job.sql == "ROLLBACK")
        {
            in_transaction = false;
        }
        if let Some(answer) = answer {
            let _ = job.reply.send(answer);
        }
    }
}

fn run(
    client: &mut Client,
    prepared: &mut HashMap<String, Statement>,
    job: &Job,
) -> Result<Vec<Row>> {
    if let Want::Batch = job.want {
        client.batch_execute(&job.sql)?;
        return Ok(Vec::new());
    }
    let statement = match prepared.get(&job.sql) {
        Some(s) => s.clone(),
        None => {
            let s = client.prepare(&placeholders(&job.sql))?;
            prepared.insert(job.sql.clone(), s.clone());
            s
        }
    };
    let args: Vec<&(dyn ToSql + Sync)> = job.args.iter().map(|a| a as _).collect();
    match job.want {
        Want::Count => {
            let n = client.execute(&statement, &args)?;
            Ok(vec![Row(vec![Value::Int(n as i64)])])
        }
        _ => client
            .query(&statement, &args)?
            .iter()
            .map(from_postgres)
            .collect(),
    }
}

/// `?1`, `?2`… (SQLite's numbered placeholders) as PostgreSQL's `$1`, `$2`…
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn from_postgres(row: &postgres::Row) -> Result<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?.map(Value::Bool)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(RegistryError::Column {
                index: i,
                expected: "an integer, a flag or text",
            });
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Each kind checks the column's type when it is written (`to_sql` above).
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_echoed() {
        let err = PgTarget::new("postgres://rac:hunter2@127.0.0.1:5432/rac", None)
            .expect_err("password in URL");
        assert!(err.to_string().contains("RAC_POSTGRES_PASSWORD"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PgTarget::new("postgres://rac:hunter2@[bad/rac", None).expect_err("bad URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let ok = PgTarget::new("postgres://rac@127.0.0.1:6543/registry", Some("pw")).expect("ok");
        assert_eq!(ok.describe(), "postgres://rac@127.0.0.1:6543/registry");
    }
}

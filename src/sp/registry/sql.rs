//! What the registry's queries are written against: SQL text with `?1`-style placeholders,
//! arguments and rows as [`Value`]s, run by either store (SQLite in the state dir, or
//! PostgreSQL for several SP nodes). The statements are written once, in the SQL both engines
//! take (`ON CONFLICT DO NOTHING`, `RETURNING`, `CAST(? AS TEXT)`); the few words that differ
//! stay in each store.

use super::{RegistryError, Result};

/// One argument or column: the four kinds the registry stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A statement's arguments: `args![name, at as i64]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::sp::registry::sql::Value::from($v)),*][..] };
}
pub(crate) use args;

/// One result row, its columns in the order the statement selected them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn column(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or(RegistryError::Column {
            index: i,
            expected: "a column",
        })
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.column(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(RegistryError::Column {
                index: i,
                expected: "an integer",
            }),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or(RegistryError::Column {
            index: i,
            expected: "an integer, not NULL",
        })
    }

    /// A count or a time stored as a signed integer (never negative when the registry wrote it).
    pub fn unsigned(&self, i: usize) -> Result<u64> {
        Ok(self.int(i)?.max(0) as u64)
    }

    pub fn opt_unsigned(&self, i: usize) -> Result<Option<u64>> {
        Ok(self.opt_int(i)?.map(|v| v.max(0) as u64))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.column(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            _ => Err(RegistryError::Column {
                index: i,
                expected: "text",
            }),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or(RegistryError::Column {
            index: i,
            expected: "text, not NULL",
        })
    }

    /// A flag: PostgreSQL's `BOOLEAN`, or SQLite's integer 0 or 1.
    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.column(i)? {
            Value::Bool(v) => Ok(*v),
            Value::Int(v) => Ok(*v != 0),
            _ => Err(RegistryError::Column {
                index: i,
                expected: "a flag",
            }),
        }
    }
}

/// Runs statements: a store's connection, inside or outside a transaction.
pub trait Sql {
    /// Runs a statement and returns how many rows it changed.
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64>;

    /// Runs a statement and returns its rows.
    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>>;

    /// The first row, if any.
    fn query_opt(&self, sql: &str, args: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
}

impl Sql for rusqlite::Connection {
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64> {
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args.iter().map(to_sqlite)))? as u64)
    }

    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(to_sqlite)))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(RegistryError::Column {
                            index: i,
                            expected: "an integer or text",
                        });
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

fn to_sqlite(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Int(v) => V::Integer(*v),
        Value::Text(v) => V::Text(v.clone()),
        Value::Bool(v) => V::Integer(i64::from(*v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_what_sqlite_stored() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c INTEGER)")
            .expect("table");
        // The trait's methods, not rusqlite's own of the same names.
        let db: &dyn Sql = &conn;
        let changed = db
            .execute(
                "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)",
                args![7i64, "seven", true],
            )
            .expect("insert");
        assert_eq!(changed, 1);
        db.execute(
            "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)",
            args![None::<i64>, None::<&str>, false],
        )
        .expect("insert nulls");
        let rows = db
            .query("SELECT a, b, c FROM t ORDER BY a IS NULL", args![])
            .expect("select");
        assert_eq!(rows[0].int(0).expect("a"), 7);
        assert_eq!(rows[0].text(1).expect("b"), "seven");
        assert!(rows[0].bool(2).expect("c"));
        assert_eq!(rows[1].opt_int(0).expect("a"), None);
        assert!(rows[1].text(1).is_err(), "NULL is not text");
        assert!(!rows[1].bool(2).expect("c"));
        assert!(rows[0].text(0).is_err(), "an integer is not text");
        assert!(rows[0].int(9).is_err(), "no tenth column");
    }
}

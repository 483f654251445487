//! One SQL layer over both stores: the projection, the recovery and the queries are written
//! once, against [`Db`].
//!
//! SQL is written with numbered placeholders (`?1`, `?2`, ...), which SQLite reads as they are
//! and the PostgreSQL connection rewrites to `$1`, `$2`, ... (see `pg.rs`). Values go in as
//! [`Val`] and rows come out as owned [`Row`]s read with typed getters, so that one closure
//! reads a row of either store. The statements are written in the dialect both share
//! (`IS NOT DISTINCT FROM`, `RETURNING`, `CASE` for a scalar maximum, explicit `CAST`s where
//! PostgreSQL cannot infer a parameter's type); only the schemas differ.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, params_from_iter};

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    /// SQL `NULL`.
    Null,
    /// An integer (ids are the `u64` bit pattern as `i64`; booleans are 0 or 1).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<&u32> for Val {
    fn from(v: &u32) -> Self {
        Self::Int(i64::from(*v))
    }
}

impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// `[Val::from(a), Val::from(b), ...]`: a statement's parameters.
macro_rules! vals {
    ($($v:expr),* $(,)?) => { [$($crate::journal::db::Val::from($v)),*] };
}
pub(crate) use vals;

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// A failure of the SQL layer, before it is named with the journal's place.
#[derive(Debug)]
pub(crate) enum DbError {
    /// SQLite refused or failed a statement.
    Sqlite(rusqlite::Error),
    /// PostgreSQL refused or failed a statement, or the connection broke.
    Pg(postgres::Error),
    /// A value read back could not be converted (SQLite's stored types are loose).
    Convert(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(e) => e.fmt(f),
            Self::Pg(e) => e.fmt(f),
            Self::Convert(m) => f.write_str(m),
        }
    }
}

/// A value of a row that does not read as the type asked for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowError {
    /// The column, by position.
    pub column: usize,
    /// What is wrong with the value.
    pub message: String,
}

/// One row, its values owned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub Vec<Val>);

impl Row {
    /// Column `i` as a `T`.
    pub(crate) fn get<T: FromVal>(&self, i: usize) -> Result<T, RowError> {
        let v = self.0.get(i).ok_or_else(|| RowError {
            column: i,
            message: "no such column".into(),
        })?;
        T::from_val(v).map_err(|message| RowError { column: i, message })
    }

    /// Whether column `i` is NULL (or missing).
    pub(crate) fn is_null(&self, i: usize) -> bool {
        matches!(self.0.get(i), None | Some(Val::Null))
    }
}

/// The rows of a query and the names of its columns.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// The rows.
    pub rows: Vec<Row>,
}

/// A type a column can be read as.
pub(crate) trait FromVal: Sized {
    /// Converts, or says what is wrong with the value.
    fn from_val(v: &Val) -> Result<Self, String>;
}

/// How a value is named in a conversion error.
fn kind(v: &Val) -> &'static str {
    match v {
        Val::Null => "a null value",
        Val::Int(_) => "an integer value",
        Val::Real(_) => "a real value",
        Val::Text(_) => "a text value",
        Val::Blob(_) => "a blob value",
    }
}

fn wrong(v: &Val) -> String {
    format!("{} of the wrong type", kind(v))
}

impl FromVal for i64 {
    fn from_val(v: &Val) -> Result<Self, String> {
        match v {
            Val::Int(i) => Ok(*i),
            v => Err(wrong(v)),
        }
    }
}

impl FromVal for u32 {
    fn from_val(v: &Val) -> Result<Self, String> {
        let i = i64::from_val(v)?;
        u32::try_from(i).map_err(|_| format!("{i} is out of range"))
    }
}

impl FromVal for bool {
    fn from_val(v: &Val) -> Result<Self, String> {
        Ok(i64::from_val(v)? != 0)
    }
}

impl FromVal for String {
    fn from_val(v: &Val) -> Result<Self, String> {
        match v {
            Val::Text(s) => Ok(s.clone()),
            Val::Blob(b) => String::from_utf8(b.clone()).map_err(|e| e.to_string()),
            v => Err(wrong(v)),
        }
    }
}

impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: &Val) -> Result<Self, String> {
        match v {
            Val::Null => Ok(None),
            v => T::from_val(v).map(Some),
        }
    }
}

/// A connection (or a transaction on one) that runs the journal's SQL.
pub(crate) trait Db {
    /// Runs a statement; answers the rows it changed.
    fn execute(&self, sql: &str, params: &[Val]) -> Result<u64, DbError>;
    /// Runs a query; answers its rows.
    fn query(&self, sql: &str, params: &[Val]) -> Result<Rows, DbError>;
    /// The first row of a query, if any.
    fn query_opt(&self, sql: &str, params: &[Val]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.rows.into_iter().next())
    }
    /// Called before the transaction's first `events` row is added (PostgreSQL takes the lock
    /// that makes `seq` order commit order).
    fn before_event(&self) -> Result<(), DbError> {
        Ok(())
    }
    /// The fencing epoch of the node this connection writes for (PostgreSQL in a cluster): the
    /// rows it owns. `None` on a single host.
    fn epoch(&self) -> Option<i64> {
        None
    }
    /// The SQLite connection, for tests that look at SQLite's own state.
    #[cfg(test)]
    fn sqlite(&self) -> Option<&Connection> {
        None
    }
    /// Names a failure for the journal's errors (`place` is the file, or the redacted URL).
    fn error(&self, e: DbError, place: &std::path::Path) -> super::JournalError {
        super::JournalError::from_db(e, place)
    }
}

impl Db for Connection {
    #[cfg(test)]
    fn sqlite(&self) -> Option<&Connection> {
        Some(self)
    }

    fn execute(&self, sql: &str, params: &[Val]) -> Result<u64, DbError> {
        let n = self
            .prepare_cached(sql)?
            .execute(params_from_iter(params.iter()))?;
        Ok(n as u64)
    }

    fn query(&self, sql: &str, params: &[Val]) -> Result<Rows, DbError> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let n = columns.len();
        let mut rows = stmt.query(params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(i) => Val::Int(i),
                    ValueRef::Real(f) => Val::Real(f),
                    ValueRef::Text(t) => match std::str::from_utf8(t) {
                        Ok(s) => Val::Text(s.to_owned()),
                        Err(_) => Val::Blob(t.to_vec()),
                    },
                    ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                });
            }
            out.push(Row(row));
        }
        Ok(Rows { columns, rows: out })
    }
}

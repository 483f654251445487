//! The journal's PostgreSQL store: the connection, its schema and its transactions.
//!
//! The same tables as SQLite's (`schema.rs`) with `BIGINT` columns, plus what several nodes on
//! one database need (`docs/cluster.md`, "Schema"): `owner` on `work_items`, `sessions` and
//! `rotations`, the nodes and their leases (`baton_nodes`), the sequence epochs come from
//! (`baton_epochs`), and `baton_meta` for the schema version and the application id. Migrations
//! run in one transaction under an advisory lock, so that nodes starting together on an empty
//! database create the schema once.
//!
//! Rows the journal creates carry the writer's epoch as their `owner` without any statement
//! naming it: the column's default reads the connection's `baton.epoch` setting, which
//! [`PgConn::connect`] sets for a node's writer (and leaves unset on a single host, where
//! `owner` stays `NULL`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use super::JournalError;
use super::db::{Db, DbError, Row, Rows, Val};
use super::schema::{APPLICATION_ID, SCHEMA_VERSION};
use super::target::PgUrl;

/// A fencing epoch: the number a cluster node got when it joined (from the `baton_epochs`
/// sequence, never reused). Every write of a node's journal checks that the node's row in
/// `baton_nodes` still exists, so that a node whose lease was taken over cannot write; and the
/// rows it creates carry its epoch as their `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub i64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How a PostgreSQL journal is opened, beyond [`JournalOptions`](super::JournalOptions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgOptions {
    /// The cluster node's fencing epoch: its writes are fenced by its row in `baton_nodes`,
    /// the rows it creates are owned by it, and recovery reads only the rows it owns. `None`
    /// on a single host: no fence, no owner, recovery reads everything.
    pub epoch: Option<Epoch>,
}

/// Advisory lock held (for the transaction) while the schema is created or migrated.
pub(crate) const SCHEMA_LOCK: i64 = 0x6261_746e_0001;
/// Advisory lock taken (for the transaction) before the first `events` row: `seq` order is
/// commit order across writers.
pub(crate) const EVENTS_LOCK: i64 = 0x6261_746e_0002;

/// How long a writer may sit inside a transaction before the server ends its session: a node
/// stopped mid-transaction must not hold its row lock (which the sweeper's adoption waits for)
/// or the events lock (which every node's events wait for) for long. A live writer never waits
/// between the statements of a transaction.
const IDLE_IN_TRANSACTION: &str = "3s";

/// Version 1 on PostgreSQL: `schema::V1` with `BIGINT` columns, identity columns for the
/// numbered tables, the owners and the cluster's tables.
const V1: &str = r#"
CREATE TABLE baton_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE SEQUENCE baton_epochs;
CREATE TABLE baton_nodes (
    epoch       BIGINT PRIMARY KEY,
    name        TEXT   NOT NULL,
    addr        TEXT,
    lease_until BIGINT NOT NULL,
    started_at  BIGINT NOT NULL
);
CREATE TABLE baton_adoptions (
    dead      BIGINT PRIMARY KEY,
    by_epoch  BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE TABLE work_items (
    id                BIGINT PRIMARY KEY,
    agent_type        TEXT   NOT NULL,
    text              TEXT   NOT NULL,
    place             TEXT   NOT NULL CHECK (place IN ('queued', 'live', 'rotating', 'done', 'dead')),
    session           BIGINT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    spawns            BIGINT NOT NULL DEFAULT 0,
    pending_spawn_key BIGINT,
    epoch             BIGINT NOT NULL DEFAULT 0,
    queue_seq         BIGINT NOT NULL DEFAULT 0,
    handoff           TEXT,
    reason            TEXT,
    submitted_at      BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    owner             BIGINT DEFAULT NULLIF(current_setting('baton.epoch', true), '')::BIGINT
);
CREATE INDEX work_items_by_owner ON work_items (owner, place);
CREATE INDEX work_items_by_queue ON work_items (queue_seq);
CREATE TABLE sessions (
    id                 BIGINT PRIMARY KEY,
    agent_type         TEXT   NOT NULL,
    work_item          BIGINT NOT NULL,
    state              TEXT   NOT NULL CHECK (state IN ('live', 'rotating', 'closed')),
    phase              TEXT   NOT NULL,
    transitions        BIGINT NOT NULL DEFAULT 0,
    compactions        BIGINT NOT NULL DEFAULT 0,
    compacting_from    TEXT,
    released           BIGINT NOT NULL DEFAULT 0,
    predecessor        BIGINT,
    rotation           BIGINT,
    started_at         BIGINT NOT NULL,
    ended_at           BIGINT,
    end_reason         TEXT,
    owner              BIGINT DEFAULT NULLIF(current_setting('baton.epoch', true), '')::BIGINT
);
CREATE INDEX sessions_by_work_item ON sessions (work_item);
CREATE INDEX sessions_by_state ON sessions (state);
CREATE INDEX sessions_by_owner ON sessions (owner);
CREATE TABLE rotations (
    id            BIGINT PRIMARY KEY,
    work_item     BIGINT NOT NULL,
    old_session   BIGINT NOT NULL,
    new_session   BIGINT,
    agent_type    TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    step          TEXT   NOT NULL CHECK (step IN ('intent', 'handoff', 'spawned', 'done', 'failed')),
    spawn_key     BIGINT,
    request       TEXT   NOT NULL,
    handoff       TEXT,
    record        TEXT,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    owner         BIGINT DEFAULT NULLIF(current_setting('baton.epoch', true), '')::BIGINT
);
CREATE INDEX rotations_by_work_item ON rotations (work_item);
CREATE INDEX rotations_by_step ON rotations (step);
CREATE INDEX rotations_by_owner ON rotations (owner);
CREATE TABLE compactions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session     BIGINT NOT NULL,
    work_item   BIGINT NOT NULL,
    agent_type  TEXT   NOT NULL,
    success     BIGINT NOT NULL,
    record      TEXT   NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX compactions_by_session ON compactions (session);
CREATE TABLE events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    session    BIGINT,
    work_item  BIGINT,
    rotation   BIGINT,
    dedup      TEXT UNIQUE,
    payload    TEXT   NOT NULL,
    owner      BIGINT DEFAULT NULLIF(current_setting('baton.epoch', true), '')::BIGINT
);
CREATE INDEX events_by_session ON events (session);
CREATE INDEX events_by_work_item ON events (work_item);
"#;

/// Migration `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [V1];

/// `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            c => out.push(c),
        }
    }
    out
}

/// Runs `f` outside any tokio runtime: the synchronous client drives its connection with a
/// runtime of its own, which cannot start on a thread that is inside one (the server's handlers,
/// `baton serve`'s start-up). There `f` runs on a thread of its own, and this waits for it;
/// elsewhere (the journal's writer, `baton log`) it runs here.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A PostgreSQL connection that runs the journal's SQL: prepared statements cached by their
/// text, transactions by explicit `BEGIN` / `SAVEPOINT` / `COMMIT`. Usable from any thread, a
/// runtime's included (see [`off_runtime`]).
pub(crate) struct PgConn {
    /// The connection (in a `Mutex`: the client's calls take `&mut`, [`Db`]'s `&self`; `None`
    /// once dropped).
    client: Mutex<Option<Client>>,
    /// Prepared statements by their `?N` text.
    statements: Mutex<HashMap<String, Statement>>,
    /// The node's epoch, if any.
    epoch: Option<i64>,
    /// The password, scrubbed from every error message.
    password: Option<String>,
    /// Whether this transaction holds [`EVENTS_LOCK`].
    events_locked: AtomicBool,
    /// Whether this transaction added `events` rows (to `NOTIFY`).
    wrote_events: AtomicBool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// Where a PostgreSQL journal is, for messages: its URL without the password.
pub(crate) fn place(url: &PgUrl) -> std::path::PathBuf {
    std::path::PathBuf::from(url.to_string())
}

impl PgConn {
    /// Connects to `url`. With an epoch, rows created on this connection are owned by it. A
    /// writer's connection also gets `idle_in_transaction_session_timeout`.
    pub(crate) fn connect(
        url: &PgUrl,
        epoch: Option<Epoch>,
        writer: bool,
    ) -> Result<Self, JournalError> {
        let mut config = url.config()?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config
            .application_name("baton")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let client = off_runtime(|| config.connect(NoTls)).map_err(|e| JournalError::Postgres {
            message: scrub(&pg_message(&e), password.as_deref()),
        })?;
        let conn = Self {
            client: Mutex::new(Some(client)),
            statements: Mutex::default(),
            epoch: epoch.map(|e| e.0),
            password,
            events_locked: AtomicBool::new(false),
            wrote_events: AtomicBool::new(false),
        };
        let mut setup = String::new();
        if writer {
            setup.push_str(&format!(
                "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}';"
            ));
        }
        if let Some(e) = conn.epoch {
            setup.push_str(&format!("SET baton.epoch = '{e}';"));
        }
        if !setup.is_empty() {
            conn.batch(&setup).map_err(|e| conn.error(e, &place(url)))?;
        }
        Ok(conn)
    }

    /// The client, for one call.
    fn client(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs statements without parameters.
    pub(crate) fn batch(&self, sql: &str) -> Result<(), DbError> {
        off_runtime(|| match self.client().as_mut() {
            Some(c) => Ok(c.batch_execute(sql)?),
            None => Err(gone()),
        })
    }

    /// `BEGIN` (READ COMMITTED).
    pub(crate) fn begin(&self) -> Result<(), DbError> {
        self.events_locked.store(false, Ordering::Relaxed);
        self.wrote_events.store(false, Ordering::Relaxed);
        self.batch("BEGIN")
    }

    /// `NOTIFY baton_events` if events were written, then `COMMIT`.
    pub(crate) fn commit(&self) -> Result<(), DbError> {
        if self.wrote_events.load(Ordering::Relaxed) {
            self.batch("NOTIFY baton_events; COMMIT")
        } else {
            self.batch("COMMIT")
        }
    }

    /// `ROLLBACK`, after a failure (its own failure is only logged: the connection may be
    /// gone already).
    pub(crate) fn rollback(&self) {
        if let Err(e) = self.batch("ROLLBACK") {
            tracing::debug!(error = %self.scrubbed(&e), "rollback failed");
        }
    }

    /// A savepoint before one record; answers what undoing it must restore.
    pub(crate) fn savepoint(&self) -> Result<bool, DbError> {
        self.batch("SAVEPOINT record")?;
        Ok(self.events_locked.load(Ordering::Relaxed))
    }

    /// Keeps the record's changes.
    pub(crate) fn release(&self) -> Result<(), DbError> {
        self.batch("RELEASE SAVEPOINT record")
    }

    /// Undoes the record's changes (and any lock it took).
    pub(crate) fn rollback_to(&self, locked_before: bool) -> Result<(), DbError> {
        self.events_locked.store(locked_before, Ordering::Relaxed);
        self.batch("ROLLBACK TO SAVEPOINT record; RELEASE SAVEPOINT record")
    }

    /// The fence: with an epoch, locks the node's row for key share (which the adopter's `DELETE`
    /// waits for, and the heartbeat's `UPDATE` does not), or fails with
    /// [`JournalError::Fenced`] when it is gone.
    pub(crate) fn fence(&self, place: &Path) -> Result<(), JournalError> {
        let Some(epoch) = self.epoch else {
            return Ok(());
        };
        let found = (self as &dyn Db)
            .query_opt(
                "SELECT 1 FROM baton_nodes WHERE epoch = ?1 FOR KEY SHARE",
                &[Val::Int(epoch)],
            )
            .map_err(|e| self.error(e, place))?;
        match found {
            Some(_) => Ok(()),
            None => Err(JournalError::Fenced { epoch }),
        }
    }

    fn scrubbed(&self, e: &DbError) -> String {
        scrub(&e.to_string(), self.password.as_deref())
    }

    /// The statement for `sql`, prepared once (on `client`, which the caller holds).
    fn statement(&self, client: &mut Client, sql: &str) -> Result<Statement, DbError> {
        let mut statements = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = statements.get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(&dollar_placeholders(sql))?;
        statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Closing the client runs its runtime too.
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(client) = client {
            off_runtime(move || drop(client));
        }
    }
}

/// The error of a connection used after it was dropped (which cannot happen: only `drop` takes
/// the client).
fn gone() -> DbError {
    DbError::Convert("the PostgreSQL connection is closed".into())
}

/// `e`'s message with its causes (the client's own `Display` names only the kind).
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `message` with every occurrence of `password` replaced.
pub(crate) fn scrub(message: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() => message.replace(p, "***"),
        _ => message.to_owned(),
    }
}

fn params(values: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Db for PgConn {
    fn execute(&self, sql: &str, values: &[Val]) -> Result<u64, DbError> {
        off_runtime(|| {
            let mut guard = self.client();
            let client = guard.as_mut().ok_or_else(gone)?;
            let stmt = self.statement(client, sql)?;
            Ok(client.execute(&stmt, &params(values))?)
        })
    }

    fn query(&self, sql: &str, values: &[Val]) -> Result<Rows, DbError> {
        let (stmt, rows) = off_runtime(|| {
            let mut guard = self.client();
            let client = guard.as_mut().ok_or_else(gone)?;
            let stmt = self.statement(client, sql)?;
            let rows = client.query(&stmt, &params(values))?;
            Ok::<_, DbError>((stmt, rows))
        })?;
        let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(columns.len());
            for (i, c) in r.columns().iter().enumerate() {
                let ty = c.type_();
                let v = if *ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i)?.map(Val::Int)
                } else if *ty == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)?
                        .map(|v| Val::Int(i64::from(v)))
                } else if *ty == Type::INT2 {
                    r.try_get::<_, Option<i16>>(i)?
                        .map(|v| Val::Int(i64::from(v)))
                } else if *ty == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i)?
                        .map(|v| Val::Int(i64::from(v)))
                } else if *ty == Type::FLOAT8 {
                    r.try_get::<_, Option<f64>>(i)?.map(Val::Real)
                } else if *ty == Type::BYTEA {
                    r.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Blob)
                } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
                    r.try_get::<_, Option<String>>(i)?.map(Val::Text)
                } else {
                    return Err(DbError::Convert(format!(
                        "column {} has type {ty}, which the journal does not read",
                        c.name()
                    )));
                };
                row.push(v.unwrap_or(Val::Null));
            }
            out.push(Row(row));
        }
        Ok(Rows { columns, rows: out })
    }

    fn before_event(&self) -> Result<(), DbError> {
        self.wrote_events.store(true, Ordering::Relaxed);
        if !self.events_locked.load(Ordering::Relaxed) {
            (self as &dyn Db)
                .execute("SELECT pg_advisory_xact_lock(?1)", &[Val::Int(EVENTS_LOCK)])?;
            self.events_locked.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    fn error(&self, e: DbError, place: &Path) -> JournalError {
        match e {
            DbError::Pg(e) => JournalError::postgres(&e, self.password.as_deref()),
            other => JournalError::from_db(other, place),
        }
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Val::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Val::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Val::Int(i) if *ty == Type::FLOAT8 => (*i as f64).to_sql(ty, out),
            Val::Int(i) if [Type::TEXT, Type::VARCHAR, Type::UNKNOWN].contains(ty) => {
                i.to_string().as_str().to_sql(ty, out)
            }
            Val::Int(i) => i.to_sql(ty, out),
            Val::Real(f) => f.to_sql(ty, out),
            Val::Text(s) => s.as_str().to_sql(ty, out),
            Val::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Brings the database to [`SCHEMA_VERSION`] in one transaction under [`SCHEMA_LOCK`] (nodes
/// starting together create it once). A database whose `baton_meta` is another program's, or
/// that has journal tables without `baton_meta`, is refused; so is a newer schema.
pub(crate) fn migrate(conn: &PgConn, place: &Path) -> Result<(), JournalError> {
    let err = |e: DbError| conn.error(e, place);
    conn.begin().map_err(err)?;
    let result = migrate_in(conn, place);
    match result {
        Ok(()) => conn.commit().map_err(err),
        Err(e) => {
            conn.rollback();
            Err(e)
        }
    }
}

fn migrate_in(conn: &PgConn, place: &Path) -> Result<(), JournalError> {
    let err = |e: DbError| conn.error(e, place);
    let db: &dyn Db = conn;
    db.execute("SELECT pg_advisory_xact_lock(?1)", &[Val::Int(SCHEMA_LOCK)])
        .map_err(err)?;
    let version = read_version(conn, place)?;
    let from = match version {
        Some(v) if v > i64::from(SCHEMA_VERSION) => {
            return Err(JournalError::NewerSchema {
                path: place.to_owned(),
                found: i32::try_from(v).unwrap_or(i32::MAX),
                supported: SCHEMA_VERSION,
            });
        }
        Some(v) if v < 0 => {
            return Err(JournalError::UnknownSchema {
                path: place.to_owned(),
                found: i32::try_from(v).unwrap_or(i32::MIN),
            });
        }
        Some(v) => v as usize,
        None => {
            let tables: i64 = db
                .query_opt(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()
                       AND tablename IN ('work_items', 'sessions', 'rotations', 'compactions', 'events')",
                    &[],
                )
                .map_err(err)?
                .map_or(Ok(0), |r| r.get(0))
                .map_err(|e| JournalError::BadRecord(e.message))?;
            if tables > 0 {
                return Err(JournalError::Foreign {
                    path: place.to_owned(),
                    application_id: 0,
                    tables: u32::try_from(tables).unwrap_or(u32::MAX),
                });
            }
            0
        }
    };
    for (version, migration) in (from..SCHEMA_VERSION as usize).zip(MIGRATIONS.iter().skip(from)) {
        conn.batch(migration).map_err(err)?;
        db.execute(
            "INSERT INTO baton_meta (key, value) VALUES ('schema_version', ?1), ('application_id', ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[
                Val::Int(version as i64 + 1),
                Val::Int(i64::from(APPLICATION_ID)),
            ],
        )
        .map_err(err)?;
        tracing::info!(database = %place.display(), version = version + 1, "journal schema migrated");
    }
    Ok(())
}

/// The schema version in `baton_meta`, or `None` for a database without one. `baton_meta` of
/// another program (another application id) is refused.
pub(crate) fn read_version(conn: &PgConn, place: &Path) -> Result<Option<i64>, JournalError> {
    let err = |e: DbError| conn.error(e, place);
    let db: &dyn Db = conn;
    let exists = db
        .query_opt("SELECT to_regclass('baton_meta') IS NOT NULL", &[])
        .map_err(err)?
        .is_some_and(|r| r.get::<bool>(0).unwrap_or(false));
    if !exists {
        return Ok(None);
    }
    let rows = db
        .query("SELECT key, value FROM baton_meta", &[])
        .map_err(err)?;
    let mut version = None;
    let mut application_id = None;
    for r in rows.rows {
        let key: String = r.get(0).map_err(|e| JournalError::BadRecord(e.message))?;
        let value: i64 = r.get(1).map_err(|e| JournalError::BadRecord(e.message))?;
        match key.as_str() {
            "schema_version" => version = Some(value),
            "application_id" => application_id = Some(value),
            _ => {}
        }
    }
    if application_id != Some(i64::from(APPLICATION_ID)) {
        return Err(JournalError::Foreign {
            path: place.to_owned(),
            application_id: application_id
                .and_then(|a| i32::try_from(a).ok())
                .unwrap_or(0),
            tables: 0,
        });
    }
    Ok(Some(version.unwrap_or(0)))
}

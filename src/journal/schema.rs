//! The journal's file: how it is recognised, created and migrated.
//!
//! A baton journal is a SQLite database whose header carries baton's `application_id` and whose
//! `user_version` is its schema version. Opening a file checks both before anything is written:
//! a file that is not SQLite, another program's database, or a journal from a newer baton is
//! refused with a typed error and left untouched. Migrations run one version at a time, each in
//! its own `BEGIN IMMEDIATE` transaction that also bumps `user_version`, so a crash during a
//! migration leaves the file at the version before it.
//!
//! The states the tables hold ([`WorkItemPlace`], [`SessionState`], [`EndReason`], and the
//! machine's `Phase`, `RotationStep` and `RotationReason`) are stored as their serde names
//! through `From<T> for Val` / `FromVal`: the `CHECK` constraints below list the same names.

use std::fmt;
use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::JournalError;
use super::db::{FromVal, Val};
use crate::machine::Phase;
use crate::policy::RotationReason;
use crate::record::RotationStep;

/// The `application_id` in a baton journal's header: `"batn"` in ASCII.
pub const APPLICATION_ID: i32 = 0x6261_746e;

/// The newest schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Migration `i` takes a journal from version `i` to `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [V1];

/// Version 1: the records of `docs/semantics.md` ("Journal").
///
/// Ids are stored as SQLite integers (the `u64` bit pattern as `i64`). Times are milliseconds
/// since the Unix epoch. Records that baton also publishes keep their full JSON, so nothing a
/// record says is lost; the columns beside it are what filters and recovery need.
const V1: &str = r#"
CREATE TABLE work_items (
    id                INTEGER PRIMARY KEY,
    agent_type        TEXT    NOT NULL,
    text              TEXT    NOT NULL,
    place             TEXT    NOT NULL CHECK (place IN ('queued', 'live', 'rotating', 'done', 'dead')),
    session           INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    spawns            INTEGER NOT NULL DEFAULT 0,
    pending_spawn_key INTEGER,
    epoch             INTEGER NOT NULL DEFAULT 0,
    queue_seq         INTEGER NOT NULL DEFAULT 0,
    handoff           TEXT,
    reason            TEXT,
    submitted_at      INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE TABLE sessions (
    id                 INTEGER PRIMARY KEY,
    agent_type         TEXT    NOT NULL,
    work_item          INTEGER NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('live', 'rotating', 'closed')),
    phase              TEXT    NOT NULL,
    transitions        INTEGER NOT NULL DEFAULT 0,
    compactions        INTEGER NOT NULL DEFAULT 0,
    compacting_from    TEXT,
    released           INTEGER NOT NULL DEFAULT 0,
    predecessor        INTEGER,
    rotation           INTEGER,
    started_at         INTEGER NOT NULL,
    ended_at           INTEGER,
    end_reason         TEXT
);
CREATE INDEX sessions_by_work_item ON sessions (work_item);
CREATE INDEX sessions_by_state ON sessions (state);
CREATE TABLE rotations (
    id            INTEGER PRIMARY KEY,
    work_item     INTEGER NOT NULL,
    old_session   INTEGER NOT NULL,
    new_session   INTEGER,
    agent_type    TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    step          TEXT    NOT NULL CHECK (step IN ('intent', 'handoff', 'spawned', 'done', 'failed')),
    spawn_key     INTEGER,
    request       TEXT    NOT NULL,
    handoff       TEXT,
    record        TEXT,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX rotations_by_work_item ON rotations (work_item);
CREATE INDEX rotations_by_step ON rotations (step);
CREATE TABLE compactions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session     INTEGER NOT NULL,
    work_item   INTEGER NOT NULL,
    agent_type  TEXT    NOT NULL,
    success     INTEGER NOT NULL,
    record      TEXT    NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX compactions_by_session ON compactions (session);
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    session    INTEGER,
    work_item  INTEGER,
    rotation   INTEGER,
    dedup      TEXT UNIQUE,
    payload    TEXT    NOT NULL
);
CREATE INDEX events_by_session ON events (session);
CREATE INDEX events_by_work_item ON events (work_item);
"#;

/// What a file's header says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// An empty database (a new or zero-length file): baton may make it a journal.
    Empty,
    /// A baton journal at this schema version (from 0 to [`SCHEMA_VERSION`]).
    Journal(i32),
}

/// Reads the header and classifies the file; refuses what baton must not touch.
pub(crate) fn inspect(conn: &Connection, path: &Path) -> Result<Header, JournalError> {
    let sql = |e: rusqlite::Error| JournalError::sqlite(&e, path);
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(sql)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    let tables: u32 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(sql)?;
    match application_id {
        APPLICATION_ID if version > SCHEMA_VERSION => Err(JournalError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        }),
        APPLICATION_ID if version < 0 => Err(JournalError::UnknownSchema {
            path: path.to_owned(),
            found: version,
        }),
        APPLICATION_ID => Ok(Header::Journal(version)),
        0 if version == 0 && tables == 0 => Ok(Header::Empty),
        _ => Err(JournalError::Foreign {
            path: path.to_owned(),
            application_id,
            tables,
        }),
    }
}

/// Brings the journal to [`SCHEMA_VERSION`], one committed migration at a time.
pub(crate) fn migrate(
    conn: &mut Connection,
    header: Header,
    path: &Path,
) -> Result<(), JournalError> {
    let sql = |e: rusqlite::Error| JournalError::sqlite(&e, path);
    let from = match header {
        Header::Empty => 0,
        Header::Journal(v) => v,
    };
    // `inspect` refuses versions outside 0..=SCHEMA_VERSION; a version that still has no
    // migration is refused here rather than indexed.
    let first = usize::try_from(from).map_err(|_| JournalError::UnknownSchema {
        path: path.to_owned(),
        found: from,
    })?;
    for (version, migration) in (from..SCHEMA_VERSION).zip(MIGRATIONS.iter().skip(first)) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(sql)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        tracing::info!(path = %path.display(), version = version + 1, "journal schema migrated");
    }
    Ok(())
}

/// Where the journal last saw a work item: its `work_items.place`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkItemPlace {
    /// Waiting for a session.
    Queued,
    /// Held by a live session.
    Live,
    /// Held by a session whose rotation is under way.
    Rotating,
    /// Finished.
    Done,
    /// Given up on (dead-lettered).
    Dead,
}

/// The supervisor's view of a session: its `sessions.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Working on its item.
    Live,
    /// Being replaced by a rotation.
    Rotating,
    /// Ended (see [`EndReason`]).
    Closed,
}

/// How a session ended: its `sessions.end_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A rotation handed its item to a successor.
    Rotated,
    /// Closed on request (its machine reached Closed).
    Closed,
    /// Its item was finished.
    Done,
    /// Its rotation failed.
    RotationFailed,
    /// It crashed.
    Crashed,
    /// Its process died and recovery closed it.
    Lost,
    /// Its start gave up on it before it took its work item (its assign failed, or a shutdown
    /// began).
    StartAbandoned,
}

/// The name a unit variant of `value` has in serde (and so in SQL and JSON).
fn stored_name<T: Serialize>(value: &T) -> Option<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => Some(name),
        _ => None,
    }
}

/// The journal's state types are stored as their serde names: one spelling for SQL, JSON and
/// the tables, and no string compared by hand. A stored name that no variant has reads as a
/// conversion error naming the value (escaped) and the type.
macro_rules! stored_as_text {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl From<$t> for Val {
            fn from(v: $t) -> Self {
                // Every variant of these unit enums has a name; `Null` cannot happen.
                stored_name(&v).map_or(Val::Null, Val::Text)
            }
        }

        impl FromVal for $t {
            fn from_val(value: &Val) -> Result<Self, String> {
                let name = String::from_val(value)?;
                serde_json::from_value(serde_json::Value::String(name.clone()))
                    .map_err(|_| format!("{name:?} is not a {}", $what))
            }
        }
    )*};
}

stored_as_text!(
    WorkItemPlace => "work item place",
    SessionState => "session state",
    EndReason => "session end reason",
    Phase => "phase",
    RotationStep => "rotation step",
    RotationReason => "rotation reason",
);

impl fmt::Display for WorkItemPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&stored_name(self).unwrap_or_default())
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&stored_name(self).unwrap_or_default())
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&stored_name(self).unwrap_or_default())
    }
}

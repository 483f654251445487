//! Reading a journal: sessions, rotations, compactions, work items and events, filtered.
//!
//! [`JournalReader`] opens a journal file read-only (it never creates, migrates or changes
//! one, nor any file beside it, so it is safe beside a running supervisor and in a read-only
//! directory; see its documentation for how). [`Journal::read`](super::Journal::read) runs the
//! same queries on a journal in use, in memory ones included. Both hand out a [`JournalView`].
//! A row that does not read as its type stops its listing with [`JournalError::BadRow`], which
//! names the table, the row and the column.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::db::{Db, Row, RowError, Val};
use super::pg::{self, PgConn};
use super::schema::{self, EndReason, Header, SCHEMA_VERSION, SessionState, WorkItemPlace};
use super::target::JournalTarget;
use super::{JournalError, Timestamp};
use crate::machine::Phase;
use crate::policy::RotationReason;
use crate::record::{CompactionRecord, FleetEvent, RotationId, RotationRecord, RotationStep};
use crate::vocab::{Handoff, SessionId, WorkItemId};

/// Which rows to list. Every field narrows the result; the default lists everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Rows about this session (for rotations: as the old or the new session).
    pub session: Option<SessionId>,
    /// Rows about this work item.
    pub work_item: Option<WorkItemId>,
    /// Rows about sessions of this agent type.
    pub agent_type: Option<String>,
    /// Rotations for this reason; for the event log, the events of those rotations (their
    /// steps, their record, their resumption after a restart). Sessions, compactions and work
    /// items ignore it.
    pub reason: Option<RotationReason>,
    /// At or after this time (sessions: still open at it).
    pub since: Option<Timestamp>,
    /// At or before this time (sessions: started by it).
    pub until: Option<Timestamp>,
    /// Only the latest this many rows (still listed oldest first); with [`after`](Self::after),
    /// the first this many rows after it (a page).
    pub limit: Option<usize>,
    /// Event log only: the rows after this `seq` (`seq > after`), for a reader that resumes a
    /// stream of [`Sequenced`](crate::record::Sequenced) events from the last one it saw, or
    /// pages through the log. The other listings ignore it.
    pub after: Option<u64>,
}

/// A session as the journal records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRow {
    /// The session.
    pub session: SessionId,
    /// Its agent type.
    pub agent_type: String,
    /// The work item it held.
    pub work_item: WorkItemId,
    /// The supervisor's view: live, rotating or closed.
    pub state: SessionState,
    /// Its machine's last recorded state.
    pub phase: Phase,
    /// Transitions recorded.
    pub transitions: u64,
    /// Compaction records (successful or not).
    pub compactions: u64,
    /// The session it replaced, when it was started by a rotation.
    pub predecessor: Option<SessionId>,
    /// That rotation.
    pub rotation: Option<RotationId>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// How it ended.
    pub end_reason: Option<EndReason>,
}

/// A rotation, finished or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RotationRow {
    /// The rotation.
    pub rotation: RotationId,
    /// The work item that moved.
    pub work_item: WorkItemId,
    /// The session replaced.
    pub old_session: SessionId,
    /// The successor, once known.
    pub new_session: Option<SessionId>,
    /// The agent type of both.
    pub agent_type: String,
    /// Why.
    pub reason: RotationReason,
    /// How far it got.
    pub step: RotationStep,
    /// When it was decided.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Its record with the metrics, once finished.
    pub record: Option<RotationRecord>,
}

/// A compaction record and when it was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompactionRow {
    /// Its number in the journal.
    pub id: u64,
    /// When it was recorded.
    pub at: Timestamp,
    /// The record.
    pub record: CompactionRecord,
}

/// A work item and where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkItemRow {
    /// The item.
    pub work_item: WorkItemId,
    /// Its agent type.
    pub agent_type: String,
    /// Its text.
    pub text: String,
    /// Where it is.
    pub place: WorkItemPlace,
    /// The session holding it (live, rotating) or that held it last (done).
    pub session: Option<SessionId>,
    /// Crashes and failed starts.
    pub attempts: u32,
    /// Sessions spawned for it.
    pub spawns: u32,
    /// Goes up each time a new session takes it: the lease generation.
    pub epoch: u64,
    /// The handoff of its last rotation.
    pub handoff: Option<Handoff>,
    /// Why it was requeued or buried last.
    pub reason: Option<String>,
    /// When it was submitted.
    pub submitted_at: Timestamp,
    /// When its row last changed.
    pub updated_at: Timestamp,
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// Its position in the log (1, 2, 3, ...).
    pub seq: u64,
    /// When it was recorded.
    pub at: Timestamp,
    /// The [`FleetEvent`] tag (`transition`, `rotation`, ...) or a journal step
    /// (`work_item_submitted`, `rotation_started`, `rotation_handoff`, `rotation_successor`).
    pub kind: String,
    /// The session it is about.
    pub session: Option<SessionId>,
    /// The work item it is about.
    pub work_item: Option<WorkItemId>,
    /// The rotation it is about.
    pub rotation: Option<RotationId>,
    /// The record, as JSON.
    pub payload: serde_json::Value,
}

impl EventRow {
    /// The event, for rows that are published events (not journal steps).
    pub fn event(&self) -> Option<FleetEvent> {
        serde_json::from_value(self.payload.clone()).ok()
    }
}

/// Read-only access to a journal file.
///
/// A reader never writes, creates or deletes a file, beside the journal or anywhere else:
///
/// * With no writer's records pending (no `-wal` file, or an empty one), the file is opened
///   `immutable` (SQLite takes no locks and needs no `-shm` index), so it reads from a
///   read-only directory too. Every query then checks that the file and its `-wal` are as they
///   were at open; if a writer started meanwhile, the query fails with
///   [`JournalError::Changed`] and a new reader (which then reads through the writer's locks)
///   gets a consistent answer.
/// * With records in the `-wal` file (a writer is running, or one crashed), it is opened
///   read-only through SQLite's locks, using the writer's `-shm` index. Without that index
///   (the journal was copied without it), reading would make SQLite create one, so the reader
///   refuses with [`JournalError::NeedsIndex`], which says what to do.
///
/// A PostgreSQL journal ([`open_target`](Self::open_target)) is read over a connection of its
/// own, each query in its own statement; it is never migrated by a reader either.
pub struct JournalReader {
    /// A read-only connection.
    pub(super) conn: ReaderConn,
    /// The file, for messages.
    path: PathBuf,
    /// For a journal opened without locks: the files as they were, to check after each query.
    pub(super) unlocked: Option<FileState>,
}

/// A reader's connection, to either store.
pub(super) enum ReaderConn {
    /// A read-only SQLite connection.
    Sqlite(Connection),
    /// A PostgreSQL connection.
    Pg(Box<PgConn>),
}

impl ReaderConn {
    fn db(&self) -> &dyn Db {
        match self {
            Self::Sqlite(c) => c,
            Self::Pg(c) => c.as_ref(),
        }
    }
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("path", &self.path)
            .field("locked", &self.unlocked.is_none())
            .finish()
    }
}

/// `<journal><suffix>`: the files SQLite keeps beside a database (`-wal`, `-shm`, `-journal`).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What a journal's file and its `-wal` look like from outside: any write changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileState {
    /// The journal's identity, length and modification time.
    main: (u64, u64, Option<std::time::SystemTime>),
    /// The `-wal` file's length and modification time, if it exists.
    wal: Option<(u64, Option<std::time::SystemTime>)>,
}

impl FileState {
    fn read(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        let wal = std::fs::metadata(beside(path, "-wal"))
            .ok()
            .map(|w| (w.len(), w.modified().ok()));
        Ok(Self {
            main: (inode, m.len(), m.modified().ok()),
            wal,
        })
    }
}

/// A `file:` URI for `path` with `query`: every byte but the unreserved ones and `/`
/// percent-encoded, so that no file name can add a parameter.
fn uri(path: &Path, query: &str) -> String {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    let mut out = String::from("file:");
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('?');
    out.push_str(query);
    out
}

impl JournalReader {
    /// Opens the journal at `path` read-only (see [`JournalReader`] for how). A missing file, a
    /// directory, a file that is not SQLite, another program's database, a journal from a newer
    /// baton, one with a schema version no baton writes, and one from an older baton not yet
    /// migrated are refused with a typed error; nothing is ever written. The file is not
    /// scanned (a damaged page is reported as [`JournalError::Corrupt`] by the query that reads
    /// it).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(JournalError::Missing(path));
            }
            Err(e) => {
                return Err(JournalError::Io {
                    message: format!("cannot read {}: {e}", path.display()),
                });
            }
        };
        if !meta.is_file() {
            return Err(JournalError::NotAFile(path));
        }
        let state = FileState::read(&path)?;
        let pending = state.wal.is_some_and(|(len, _)| len > 0);
        let shm = beside(&path, "-shm");
        if pending && !shm.exists() {
            return Err(JournalError::NeedsIndex {
                wal: beside(&path, "-wal"),
                shm,
                path,
            });
        }
        // A rollback journal beside it means a write in progress (or cut short) in the old
        // journal mode: SQLite's locks decide what is committed.
        let unlocked = !pending && !beside(&path, "-journal").exists();
        let query = if unlocked {
            "mode=ro&immutable=1"
        } else {
            "mode=ro"
        };
        let sql = |e: rusqlite::Error| JournalError::sqlite(&e, &path);
        let conn = Connection::open_with_flags(
            uri(&path, query),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let header = schema::inspect(&conn, &path)?;
        let reader = Self {
            conn: ReaderConn::Sqlite(conn),
            unlocked: unlocked.then_some(state),
            path,
        };
        match header {
            Header::Journal(SCHEMA_VERSION) => {
                reader.view().unchanged()?;
                Ok(reader)
            }
            Header::Journal(found) => Err(JournalError::OlderSchema {
                path: reader.path,
                found,
                supported: SCHEMA_VERSION,
            }),
            Header::Empty => Err(JournalError::Foreign {
                path: reader.path,
                application_id: 0,
                tables: 0,
            }),
        }
    }

    /// Opens the journal at `target` read-only: a file as [`open`](Self::open) does, or a
    /// PostgreSQL database, which must hold a journal at this build's schema version (a
    /// database without one, another program's, a newer or an older schema are refused with a
    /// typed error; nothing is written).
    pub fn open_target(target: &JournalTarget) -> Result<Self, JournalError> {
        let url = match target {
            JournalTarget::File(path) => return Self::open(path),
            JournalTarget::Postgres(url) => url,
        };
        let path = pg::place(url);
        let conn = PgConn::connect(url, None, false)?;
        match pg::read_version(&conn, &path)? {
            Some(v) if v == i64::from(SCHEMA_VERSION) => Ok(Self {
                conn: ReaderConn::Pg(Box::new(conn)),
                path,
                unlocked: None,
            }),
            Some(v) if v > i64::from(SCHEMA_VERSION) => Err(JournalError::NewerSchema {
                path,
                found: i32::try_from(v).unwrap_or(i32::MAX),
                supported: SCHEMA_VERSION,
            }),
            Some(v) => Err(JournalError::OlderSchema {
                path,
                found: i32::try_from(v).unwrap_or(i32::MIN),
                supported: SCHEMA_VERSION,
            }),
            None => Err(JournalError::Missing(path)),
        }
    }

    /// The queries.
    pub fn view(&self) -> JournalView<'_> {
        JournalView {
            conn: self.conn.db(),
            path: &self.path,
            unlocked: self.unlocked.as_ref(),
        }
    }
}

/// The queries over one connection.
#[derive(Clone, Copy)]
pub struct JournalView<'a> {
    /// The connection (read-only, or the writer's), on either store.
    conn: &'a dyn Db,
    /// The file, for messages.
    path: &'a Path,
    /// For a reader opened without locks: the files as they were at open.
    unlocked: Option<&'a FileState>,
}

/// A `WHERE` clause being built, with its parameters.
#[derive(Default)]
struct Where {
    /// Conditions, joined with `AND`.
    clauses: Vec<String>,
    /// Their values, in placeholder order (`?1`, `?2`, ...).
    params: Vec<Val>,
}

impl Where {
    /// Adds `clause`, numbering each `?` in it for the next of `values`.
    fn add(&mut self, clause: &str, values: impl IntoIterator<Item = Val>) {
        let mut values = values.into_iter();
        let mut parts = clause.split('?');
        let mut out = parts.next().unwrap_or_default().to_owned();
        for part in parts {
            self.params
                .push(values.next().expect("a value for every placeholder"));
            out.push_str(&format!("?{}{part}", self.params.len()));
        }
        self.clauses.push(out);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn int(v: u64) -> Val {
    Val::Int(v as i64)
}

fn text(s: &str) -> Val {
    Val::Text(s.to_owned())
}

/// A state as stored (its serde name).
fn stored(v: impl Into<Val>) -> Val {
    v.into()
}

fn ts(t: Timestamp) -> Val {
    Val::Int(t.0)
}

/// Column `i` of `r` as JSON.
pub(super) fn json<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> Result<T, RowError> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| RowError {
        column: i,
        message: e.to_string(),
    })
}

/// Column `i` of `r` as JSON, when it is not NULL.
pub(super) fn json_opt<T: serde::de::DeserializeOwned>(
    r: &Row,
    i: usize,
) -> Result<Option<T>, RowError> {
    if r.is_null(i) {
        Ok(None)
    } else {
        json(r, i).map(Some)
    }
}

impl<'a> JournalView<'a> {
    pub(crate) fn new(conn: &'a dyn Db, path: &'a Path) -> Self {
        Self {
            conn,
            path,
            unlocked: None,
        }
    }

    /// For a reader opened without locks: fails if a writer changed the files since the open.
    fn unchanged(&self) -> Result<(), JournalError> {
        match self.unlocked {
            Some(before) if FileState::read(self.path).ok().as_ref() != Some(before) => {
                Err(JournalError::Changed(self.path.to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Runs `select` on `table` (its first column the row's id, ordered by `order`) with the
    /// filter and the limit. A row that does not read as its type stops the listing with
    /// [`JournalError::BadRow`], naming the table, the row and the column.
    /// `limit` keeps the latest rows, or with `first` the first ones.
    #[allow(clippy::too_many_arguments)]
    fn list<T>(
        &self,
        table: &'static str,
        select: &str,
        order: &str,
        mut w: Where,
        limit: Option<usize>,
        first: bool,
        mut row: impl FnMut(&Row) -> Result<T, RowError>,
    ) -> Result<Vec<T>, JournalError> {
        let inner = format!("{select} {} ORDER BY {order}", w.sql());
        let sql = match limit {
            Some(n) => {
                // SQLite's integers stop at i64::MAX; a larger limit is no limit.
                w.params
                    .push(Val::Int(i64::try_from(n).unwrap_or(i64::MAX)));
                let n = w.params.len();
                if first {
                    format!("{inner} LIMIT ?{n}")
                } else {
                    format!("SELECT * FROM ({inner} DESC LIMIT ?{n}) AS latest ORDER BY {order}")
                }
            }
            None => inner,
        };
        let result = self.rows(table, &sql, w.params, &mut row);
        // A writer that started under a reader without locks explains any failure.
        self.unchanged()?;
        result
    }

    /// The rows of `sql`, each read by `row`.
    pub(super) fn rows<T>(
        &self,
        table: &'static str,
        sql: &str,
        params: Vec<Val>,
        row: &mut impl FnMut(&Row) -> Result<T, RowError>,
    ) -> Result<Vec<T>, JournalError> {
        let result = self
            .conn
            .query(sql, &params)
            .map_err(|e| self.conn.error(e, self.path))?;
        let mut out = Vec::with_capacity(result.rows.len());
        for r in &result.rows {
            match row(r) {
                Ok(t) => out.push(t),
                Err(e) => {
                    let id = r.get::<i64>(0).unwrap_or_default();
                    let column = result
                        .columns
                        .get(e.column)
                        .map_or_else(String::new, |c| format!("column {c}: "));
                    let error = JournalError::BadRow {
                        table,
                        row: id,
                        message: format!("{column}{}", e.message),
                    };
                    tracing::warn!(path = %self.path.display(), %error, "unreadable journal row");
                    return Err(error);
                }
            }
        }
        Ok(out)
    }

    /// Sessions, by id.
    pub fn sessions(&self, f: &Filter) -> Result<Vec<SessionRow>, JournalError> {
        let mut w = Where::default();
        if let Some(s) = f.session {
            w.add("id = ?", [int(s.0)]);
        }
        if let Some(i) = f.work_item {
            w.add("work_item = ?", [int(i.0)]);
        }
        if let Some(a) = &f.agent_type {
            w.add("agent_type = ?", [text(a)]);
        }
        if let Some(t) = f.since {
            w.add("(ended_at IS NULL OR ended_at >= ?)", [ts(t)]);
        }
        if let Some(t) = f.until {
            w.add("started_at <= ?", [ts(t)]);
        }
        self.list(
            "sessions",
            "SELECT id, agent_type, work_item, state, phase, transitions, compactions, predecessor,
                    rotation, started_at, ended_at, end_reason FROM sessions",
            "id",
            w,
            f.limit,
            false,
            |r| {
                Ok(SessionRow {
                    session: SessionId(r.get::<i64>(0)? as u64),
                    agent_type: r.get(1)?,
                    work_item: WorkItemId(r.get::<i64>(2)? as u64),
                    state: r.get(3)?,
                    phase: r.get(4)?,
                    transitions: r.get::<i64>(5)? as u64,
                    compactions: r.get::<i64>(6)? as u64,
                    predecessor: r.get::<Option<i64>>(7)?.map(|s| SessionId(s as u64)),
                    rotation: r.get::<Option<i64>>(8)?.map(|s| RotationId(s as u64)),
                    started_at: Timestamp(r.get(9)?),
                    ended_at: r.get::<Option<i64>>(10)?.map(Timestamp),
                    end_reason: r.get(11)?,
                })
            },
        )
    }

    /// Rotations, by id.
    pub fn rotations(&self, f: &Filter) -> Result<Vec<RotationRow>, JournalError> {
        let mut w = Where::default();
        if let Some(s) = f.session {
            w.add("(old_session = ? OR new_session = ?)", [int(s.0), int(s.0)]);
        }
        if let Some(i) = f.work_item {
            w.add("work_item = ?", [int(i.0)]);
        }
        if let Some(a) = &f.agent_type {
            w.add("agent_type = ?", [text(a)]);
        }
        if let Some(r) = f.reason {
            w.add("reason = ?", [stored(r)]);
        }
        if let Some(t) = f.since {
            w.add("started_at >= ?", [ts(t)]);
        }
        if let Some(t) = f.until {
            w.add("started_at <= ?", [ts(t)]);
        }
        self.list(
            "rotations",
            "SELECT id, work_item, old_session, new_session, agent_type, reason, step, started_at,
                    finished_at, record FROM rotations",
            "id",
            w,
            f.limit,
            false,
            |r| {
                Ok(RotationRow {
                    rotation: RotationId(r.get::<i64>(0)? as u64),
                    work_item: WorkItemId(r.get::<i64>(1)? as u64),
                    old_session: SessionId(r.get::<i64>(2)? as u64),
                    new_session: r.get::<Option<i64>>(3)?.map(|s| SessionId(s as u64)),
                    agent_type: r.get(4)?,
                    reason: r.get(5)?,
                    step: r.get(6)?,
                    started_at: Timestamp(r.get(7)?),
                    finished_at: r.get::<Option<i64>>(8)?.map(Timestamp),
                    record: json_opt(r, 9)?,
                })
            },
        )
    }

    /// Compaction records, in the order they were written.
    pub fn compactions(&self, f: &Filter) -> Result<Vec<CompactionRow>, JournalError> {
        let mut w = Where::default();
        if let Some(s) = f.session {
            w.add("session = ?", [int(s.0)]);
        }
        if let Some(i) = f.work_item {
            w.add("work_item = ?", [int(i.0)]);
        }
        if let Some(a) = &f.agent_type {
            w.add("agent_type = ?", [text(a)]);
        }
        if let Some(t) = f.since {
            w.add("at >= ?", [ts(t)]);
        }
        if let Some(t) = f.until {
            w.add("at <= ?", [ts(t)]);
        }
        self.list(
            "compactions",
            "SELECT id, at, record FROM compactions",
            "id",
            w,
            f.limit,
            false,
            |r| {
                Ok(CompactionRow {
                    id: r.get::<i64>(0)? as u64,
                    at: Timestamp(r.get(1)?),
                    record: json(r, 2)?,
                })
            },
        )
    }

    /// Work items, by id.
    pub fn work_items(&self, f: &Filter) -> Result<Vec<WorkItemRow>, JournalError> {
        let mut w = Where::default();
        if let Some(s) = f.session {
            w.add("session = ?", [int(s.0)]);
        }
        if let Some(i) = f.work_item {
            w.add("id = ?", [int(i.0)]);
        }
        if let Some(a) = &f.agent_type {
            w.add("agent_type = ?", [text(a)]);
        }
        if let Some(t) = f.since {
            w.add("updated_at >= ?", [ts(t)]);
        }
        if let Some(t) = f.until {
            w.add("submitted_at <= ?", [ts(t)]);
        }
        self.list(
            "work_items",
            "SELECT id, agent_type, text, place, session, attempts, spawns, epoch, handoff, reason,
                    submitted_at, updated_at FROM work_items",
            "id",
            w,
            f.limit,
            false,
            |r| {
                Ok(WorkItemRow {
                    work_item: WorkItemId(r.get::<i64>(0)? as u64),
                    agent_type: r.get(1)?,
                    text: r.get(2)?,
                    place: r.get(3)?,
                    session: r.get::<Option<i64>>(4)?.map(|s| SessionId(s as u64)),
                    attempts: r.get(5)?,
                    spawns: r.get(6)?,
                    epoch: r.get::<i64>(7)? as u64,
                    handoff: json_opt(r, 8)?,
                    reason: r.get(9)?,
                    submitted_at: Timestamp(r.get(10)?),
                    updated_at: Timestamp(r.get(11)?),
                })
            },
        )
    }

    /// The event log, in order.
    pub fn events(&self, f: &Filter) -> Result<Vec<EventRow>, JournalError> {
        let mut w = Where::default();
        if let Some(s) = f.session {
            w.add("session = ?", [int(s.0)]);
        }
        if let Some(i) = f.work_item {
            w.add("work_item = ?", [int(i.0)]);
        }
        if let Some(a) = &f.agent_type {
            w.add(
                "(session IN (SELECT id FROM sessions WHERE agent_type = ?)
                  OR work_item IN (SELECT id FROM work_items WHERE agent_type = ?))",
                [text(a), text(a)],
            );
        }
        if let Some(r) = f.reason {
            w.add(
                "rotation IN (SELECT id FROM rotations WHERE reason = ?)",
                [stored(r)],
            );
        }
        if let Some(t) = f.since {
            w.add("at >= ?", [ts(t)]);
        }
        if let Some(t) = f.until {
            w.add("at <= ?", [ts(t)]);
        }
        if let Some(after) = f.after {
            // Past i64::MAX nothing is logged.
            w.add(
                "seq > ?",
                [Val::Int(i64::try_from(after).unwrap_or(i64::MAX))],
            );
        }
        self.list(
            "events",
            "SELECT seq, at, kind, session, work_item, rotation, payload FROM events",
            "seq",
            w,
            f.limit,
            f.after.is_some(),
            |r| {
                Ok(EventRow {
                    seq: r.get::<i64>(0)? as u64,
                    at: Timestamp(r.get(1)?),
                    kind: r.get(2)?,
                    session: r.get::<Option<i64>>(3)?.map(|s| SessionId(s as u64)),
                    work_item: r.get::<Option<i64>>(4)?.map(|s| WorkItemId(s as u64)),
                    rotation: r.get::<Option<i64>>(5)?.map(|s| RotationId(s as u64)),
                    payload: json(r, 6)?,
                })
            },
        )
    }
}

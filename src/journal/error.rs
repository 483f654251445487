//! [`JournalError`]: everything that can go wrong opening, writing or reading a journal.
//!
//! Errors are `Clone` because one failed commit answers every write that was waiting on it.
//! SQLite's own errors are classified here into the cases a user can act on (not a database,
//! corrupt, disk full, in use) and keep SQLite's message.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;
use thiserror::Error;

/// A journal could not be opened, written or read.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum JournalError {
    /// Reading a journal that does not exist (opening one for writing creates it).
    #[error("no journal at {0}")]
    Missing(PathBuf),
    /// The file is not a SQLite database at all.
    #[error("{path} is not a SQLite database ({message})")]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// The file is a SQLite database whose pages are damaged.
    #[error("{path} is corrupt ({message})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// The file is a SQLite database, but another program's: baton will not touch it.
    #[error(
        "{path} is a SQLite database but not a baton journal (application_id {application_id:#010x}, {tables} tables)"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The database's `application_id` (baton's is [`APPLICATION_ID`](super::APPLICATION_ID)).
        application_id: i32,
        /// How many tables it holds.
        tables: u32,
    },
    /// The journal was written by a newer baton whose schema this one does not know.
    #[error(
        "{path} has journal schema version {found}, newer than this baton's {supported}: upgrade baton to read it"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version (`PRAGMA user_version`).
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// The file says it is a baton journal but carries a schema version no baton ever wrote
    /// (a negative `user_version`): damaged or tampered with, so it is neither read nor
    /// migrated.
    #[error("{path} has journal schema version {found}, which no baton writes: it is damaged")]
    UnknownSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version (`PRAGMA user_version`).
        found: i32,
    },
    /// The path names a directory (or another thing that is not a regular file).
    #[error("{0} is not a journal file (it is a directory or a special file)")]
    NotAFile(PathBuf),
    /// A reader found the journal's `-wal` file holding records not yet copied into the main
    /// file, with no `-shm` index beside it (the journal was copied without it). Reading those
    /// records needs SQLite to create `<file>-shm`, and a reader never creates files beside a
    /// journal, so it says what it needs instead.
    #[error(
        "{wal} holds records not yet in {path}, and reading them needs {shm}, which a reader never creates: open the journal once for writing (a supervisor with this journal folds them in), or read a copy of both files on which `sqlite3 COPY 'PRAGMA wal_checkpoint'` has run"
    )]
    NeedsIndex {
        /// The journal.
        path: PathBuf,
        /// Its write-ahead log.
        wal: PathBuf,
        /// The shared-memory index that is missing.
        shm: PathBuf,
    },
    /// A reader opened a journal without SQLite's locks (no writer was there), and a writer
    /// changed the file while the query ran: the rows may mix two states, so none are given.
    /// Opening it again reads it through the writer's locks.
    #[error("{0} changed while it was being read (a writer started): read it again")]
    Changed(PathBuf),
    /// A row that cannot be read as what its table holds (a wrong type, a value out of range,
    /// unreadable JSON, an unknown state): written by a buggy or tampered-with program. The
    /// listing stops at it and names it.
    #[error("bad row in the journal: {table} row {row}: {message}")]
    BadRow {
        /// The table.
        table: &'static str,
        /// The row's id (`seq` for events).
        row: i64,
        /// What is wrong with it, naming the column.
        message: String,
    },
    /// The journal was written by an older baton and has not been migrated yet: a reader
    /// never migrates (it never writes), so it asks for the journal to be opened for writing
    /// once ([`Journal::open`](super::Journal::open) migrates it).
    #[error(
        "{path} has journal schema version {found}, older than this baton's {supported}: open it once for writing (a supervisor with this journal) to migrate it"
    )]
    OlderSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version (`PRAGMA user_version`).
        found: i32,
        /// The version this build reads.
        supported: i32,
    },
    /// Another process has the journal open for writing.
    #[error("{path} is in use by another baton process (lock file {lock} is held)")]
    InUse {
        /// The file.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// The disk (or the journal's size cap) is full: the write was rolled back whole.
    #[error("the journal's disk is full; the write was rolled back ({message})")]
    DiskFull {
        /// What SQLite said.
        message: String,
    },
    /// The operating system failed a read or write.
    #[error("I/O error on the journal: {message}")]
    Io {
        /// What failed.
        message: String,
    },
    /// SQLite refused one statement for what it held (a constraint it breaks, a value too big
    /// or of the wrong type): only the record that ran it is lost; the journal goes on.
    #[error("the journal refused a record ({message})")]
    Refused {
        /// What SQLite said.
        message: String,
    },
    /// Any other SQLite failure (out of memory, a read-only or locked file, a broken schema,
    /// ...): the journal cannot be trusted to go on.
    #[error("SQLite error on the journal: {message}")]
    Sqlite {
        /// What SQLite said.
        message: String,
    },
    /// A record could not be encoded or decoded, or makes no sense against what is stored (a
    /// rotation finished without its intent): written by a buggy or tampered-with program.
    #[error("bad record in the journal: {0}")]
    BadRecord(String),
    /// An earlier write failed, so the journal refuses all later ones: what is on disk stays a
    /// consistent prefix of what was sent.
    #[error("the journal stopped accepting writes after an earlier failure: {0}")]
    Failed(Box<JournalError>),
    /// PostgreSQL failed (the connection, the server, or a statement it refused for a reason
    /// that is not the record's own): the journal cannot be trusted to go on. The message
    /// never holds the connection's password.
    #[error("PostgreSQL error on the journal: {message}")]
    Postgres {
        /// What the client or the server said.
        message: String,
    },
    /// The cluster node's row in `baton_nodes` is gone: another node took over its work (or it
    /// left), so its journal refuses every write from then on (`docs/cluster.md`).
    #[error("the journal is fenced: node epoch {epoch} no longer holds its lease")]
    Fenced {
        /// The node's epoch.
        epoch: i64,
    },
    /// The operation needs a PostgreSQL journal opened with a node epoch
    /// ([`PgOptions::epoch`](super::PgOptions::epoch)).
    #[error("{0} needs a PostgreSQL journal opened with a node epoch")]
    NotClustered(&'static str),
    /// The journal's writer has stopped (the journal was dropped).
    #[error("the journal is closed")]
    Closed,
}

impl JournalError {
    /// Classifies a SQLite error; `path` names the file in the messages that need it.
    pub(crate) fn sqlite(e: &rusqlite::Error, path: &Path) -> Self {
        let message = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => Self::NotADatabase {
                path: path.to_owned(),
                message,
            },
            Some(ErrorCode::DatabaseCorrupt) => Self::Corrupt {
                path: path.to_owned(),
                message,
            },
            Some(ErrorCode::DiskFull) => Self::DiskFull { message },
            Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => Self::Io { message },
            Some(
                ErrorCode::ConstraintViolation
                | ErrorCode::TooBig
                | ErrorCode::TypeMismatch
                | ErrorCode::ParameterOutOfRange,
            ) => Self::Refused { message },
            _ => Self::Sqlite { message },
        }
    }

    /// Classifies a PostgreSQL error, with `password` scrubbed from its message.
    pub(crate) fn postgres(e: &postgres::Error, password: Option<&str>) -> Self {
        use postgres::error::SqlState;
        let message = super::pg::scrub(&super::pg::pg_message(e), password);
        match e.code() {
            Some(c) if *c == SqlState::DISK_FULL => Self::DiskFull { message },
            // Integrity constraints (23) and data exceptions (22): the record's own fault.
            Some(c) if c.code().starts_with("23") || c.code().starts_with("22") => {
                Self::Refused { message }
            }
            _ => Self::Postgres { message },
        }
    }

    /// Classifies a failure of the SQL layer (`path` names the SQLite file).
    pub(crate) fn from_db(e: super::db::DbError, path: &Path) -> Self {
        match e {
            super::db::DbError::Sqlite(e) => Self::sqlite(&e, path),
            super::db::DbError::Pg(e) => Self::postgres(&e, None),
            super::db::DbError::Convert(m) => Self::BadRecord(m),
        }
    }

    /// Whether the journal must stop after this error. Only a record's own fault (a statement
    /// SQLite refused for what it held, a record that makes no sense) loses just that record;
    /// everything else (a full disk, an I/O error, damage, out of memory, a read-only or locked
    /// file, any SQLite failure not known to be a record's own) stops the journal, so that what
    /// is on disk stays a prefix of what was sent.
    pub(crate) fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::Refused { .. } | Self::BadRecord(_) | Self::BadRow { .. }
        )
    }
}

impl From<std::io::Error> for JournalError {
    fn from(e: std::io::Error) -> Self {
        Self::Io {
            message: e.to_string(),
        }
    }
}

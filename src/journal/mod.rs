//! The journal: the durable record of every transition, compaction and rotation.
//!
//! A [`Journal`] is a SQLite database (through rusqlite, SQLite compiled in), or a PostgreSQL
//! database ([`JournalTarget`], [`Journal::open_postgres`]), that the
//! [`Supervisor`](crate::supervisor::Supervisor) writes through. It holds the fleet's work items
//! and sessions, every compaction and rotation with its metrics, and the event log, so that a
//! restarted supervisor knows which sessions were live, which work item each held, and which
//! rotations were half done ([`Supervisor::builder`](crate::supervisor::Supervisor::builder)
//! with [`journal`](crate::supervisor::SupervisorBuilder::journal) recovers from it).
//!
//! # How it is written
//!
//! * One writer thread owns the write connection. Records reach it over an unbounded channel:
//!   events straight from the [`EventBus`](crate::record::EventBus), and the supervisor's own
//!   steps. No actor ever waits on SQLite; a supervisor's rotation awaits the acknowledgement
//!   of its steps inside its rotation task, with its mailbox flowing.
//! * Durable before published: the writer delivers each event to the bus's subscribers only
//!   after the transaction holding it has committed (and the commit hook has run). If the
//!   journal fails, subscribers get `JournalFailed` first, once, then the events it could not
//!   make durable, and from then on every event undurably.
//! * Group commit: whatever is queued when the writer wakes (up to
//!   [`JournalOptions::max_batch`] records) is written in one `BEGIN IMMEDIATE` transaction,
//!   one fsync for all of them.
//! * WAL journal mode, `synchronous=FULL` (a commit survives power loss), `busy_timeout` 5 s.
//! * The file is created owner-only (0600 on Unix); a lock file beside it (`<file>-lock`) keeps
//!   a second writer process out. Readers ([`JournalReader`], `baton log`) need no lock.
//! * The schema version is `PRAGMA user_version`, the file's owner `PRAGMA application_id`
//!   ([`APPLICATION_ID`]); see [`schema`](self) for how files are recognised and migrated.
//!
//! On PostgreSQL the same records go through the same projection and recovery (one SQL text,
//! see `db`), one fenced transaction per batch (`docs/cluster.md`, "Every write transaction").
//!
//! `docs/semantics.md` ("Journal", and its "PostgreSQL store") states what is guaranteed after a
//! crash.
//!
//! # Layout
//!
//! | module | what it is for |
//! | --- | --- |
//! | `schema` | recognising, creating and migrating the file |
//! | `pg` | the PostgreSQL store: its connection, schema, fence and [`Epoch`] |
//! | `db` | the SQL layer both stores run: values, rows, one trait |
//! | `target` | [`JournalTarget`]: a file or a URL, its password never shown |
//! | `project` | what each record does to the tables |
//! | `writer` | the writer thread and group commit |
//! | `recovery` | what the journal says was unfinished |
//! | `query` | [`JournalReader`], [`JournalView`], [`Filter`] and the row types |
//! | `time` | [`Timestamp`] |

pub(crate) mod db;
mod error;
pub(crate) mod pg;
mod project;
mod query;
pub(crate) mod recovery;
mod schema;
mod target;
#[cfg(test)]
pub(crate) mod test_store;
#[cfg(test)]
mod tests;
mod time;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

pub use error::JournalError;
pub use pg::{Epoch, PgOptions};
pub(crate) use project::{Op, RotationIntent};
pub use query::{
    CompactionRow, EventRow, Filter, JournalReader, JournalView, RotationRow, SessionRow,
    WorkItemRow,
};
pub use schema::{APPLICATION_ID, EndReason, SCHEMA_VERSION, SessionState, WorkItemPlace};
pub use target::{JournalTarget, PgUrl};
pub use time::Timestamp;
pub use writer::JournalStats;

use crate::record::{FleetEvent, Subscribers};
use crate::vocab::SessionId;
use project::Write;
use writer::{Command, Shared, Store, Writer};

/// Called on the writer thread after each durable commit, with the label of every record it
/// held, before anyone waiting on the commit is answered. Labels are the event kinds
/// (`session_started`, `compaction`, `rotation`, ...; transitions as `transition_to_normal`,
/// `transition_to_compacting`, `transition_to_rotating`, `transition_to_closed`) and the
/// supervisor's steps (`work_item_submitted`, `spawning`, `rotation_started`,
/// `rotation_handoff`, `rotation_successor`, `rotation_done`, `released`). For metrics and for
/// tests that stop a process at a step boundary; a hook that blocks stalls the journal.
pub type CommitHook = Arc<dyn Fn(&[&'static str]) + Send + Sync>;

/// How a journal is opened.
#[derive(Clone)]
pub struct JournalOptions {
    /// Records written in one transaction at most (group commit). Default 4096.
    pub max_batch: usize,
    /// Cap on the database's size in bytes: a write that would grow it further fails with
    /// [`JournalError::DiskFull`], as a full disk does. Default: none.
    pub max_bytes: Option<u64>,
    /// See [`CommitHook`]. Default: none.
    pub on_commit: Option<CommitHook>,
    /// Check every page of an existing file when it is opened (`PRAGMA quick_check`), so that
    /// damage anywhere in it is refused ([`JournalError::Corrupt`]) before a supervisor
    /// recovers from it or writes to it. It reads the whole file: about 0.3 s per 250 MB from
    /// the page cache, longer from a cold disk. Default: on.
    pub check_at_open: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            max_bytes: None,
            on_commit: None,
            check_at_open: true,
        }
    }
}

impl std::fmt::Debug for JournalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalOptions")
            .field("max_batch", &self.max_batch)
            .field("max_bytes", &self.max_bytes)
            .field("on_commit", &self.on_commit.is_some())
            .field("check_at_open", &self.check_at_open)
            .finish()
    }
}

/// A handle on a journal. Cheap to clone; the writer thread stops (after committing everything
/// sent) when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer's channel; taken on drop to stop the writer.
    tx: Option<Sender<Command>>,
    /// The writer thread, joined on drop so that nothing sent is lost.
    thread: Option<JoinHandle<()>>,
    /// Failure flag and counters, shared with the writer.
    shared: Arc<Shared>,
    /// The file, or `None` in memory or on PostgreSQL.
    path: Option<PathBuf>,
    /// Where the journal is, for messages: the file, `<memory>`, or the database's URL without
    /// its password.
    place: PathBuf,
    /// Where the journal is, to open other connections to it; `None` in memory.
    target: Option<JournalTarget>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            // The last handle may be dropped by the writer itself (a hook or a read that held
            // one): it stops on its own once the channel is closed.
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("place", &self.inner.place)
            .field("failed", &self.failure().is_some())
            .finish()
    }
}

const MEMORY: &str = "<memory>";

impl Journal {
    /// Opens (or creates) the journal file at `path` with the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::open_with(path, JournalOptions::default())
    }

    /// Opens (or creates) the journal file at `path`. A new file is created owner-only. A file
    /// that is not SQLite, another program's database, a journal from a newer baton, a journal
    /// another process is writing, or (with [`JournalOptions::check_at_open`]) a journal damaged
    /// anywhere is refused with a typed error and left untouched.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        create_private(&path)?;
        let sql = |e: rusqlite::Error| JournalError::sqlite(&e, &path);
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        // Look before writing anything: a foreign or newer file must stay as it is.
        let header = schema::inspect(&conn, &path)?;
        let lock = lock(&path)?;
        if options.check_at_open && header != schema::Header::Empty {
            quick_check(&conn, &path)?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Sqlite {
                message: format!("{} cannot use WAL (journal_mode is {mode})", path.display()),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        schema::migrate(&mut conn, header, &path)?;
        cap_size(&conn, options.max_bytes, &path)?;
        Ok(Self::spawn(
            Store::Sqlite(conn),
            Some(JournalTarget::File(path.clone())),
            path,
            options,
            Some(lock),
        ))
    }

    /// Opens (or creates) the journal at `target`: a SQLite file as
    /// [`open_with`](Self::open_with) does, or a PostgreSQL database as
    /// [`open_postgres`](Self::open_postgres) does on a single host (no epoch).
    pub fn open_target(
        target: &JournalTarget,
        options: JournalOptions,
    ) -> Result<Self, JournalError> {
        match target {
            JournalTarget::File(path) => Self::open_with(path, options),
            JournalTarget::Postgres(url) => Self::open_postgres(url, options, PgOptions::default()),
        }
    }

    /// Opens the journal in the PostgreSQL database at `url`, creating or migrating its schema
    /// (in one transaction under an advisory lock: nodes starting together are safe). A
    /// database holding a newer schema, or tables of another program, is refused with a typed
    /// error and left untouched. [`JournalOptions::max_bytes`] and
    /// [`check_at_open`](JournalOptions::check_at_open) are SQLite's and ignored here.
    ///
    /// With [`PgOptions::epoch`] (a cluster node), every write transaction is fenced by the
    /// node's row in `baton_nodes` (gone: [`JournalError::Fenced`], and the journal fails), the
    /// rows it creates are owned by the epoch, and recovery reads only the epoch's rows.
    pub fn open_postgres(
        url: &PgUrl,
        options: JournalOptions,
        pg: PgOptions,
    ) -> Result<Self, JournalError> {
        let place = pg::place(url);
        let conn = pg::PgConn::connect(url, pg.epoch, true)?;
        pg::migrate(&conn, &place)?;
        Ok(Self::spawn(
            Store::Pg(Box::new(conn)),
            Some(JournalTarget::Postgres(url.clone())),
            place,
            options,
            None,
        ))
    }

    /// Takes over the unfinished work of the dead cluster node `dead`, in one fenced write
    /// transaction on the writer (after everything sent before is committed): removes the dead
    /// node's row from `baton_nodes` (which fences it), moves the ownership of its unfinished
    /// rows (work items not done or dead; sessions not closed, or closed and not released;
    /// rotations not done or failed) to this journal's epoch, and reads them back as a
    /// recovery state, as [`SupervisorBuilder::journal`](crate::supervisor::SupervisorBuilder::journal)
    /// reads one at a restart. Whether the dead node's lease has expired is the caller's
    /// decision. Needs a PostgreSQL journal with an epoch ([`JournalError::NotClustered`]
    /// otherwise); any other failure fails the journal, as a failed write does.
    pub fn adopt(&self, dead: Epoch) -> Result<Adopted, JournalError> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Command::Adopt {
            dead: dead.0,
            reply: tx,
        }) {
            return Err(JournalError::Closed);
        }
        rx.recv().unwrap_or(Err(JournalError::Closed)).map(Adopted)
    }

    /// A journal in memory, with the default options: the same records and queries, nothing
    /// durable. For tests, and for users who want the record without the file.
    pub fn in_memory() -> Result<Self, JournalError> {
        Self::in_memory_with(JournalOptions::default())
    }

    /// A journal in memory.
    pub fn in_memory_with(options: JournalOptions) -> Result<Self, JournalError> {
        let path = Path::new(MEMORY);
        let mut conn = Connection::open_in_memory().map_err(|e| JournalError::sqlite(&e, path))?;
        schema::migrate(&mut conn, schema::Header::Empty, path)?;
        cap_size(&conn, options.max_bytes, path)?;
        Ok(Self::spawn(
            Store::Sqlite(conn),
            None,
            PathBuf::from(MEMORY),
            options,
            None,
        ))
    }

    fn spawn(
        conn: Store,
        target: Option<JournalTarget>,
        place: PathBuf,
        options: JournalOptions,
        lock: Option<std::fs::File>,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            conn,
            path: place.clone(),
            shared: shared.clone(),
            on_commit: options.on_commit,
            max_batch: options.max_batch.max(1),
            _lock: lock,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("baton-journal".into())
            .spawn(move || writer.run(rx))
            .expect("spawn the journal writer thread");
        Self {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                shared,
                path: target
                    .as_ref()
                    .and_then(JournalTarget::file)
                    .map(Path::to_owned),
                place,
                target,
            }),
        }
    }

    /// The file, or `None` for a journal in memory or on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Where the journal is, for messages: the file, `<memory>`, or the PostgreSQL URL
    /// without its password.
    pub fn place(&self) -> &Path {
        &self.inner.place
    }

    /// Where the journal is, to open other connections to it (the server's own tables);
    /// `None` in memory.
    pub fn target(&self) -> Option<&JournalTarget> {
        self.inner.target.as_ref()
    }

    fn send(&self, cmd: Command) -> bool {
        self.inner
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Hands `event` to the writer and returns at once; it becomes durable with the next
    /// commit, and is then delivered to the subscribers of the event bus the journal serves
    /// (the supervisor's bus does this for every event it publishes).
    pub fn record(&self, event: &FleetEvent) {
        self.record_owned(event.clone());
    }

    /// [`record`](Self::record), without a copy. Should the writer be gone (it panicked), the
    /// event is delivered at once rather than lost to subscribers.
    pub(crate) fn record_owned(&self, event: FleetEvent) {
        let cmd = Command::Write {
            at: Timestamp::now().0,
            write: Write::Event(event),
            ack: None,
        };
        let unsent = match &self.inner.tx {
            Some(tx) => tx.send(cmd).err().map(|e| e.0),
            None => Some(cmd),
        };
        if let Some(Command::Write {
            write: Write::Event(event),
            ..
        }) = unsent
        {
            tracing::error!(
                "the journal's writer is gone; an event is delivered without being durable"
            );
            if let Some(subs) = self.inner.shared.deliver.lock().expect("lock").as_ref() {
                subs.deliver(event, crate::record::Stamp::Next);
            }
        }
    }

    /// From now on, every event the journal commits is delivered to `subscribers` (in commit
    /// order, after the commit and its hook). The event bus calls this when it is given the
    /// journal.
    pub(crate) fn deliver_to(&self, subscribers: Arc<Subscribers>) {
        *self.inner.shared.deliver.lock().expect("lock") = Some(subscribers);
    }

    /// Waits until everything sent before this call is durable (or the journal failed).
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Flush(tx)) {
            return Err(JournalError::Closed);
        }
        rx.await.unwrap_or(Err(JournalError::Closed))
    }

    /// Runs queries on the journal once everything sent before is committed, on the writer's
    /// own connection (so it works for a journal in memory too).
    pub async fn read<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(JournalView<'_>) -> Result<T, JournalError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let path = self.inner.place.clone();
        let read = Box::new(move |conn: &dyn db::Db| {
            let _ = tx.send(f(JournalView::new(conn, &path)));
        });
        if !self.send(Command::Read(read)) {
            return Err(JournalError::Closed);
        }
        rx.await.unwrap_or(Err(JournalError::Closed))
    }

    /// Like [`read`](Self::read), blocking the calling thread (for start-up, outside async
    /// code or briefly inside it).
    pub(crate) fn read_blocking<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn db::Db, &Path) -> Result<T, JournalError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let path = self.inner.place.clone();
        let read = Box::new(move |conn: &dyn db::Db| {
            let _ = tx.send(f(conn, &path));
        });
        if !self.send(Command::Read(read)) {
            return Err(JournalError::Closed);
        }
        rx.recv().unwrap_or(Err(JournalError::Closed))
    }

    /// Writes a supervisor step and waits until it is durable.
    pub(crate) async fn commit(&self, op: Op) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Write {
            at: Timestamp::now().0,
            write: Write::Op(op),
            ack: Some(tx),
        };
        if !self.send(cmd) {
            return Err(JournalError::Closed);
        }
        rx.await.unwrap_or(Err(JournalError::Closed))
    }

    /// Writes a supervisor step without waiting.
    pub(crate) fn note(&self, op: Op) {
        self.send(Command::Write {
            at: Timestamp::now().0,
            write: Write::Op(op),
            ack: None,
        });
    }

    /// The first session id above every id any record of the journal holds (sessions,
    /// rotations' old and new sessions, compactions, events, work items' holders), or 1 for an
    /// empty journal: give it to a runtime that numbers its sessions, so that no id of a
    /// session the journal knows (a resumed rotation's recorded successor included) is ever
    /// handed out again after a restart. Waits for everything sent before to be committed.
    pub fn next_session_id(&self) -> Result<SessionId, JournalError> {
        self.read_blocking(|conn, path| {
            let max: Option<i64> = conn
                .query_opt(
                    "SELECT MAX(m) FROM (
                        SELECT MAX(id) AS m FROM sessions
                        UNION ALL SELECT MAX(old_session) FROM rotations
                        UNION ALL SELECT MAX(new_session) FROM rotations
                        UNION ALL SELECT MAX(session) FROM compactions
                        UNION ALL SELECT MAX(session) FROM events
                        UNION ALL SELECT MAX(session) FROM work_items) AS ids",
                    &[],
                )
                .map_err(|e| conn.error(e, path))?
                .map(|r| r.get(0))
                .transpose()
                .map_err(|e| JournalError::BadRecord(e.message))?
                .flatten();
            Ok(SessionId(max.map_or(1, |m| (m as u64).saturating_add(1))))
        })
    }

    /// Commits and records written so far, and the time their transactions took.
    pub fn stats(&self) -> JournalStats {
        let c = &self.inner.shared.counters;
        JournalStats {
            commits: c.commits.load(std::sync::atomic::Ordering::Relaxed),
            records: c.records.load(std::sync::atomic::Ordering::Relaxed),
            commit_time: std::time::Duration::from_nanos(
                c.commit_nanos.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }

    /// From now on, `observer` is told of each durable commit: how long its transaction took
    /// (from `BEGIN` to the end of `COMMIT`, its fsync included) and how many records it held.
    /// For metrics (a commit latency histogram, batch sizes). It runs on the writer thread
    /// after the commit, before its events are delivered: it must be quick, and one that blocks
    /// stalls the journal. A later call replaces the observer.
    pub fn on_commit(&self, observer: impl Fn(std::time::Duration, usize) + Send + Sync + 'static) {
        *self.inner.shared.observer.lock().expect("lock") = Some(Arc::new(observer));
    }

    /// The failure that stopped the journal, if one did.
    pub fn failure(&self) -> Option<JournalError> {
        self.inner.shared.failure.lock().expect("lock").clone()
    }
}

/// The unfinished work of a dead cluster node, taken over by [`Journal::adopt`]: a recovery
/// state, as a restart reads one, of the rows whose ownership moved. Its rotation counter is
/// not the adopting node's (new rotations stay numbered from its own epoch).
#[derive(Debug, Clone)]
pub struct Adopted(pub(crate) recovery::RecoveryState);

impl Adopted {
    /// Work items taken over (none of them done or dead).
    pub fn work_items(&self) -> usize {
        self.0.items.len()
    }

    /// Sessions taken over that were live or rotating.
    pub fn sessions(&self) -> usize {
        self.0.sessions.len()
    }

    /// Rotations taken over that had not finished.
    pub fn rotations(&self) -> usize {
        self.0.rotations.len()
    }

    /// Whether there is nothing to recover.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Creates the file owner-only if it does not exist; warns when an existing one is readable by
/// others.
fn create_private(path: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                        "the journal is readable by other users");
                }
                Ok(())
            }
            Err(e) => Err(JournalError::Io {
                message: format!("cannot create {}: {e}", path.display()),
            }),
        }
    }
    #[cfg(not(unix))]
    {
        if !path.exists() {
            std::fs::File::create(path).map_err(|e| JournalError::Io {
                message: format!("cannot create {}: {e}", path.display()),
            })?;
        }
        Ok(())
    }
}

/// Takes the lock file beside the journal; fails when another process holds it.
///
/// A lock that is busy is tried again for a moment before giving up: when any thread of this
/// process forks (to run a command) just as a journal closes, the child holds a copy of the
/// lock's descriptor until it execs, which keeps the lock for a few milliseconds. A real second
/// writer holds it for good.
fn lock(path: &Path) -> Result<std::fs::File, JournalError> {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    let lock_path = PathBuf::from(name);
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let file = open.open(&lock_path).map_err(|e| JournalError::Io {
        message: format!("cannot create {}: {e}", lock_path.display()),
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::InUse {
                    path: path.to_owned(),
                    lock: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(JournalError::Io {
                    message: format!("cannot lock {}: {e}", lock_path.display()),
                });
            }
        }
    }
}

/// `PRAGMA quick_check`: every page of the file is read and its structure checked (not the
/// index contents, which `integrity_check` also compares, at about ten times the cost).
fn quick_check(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let sql = |e: rusqlite::Error| JournalError::sqlite(&e, path);
    let started = std::time::Instant::now();
    let mut stmt = conn.prepare("PRAGMA quick_check(10)").map_err(sql)?;
    let problems = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "journal checked");
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    tracing::error!(path = %path.display(), ?problems, "the journal is damaged");
    Err(JournalError::Corrupt {
        path: path.to_owned(),
        message: problems.join("; "),
    })
}

/// Applies [`JournalOptions::max_bytes`].
fn cap_size(conn: &Connection, max_bytes: Option<u64>, path: &Path) -> Result<(), JournalError> {
    let Some(max) = max_bytes else {
        return Ok(());
    };
    let sql = |e: rusqlite::Error| JournalError::sqlite(&e, path);
    let page: u64 = conn
        .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
        .map_err(sql)? as u64;
    conn.pragma_update(None, "max_page_count", (max / page).max(1) as i64)
        .map_err(sql)?;
    Ok(())
}

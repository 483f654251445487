//! The writer: one thread that owns the journal's write connection.
//!
//! Records arrive over one unbounded channel, so senders (session actors, the supervisor) never
//! wait on SQLite. The thread takes the first record, drains whatever else is already queued
//! (up to `max_batch`), and writes them all in one `BEGIN IMMEDIATE` transaction: one commit,
//! one fsync, however many records (group commit). Each record runs inside a savepoint, so a
//! record that fails on its own (a statement SQLite refused for what it held, a bad record) is
//! dropped without losing the others; any other failure is one of the journal itself (disk full,
//! I/O error, damage, ...): it rolls the whole batch back and stops the journal, so that what is
//! on disk stays a prefix of what was sent, in order.
//!
//! After a commit (and the commit hook, if any), the batch's events are delivered to the event
//! bus's subscribers, in order; only then are the writers waiting on the batch (a rotation
//! step, a flush) answered.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::db::{Db, DbError, vals};
use super::pg::PgConn;
use super::project::{self, Write};
use super::recovery::{self, RecoveryState};
use super::{CommitHook, JournalError};
use crate::record::{FleetEvent, Stamp, Subscribers};

/// Where a waiting writer is answered.
pub(crate) type Ack = oneshot::Sender<Result<(), JournalError>>;

/// A read run on the writer's connection.
pub(crate) type Read = Box<dyn FnOnce(&dyn Db) + Send>;

/// What the writer thread is asked to do.
pub(crate) enum Command {
    /// Write a record at time `at`; answer `ack`, if any, once it is durable.
    Write {
        /// Milliseconds since the epoch, taken when the record was sent.
        at: i64,
        /// The record.
        write: Write,
        /// Who waits for it.
        ack: Option<Ack>,
    },
    /// Answer once everything sent before is durable.
    Flush(Ack),
    /// Run a read on the write connection, after everything sent before is committed.
    Read(Read),
    /// Take over a dead node's unfinished rows (PostgreSQL with an epoch), after everything
    /// sent before is committed.
    Adopt {
        /// The dead node's epoch.
        dead: i64,
        /// Where the adopted state goes.
        reply: std::sync::mpsc::Sender<Result<RecoveryState, JournalError>>,
    },
}

/// The writer's connection, to either store.
pub(crate) enum Store {
    /// A SQLite file (or memory).
    Sqlite(Connection),
    /// A PostgreSQL database.
    Pg(Box<PgConn>),
}

impl Store {
    fn db(&self) -> &dyn Db {
        match self {
            Self::Sqlite(c) => c,
            Self::Pg(c) => c.as_ref(),
        }
    }
}

/// Counters, shared with every handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Time spent in committed transactions, in nanoseconds.
    pub commit_nanos: AtomicU64,
}

/// Told of each durable commit: how long its transaction took (from `BEGIN` to the end of
/// `COMMIT`, its fsync included) and how many records it held.
pub(crate) type CommitObserver = Arc<dyn Fn(std::time::Duration, usize) + Send + Sync>;

/// State shared between the writer thread and the handles.
#[derive(Default)]
pub(crate) struct Shared {
    /// The failure that stopped the journal, once one did.
    pub failure: Mutex<Option<JournalError>>,
    /// What was written so far.
    pub counters: Counters,
    /// Where committed events are delivered (the event bus's subscribers), if anywhere.
    pub deliver: Mutex<Option<Arc<Subscribers>>>,
    /// Who is told of each commit's duration and size (see `Journal::on_commit`), if anyone.
    pub observer: Mutex<Option<CommitObserver>>,
}

/// The writer thread's state.
pub(crate) struct Writer {
    /// The write connection, owned by this thread alone.
    pub conn: Store,
    /// The file (or `<memory>`, or the database's URL without its password), for error
    /// messages.
    pub path: PathBuf,
    /// Failure flag and counters.
    pub shared: Arc<Shared>,
    /// Called after each durable commit, before waiters are answered.
    pub on_commit: Option<CommitHook>,
    /// Records per transaction, at most.
    pub max_batch: usize,
    /// Held for the writer's life: the lock file that keeps other processes out.
    pub _lock: Option<std::fs::File>,
}

/// Records gathered for one transaction.
#[derive(Default)]
struct Batch {
    /// Records, in arrival order.
    writes: Vec<(i64, Write, Option<Ack>)>,
    /// Flushes waiting for this batch.
    flushes: Vec<Ack>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.flushes.is_empty()
    }
}

impl Writer {
    /// Runs until every sender is gone, then commits what is left and returns.
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        let mut batch = Batch::default();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(cmd) = next.take() {
                taken += 1;
                match cmd {
                    Command::Write { at, write, ack } => batch.writes.push((at, write, ack)),
                    Command::Flush(ack) => batch.flushes.push(ack),
                    Command::Read(f) => {
                        self.commit(&mut batch);
                        f(self.conn.db());
                    }
                    Command::Adopt { dead, reply } => {
                        self.commit(&mut batch);
                        let _ = reply.send(self.adopt(dead));
                    }
                }
                if taken < self.max_batch {
                    // Empty or disconnected: commit what we have.
                    next = rx.try_recv().ok();
                }
            }
            self.commit(&mut batch);
        }
        tracing::debug!(path = %self.path.display(), "journal writer stopped");
    }

    /// Writes the batch in one transaction, delivers its events to the bus's subscribers, and
    /// answers everyone waiting on it, in that order: an event reaches subscribers only once
    /// it is durable (or once the journal has failed, see below), and a waiter answered has
    /// had the events committed before it delivered.
    fn commit(&mut self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let Batch { writes, flushes } = std::mem::take(batch);
        let failed = self.shared.failure.lock().expect("lock").clone();
        if let Some(failure) = failed {
            // The journal refuses writes: the fleet goes on without durability.
            let refused = JournalError::Failed(Box::new(failure));
            let outcomes = vec![Err(refused.clone()); writes.len()];
            self.answer(writes, outcomes, flushes, Err(refused), false);
            return;
        }
        if writes.is_empty() {
            // Everything before is committed already.
            self.answer(writes, Vec::new(), flushes, Ok(()), true);
            return;
        }
        let began = std::time::Instant::now();
        match self.write_all(&writes) {
            Ok(outcomes) => {
                let took = began.elapsed();
                let c = &self.shared.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.records.fetch_add(writes.len() as u64, Ordering::Relaxed);
                c.commit_nanos.fetch_add(
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                let observer = self.shared.observer.lock().expect("lock").clone();
                if let Some(observe) = observer {
                    observe(took, writes.len());
                }
                if let Some(hook) = &self.on_commit {
                    let labels: Vec<&'static str> =
                        writes.iter().map(|(_, w, _)| w.label()).collect();
                    hook(&labels);
                }
                for ((_, write, ack), outcome) in writes.iter().zip(&outcomes) {
                    if let (None, Err(e)) = (ack, outcome) {
                        tracing::error!(error = %e, record = write.label(), "journal record dropped");
                    }
                }
                self.answer(writes, outcomes, flushes, Ok(()), true);
            }
            Err(fatal) => {
                tracing::error!(error = %fatal, path = %self.path.display(), records = writes.len(),
                    "journal write failed; the batch was rolled back and the journal refuses further writes");
                *self.shared.failure.lock().expect("lock") = Some(fatal.clone());
                // Subscribers learn of the failure before any event it left undurable.
                self.deliver(
                    FleetEvent::JournalFailed {
                        error: fatal.to_string(),
                    },
                    Stamp::Next,
                );
                let outcomes = vec![Err(fatal.clone()); writes.len()];
                self.answer(writes, outcomes, flushes, Err(fatal), false);
            }
        }
    }

    /// Delivers the batch's events, then answers its waiters and flushes. `durable`: the
    /// journal works (a record's `Ok(Some(seq))` is its row in the log); otherwise its events
    /// are delivered unlogged, numbered after the last one.
    fn answer(
        &self,
        writes: Vec<(i64, Write, Option<Ack>)>,
        outcomes: Vec<Result<Option<u64>, JournalError>>,
        flushes: Vec<Ack>,
        flushed: Result<(), JournalError>,
        durable: bool,
    ) {
        let mut acks = Vec::new();
        for ((at, write, ack), outcome) in writes.into_iter().zip(outcomes) {
            if let Write::Event(event) = write {
                let stamp = match (&outcome, durable) {
                    (Ok(Some(seq)), _) => Stamp::Logged { seq: *seq, at },
                    (_, false) => Stamp::Next,
                    (_, true) => Stamp::Unlogged,
                };
                self.deliver(event, stamp);
            }
            if let Some(ack) = ack {
                acks.push((ack, outcome.map(|_| ())));
            }
        }
        for (ack, outcome) in acks {
            let _ = ack.send(outcome);
        }
        for ack in flushes {
            let _ = ack.send(flushed.clone());
        }
    }

    fn deliver(&self, event: FleetEvent, stamp: Stamp) {
        if let Some(subs) = self.shared.deliver.lock().expect("lock").as_ref() {
            subs.deliver(event, stamp);
        }
    }

    /// Applies every record in one transaction. `Ok` holds each record's own outcome (a record
    /// that failed alone was rolled back to its savepoint), with the log row an event got;
    /// `Err` is a failure of the whole transaction, which was rolled back.
    #[allow(clippy::type_complexity)]
    fn write_all(
        &mut self,
        writes: &[(i64, Write, Option<Ack>)],
    ) -> Result<Vec<Result<Option<u64>, JournalError>>, JournalError> {
        let path = self.path.clone();
        let conn = match &mut self.conn {
            Store::Pg(pg) => return write_pg(pg, writes, &path),
            Store::Sqlite(conn) => conn,
        };
        let sql = |e: rusqlite::Error| JournalError::sqlite(&e, &path);
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for (at, write, _) in writes {
            let sp = tx.savepoint().map_err(sql)?;
            match project::apply(&*sp, *at, write, &path) {
                Ok(seq) => {
                    sp.commit().map_err(sql)?;
                    outcomes.push(Ok(seq));
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    // Dropping the savepoint rolls this record back and releases it.
                    sp.finish().map_err(sql)?;
                    outcomes.push(Err(e));
                }
            }
        }
        tx.commit().map_err(sql)?;
        Ok(outcomes)
    }

    /// `Journal::adopt` on the writer thread. A failure (the fence included) fails the journal
    /// as a failed write does.
    fn adopt(&mut self, dead: i64) -> Result<RecoveryState, JournalError> {
        if let Some(failure) = self.shared.failure.lock().expect("lock").clone() {
            return Err(JournalError::Failed(Box::new(failure)));
        }
        let Store::Pg(pg) = &self.conn else {
            return Err(JournalError::NotClustered("adopting a dead node's work"));
        };
        if pg.epoch().is_none() {
            return Err(JournalError::NotClustered("adopting a dead node's work"));
        }
        match in_pg_transaction(pg, &self.path, |pg| adopt_in(pg, dead, &self.path)) {
            Ok(state) => Ok(state),
            Err(fatal) => {
                tracing::error!(error = %fatal, path = %self.path.display(), dead,
                    "adopting a dead node's work failed; the journal refuses further writes");
                *self.shared.failure.lock().expect("lock") = Some(fatal.clone());
                self.deliver(
                    FleetEvent::JournalFailed {
                        error: fatal.to_string(),
                    },
                    Stamp::Next,
                );
                Err(fatal)
            }
        }
    }
}

/// Runs `f` in one fenced PostgreSQL transaction: `BEGIN`, the fence, `f`, `COMMIT` (with
/// `NOTIFY baton_events` if events were written); rolled back on any failure.
fn in_pg_transaction<T>(
    pg: &PgConn,
    path: &Path,
    f: impl FnOnce(&PgConn) -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    let err = |e: DbError| pg.error(e, path);
    pg.begin().map_err(err)?;
    let result = pg.fence(path).and_then(|()| f(pg));
    match result {
        Ok(t) => match pg.commit() {
            Ok(()) => Ok(t),
            Err(e) => {
                pg.rollback();
                Err(err(e))
            }
        },
        Err(e) => {
            pg.rollback();
            Err(e)
        }
    }
}

/// [`Writer::write_all`] on PostgreSQL: the same records and savepoints, in one fenced
/// transaction (`docs/cluster.md`, "Every write transaction").
#[allow(clippy::type_complexity)]
fn write_pg(
    pg: &PgConn,
    writes: &[(i64, Write, Option<Ack>)],
    path: &Path,
) -> Result<Vec<Result<Option<u64>, JournalError>>, JournalError> {
    in_pg_transaction(pg, path, |pg| {
        let err = |e: DbError| pg.error(e, path);
        let mut outcomes = Vec::with_capacity(writes.len());
        for (at, write, _) in writes {
            let locked = pg.savepoint().map_err(err)?;
            match project::apply(pg, *at, write, path) {
                Ok(seq) => {
                    pg.release().map_err(err)?;
                    outcomes.push(Ok(seq));
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    pg.rollback_to(locked).map_err(err)?;
                    outcomes.push(Err(e));
                }
            }
        }
        Ok(outcomes)
    })
}

/// In the adopting transaction: removes the dead node's row (which fences it), reads its
/// unfinished rows as a recovery state, and moves their ownership to this node.
fn adopt_in(pg: &PgConn, dead: i64, path: &Path) -> Result<RecoveryState, JournalError> {
    let db: &dyn Db = pg;
    let err = |e: DbError| pg.error(e, path);
    let mine = pg.epoch().unwrap_or_default();
    db.execute("DELETE FROM baton_nodes WHERE epoch = ?1", &vals![dead])
        .map_err(err)?;
    let mut state = recovery::load_owned_by(db, path, Some(dead))?;
    state.items.retain(|i| {
        !matches!(
            i.place,
            recovery::StoredPlace::Done | recovery::StoredPlace::Dead
        )
    });
    for sql in [
        "UPDATE work_items SET owner = ?2 WHERE owner = ?1 AND place NOT IN ('done', 'dead')",
        "UPDATE sessions SET owner = ?2 WHERE owner = ?1 AND (state != 'closed' OR released = 0)",
        "UPDATE rotations SET owner = ?2 WHERE owner = ?1 AND step NOT IN ('done', 'failed')",
    ] {
        db.execute(sql, &vals![dead, mine]).map_err(err)?;
    }
    // Every transaction of the dead node has committed (the `DELETE` waited for each one's
    // key-share lock on its row), so its last event is at or below the `max(seq)` read now:
    // `last_seq`, which the history checker verifies. Last, so that no other node's events
    // wait on this transaction for longer than the insert.
    db.execute(
        "INSERT INTO baton_adoptions (dead, by_epoch, last_seq, at) \
         VALUES (?1, ?2, (SELECT coalesce(max(seq), 0) FROM events), \
                 (extract(epoch from clock_timestamp()) * 1000)::bigint) \
         ON CONFLICT (dead) DO NOTHING",
        &vals![dead, mine],
    )
    .map_err(err)?;
    tracing::info!(
        dead,
        epoch = mine,
        work_items = state.items.len(),
        sessions = state.sessions.len(),
        rotations = state.rotations.len(),
        "adopted a dead node's work"
    );
    Ok(state)
}

/// Counters of a journal: how well group commit is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct JournalStats {
    /// Transactions committed (each one fsync in a file journal).
    pub commits: u64,
    /// Records written.
    pub records: u64,
    /// Time spent in committed transactions (each from `BEGIN` to the end of `COMMIT`, its
    /// fsync included): divided by `commits`, the mean commit latency.
    pub commit_time: std::time::Duration,
}

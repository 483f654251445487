//! What the journal says was unfinished: the state a restarted supervisor recovers from.
//!
//! Loaded once, when a supervisor is given a journal, before it accepts any message. The
//! supervisor decides what to do with it (see `supervisor/recovery.rs`); this module only reads.

use std::path::Path;
use std::sync::Arc;

use super::JournalError;
use super::db::{Db, Val};
use super::project::RotationIntent;
use super::query::{JournalView, json, json_opt};
use crate::machine::Phase;
use crate::record::{RotationRecord, RotationStep};
use crate::usage::Usage;
use crate::vocab::{Handoff, SessionId, SpawnKey, WorkItem, WorkItemId};

/// Where the journal last saw a work item (the name the supervisor's recovery uses).
pub(crate) use super::schema::WorkItemPlace as StoredPlace;

/// A work item as the journal holds it.
#[derive(Debug, Clone)]
pub(crate) struct StoredItem {
    /// The item.
    pub item: WorkItem,
    /// Where it was.
    pub place: StoredPlace,
    /// The session holding it (live, rotating) or that held it last (done).
    pub session: Option<SessionId>,
    /// Crashes and failed starts, as of its last start.
    pub attempts: u32,
    /// Spawns issued for it (the next spawn key is derived from this).
    pub spawns: u32,
    /// A spawn was issued for it whose session was never recorded: the key, to reuse.
    pub pending_key: Option<SpawnKey>,
    /// The handoff of its last rotation.
    pub handoff: Option<Handoff>,
    /// Why it was requeued or buried last.
    pub reason: Option<String>,
}

/// A rotation that had not finished.
#[derive(Debug, Clone)]
pub(crate) struct OpenRotation {
    /// What its first step recorded.
    pub intent: RotationIntent,
    /// The last step recorded.
    pub step: RotationStep,
    /// The handoff, from step 2 on.
    pub handoff: Option<Handoff>,
    /// The successor, from step 3 on.
    pub successor: Option<SessionId>,
}

/// A session the journal still counted as live or rotating.
#[derive(Debug, Clone)]
pub(crate) struct OpenSession {
    /// The session.
    pub id: SessionId,
    /// The item it held.
    pub work_item: WorkItemId,
    /// Its agent type.
    pub agent_type: Arc<str>,
    /// Its last recorded phase ([`Phase::Compacting`] means a compaction was in flight).
    pub phase: Phase,
    /// The reading its compaction under way started from: set when the session enters
    /// Compacting, cleared when a compaction record arrives. In [`Phase::Compacting`], a
    /// compaction that a crash cut short.
    pub compacting_from: Option<Usage>,
}

/// Everything recovery needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecoveryState {
    /// Every work item, in queue order for the queued ones.
    pub items: Vec<StoredItem>,
    /// Unfinished rotations, by id.
    pub rotations: Vec<OpenRotation>,
    /// Sessions not closed, by id.
    pub sessions: Vec<OpenSession>,
    /// Sessions recorded as closed whose close the runtime never confirmed (a crash cut it
    /// short): to close again.
    pub unreleased: Vec<SessionId>,
    /// The highest rotation id used: new rotations are numbered after it.
    pub last_rotation: u64,
    /// Records of rotations that finished (step 4 is durable) but whose `rotation` event a
    /// crash cut off before it was logged: to publish again, so that each rotation is in the log
    /// once.
    pub unannounced: Vec<RotationRecord>,
}

impl RecoveryState {
    /// Whether there is nothing to recover.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
            && self.rotations.is_empty()
            && self.sessions.is_empty()
            && self.unreleased.is_empty()
            && self.unannounced.is_empty()
    }
}

/// Reads the recovery state. A row that does not read as its type is refused with
/// [`JournalError::BadRow`], naming its table, id and column: a supervisor does not start from a
/// journal it cannot read.
///
/// On a connection with a node epoch (PostgreSQL in a cluster) only the rows that epoch owns
/// are read, and rotation ids continue from `epoch << 32` (`docs/cluster.md`, "Ids across
/// nodes"): a new epoch recovers nothing.
pub(crate) fn load(conn: &dyn Db, path: &Path) -> Result<RecoveryState, JournalError> {
    let mut state = load_owned_by(conn, path, conn.epoch())?;
    state.last_rotation = last_rotation(conn, path)?;
    Ok(state)
}

/// The highest rotation id this connection's node has used: of every rotation on a single
/// host; from `epoch << 32` up to the next epoch's range in a cluster.
fn last_rotation(conn: &dyn Db, path: &Path) -> Result<u64, JournalError> {
    let (sql, params) = match conn.epoch() {
        None => ("SELECT coalesce(max(id), 0) FROM rotations", Vec::new()),
        Some(e) => (
            "SELECT coalesce(max(id), ?1) FROM rotations WHERE id >= ?1 AND id < ?2",
            vec![Val::Int(e << 32), Val::Int((e + 1) << 32)],
        ),
    };
    let view = JournalView::new(conn, path);
    let last = view.rows("rotations", sql, params, &mut |r| r.get::<i64>(0))?;
    Ok(last.first().copied().unwrap_or_default() as u64)
}

/// Reads the recovery state of the rows `owner` owns (`None`: of every row). Its
/// `last_rotation` is left at 0.
pub(crate) fn load_owned_by(
    conn: &dyn Db,
    path: &Path,
    owner: Option<i64>,
) -> Result<RecoveryState, JournalError> {
    let view = JournalView::new(conn, path);
    // `?1` is the owner, when there is one: the same clause for every table.
    let (mine, params) = match owner {
        Some(e) => ("owner = ?1", vec![Val::Int(e)]),
        None => ("1 = 1", Vec::new()),
    };
    let state = RecoveryState {
        items: view.rows(
            "work_items",
            &format!(
                "SELECT id, agent_type, text, place, session, attempts, spawns, pending_spawn_key,
                        handoff, reason
                 FROM work_items WHERE {mine} ORDER BY queue_seq, id"
            ),
            params.clone(),
            &mut |r| {
                Ok(StoredItem {
                    item: WorkItem {
                        id: WorkItemId(r.get::<i64>(0)? as u64),
                        agent_type: r.get::<String>(1)?.into(),
                        text: r.get(2)?,
                    },
                    place: r.get(3)?,
                    session: r.get::<Option<i64>>(4)?.map(|s| SessionId(s as u64)),
                    attempts: r.get(5)?,
                    spawns: r.get(6)?,
                    pending_key: r.get::<Option<i64>>(7)?.map(|k| SpawnKey(k as u64)),
                    handoff: json_opt(r, 8)?,
                    reason: r.get(9)?,
                })
            },
        )?,
        rotations: view.rows(
            "rotations",
            &format!(
                "SELECT id, request, step, handoff, new_session FROM rotations
                 WHERE step IN ('intent', 'handoff', 'spawned') AND {mine} ORDER BY id"
            ),
            params.clone(),
            &mut |r| {
                Ok(OpenRotation {
                    intent: json(r, 1)?,
                    step: r.get(2)?,
                    handoff: json_opt(r, 3)?,
                    successor: r.get::<Option<i64>>(4)?.map(|s| SessionId(s as u64)),
                })
            },
        )?,
        sessions: view.rows(
            "sessions",
            &format!(
                "SELECT id, work_item, agent_type, phase, compacting_from FROM sessions
                 WHERE state != 'closed' AND {mine} ORDER BY id"
            ),
            params.clone(),
            &mut |r| {
                Ok(OpenSession {
                    id: SessionId(r.get::<i64>(0)? as u64),
                    work_item: WorkItemId(r.get::<i64>(1)? as u64),
                    agent_type: r.get::<String>(2)?.into(),
                    phase: r.get(3)?,
                    compacting_from: json_opt(r, 4)?,
                })
            },
        )?,
        unreleased: view.rows(
            "sessions",
            &format!(
                "SELECT id FROM sessions WHERE state = 'closed' AND released = 0 AND {mine}
                 ORDER BY id"
            ),
            params.clone(),
            &mut |r| Ok(SessionId(r.get::<i64>(0)? as u64)),
        )?,
        last_rotation: 0,
        unannounced: view.rows(
            "rotations",
            &format!(
                "SELECT id, record FROM rotations AS r
                 WHERE step = 'done' AND record IS NOT NULL AND {mine}
                   AND NOT EXISTS (SELECT 1 FROM events WHERE dedup = 'rotation:' || r.id)
                 ORDER BY id"
            ),
            params,
            &mut |r| json(r, 1),
        )?,
    };
    Ok(state)
}

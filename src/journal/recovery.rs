//! What the journal says was unfinished: the state a restarted supervisor recovers from.
//!
//! Loaded once, when a supervisor is given a journal, before it accepts any message. The
//! supervisor decides what to do with it (see `supervisor/recovery.rs`); this module only reads.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::JournalError;
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
pub(crate) fn load(conn: &Connection, path: &Path) -> Result<RecoveryState, JournalError> {
    let view = JournalView::new(conn, path);
    let mut state = RecoveryState {
        items: view.rows(
            "work_items",
            "SELECT id, agent_type, text, place, session, attempts, spawns, pending_spawn_key,
                    handoff, reason
             FROM work_items ORDER BY queue_seq, id",
            Vec::new(),
            &mut |r| {
                Ok(StoredItem {
                    item: WorkItem {
                        id: WorkItemId(r.get::<_, i64>(0)? as u64),
                        agent_type: r.get::<_, String>(1)?.into(),
                        text: r.get(2)?,
                    },
                    place: r.get(3)?,
                    session: r.get::<_, Option<i64>>(4)?.map(|s| SessionId(s as u64)),
                    attempts: r.get(5)?,
                    spawns: r.get(6)?,
                    pending_key: r.get::<_, Option<i64>>(7)?.map(|k| SpawnKey(k as u64)),
                    handoff: json_opt(r, 8)?,
                    reason: r.get(9)?,
                })
            },
        )?,
        rotations: view.rows(
            "rotations",
            "SELECT id, request, step, handoff, new_session FROM rotations
             WHERE step IN ('intent', 'handoff', 'spawned') ORDER BY id",
            Vec::new(),
            &mut |r| {
                Ok(OpenRotation {
                    intent: json(r, 1)?,
                    step: r.get(2)?,
                    handoff: json_opt(r, 3)?,
                    successor: r.get::<_, Option<i64>>(4)?.map(|s| SessionId(s as u64)),
                })
            },
        )?,
        sessions: view.rows(
            "sessions",
            "SELECT id, work_item, agent_type, phase, compacting_from FROM sessions
             WHERE state != 'closed' ORDER BY id",
            Vec::new(),
            &mut |r| {
                Ok(OpenSession {
                    id: SessionId(r.get::<_, i64>(0)? as u64),
                    work_item: WorkItemId(r.get::<_, i64>(1)? as u64),
                    agent_type: r.get::<_, String>(2)?.into(),
                    phase: r.get(3)?,
                    compacting_from: json_opt(r, 4)?,
                })
            },
        )?,
        unreleased: view.rows(
            "sessions",
            "SELECT id FROM sessions WHERE state = 'closed' AND released = 0 ORDER BY id",
            Vec::new(),
            &mut |r| Ok(SessionId(r.get::<_, i64>(0)? as u64)),
        )?,
        last_rotation: 0,
        unannounced: view.rows(
            "rotations",
            "SELECT id, record FROM rotations AS r
             WHERE step = 'done' AND record IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM events WHERE dedup = 'rotation:' || r.id)
             ORDER BY id",
            Vec::new(),
            &mut |r| json(r, 1),
        )?,
    };
    state.last_rotation = conn
        .query_row("SELECT coalesce(max(id), 0) FROM rotations", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| JournalError::sqlite(&e, path))? as u64;
    Ok(state)
}

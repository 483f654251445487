//! What each record does to the journal's tables.
//!
//! The journal is written from two sources through one ordered channel: every [`FleetEvent`]
//! published on the event bus, and the supervisor's own steps ([`Op`]: a submitted work item, a
//! spawn about to be made, the steps of a rotation). Each record is applied in the writer's
//! transaction: an `events` row, plus what the record changes in `work_items`, `sessions`,
//! `rotations` and `compactions`. The tables are therefore a projection of the event log, always
//! consistent with it, and a crash leaves both at the same prefix.
//!
//! Every application is idempotent where a record can legitimately arrive twice: a rotation step
//! only moves a rotation forward (`WHERE step IN (...)`), and the rotation's completion event has
//! a unique `dedup` key, so a record published twice (recovery publishes the record of a done
//! rotation whose event a crash cut off) makes one row.
//!
//! The log's order is the order in which events reach subscribers: every `events` row of a
//! published event is added when that event is committed, never earlier, so the `seq` an event
//! is delivered with ([`Sequenced`](crate::record::Sequenced)) rises along the stream. (A
//! rotation's step 4 therefore stores its record in `rotations` only; its `rotation` event row
//! comes with the record published on the bus right after.)

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::JournalError;
use super::db::{Db, DbError, RowError, vals};
use super::schema::EndReason;
use crate::machine::{EventKind, Phase};
use crate::policy::RotationReason;
use crate::record::{FleetEvent, RecoveryOutcome, RotationId, RotationRecord, RotationStep};
use crate::usage::Usage;
use crate::vocab::{Handoff, SessionId, SpawnKey, WorkItem, WorkItemId};

/// A step of the supervisor's, written through the journal (and, for rotation steps, awaited).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// A work item was accepted: it is queued.
    Submitted(WorkItem),
    /// A session is about to be spawned for a queued item with this key.
    Spawning {
        /// The item.
        work_item: WorkItemId,
        /// Its spawn count so far, this one included.
        n: u32,
        /// The key the spawn uses.
        key: SpawnKey,
        /// Crashes and failed starts so far.
        attempts: u32,
    },
    /// Rotation step 1: the rotation exists, the old session and the item are rotating.
    RotationIntent(RotationIntent),
    /// Rotation step 2: the handoff the successor will start from.
    RotationHandoff {
        /// The rotation.
        rotation: RotationId,
        /// The handoff.
        handoff: Handoff,
    },
    /// Rotation step 3: the successor the keyed spawn returned.
    RotationSuccessor {
        /// The rotation.
        rotation: RotationId,
        /// The successor.
        session: SessionId,
    },
    /// Rotation step 4: the old session is closed, the successor holds the item, and the
    /// rotation's record is stored in `rotations` (its event row comes with the published
    /// record).
    RotationDone {
        /// The record (the successor is `record.new_session`).
        record: RotationRecord,
        /// The handoff the successor started from.
        handoff: Handoff,
    },
    /// The runtime confirmed that a session is closed (or no longer knows it): recovery need
    /// not close it again.
    Released {
        /// The session.
        session: SessionId,
    },
    /// A start gave up on the session its spawn returned (its assign failed, or a shutdown
    /// began): the session is recorded, closed, and is closed at the runtime next, so its item's
    /// spawn key is no longer pending. A restart closes the session again if that close was cut
    /// short, and never reuses the key (which would hand back this closed session).
    SpawnAbandoned {
        /// The item the start was for.
        work_item: WorkItemId,
        /// The session the spawn returned.
        session: SessionId,
    },
}

/// What a rotation's first step records: enough to resume it after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RotationIntent {
    /// The rotation.
    pub rotation: RotationId,
    /// The work item that moves.
    pub work_item: WorkItemId,
    /// The session being replaced.
    pub old_session: SessionId,
    /// The agent type of both.
    pub agent_type: Arc<str>,
    /// Why.
    pub reason: RotationReason,
    /// The old session's latest reading.
    pub before: Option<Usage>,
    /// Compactions the old session did.
    pub compactions: u32,
    /// The item's spawn count, this spawn included.
    pub spawn_n: u32,
    /// The key the successor's spawn uses: the same key finds the same successor.
    pub spawn_key: SpawnKey,
}

/// One record for the writer: a published event or a supervisor step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    /// A published event.
    Event(FleetEvent),
    /// A supervisor step.
    Op(Op),
}

impl Write {
    /// The record's name for the commit hook (`on_commit`).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Write::Event(FleetEvent::Transition(t)) => match t.to {
                Phase::Normal => "transition_to_normal",
                Phase::Compacting => "transition_to_compacting",
                Phase::Rotating => "transition_to_rotating",
                Phase::Closed => "transition_to_closed",
            },
            Write::Event(e) => event_kind(e),
            Write::Op(Op::Submitted(_)) => "work_item_submitted",
            Write::Op(Op::Spawning { .. }) => "spawning",
            Write::Op(Op::RotationIntent(_)) => "rotation_started",
            Write::Op(Op::RotationHandoff { .. }) => "rotation_handoff",
            Write::Op(Op::RotationSuccessor { .. }) => "rotation_successor",
            Write::Op(Op::RotationDone { .. }) => "rotation_done",
            Write::Op(Op::Released { .. }) => "released",
            Write::Op(Op::SpawnAbandoned { .. }) => "spawn_abandoned",
        }
    }
}

/// The `kind` stored for an event: its serde tag.
pub(crate) fn event_kind(e: &FleetEvent) -> &'static str {
    match e {
        FleetEvent::SessionStarted { .. } => "session_started",
        FleetEvent::Transition(_) => "transition",
        FleetEvent::Compaction(_) => "compaction",
        FleetEvent::Rotation(_) => "rotation",
        FleetEvent::Crashed { .. } => "crashed",
        FleetEvent::Rejected { .. } => "rejected",
        FleetEvent::WorkItemDone { .. } => "work_item_done",
        FleetEvent::WorkItemRequeued { .. } => "work_item_requeued",
        FleetEvent::DeadLetter { .. } => "dead_letter",
        FleetEvent::AgentTypeHalted { .. } => "agent_type_halted",
        FleetEvent::RuntimeWarning { .. } => "runtime_warning",
        FleetEvent::Recovered { .. } => "recovered",
        FleetEvent::JournalFailed { .. } => "journal_failed",
    }
}

/// Ids as SQLite stores them: the `u64` bit pattern as `i64`.
pub(crate) fn sql_id(v: u64) -> i64 {
    v as i64
}

/// Applies one record at time `at` (milliseconds since the epoch). For an event, answers the
/// `seq` of the log row it added (`None` when it added none: a duplicate of a logged event).
pub(crate) fn apply(
    conn: &dyn Db,
    at: i64,
    write: &Write,
    path: &Path,
) -> Result<Option<u64>, JournalError> {
    let r = match write {
        Write::Event(e) => apply_event(conn, at, e),
        Write::Op(op) => apply_op(conn, at, op).map(|()| None),
    };
    r.map_err(|f| match f {
        // Not the database's own failure: a stored value that does not read back as it should.
        Fault::Sql(DbError::Sqlite(e)) if e.sqlite_error_code().is_none() => {
            JournalError::BadRecord(e.to_string())
        }
        Fault::Sql(e) => conn.error(e, path),
        Fault::Json(e) => JournalError::BadRecord(e.to_string()),
        Fault::Invalid(m) => JournalError::BadRecord(m),
    })
}

/// Why applying a record failed, before it is named with the journal's path.
enum Fault {
    /// The database refused a statement.
    Sql(DbError),
    /// A record could not be encoded.
    Json(serde_json::Error),
    /// The record makes no sense against what is stored (a completion without an intent).
    Invalid(String),
}

impl From<DbError> for Fault {
    fn from(e: DbError) -> Self {
        Self::Sql(e)
    }
}

impl From<RowError> for Fault {
    fn from(e: RowError) -> Self {
        Self::Invalid(format!("column {}: {}", e.column, e.message))
    }
}

impl From<serde_json::Error> for Fault {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

type Applied = Result<(), Fault>;

/// Adds an `events` row and answers its `seq`; `None` when one with the same `dedup` key
/// exists already.
#[allow(clippy::too_many_arguments)]
fn insert_event(
    conn: &dyn Db,
    at: i64,
    kind: &str,
    session: Option<SessionId>,
    work_item: Option<WorkItemId>,
    rotation: Option<RotationId>,
    dedup: Option<String>,
    payload: &str,
) -> Result<Option<u64>, Fault> {
    conn.before_event()?;
    let row = conn.query_opt(
        "INSERT INTO events (at, kind, session, work_item, rotation, dedup, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (dedup) DO NOTHING RETURNING seq",
        &vals![
            at,
            kind,
            session.map(|s| sql_id(s.0)),
            work_item.map(|w| sql_id(w.0)),
            rotation.map(|r| sql_id(r.0)),
            dedup,
            payload
        ],
    )?;
    Ok(row
        .map(|r| r.get::<i64>(0))
        .transpose()?
        .map(|seq| seq as u64))
}

/// The work item a session holds, as the journal knows it.
fn item_of(conn: &dyn Db, session: SessionId) -> Result<Option<WorkItemId>, Fault> {
    let row = conn.query_opt(
        "SELECT work_item FROM sessions WHERE id = ?1",
        &vals![sql_id(session.0)],
    )?;
    Ok(row
        .map(|r| r.get::<i64>(0))
        .transpose()?
        .map(|w| WorkItemId(w as u64)))
}

/// Back to the end of the queue. An item already queued at the end stays where it is, so a
/// requeue delivered twice (or after a failed rotation's record, which requeues the item
/// itself) changes nothing. A pending spawn key is kept: a start that failed before its spawn
/// returned may still have made a session, which a restart finds again through the key (a
/// session the spawn did return is recorded by [`Op::SpawnAbandoned`], which clears the key).
fn requeue(conn: &dyn Db, at: i64, item: WorkItemId, reason: Option<&str>) -> Applied {
    conn.execute(
"UPDATE work_items SET place = 'queued', session = NULL,
             reason = coalesce(?3, reason),
             queue_seq = CASE
                 WHEN place = 'queued' AND queue_seq = (SELECT max(queue_seq) FROM work_items)
                 THEN queue_seq
                 ELSE (SELECT coalesce(max(queue_seq), 0) + 1 FROM work_items) END,
             updated_at = ?2
         WHERE id = ?1 AND NOT (place = 'queued' AND reason IS NOT DISTINCT FROM coalesce(?3, reason)
                                AND queue_seq = (SELECT max(queue_seq) FROM work_items))",
&vals![sql_id(item.0), at, reason])?;
    Ok(())
}

fn close_session(conn: &dyn Db, at: i64, session: SessionId, why: EndReason) -> Applied {
    conn.execute(
        "UPDATE sessions SET state = 'closed', ended_at = coalesce(ended_at, ?2),
             end_reason = coalesce(end_reason, ?3)
         WHERE id = ?1 AND state != 'closed'",
        &vals![sql_id(session.0), at, why],
    )?;
    Ok(())
}

/// Applies a published event; answers the `seq` of its log row (`None`: a duplicate).
fn apply_event(conn: &dyn Db, at: i64, e: &FleetEvent) -> Result<Option<u64>, Fault> {
    let payload = serde_json::to_string(e)?;
    let kind = event_kind(e);
    let seq = match e {
        FleetEvent::SessionStarted {
            session,
            agent_type,
            work_item,
        } => {
            let (s, w) = (sql_id(session.0), sql_id(work_item.0));
            conn.execute(
                "INSERT INTO sessions (id, agent_type, work_item, state, phase, started_at)
                 VALUES (?1, ?2, ?3, 'live', 'Normal', ?4) ON CONFLICT (id) DO NOTHING",
                &vals![s, agent_type.as_ref(), w, at],
            )?;
            conn.execute(
                "UPDATE work_items SET place = 'live', session = ?1, pending_spawn_key = NULL,
                     epoch = epoch + 1, updated_at = ?3
                 WHERE id = ?2 AND NOT (place = 'live' AND session IS NOT DISTINCT FROM ?1)",
                &vals![s, w, at],
            )?;
            insert_event(
                conn,
                at,
                kind,
                Some(*session),
                Some(*work_item),
                None,
                None,
                &payload,
            )?
        }
        FleetEvent::Transition(t) => {
            let closed_why = match t.cause {
                EventKind::HandedOver => EndReason::Rotated,
                EventKind::RotationFailed => EndReason::RotationFailed,
                _ => EndReason::Closed,
            };
            let usage = t.usage.map(|u| serde_json::to_string(&u)).transpose()?;
            conn.execute(
"UPDATE sessions SET phase = ?2, transitions = ?3,
                     compacting_from = CASE WHEN ?2 = 'Compacting' THEN ?4 ELSE compacting_from END,
                     state = CASE WHEN ?2 = 'Closed' THEN 'closed' ELSE state END,
                     ended_at = CASE WHEN ?2 = 'Closed' THEN coalesce(ended_at, ?5) ELSE ended_at END,
                     end_reason = CASE WHEN ?2 = 'Closed' THEN coalesce(end_reason, ?6) ELSE end_reason END
                 WHERE id = ?1 AND transitions < ?3",
&vals![
                sql_id(t.session.0),
                t.to,
                t.seq as i64,
                usage,
                at,
                closed_why
            ])?;
            let item = item_of(conn, t.session)?;
            insert_event(conn, at, kind, Some(t.session), item, None, None, &payload)?
        }
        FleetEvent::Compaction(c) => {
            conn.execute(
                "INSERT INTO compactions (session, work_item, agent_type, success, record, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &vals![
                    sql_id(c.session.0),
                    sql_id(c.work_item.0),
                    c.agent_type.as_ref(),
                    c.success,
                    serde_json::to_string(c)?,
                    at
                ],
            )?;
            conn.execute(
                // The compaction under way (if any) has its record: nothing is pending.
                "UPDATE sessions SET compactions = compactions + 1, compacting_from = NULL
                 WHERE id = ?1",
                &vals![sql_id(c.session.0)],
            )?;
            insert_event(
                conn,
                at,
                kind,
                Some(c.session),
                Some(c.work_item),
                None,
                None,
                &payload,
            )?
        }
        FleetEvent::Rotation(r) => rotation_finished(conn, at, r, &payload)?,
        FleetEvent::Crashed {
            session,
            work_item,
            outcome,
        } => {
            let (s, w) = (sql_id(session.0), sql_id(work_item.0));
            close_session(conn, at, *session, EndReason::Crashed)?;
            conn.execute(
                "UPDATE work_items SET attempts = attempts + 1, updated_at = ?3
                 WHERE id = ?1 AND place = 'live' AND session = ?2",
                &vals![w, s, at],
            )?;
            if *outcome == crate::record::CrashOutcome::Restarted {
                // Restarted items go to the head of the queue.
                conn.execute(
                    "UPDATE work_items SET place = 'queued', session = NULL, updated_at = ?2,
                         queue_seq = (SELECT coalesce(min(queue_seq), 0) - 1 FROM work_items)
                     WHERE id = ?1",
                    &vals![w, at],
                )?;
            }
            insert_event(
                conn,
                at,
                kind,
                Some(*session),
                Some(*work_item),
                None,
                None,
                &payload,
            )?
        }
        FleetEvent::WorkItemDone { work_item, session } => {
            conn.execute(
                "UPDATE work_items SET place = 'done', session = ?2, updated_at = ?3 WHERE id = ?1",
                &vals![sql_id(work_item.0), sql_id(session.0), at],
            )?;
            // Its Closed transition said `closed`; the item finishing says why.
            conn.execute(
                "UPDATE sessions SET end_reason = 'done' WHERE id = ?1 AND end_reason = 'closed'",
                &vals![sql_id(session.0)],
            )?;
            close_session(conn, at, *session, EndReason::Done)?;
            insert_event(
                conn,
                at,
                kind,
                Some(*session),
                Some(*work_item),
                None,
                None,
                &payload,
            )?
        }
        FleetEvent::WorkItemRequeued { work_item, reason } => {
            requeue(conn, at, *work_item, Some(reason))?;
            insert_event(conn, at, kind, None, Some(*work_item), None, None, &payload)?
        }
        FleetEvent::DeadLetter { work_item, reason } => {
            conn.execute(
                "UPDATE work_items SET place = 'dead', session = NULL, reason = ?2, updated_at = ?3
                 WHERE id = ?1",
                &vals![sql_id(work_item.0), reason, at],
            )?;
            // A dead item has no session: one still open (a cancelled item's, whose close is
            // under way) is closed, and a restart closes it at the runtime again unless its
            // close was confirmed.
            conn.execute(
                "UPDATE sessions SET state = 'closed', ended_at = coalesce(ended_at, ?2),
                     end_reason = coalesce(end_reason, 'closed')
                 WHERE work_item = ?1 AND state != 'closed'",
                &vals![sql_id(work_item.0), at],
            )?;
            insert_event(conn, at, kind, None, Some(*work_item), None, None, &payload)?
        }
        FleetEvent::Recovered { work_item, outcome } => {
            let (session, rotation) = match outcome {
                RecoveryOutcome::Queued => (None, None),
                RecoveryOutcome::Requeued { session } => {
                    close_session(conn, at, *session, EndReason::Lost)?;
                    requeue(
                        conn,
                        at,
                        *work_item,
                        Some("its session did not survive a restart"),
                    )?;
                    (Some(*session), None)
                }
                RecoveryOutcome::RotationResumed {
                    rotation, session, ..
                } => (Some(*session), Some(*rotation)),
            };
            insert_event(
                conn,
                at,
                kind,
                session,
                Some(*work_item),
                rotation,
                None,
                &payload,
            )?
        }
        FleetEvent::Rejected { session, .. } => {
            insert_event(conn, at, kind, *session, None, None, None, &payload)?
        }
        FleetEvent::RuntimeWarning { session, .. } => {
            let item = item_of(conn, *session)?;
            insert_event(conn, at, kind, Some(*session), item, None, None, &payload)?
        }
        FleetEvent::AgentTypeHalted { .. } | FleetEvent::JournalFailed { .. } => {
            insert_event(conn, at, kind, None, None, None, None, &payload)?
        }
    };
    Ok(seq)
}

/// A rotation record published on the bus. A successful rotation's record was already written
/// by its final step (same `dedup` key): nothing to do. A failed one finishes its rotation row
/// (or creates it, for a rotation refused before any step, such as a spent budget), closes the
/// old session, and, if the item is still the rotation's, puts it back in the queue with the
/// handoff the rotation had reached, all in this one transaction: the item is never left
/// rotating under a closed session. (The supervisor's `WorkItemRequeued` that follows finds
/// it queued already and changes nothing.)
fn rotation_finished(
    conn: &dyn Db,
    at: i64,
    r: &RotationRecord,
    payload: &str,
) -> Result<Option<u64>, Fault> {
    let dedup = format!("rotation:{}", r.rotation.0);
    let seq = insert_event(
        conn,
        at,
        "rotation",
        Some(r.old_session),
        Some(r.work_item),
        Some(r.rotation),
        Some(dedup),
        payload,
    )?;
    if seq.is_none() {
        return Ok(None);
    }
    let step = if r.success {
        RotationStep::Done
    } else {
        RotationStep::Failed
    };
    let record = serde_json::to_string(r)?;
    let id = sql_id(r.rotation.0);
    let existing: Option<(RotationStep, Option<String>, Option<i64>)> = match conn.query_opt(
        "SELECT step, handoff, new_session FROM rotations WHERE id = ?1",
        &vals![id],
    )? {
        Some(row) => Some((row.get(0)?, row.get(1)?, row.get(2)?)),
        None => None,
    };
    match existing {
        None => {
            conn.execute(
"INSERT INTO rotations (id, work_item, old_session, new_session, agent_type, reason,
                     step, request, record, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?9)",
&vals![
                id,
                sql_id(r.work_item.0),
                sql_id(r.old_session.0),
                r.new_session.map(|s| sql_id(s.0)),
                r.agent_type.as_ref(),
                r.reason,
                step,
                record,
                at
            ])?;
        }
        Some((current, _, _)) if current.is_final() => {}
        Some((_, handoff, spawned)) => {
            conn.execute(
                "UPDATE rotations SET step = ?2, record = ?3,
                     new_session = coalesce(?4, new_session), finished_at = ?5
                 WHERE id = ?1",
                &vals![id, step, record, r.new_session.map(|s| sql_id(s.0)), at],
            )?;
            if !r.success {
                close_session(conn, at, r.old_session, EndReason::RotationFailed)?;
            }
            if let Some(successor) = spawned.filter(|_| !r.success) {
                // A successor spawned for a rotation that failed: known, closed, and to be
                // released (recovery closes it again if its close was cut short).
                conn.execute(
                    "INSERT INTO sessions (id, agent_type, work_item, state, phase, predecessor,
                         rotation, started_at, ended_at, end_reason)
                     VALUES (?1, ?2, ?3, 'closed', 'Normal', ?4, ?5, ?6, ?6, 'rotation_failed')
                     ON CONFLICT (id) DO NOTHING",
                    &vals![
                        successor,
                        r.agent_type.as_ref(),
                        sql_id(r.work_item.0),
                        sql_id(r.old_session.0),
                        id,
                        at
                    ],
                )?;
            }
            if !r.success {
                let reason = format!(
                    "rotation failed: {}",
                    r.error.as_deref().unwrap_or("no error recorded")
                );
                conn.execute(
                    "UPDATE work_items SET place = 'queued', session = NULL,
                         handoff = coalesce(?3, handoff), reason = ?4,
                         queue_seq = (SELECT coalesce(max(queue_seq), 0) + 1 FROM work_items),
                         updated_at = ?5
                     WHERE id = ?1 AND place = 'rotating' AND session = ?2",
                    &vals![
                        sql_id(r.work_item.0),
                        sql_id(r.old_session.0),
                        handoff,
                        reason,
                        at
                    ],
                )?;
            }
        }
    }
    Ok(seq)
}

fn apply_op(conn: &dyn Db, at: i64, op: &Op) -> Applied {
    match op {
        Op::Submitted(item) => {
            let n = conn
                .execute(
"INSERT INTO work_items (id, agent_type, text, place, queue_seq, submitted_at, updated_at)
                     VALUES (?1, ?2, ?3, 'queued',
                             (SELECT coalesce(max(queue_seq), 0) + 1 FROM work_items), ?4, ?4)
                     ON CONFLICT (id) DO NOTHING",
&vals![sql_id(item.id.0), item.agent_type.as_ref(), &item.text, at])?;
            if n == 1 {
                insert_event(
                    conn,
                    at,
                    "work_item_submitted",
                    None,
                    Some(item.id),
                    None,
                    Some(format!("submitted:{}", item.id.0)),
                    &serde_json::to_string(item)?,
                )?;
            }
        }
        Op::Spawning {
            work_item,
            n,
            key,
            attempts,
        } => {
            conn.execute(
                "UPDATE work_items SET spawns = CASE WHEN spawns > ?2 THEN spawns ELSE ?2 END,
                     pending_spawn_key = ?3,
                     attempts = CASE WHEN attempts > ?4 THEN attempts ELSE ?4 END, updated_at = ?5
                 WHERE id = ?1",
                &vals![sql_id(work_item.0), n, sql_id(key.0), attempts, at],
            )?;
        }
        Op::RotationIntent(i) => {
            let request = serde_json::to_string(i)?;
            let n = conn.execute(
                "INSERT INTO rotations (id, work_item, old_session, agent_type, reason, step,
                         spawn_key, request, started_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'intent', ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                &vals![
                    sql_id(i.rotation.0),
                    sql_id(i.work_item.0),
                    sql_id(i.old_session.0),
                    i.agent_type.as_ref(),
                    i.reason,
                    sql_id(i.spawn_key.0),
                    &request,
                    at
                ],
            )?;
            if n == 0 {
                return Ok(()); // the same intent again: already applied
            }
            conn.execute(
                "UPDATE sessions SET state = 'rotating' WHERE id = ?1 AND state = 'live'",
                &vals![sql_id(i.old_session.0)],
            )?;
            conn.execute(
"UPDATE work_items SET place = 'rotating', session = ?2, spawns = CASE WHEN spawns > ?3 THEN spawns ELSE ?3 END,
                     updated_at = ?4
                 WHERE id = ?1",
&vals![
                sql_id(i.work_item.0),
                sql_id(i.old_session.0),
                i.spawn_n,
                at
            ])?;
            insert_event(
                conn,
                at,
                "rotation_started",
                Some(i.old_session),
                Some(i.work_item),
                Some(i.rotation),
                Some(format!("rotation_started:{}", i.rotation.0)),
                &request,
            )?;
        }
        Op::RotationHandoff { rotation, handoff } => {
            let json = serde_json::to_string(handoff)?;
            let n = conn
                .execute(
"UPDATE rotations SET step = 'handoff', handoff = ?2 WHERE id = ?1 AND step = 'intent'",
&vals![sql_id(rotation.0), &json])?;
            if n == 1 {
                step_event(conn, at, "rotation_handoff", *rotation, &json)?;
            }
        }
        Op::RotationSuccessor { rotation, session } => {
            let n = conn.execute(
                "UPDATE rotations SET step = 'spawned', new_session = ?2
                     WHERE id = ?1 AND step IN ('intent', 'handoff')",
                &vals![sql_id(rotation.0), sql_id(session.0)],
            )?;
            if n == 1 {
                let payload = serde_json::json!({ "rotation": rotation, "session": session });
                step_event(
                    conn,
                    at,
                    "rotation_successor",
                    *rotation,
                    &payload.to_string(),
                )?;
            }
        }
        Op::RotationDone { record, handoff } => rotation_done(conn, at, record, handoff)?,
        Op::Released { session } => {
            conn.execute(
                "UPDATE sessions SET released = 1 WHERE id = ?1",
                &vals![sql_id(session.0)],
            )?;
        }
        Op::SpawnAbandoned { work_item, session } => {
            conn.execute(
                "INSERT INTO sessions (id, agent_type, work_item, state, phase, started_at,
                     ended_at, end_reason)
                 SELECT CAST(?1 AS BIGINT), agent_type, id, 'closed', 'Normal', CAST(?3 AS BIGINT),
                        CAST(?3 AS BIGINT), 'start_abandoned'
                 FROM work_items WHERE id = ?2
                 ON CONFLICT (id) DO NOTHING",
                &vals![sql_id(session.0), sql_id(work_item.0), at],
            )?;
            conn.execute(
                "UPDATE work_items SET pending_spawn_key = NULL WHERE id = ?1",
                &vals![sql_id(work_item.0)],
            )?;
        }
    }
    Ok(())
}

/// An `events` row for a rotation step, with the rotation's session and item.
fn step_event(conn: &dyn Db, at: i64, kind: &str, rotation: RotationId, payload: &str) -> Applied {
    let row = conn
        .query_opt(
            "SELECT old_session, work_item FROM rotations WHERE id = ?1",
            &vals![sql_id(rotation.0)],
        )?
        .ok_or_else(|| Fault::Invalid(format!("rotation {} has no row", rotation.0)))?;
    let (old, item): (i64, i64) = (row.get(0)?, row.get(1)?);
    insert_event(
        conn,
        at,
        kind,
        Some(SessionId(old as u64)),
        Some(WorkItemId(item as u64)),
        Some(rotation),
        Some(format!("{kind}:{}", rotation.0)),
        payload,
    )?;
    Ok(())
}

/// Rotation step 4, in the writer's transaction: the rotation is done, the old session closed,
/// the successor registered and holding the item, and the record stored with the rotation (its
/// event row is added when the supervisor publishes the record, right after). Applied a second
/// time, it changes nothing.
fn rotation_done(conn: &dyn Db, at: i64, r: &RotationRecord, handoff: &Handoff) -> Applied {
    let new = r.new_session.ok_or_else(|| {
        Fault::Invalid(format!(
            "rotation {} is done without a successor",
            r.rotation.0
        ))
    })?;
    let id = sql_id(r.rotation.0);
    let n = conn.execute(
        "UPDATE rotations SET step = 'done', new_session = ?2, handoff = coalesce(handoff, ?3),
                 record = ?4, finished_at = ?5
             WHERE id = ?1 AND step IN ('intent', 'handoff', 'spawned')",
        &vals![
            id,
            sql_id(new.0),
            serde_json::to_string(handoff)?,
            serde_json::to_string(r)?,
            at
        ],
    )?;
    if n == 0 {
        let known = conn.query_opt("SELECT id FROM rotations WHERE id = ?1", &vals![id])?;
        return match known {
            Some(_) => Ok(()), // already finished
            None => Err(Fault::Invalid(format!(
                "rotation {} finished without a recorded intent",
                r.rotation.0
            ))),
        };
    }
    close_session(conn, at, r.old_session, EndReason::Rotated)?;
    conn.execute(
"INSERT INTO sessions (id, agent_type, work_item, state, phase, predecessor, rotation, started_at)
         VALUES (?1, ?2, ?3, 'live', 'Normal', ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
&vals![
        sql_id(new.0),
        r.agent_type.as_ref(),
        sql_id(r.work_item.0),
        sql_id(r.old_session.0),
        id,
        at
    ])?;
    conn.execute(
"UPDATE work_items SET place = 'live', session = ?2, handoff = ?3, pending_spawn_key = NULL,
             epoch = epoch + 1, updated_at = ?4
         WHERE id = ?1",
&vals![
        sql_id(r.work_item.0),
        sql_id(new.0),
        serde_json::to_string(handoff)?,
        at
    ])?;
    Ok(())
}

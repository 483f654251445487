//! The supervisor's side of the journal: writing through it, and recovering from it at start-up.
//!
//! A supervisor built with [`SupervisorBuilder::journal`] reads what the journal says was
//! unfinished before it handles any message, then:
//!
//! * numbers new rotations after the last recorded one, and derives spawn keys after the last
//!   recorded spawn of each item (a spawn that was issued but never recorded reuses its key, so
//!   the runtime hands back the session it may have started rather than a second one);
//! * records a compaction that was in flight at the crash as failed (`interrupted`): the
//!   runtime may or may not have replaced the history, and the record says so;
//! * treats every session the journal counted as live as gone (its actor died with the old
//!   process): closes it at the runtime (best effort) and puts its work item back in the queue,
//!   with the handoff of its last rotation;
//! * resumes every unfinished rotation that still holds its work item from its last recorded
//!   step, which ends with the usual rotation record: a successor already spawned is found again
//!   through its spawn key;
//! * records as failed every unfinished rotation whose work item had already left it (closed,
//!   requeued or buried while the rotation ran), and closes at the runtime what it may have left
//!   open: its recorded successor, and its old session if the journal still counted it open;
//! * publishes the record of every rotation that finished (its step 4 is durable) but whose
//!   record the crash kept out of the log;
//! * publishes one [`FleetEvent::Recovered`] per unfinished work item.
//!
//! Finished and buried items are remembered (a second submission of the same id is refused).
//! Items of an agent type the new supervisor does not know are left in the journal as they are.
//!
//! In a cluster, the sweeper's supervisor runs the same recovery while running, on what
//! `Journal::adopt` took over from a lost node ([`Supervisor::adopt`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::ledger::ItemEntry;
use super::rotation::{Resume, Rotation};
use super::{Place, Supervisor, SupervisorBuilder, rotation_record};
use crate::journal::recovery::{self, OpenRotation, RecoveryState, StoredPlace};
use crate::journal::{Journal, JournalError, Op, RotationIntent};
use crate::record::{CompactionRecord, FleetEvent, RecoveryOutcome, RotationStep};
use crate::session::RotationRequest;
use crate::vocab::{AgentType, SessionId, WorkItemId};

/// What a compaction in flight at a crash is recorded as.
const INTERRUPTED: &str =
    "interrupted: baton stopped during the compaction; the runtime may have replaced the history";

/// The error of a rotation recovered as failed because its work item had left it.
const LEFT_BEHIND: &str = "its work item had left the rotation (closed, requeued or buried) when baton stopped; recorded as failed at recovery";

/// The request a rotation's intent records, rebuilt (the old session's full history is gone
/// with the old process; its last reading stands for it).
fn request(i: &RotationIntent) -> RotationRequest {
    RotationRequest {
        session: i.old_session,
        reason: i.reason,
        before: i.before,
        compactions: i.compactions,
        history: i.before.into_iter().collect(),
        last_summary: None,
    }
}

impl SupervisorBuilder {
    /// Writes every event, work item and rotation step through `journal`, and recovers from
    /// what it holds when the supervisor starts (see `docs/semantics.md`, "Journal"). Reads the
    /// journal now: fails if it cannot be read.
    ///
    /// From then on every event is durable before any subscriber sees it (the journal's writer
    /// delivers it after the commit that holds it).
    pub fn journal(mut self, journal: Journal) -> Result<Self, JournalError> {
        let state = journal.read_blocking(recovery::load)?;
        self.bus = self.bus.with_journal(journal.clone());
        self.journal = Some((journal, state));
        Ok(self)
    }
}

impl Supervisor {
    /// Writes a step through the journal without waiting (events reach it through the bus).
    pub(super) fn note(&self, op: Op) {
        if let Some(j) = &self.journal {
            j.note(op);
        }
    }

    /// A journal write the supervisor waited on failed. (Subscribers hear of it from the
    /// journal itself, `JournalFailed`, once, whichever write failed first.)
    pub(super) fn journal_failed(&self, e: &JournalError) {
        tracing::error!(error = %e, "journal write failed");
    }

    /// Rebuilds the registry from the journal and resumes what was under way.
    pub(super) fn recover(&mut self, state: RecoveryState, ctx: &mut Context<Self>) {
        // Even with nothing to recover: a cluster node's rotations are numbered from its
        // epoch's range, which the journal says.
        self.next_key = self.next_key.max(state.last_rotation);
        if state.is_empty() {
            return;
        }
        tracing::info!(
            items = state.items.len(),
            rotations = state.rotations.len(),
            sessions = state.sessions.len(),
            "recovering from the journal"
        );
        self.take_over(state, ctx);
    }

    /// Takes over what a lost node of the cluster left unfinished (`Journal::adopt` moved it to
    /// this node's epoch), while running, with the recovery a restart runs: its live sessions
    /// are closed at the runtime and their items requeued with their last handoff, its
    /// unfinished rotations resume from their last step through their spawn keys. Rotation
    /// numbers stay this node's own (they never collide across epochs). Items this supervisor
    /// already holds are left as they are.
    pub(super) fn adopt(&mut self, mut state: RecoveryState, ctx: &mut Context<Self>) {
        state.items.retain(|s| {
            let known = self.ledger.items.contains_key(&s.item.id);
            if known {
                tracing::warn!(work_item = %s.item.id, "an adopted work item is already held here; left as it is");
            }
            !known
        });
        if state.is_empty() {
            return;
        }
        tracing::info!(
            items = state.items.len(),
            rotations = state.rotations.len(),
            sessions = state.sessions.len(),
            "adopting a lost node's work"
        );
        self.take_over(state, ctx);
    }

    /// What recovery and adoption share: the registry rebuilt from `state`, what was under way
    /// resumed, requeued or recorded as failed.
    fn take_over(&mut self, state: RecoveryState, ctx: &mut Context<Self>) {
        // A rotation finished before the crash whose record was not yet logged: logged and
        // published now, so that it is in the log once.
        for record in state.unannounced {
            self.bus.publish(FleetEvent::Rotation(record));
        }
        // A compaction in flight at the crash gets its record.
        for s in &state.sessions {
            if s.phase == crate::machine::Phase::Compacting
                && let Some(before) = s.compacting_from
            {
                self.bus
                    .publish(FleetEvent::Compaction(CompactionRecord::failed(
                        s.id,
                        s.agent_type.clone(),
                        s.work_item,
                        before,
                        Duration::ZERO,
                        INTERRUPTED.into(),
                    )));
            }
        }
        let mut rotations: HashMap<WorkItemId, Vec<OpenRotation>> = HashMap::new();
        for r in state.rotations {
            rotations.entry(r.intent.work_item).or_default().push(r);
        }
        let open: HashSet<SessionId> = state.sessions.iter().map(|s| s.id).collect();
        let mut resumed = Vec::new();
        for stored in state.items {
            let id = stored.item.id;
            let mut unfinished = rotations.remove(&id).unwrap_or_default();
            if !self.ledger.agents.contains_key(&stored.item.agent_type) {
                tracing::warn!(work_item = %id, agent_type = %stored.item.agent_type,
                    "the journal holds a work item of an agent type this supervisor does not know; left as it is");
                continue;
            }
            // Reuse the key of a spawn that was issued but never recorded.
            let spawns = if stored.pending_key.is_some() {
                stored.spawns.saturating_sub(1)
            } else {
                stored.spawns
            };
            // The session holding the item, and the rotation that still holds it (the one of
            // its rotating session); any other unfinished rotation was left behind.
            let held = match stored.place {
                StoredPlace::Live | StoredPlace::Rotating => stored.session,
                _ => None,
            };
            let rotation = match (stored.place, stored.session) {
                (StoredPlace::Rotating, Some(s)) => unfinished
                    .iter()
                    .rposition(|r| r.intent.old_session == s)
                    .map(|i| unfinished.remove(i)),
                _ => None,
            };
            let agent = self.ledger.agents[&stored.item.agent_type].agent.clone();
            for r in unfinished {
                self.fail_left_behind(r, &agent, &open, held, ctx);
            }
            let (place, outcome) = match (stored.place, stored.session, rotation) {
                (StoredPlace::Done, session, _) => {
                    (Place::Done(session.unwrap_or(SessionId(0))), None)
                }
                (StoredPlace::Dead, _, _) => {
                    (Place::Dead(stored.reason.clone().unwrap_or_default()), None)
                }
                (StoredPlace::Rotating, _, Some(r)) => {
                    let old = r.intent.old_session;
                    let outcome = RecoveryOutcome::RotationResumed {
                        rotation: r.intent.rotation,
                        session: old,
                        step: r.step,
                    };
                    resumed.push(r);
                    // Its old session has no actor: what is under way is a start.
                    (Place::Starting, Some(outcome))
                }
                (StoredPlace::Live | StoredPlace::Rotating, Some(session), _) => {
                    self.close_stale(session, ctx);
                    self.ledger.queue.push_back(id);
                    (Place::Queued, Some(RecoveryOutcome::Requeued { session }))
                }
                (_, _, _) => {
                    self.ledger.queue.push_back(id);
                    (Place::Queued, Some(RecoveryOutcome::Queued))
                }
            };
            let mut entry = ItemEntry::new(stored.item, place);
            entry.attempts = stored.attempts;
            entry.set_handoff(stored.handoff);
            entry.spawns = spawns;
            self.ledger.insert(id, entry);
            if let Some(outcome) = outcome {
                self.bus.publish(FleetEvent::Recovered {
                    work_item: id,
                    outcome,
                });
            }
        }
        // Closes that a crash cut short.
        for session in state.unreleased {
            self.close_stale(session, ctx);
        }
        for r in resumed {
            self.resume_rotation(r, ctx);
        }
        self.pump(ctx);
    }

    /// Records as failed a rotation whose work item had left it before baton stopped (it was
    /// closed, requeued or buried while the rotation ran, and the crash came before the
    /// rotation's own record), and closes at the runtime what the rotation may have left open:
    /// its recorded successor, and its old session if the journal still counted it open (unless
    /// that session still holds the item: the item's own recovery closes it).
    fn fail_left_behind(
        &mut self,
        r: OpenRotation,
        agent: &AgentType,
        open: &HashSet<SessionId>,
        held: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) {
        let i = &r.intent;
        tracing::warn!(rotation = i.rotation.0, session = %i.old_session, work_item = %i.work_item,
            step = %r.step, "an unfinished rotation whose work item had moved on is recorded as failed");
        let record = rotation_record(
            i.rotation,
            &request(i),
            agent,
            i.work_item,
            None,
            r.handoff.as_ref(),
            0,
            Duration::ZERO,
            Some(LEFT_BEHIND.into()),
        );
        // The record first: it registers the successor (closed), whose release follows.
        self.bus.publish(FleetEvent::Rotation(record));
        if let Some(successor) = r.successor {
            self.close_stale(successor, ctx);
        }
        if open.contains(&i.old_session) && held != Some(i.old_session) {
            self.close_stale(i.old_session, ctx);
        }
    }

    /// Resumes a rotation from its last recorded step.
    fn resume_rotation(&mut self, r: recovery::OpenRotation, ctx: &mut Context<Self>) {
        let i = r.intent;
        let entry = self
            .ledger
            .items
            .get_mut(&i.work_item)
            .expect("recovered above");
        entry.spawns = entry.spawns.max(i.spawn_n);
        let item = entry.item.clone();
        let agent = self.ledger.agents[&item.agent_type].agent.clone();
        let from = match (r.step, r.handoff, r.successor) {
            (RotationStep::Spawned, Some(h), Some(s)) => Resume::Spawned(h, s),
            (RotationStep::Handoff | RotationStep::Spawned, Some(h), _) => Resume::Handoff(h),
            _ => Resume::Intent,
        };
        tracing::info!(rotation = i.rotation.0, session = %i.old_session, work_item = %i.work_item,
            step = %r.step, "resuming a rotation");
        let rot = Rotation {
            id: i.rotation,
            req: request(&i),
            item,
            agent,
            key: i.spawn_key,
            spawn_n: i.spawn_n,
            started: Instant::now(),
            old_addr: None,
            _work: self.work.token(),
        };
        self.run_rotation(rot, from, ctx);
    }
}

//! A rotation's runtime work, step by step: shared by new rotations and by rotations resumed
//! after a restart.
//!
//! With a journal, each step is durable before the runtime call that follows it:
//!
//! 1. intent (the rotation row, the old session and the item marked rotating, an event), then
//!    the handoff summary is asked for;
//! 2. the handoff, then the successor is spawned with the rotation's spawn key;
//! 3. the successor's id, then it is assigned the work item and the old session is closed;
//! 4. in one transaction: the old session closed, the successor live and holding the item, the
//!    rotation done with its record. Only then does the successor's actor start.
//!
//! Each acknowledgement is awaited inside the rotation's own task (run like a session start's,
//! by `Supervisor::run_work`: on the supervisor's thread, its result sent back as a message), so
//! the supervisor's mailbox keeps flowing. Without a journal the same code runs with the steps
//! skipped. If the journal itself fails (a full disk), the failure is reported once
//! (`JournalFailed`) and the rotation goes on without durability: a fleet is not stopped for
//! want of a record.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use backon::ExponentialBuilder;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{
    Place, SessionAddr, Supervisor, call_with_retry, close_with_retry, fallback_handoff,
    rotation_record,
};
use crate::journal::{Journal, JournalError, Op, RotationIntent};
use crate::record::{FleetEvent, RotationId, RotationRecord};
use crate::runtime::{AgentRuntime, RuntimeError};
use crate::session::{Command, RotationRequest};
use crate::vocab::{AgentType, Handoff, SessionId, SpawnKey, SummaryPurpose, WorkItem};

/// One rotation, from the decision to its record.
pub(super) struct Rotation {
    /// Its number.
    pub id: RotationId,
    /// What the rotating session asked with (rebuilt from the journal when resumed).
    pub req: RotationRequest,
    /// The work item that moves.
    pub item: WorkItem,
    /// The agent type of both sessions.
    pub agent: Arc<AgentType>,
    /// The successor's spawn key: the same key finds the same successor after a crash.
    pub key: SpawnKey,
    /// The item's spawn count, this spawn included.
    pub spawn_n: u32,
    /// When the rotation began (in this process); its deadline counts from here.
    pub started: Instant,
    /// The old session's actor; `None` when resumed after a restart (it died with the process).
    pub old_addr: Option<SessionAddr>,
    /// Counts the rotation as runtime work under way (shutdown waits for it) until the
    /// rotation is dropped, once concluded.
    pub _work: TaskTrackerToken,
}

impl Rotation {
    /// Where the item is while the rotation runs: `Rotating(old)`, or `Starting` for a rotation
    /// resumed after a restart (its old session has no actor, so no registry entry; what is
    /// under way is the start of the successor).
    pub(super) fn holding(&self) -> Place {
        match self.old_addr {
            Some(_) => Place::Rotating(self.req.session),
            None => Place::Starting,
        }
    }
}

/// Where the runtime work starts.
pub(super) enum Resume {
    /// A new rotation: record the intent first.
    Start,
    /// The intent is recorded; the handoff is not.
    Intent,
    /// The handoff is recorded.
    Handoff(Handoff),
    /// The handoff and the successor are recorded.
    Spawned(Handoff, SessionId),
}

/// What the runtime work produced.
pub(super) struct Worked {
    /// The handoff the successor starts from.
    handoff: Handoff,
    /// The successor holding the item, or why not.
    result: Result<SessionId, String>,
    /// A successor that was spawned (to close if the rotation fails).
    spawned: Option<SessionId>,
    /// Spawn and assign attempts.
    attempts: u32,
    /// Closing the old session failed (not fatal).
    close: Option<RuntimeError>,
    /// A step could not be made durable (the journal failed; the rotation went on).
    journal_error: Option<JournalError>,
}

/// A rotation's runtime work has finished: the supervisor concludes it.
struct RotationWorked {
    /// The rotation, as it was started.
    rot: Rotation,
    /// What its runtime work achieved.
    worked: Worked,
}

impl Message for RotationWorked {
    type Result = ();
}

impl Handler<RotationWorked> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RotationWorked, ctx: &mut Self::Context) {
        self.conclude_rotation(msg.rot, msg.worked, ctx);
    }
}

/// Everything the runtime work needs, moved into its future.
struct Job {
    /// Acts on the agents.
    runtime: Arc<dyn AgentRuntime>,
    /// The fleet-wide cap on summaries: the handoff summary takes a slot like a compaction.
    summary_slots: Arc<Semaphore>,
    /// Where each step is made durable, if anywhere.
    journal: Option<Journal>,
    /// Backoff for spawn, assign and close.
    retry: ExponentialBuilder,
    /// How long closing the old session may take.
    close_limit: Duration,
    /// The rotation as its first step records it (ids, reason, spawn key).
    intent: RotationIntent,
    /// The work item that moves.
    item: WorkItem,
    /// The agent type of both sessions.
    agent: Arc<AgentType>,
    /// The old session's readings, for a fallback handoff.
    history: Vec<crate::usage::Usage>,
    /// The old session's last compaction summary, for a fallback handoff.
    last_summary: Option<Arc<str>>,
    /// Spawn and assign must be done by then.
    deadline: Instant,
}

impl Job {
    /// Writes a step and waits until it is durable. A journal that fails is reported (the
    /// first failure is kept in `failed`) and the rotation goes on without it: a fleet is not
    /// stopped for want of a record.
    async fn durable(&self, op: Op, failed: &mut Option<JournalError>) {
        if let Some(j) = &self.journal
            && let Err(e) = j.commit(op).await
        {
            tracing::error!(error = %e, rotation = self.intent.rotation.0, "rotation step not durable");
            failed.get_or_insert(e);
        }
    }

    async fn run(self, from: Resume) -> Worked {
        let rotation = self.intent.rotation;
        let mut journal_error = None;
        let known = match &from {
            Resume::Spawned(_, s) => Some(*s),
            _ => None,
        };
        if matches!(from, Resume::Start) {
            self.durable(Op::RotationIntent(self.intent.clone()), &mut journal_error)
                .await;
        }
        let handoff = match from {
            Resume::Start | Resume::Intent => {
                let h = self.handoff().await;
                let step = Op::RotationHandoff {
                    rotation,
                    handoff: h.clone(),
                };
                self.durable(step, &mut journal_error).await;
                h
            }
            Resume::Handoff(h) | Resume::Spawned(h, _) => h,
        };
        let attempts = Cell::new(0u32);
        let spawned = Cell::new(known);
        let (runtime, agent, key) = (&self.runtime, &self.agent, self.intent.spawn_key);
        let result = tokio::time::timeout_at(self.deadline, async {
            let new = match known {
                Some(s) => s,
                None => {
                    let new = call_with_retry(self.retry, &attempts, || runtime.spawn(agent, key))
                        .await
                        .map_err(|e| e.to_string())?;
                    spawned.set(Some(new));
                    let step = Op::RotationSuccessor {
                        rotation,
                        session: new,
                    };
                    self.durable(step, &mut journal_error).await;
                    new
                }
            };
            call_with_retry(self.retry, &attempts, || {
                runtime.assign(new, &self.item, Some(&handoff))
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(new)
        })
        .await
        .unwrap_or_else(|_| {
            Err(RuntimeError::Timeout(agent.policy.rotation_timeout()).to_string())
        });
        // Close the old session whatever happened; a failure here is not fatal.
        let close = self.close_old().await;
        Worked {
            handoff,
            result,
            spawned: spawned.get(),
            attempts: attempts.get(),
            close,
            journal_error,
        }
    }

    /// The old session's summary, or baton's own fallback when it cannot give one.
    async fn handoff(&self) -> Handoff {
        let old = self.intent.old_session;
        let limit = self
            .agent
            .policy
            .compaction_timeout()
            .min(self.agent.policy.rotation_timeout() / 2);
        let fallback = |error: &str| {
            fallback_handoff(
                &self.item,
                &self.history,
                self.last_summary.as_deref(),
                error,
            )
        };
        // Waiting for a summary slot counts against the limit (and so against the rotation's
        // deadline): a rotation storm queues behind the cap instead of bursting the summariser.
        // A transient failure is tried again (backoff) within the same limit; each try takes a
        // slot of its own, so the backoff between tries does not hold one.
        let tries = Cell::new(0);
        let summary = call_with_retry(self.retry, &tries, || async {
            let _slot = self
                .summary_slots
                .acquire()
                .await
                .map_err(|_| RuntimeError::permanent("summary slots closed"))?;
            self.runtime.summarise(old, SummaryPurpose::Handoff).await
        });
        let handoff = match tokio::time::timeout(limit, summary).await {
            Ok(Ok(s)) => Handoff {
                text: s.text,
                tokens: s.tokens,
                fallback: false,
            },
            Ok(Err(e)) => fallback(&e.to_string()),
            Err(_) => fallback(&format!("timed out after {limit:?}")),
        };
        let cap = self.agent.policy.handoff_cap(self.agent.window);
        cap_handoff(handoff, cap)
    }

    /// Closes the old session at the runtime; notes in the journal when it is released.
    async fn close_old(&self) -> Option<RuntimeError> {
        let session = self.intent.old_session;
        let result = close_with_retry(&*self.runtime, session, self.retry, self.close_limit).await;
        if let Some(j) = &self.journal
            && matches!(result, Ok(()) | Err(RuntimeError::UnknownSession(_)))
        {
            j.note(Op::Released { session });
        }
        result.err()
    }
}

impl Supervisor {
    /// Runs a rotation's runtime work from `from`, then concludes it. The rotation's token
    /// counts it as work under way until it is concluded.
    pub(super) fn run_rotation(
        &mut self,
        mut rot: Rotation,
        from: Resume,
        ctx: &mut Context<Self>,
    ) {
        let job = Job {
            runtime: self.runtime.clone(),
            summary_slots: self.compaction_slots.clone(),
            journal: self.journal.clone(),
            retry: self.retry_policy(),
            close_limit: self.config.close_timeout,
            intent: RotationIntent {
                rotation: rot.id,
                work_item: rot.item.id,
                old_session: rot.req.session,
                agent_type: rot.agent.name.clone(),
                reason: rot.req.reason,
                before: rot.req.before,
                compactions: rot.req.compactions,
                spawn_n: rot.spawn_n,
                spawn_key: rot.key,
            },
            item: rot.item.clone(),
            agent: rot.agent.clone(),
            // Only a fallback handoff reads the readings: moved, not copied.
            history: std::mem::take(&mut rot.req.history),
            last_summary: rot.req.last_summary.clone(),
            deadline: rot.started + rot.agent.policy.rotation_timeout(),
        };
        let span = tracing::info_span!("rotation", rotation = rot.id.0, session = %rot.req.session, work_item = %rot.item.id);
        self.run_work(
            ctx,
            async move {
                let worked = job.run(from).await;
                RotationWorked { rot, worked }
            },
            span,
        );
    }

    /// Decides how the rotation ends, from the work's result and where the item is now. A
    /// successful rotation with a journal commits its last step first: meanwhile the item is
    /// `Starting` (its successor is being started), so a late close of the old session does not
    /// take it back.
    fn conclude_rotation(&mut self, rot: Rotation, w: Worked, ctx: &mut Context<Self>) {
        let old = rot.req.session;
        if let Some(e) = &w.journal_error {
            self.journal_failed(e);
        }
        match &w.close {
            // A resumed rotation's old session died with the earlier process: a runtime that
            // no longer knows it is what was expected.
            Some(RuntimeError::UnknownSession(_)) if rot.old_addr.is_none() => {}
            Some(e) => {
                self.runtime_warning(old, format!("closing the rotated session failed: {e}"))
            }
            None => {}
        }
        let duration = rot.started.elapsed();
        let still_ours =
            *self.ledger.items[&rot.item.id].place() == rot.holding() && self.shutdown.is_none();
        let outcome = match w.result {
            Ok(new) if still_ours => Ok(new),
            Ok(new) => {
                self.close_at_runtime(new, ctx);
                Err("the work item left the rotation (closed or shutting down)".to_string())
            }
            Err(e) => {
                if let Some(new) = w.spawned {
                    self.close_at_runtime(new, ctx);
                }
                Err(e)
            }
        };
        let (new_session, error) = match &outcome {
            Ok(new) => (Some(*new), None),
            Err(e) => (None, Some(e.clone())),
        };
        let record = rotation_record(
            rot.id,
            &rot.req,
            &rot.agent,
            rot.item.id,
            new_session,
            Some(&w.handoff),
            w.attempts,
            duration,
            error,
        );
        match (outcome, self.journal.clone()) {
            (Ok(new), Some(journal)) => {
                // Step 4 is durable before the successor's actor starts. Meanwhile the item is
                // `Starting`: a late close of the old session no longer takes it back.
                self.ledger.set_place(rot.item.id, Place::Starting);
                let step = Op::RotationDone {
                    record: record.clone(),
                    handoff: w.handoff.clone(),
                };
                let handoff = w.handoff;
                ctx.spawn(
                    async move { journal.commit(step).await }
                        .into_actor(self)
                        .map(move |committed, act, ctx| {
                            if let Err(e) = committed {
                                act.journal_failed(&e);
                            }
                            if *act.ledger.items[&rot.item.id].place() == Place::Starting {
                                act.hand_over(&rot, new, handoff, record, ctx);
                            } else {
                                act.cancelled_at_hand_over(&rot, new, record, ctx);
                            }
                            act.end_rotation(rot, ctx);
                        }),
                );
            }
            (Ok(new), None) => {
                self.hand_over(&rot, new, w.handoff, record, ctx);
                self.end_rotation(rot, ctx);
            }
            (Err(error), _) => {
                self.fail_rotation(&rot, w.handoff, record, error);
                self.end_rotation(rot, ctx);
            }
        }
    }

    /// The successor holds the item: start its actor, release the old one, publish the record.
    fn hand_over(
        &mut self,
        rot: &Rotation,
        new: SessionId,
        handoff: Handoff,
        record: RotationRecord,
        ctx: &mut Context<Self>,
    ) {
        self.ledger.set_place(rot.item.id, Place::Live(new));
        self.item(rot.item.id).set_handoff(Some(handoff));
        self.start_actor(new, rot.item.id, ctx);
        if let Some(old) = &rot.old_addr {
            old.do_send(Command::HandedOver(new));
        }
        self.bus.publish(FleetEvent::Rotation(record));
        if self.shutdown.is_some() {
            // A shutdown began while the last step was being committed: close it like the rest.
            if let Some(e) = self.sessions.get(&new) {
                e.addr.do_send(Command::Close);
            }
        }
    }

    /// The item was cancelled while the rotation's last step was committed: the rotation is
    /// done (its record is published, the old session hears it was handed over), but the
    /// successor is closed instead of started.
    fn cancelled_at_hand_over(
        &mut self,
        rot: &Rotation,
        new: SessionId,
        record: RotationRecord,
        ctx: &mut Context<Self>,
    ) {
        tracing::info!(work_item = %rot.item.id, session = %new, "work item cancelled during its hand-over: the successor is closed");
        if let Some(old) = &rot.old_addr {
            old.do_send(Command::HandedOver(new));
        }
        self.bus.publish(FleetEvent::Rotation(record));
        self.close_at_runtime(new, ctx);
    }

    /// The rotation failed: the old session closes, and the item (if still the rotation's) goes
    /// back to the queue with the handoff it reached.
    fn fail_rotation(
        &mut self,
        rot: &Rotation,
        handoff: Handoff,
        record: RotationRecord,
        error: String,
    ) {
        let (old, id) = (rot.req.session, rot.item.id);
        tracing::warn!(session = %old, %error, "rotation failed");
        if let Some(addr) = &rot.old_addr {
            addr.do_send(Command::RotationFailed(error.clone()));
        }
        self.bus.publish(FleetEvent::Rotation(record));
        if *self.ledger.items[&id].place() == rot.holding() {
            self.item(id).set_handoff(Some(handoff));
            self.requeue(id, format!("rotation failed: {error}"));
        }
    }

    /// The rotation is over: dropping it releases its work token (its item's place already
    /// says whether it still counts as a start).
    fn end_rotation(&mut self, rot: Rotation, ctx: &mut Context<Self>) {
        drop(rot);
        self.pump(ctx);
        self.check_shutdown();
    }
}

/// What a handoff cut to the cap ends with.
const CUT: &str = "\n[cut by baton to fit the successor's window]";

/// Cuts a handoff to at most `cap` tokens (the policy's `handoff_share` of the successor's
/// window), the fallback included: a handoff near the window would rotate the successor again
/// almost at once. The text keeps its beginning (the fallback's work item and figures come
/// first, its embedded summary last), in proportion to the tokens counted for it, and ends
/// with a marker saying it was cut.
fn cap_handoff(mut h: Handoff, cap: u64) -> Handoff {
    if h.tokens <= cap {
        return h;
    }
    tracing::warn!(
        tokens = h.tokens,
        cap,
        fallback = h.fallback,
        "handoff cut to the cap"
    );
    let share = h.text.len() as u128 * u128::from(cap) / u128::from(h.tokens);
    let mut keep = usize::try_from(share)
        .unwrap_or(usize::MAX)
        .saturating_sub(CUT.len())
        .min(h.text.len());
    while !h.text.is_char_boundary(keep) {
        keep -= 1;
    }
    h.text.truncate(keep);
    h.text.push_str(CUT);
    h.tokens = cap;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(text: &str, tokens: u64, fallback: bool) -> Handoff {
        Handoff {
            text: text.into(),
            tokens,
            fallback,
        }
    }

    #[test]
    fn a_handoff_within_the_cap_is_kept_whole() {
        let h = handoff("short summary", 100, false);
        assert_eq!(cap_handoff(h.clone(), 100), h);
    }

    #[test]
    fn a_handoff_over_the_cap_keeps_its_beginning_in_proportion_and_says_it_was_cut() {
        // 24,012 tokens in a 32k window, as a fallback once embedded: capped at 25% = 8,000.
        let text = "é".repeat(40_000) + &"x".repeat(16_048); // 96,048 bytes, ~4 bytes a token
        let h = cap_handoff(handoff(&text, 24_012, true), 8_000);
        assert_eq!(h.tokens, 8_000);
        assert!(h.fallback);
        assert!(h.text.ends_with(CUT));
        let kept = h.text.len() - CUT.len();
        // In proportion: 96,048 * 8,000 / 24,012 = 32,000 bytes, less the marker, back to a
        // character boundary (the text begins with two-byte characters).
        let budget = 32_000 - CUT.len();
        assert!(
            kept == budget || kept == budget - 1,
            "kept {kept} of {budget}"
        );
        assert!(text.starts_with(&h.text[..kept]), "the beginning is kept");
    }

    #[test]
    fn the_default_policy_caps_a_handoff_at_a_quarter_of_the_window() {
        let agent = AgentType::new("coder", 32_000);
        let cap = agent.policy.handoff_cap(agent.window);
        assert_eq!(cap, 8_000);
        let h = cap_handoff(handoff(&"y".repeat(96_048), 24_012, false), cap);
        assert!(h.tokens <= cap);
        assert!(h.text.len() <= 32_000);
    }
}

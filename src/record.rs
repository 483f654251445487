//! What baton tells the world: records of compactions and rotations, and the event stream.
//!
//! Every transition, compaction, rotation, restart and rejected input is published as a
//! [`FleetEvent`] on the [`EventBus`], which an embedding orchestrator subscribes to. With a
//! journal, every event is durable before any subscriber sees it. Each compaction or rotation
//! that took effect is published exactly once. A [`Sequenced`] subscription numbers each event
//! (with a journal, by its row in the journal's log), so that a stream can resume from the
//! journal without a gap or a duplicate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::journal::{Journal, Timestamp};
use crate::machine::{CompactionMeasure, TransitionRecord};
use crate::policy::RotationReason;
use crate::usage::Usage;
use crate::vocab::{SessionId, WorkItemId};

/// Numbers a rotation for its whole life (and keys the successor's spawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RotationId(pub u64);

/// How far a rotation got. With a journal, each step is durable before the runtime call that
/// follows it, so after a crash a rotation resumes from its last recorded step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationStep {
    /// Decided: the rotation exists and the old session is marked rotating. Next: the handoff
    /// summary.
    Intent,
    /// The handoff is stored. Next: spawn the successor (keyed, so a repeated spawn finds the
    /// same one).
    Handoff,
    /// The successor's id is stored. Next: assign it the work item, close the old session.
    Spawned,
    /// Finished: the successor holds the work item and the old session is closed.
    Done,
    /// Given up: the work item went back to the queue (or was finished or buried meanwhile).
    Failed,
}

impl RotationStep {
    /// The step's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intent => "intent",
            Self::Handoff => "handoff",
            Self::Spawned => "spawned",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// The step named `name`, as [`as_str`](Self::as_str) spells it.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Intent,
            Self::Handoff,
            Self::Spawned,
            Self::Done,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether the rotation is over (done or failed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

impl std::fmt::Display for RotationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One compaction: what it freed, how long it took, whether it worked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionRecord {
    /// The session that compacted.
    pub session: SessionId,
    /// Its agent type.
    pub agent_type: Arc<str>,
    /// The work item it holds.
    pub work_item: WorkItemId,
    /// Tokens in use when the compaction started.
    pub before_tokens: u64,
    /// The same, in percent of the window.
    pub before_percent: f64,
    /// Tokens in use afterwards (equal to before when it failed).
    pub after_tokens: u64,
    /// The same, in percent of the window.
    pub after_percent: f64,
    /// `before - after` (0 when the context grew or the compaction failed).
    pub tokens_freed: u64,
    /// `(1 - after/before) * 100`.
    pub reduction_percent: f64,
    /// Whether the reduction fell in the policy's target band (40-50% by default).
    pub within_target: bool,
    /// Whether the session could stay: enough freed and below `compact_at`.
    pub sufficient: bool,
    /// Tokens of the summary that replaced the history.
    pub summary_tokens: u64,
    /// From asking for the compaction to its result (waiting for a slot included).
    pub duration: Duration,
    /// Whether the history was replaced.
    pub success: bool,
    /// What went wrong, when it failed.
    pub error: Option<String>,
}

impl CompactionRecord {
    /// The record of a compaction that finished, from the machine's measurement.
    pub fn finished(
        session: SessionId,
        agent_type: Arc<str>,
        work_item: WorkItemId,
        m: &CompactionMeasure,
        duration: Duration,
    ) -> Self {
        Self {
            session,
            agent_type,
            work_item,
            before_tokens: m.before.used(),
            before_percent: m.before.percent(),
            after_tokens: m.after.used(),
            after_percent: m.after.percent(),
            tokens_freed: m.before.used().saturating_sub(m.after.used()),
            reduction_percent: m.reduction * 100.0,
            within_target: m.within_target,
            sufficient: m.sufficient,
            summary_tokens: m.summary_tokens,
            duration,
            success: true,
            error: None,
        }
    }

    /// The record of a compaction that failed or timed out.
    pub fn failed(
        session: SessionId,
        agent_type: Arc<str>,
        work_item: WorkItemId,
        before: Usage,
        duration: Duration,
        error: String,
    ) -> Self {
        Self {
            session,
            agent_type,
            work_item,
            before_tokens: before.used(),
            before_percent: before.percent(),
            after_tokens: before.used(),
            after_percent: before.percent(),
            tokens_freed: 0,
            reduction_percent: 0.0,
            within_target: false,
            sufficient: false,
            summary_tokens: 0,
            duration,
            success: false,
            error: Some(error),
        }
    }
}

/// One rotation: predecessor, successor, work item, reason and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// The rotation's number.
    pub rotation: RotationId,
    /// The session that was closed.
    pub old_session: SessionId,
    /// The successor (absent when none could be started).
    pub new_session: Option<SessionId>,
    /// The agent type of both.
    pub agent_type: Arc<str>,
    /// The work item that moved.
    pub work_item: WorkItemId,
    /// Why.
    pub reason: RotationReason,
    /// Tokens in use by the old session when it rotated.
    pub before_tokens: u64,
    /// The same, in percent of the window.
    pub before_percent: f64,
    /// Compactions the old session did.
    pub compactions: u32,
    /// Tokens of the handoff summary.
    pub handoff_tokens: u64,
    /// True when the agent could not summarise and baton built the handoff itself.
    pub handoff_fallback: bool,
    /// Spawn and assign attempts made (1 each when nothing failed).
    pub attempts: u32,
    /// From the request to the hand-over (or the failure).
    pub duration: Duration,
    /// Whether the successor holds the work item.
    pub success: bool,
    /// What went wrong, when it failed.
    pub error: Option<String>,
}

/// Everything the fleet reports, in the order it happened (per session).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetEvent {
    /// A session started for a work item (first, after a rotation, or after a restart).
    SessionStarted {
        /// The new session.
        session: SessionId,
        /// Its agent type.
        agent_type: Arc<str>,
        /// The work item it holds.
        work_item: WorkItemId,
    },
    /// A session changed state.
    Transition(TransitionRecord),
    /// A compaction finished or failed.
    Compaction(CompactionRecord),
    /// A rotation finished or failed.
    Rotation(RotationRecord),
    /// A session stopped without reaching Closed (a panic): its work item was restarted,
    /// requeued, or sent to dead letter; or, when the session was rotating, the rotation goes
    /// on without it.
    Crashed {
        /// The session that stopped.
        session: SessionId,
        /// Its work item.
        work_item: WorkItemId,
        /// What happens next to the work item.
        outcome: CrashOutcome,
    },
    /// Input was refused as bad; nothing changed.
    Rejected {
        /// The session it was for, if known.
        session: Option<SessionId>,
        /// Why it was refused.
        error: String,
    },
    /// A work item finished (its session was closed by the orchestrator).
    WorkItemDone {
        /// The work item.
        work_item: WorkItemId,
        /// The session that held it last.
        session: SessionId,
    },
    /// A work item went back to the queue.
    WorkItemRequeued {
        /// The work item.
        work_item: WorkItemId,
        /// Why.
        reason: String,
    },
    /// A work item was given up on.
    DeadLetter {
        /// The work item.
        work_item: WorkItemId,
        /// Why.
        reason: String,
    },
    /// Sessions of an agent type crashed faster than the restart budget allows: no more are
    /// started until the supervisor is told otherwise.
    AgentTypeHalted {
        /// The agent type.
        agent_type: Arc<str>,
        /// The budget that was exceeded: restarts...
        intensity: u32,
        /// ...per this period.
        period: Duration,
    },
    /// A runtime call that baton does not depend on failed (for example closing a session
    /// that was already handed over); logged and reported, not fatal.
    RuntimeWarning {
        /// The session.
        session: SessionId,
        /// What failed.
        error: String,
    },
    /// At start-up, the supervisor found this unfinished work item in its journal: one event
    /// per item, saying what recovery does with it.
    Recovered {
        /// The work item.
        work_item: WorkItemId,
        /// What happens to it.
        outcome: RecoveryOutcome,
    },
    /// A journal write failed: what is on disk stays a consistent prefix, later writes are
    /// refused, and rotations that cannot be made durable fail. Published once.
    JournalFailed {
        /// What failed.
        error: String,
    },
}

/// What recovery does with an unfinished work item found in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryOutcome {
    /// It was waiting for a session, and waits again (in its old queue order).
    Queued,
    /// Its session did not survive the restart (its actor died with the old process): the
    /// session is closed at the runtime, and the item goes back to the queue with the handoff
    /// of its last rotation.
    Requeued {
        /// The session that held it.
        session: SessionId,
    },
    /// It was rotating: the rotation resumes from the last step the journal holds, and ends
    /// with a [`FleetEvent::Rotation`] record like any other.
    RotationResumed {
        /// The rotation.
        rotation: RotationId,
        /// The session being replaced.
        session: SessionId,
        /// The last step the journal holds.
        step: RotationStep,
    },
}

/// What the supervisor did with the work item of a crashed session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashOutcome {
    /// A new session is being started for it, within the restart budget.
    Restarted,
    /// The agent type's restart budget is spent: the item waits in the queue.
    Requeued,
    /// The item crashed too many times: it went to dead letter.
    DeadLetter,
    /// The session crashed while its rotation was under way: the rotation goes on without its
    /// actor (the item needs no restart), and the crash spends its agent type's restart budget.
    RotationContinues,
}

/// An event with its place in the fleet's event sequence, for readers that must resume a
/// stream without a gap or a duplicate (an HTTP event stream's `Last-Event-ID`).
///
/// With a journal, `seq` is the event's row in the journal's event log (`events.seq`, the
/// number [`JournalReader`](crate::journal::JournalReader) and
/// [`JournalView::events`](crate::journal::JournalView::events) list for it), and `at` the time
/// stored with it: a reader that has seen up to `seq` N reads the rest of the backlog with
/// [`Filter::after`](crate::journal::Filter::after) `= Some(N)`, then goes on with the live
/// stream from the first `seq` above what it read. Sequence numbers rise strictly along the
/// stream; the log also holds rows that are supervisor steps, not events, so numbers can be
/// skipped. Without a journal, `seq` counts the bus's events from 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sequenced {
    /// The event's number: its journal `seq`, or (without a journal) its count on the bus.
    pub seq: u64,
    /// When it was recorded (with a journal, the time the journal stored with it).
    pub at: Timestamp,
    /// The event.
    pub event: FleetEvent,
}

/// Where an event stands in the journal's log, as it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Committed as row `seq` of the log, recorded at `at` (ms since the epoch).
    Logged {
        /// Its row.
        seq: u64,
        /// Its time.
        at: i64,
    },
    /// Not in any log: there is no journal, or it failed. Numbered after the last event
    /// delivered.
    Next,
    /// The journal works but did not log it (a duplicate of a logged event, or a record it
    /// dropped as bad): sequenced subscribers do not receive it.
    Unlogged,
}

/// The senders of one bus, and the last sequence number delivered.
#[derive(Default)]
struct Senders {
    /// Subscribers of plain events.
    plain: Vec<UnboundedSender<FleetEvent>>,
    /// Subscribers of sequenced events.
    sequenced: Vec<UnboundedSender<Sequenced>>,
    /// The last sequence number delivered (0 before the first).
    last: u64,
}

/// The subscribers of one bus: one unbounded sender each, so that events are never dropped
/// for a slow reader. A subscriber that dropped its receiver is forgotten.
#[derive(Default)]
pub(crate) struct Subscribers(Mutex<Senders>);

impl Subscribers {
    /// Sends `event` to every subscriber; sequenced subscribers get it numbered by `stamp`.
    /// Numbers are given under the lock that orders deliveries, so they rise along every
    /// subscriber's stream.
    pub(crate) fn deliver(&self, event: FleetEvent, stamp: Stamp) {
        let mut subs = self.0.lock().expect("lock");
        let numbered = match stamp {
            Stamp::Logged { seq, at } => {
                subs.last = subs.last.max(seq);
                Some((seq, Some(Timestamp(at))))
            }
            Stamp::Next => {
                subs.last += 1;
                Some((subs.last, None))
            }
            Stamp::Unlogged => None,
        };
        if let Some((seq, at)) = numbered
            && !subs.sequenced.is_empty()
        {
            // (The clock is read only when someone wants the time.)
            let at = at.unwrap_or_else(Timestamp::now);
            let sequenced = Sequenced {
                seq,
                at,
                event: event.clone(),
            };
            subs.sequenced.retain(|s| s.send(sequenced.clone()).is_ok());
        }
        match subs.plain.len() {
            0 => {}
            1 => {
                if subs.plain[0].send(event).is_err() {
                    subs.plain.clear();
                }
            }
            _ => subs.plain.retain(|s| s.send(event.clone()).is_ok()),
        }
    }

    fn len(&self) -> usize {
        self.0
            .lock()
            .map_or(0, |s| s.plain.len() + s.sequenced.len())
    }
}

/// Fans events out to subscribers. Cheap to clone; every clone publishes to the same
/// subscribers, in one order that all of them see.
///
/// With a journal ([`EventBus::with_journal`]), an event is handed to the journal's writer and
/// reaches subscribers from there, once the transaction holding it is durable: no subscriber
/// ever sees an event that a crash could take back, and every subscriber sees events in the
/// journal's order. Without one, events reach subscribers at once.
#[derive(Clone, Default)]
pub struct EventBus {
    /// Who receives events.
    subscribers: Arc<Subscribers>,
    /// Where events are made durable before they are delivered, if anywhere.
    journal: Option<Journal>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscribers.len())
            .field("journal", &self.journal.is_some())
            .finish()
    }
}

impl EventBus {
    /// A bus that delivers every event once `journal` holds it durably (see the type's docs).
    /// Subscribers of this bus made before stay subscribed.
    pub fn with_journal(&self, journal: Journal) -> Self {
        journal.deliver_to(self.subscribers.clone());
        Self {
            subscribers: self.subscribers.clone(),
            journal: Some(journal),
        }
    }

    /// A new stream of every event published from now on (with a journal: every event made
    /// durable from now on).
    pub fn subscribe(&self) -> UnboundedReceiver<FleetEvent> {
        let (tx, rx) = unbounded_channel();
        self.subscribers.0.lock().expect("lock").plain.push(tx);
        rx
    }

    /// Like [`subscribe`](Self::subscribe), each event with its sequence number (see
    /// [`Sequenced`]). With a journal, only events the journal logged are delivered, plus,
    /// once it has failed, the events it could no longer log (numbered after the last logged
    /// one; they are in no log).
    pub fn subscribe_sequenced(&self) -> UnboundedReceiver<Sequenced> {
        let (tx, rx) = unbounded_channel();
        self.subscribers.0.lock().expect("lock").sequenced.push(tx);
        rx
    }

    /// Publishes `event`: to the journal, which delivers it once durable, or straight to every
    /// subscriber. Never waits.
    pub fn publish(&self, event: FleetEvent) {
        match &self.journal {
            Some(j) => j.record_owned(event),
            None => self.subscribers.deliver(event, Stamp::Next),
        }
    }
}

//! The session state machine: Normal, Compacting, Rotating and Closed, driven by events.
//!
//! ```text
//!             usage >= compact_at                     Compacted, sufficient
//!   Normal ----------------------------> Compacting ---------------------------> Normal
//!     |  usage >= rotate_at, or               |  insufficient, failed, timed out,
//!     |  compaction budget spent              |  or usage >= rotate_at meanwhile
//!     v                                       v
//!   Rotating <--------------------------------+
//!     |  HandedOver(successor) or RotationFailed
//!     v
//!   Closed   (terminal; Close from any live state also lands here)
//! ```
//!
//! The machine is a blocking [statig] machine and does no I/O. Handlers only record what should
//! happen next in a [`Step`] (the statig context): [`Effect`]s for the owner to carry out, a
//! [`TransitionRecord`] per state change (written from `after_transition`, because statig
//! 0.4.1's blocking `before_transition` passes its arguments swapped), and the measurement of a
//! finished compaction. The owner (an actor, the replay, a test) carries the effects out and feeds
//! their results back as events. The same input sequence therefore always yields the same log.
//!
//! [`SessionMachine`] wraps the statig machine: it validates each event first (bad input is a
//! typed [`MachineError`], logged, and changes nothing) and logs transitions and ignored events.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use statig::prelude::*;
use thiserror::Error;

use crate::policy::{Action, Policy, RotationReason, reduction};
use crate::usage::{Usage, UsageError, UsageSource};
use crate::vocab::SessionId;

/// The four states, as plain data for records, snapshots and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Working; usage below `compact_at` (or above it with the compaction not yet asked for).
    Normal,
    /// A compaction has been asked for and its result is awaited.
    Compacting,
    /// A rotation has been asked for; the supervisor is preparing the successor.
    Rotating,
    /// Terminal: handed over, failed to rotate, or closed on request.
    Closed,
}

/// What drives the machine. Usage comes from the provider or an estimate; the rest are results
/// of effects the owner carried out, or requests from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A new reading of the session's context.
    Usage(Usage),
    /// The compaction asked for finished: the context is now `after` tokens, of which the
    /// summary is `summary_tokens`.
    Compacted {
        /// Tokens in use after the history was replaced.
        after: u64,
        /// Tokens of the summary that replaced it.
        summary_tokens: u64,
    },
    /// The compaction asked for failed or timed out.
    CompactionFailed {
        /// What went wrong, for the record.
        error: String,
    },
    /// Rotate now, whatever the usage (an operator, the orchestrator).
    Rotate,
    /// A request of the session did not fit its model's context window, as the endpoint said.
    /// The machine rotates the session with [`RotationReason::Overflow`] from any live state;
    /// the server's figures, when it gave them, become the session's latest reading (reported),
    /// so the transition and the rotation carry them. The runtime only passes the error on:
    /// what it means is decided here.
    Overflow {
        /// Tokens the server counted in the refused request's prompt, when it said.
        prompt: Option<u64>,
        /// The window the server enforces, when it said; absent, the window of the session's
        /// latest reading is assumed.
        window: Option<u64>,
    },
    /// The successor holds the work item; this session is done.
    HandedOver {
        /// The session that took over.
        successor: SessionId,
    },
    /// The rotation could not be completed; the session closes and the supervisor decides
    /// where the work item goes.
    RotationFailed {
        /// What went wrong, for the record.
        error: String,
    },
    /// Close the session (work done, shutdown).
    Close,
}

/// The kind of an [`Event`], without its data: what caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// [`Event::Usage`].
    Usage,
    /// [`Event::Compacted`].
    Compacted,
    /// [`Event::CompactionFailed`].
    CompactionFailed,
    /// [`Event::Rotate`].
    Rotate,
    /// [`Event::Overflow`].
    Overflow,
    /// [`Event::HandedOver`].
    HandedOver,
    /// [`Event::RotationFailed`].
    RotationFailed,
    /// [`Event::Close`].
    Close,
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Usage(_) => EventKind::Usage,
            Event::Compacted { .. } => EventKind::Compacted,
            Event::CompactionFailed { .. } => EventKind::CompactionFailed,
            Event::Rotate => EventKind::Rotate,
            Event::Overflow { .. } => EventKind::Overflow,
            Event::HandedOver { .. } => EventKind::HandedOver,
            Event::RotationFailed { .. } => EventKind::RotationFailed,
            Event::Close => EventKind::Close,
        }
    }
}

/// Work the machine asks its owner to do. The owner reports the outcome back as an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Summarise the history and replace it; answer [`Event::Compacted`] or
    /// [`Event::CompactionFailed`].
    Compact {
        /// The reading that triggered the compaction.
        before: Usage,
    },
    /// Start a successor of the same agent type with the work item; answer
    /// [`Event::HandedOver`] or [`Event::RotationFailed`].
    RequestRotation {
        /// Why.
        reason: RotationReason,
        /// The latest reading (absent for a manual rotation before any usage arrived).
        before: Option<Usage>,
    },
    /// The session is closed: stop the actor and release the agent.
    Stop,
}

/// One state change, numbered per session. Exactly one is written per change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// 1 for the session's first transition, then 2, 3, ...: gaps would mean a lost record.
    pub seq: u64,
    /// The session that changed state.
    pub session: SessionId,
    /// State before.
    pub from: Phase,
    /// State after.
    pub to: Phase,
    /// The kind of event that caused the change.
    pub cause: EventKind,
    /// The session's latest reading when it changed state.
    pub usage: Option<Usage>,
    /// For a change into Rotating, why.
    pub reason: Option<RotationReason>,
}

/// What a finished compaction achieved, measured by the machine when `Compacted` arrives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompactionMeasure {
    /// The reading that triggered the compaction.
    pub before: Usage,
    /// The size after the history was replaced.
    pub after: Usage,
    /// Tokens of the summary.
    pub summary_tokens: u64,
    /// `1 - after/before`.
    pub reduction: f64,
    /// Whether the session could stay (enough freed and below `compact_at`).
    pub sufficient: bool,
    /// Whether the reduction fell in the policy's target band.
    pub within_target: bool,
}

/// Everything one event produced: the statig context, returned to the caller after dispatch.
/// Empty (and allocation-free) on the common path, a usage reading that changes nothing.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Work for the owner, in order.
    pub effects: Vec<Effect>,
    /// State changes, in order.
    pub transitions: Vec<TransitionRecord>,
    /// Set when the event finished a compaction.
    pub compaction: Option<CompactionMeasure>,
    /// True when the event did not apply to the state the session was in (a late result, or
    /// anything sent to a closed session) and was dropped.
    pub ignored: bool,
    /// Set when the event closed the session because its rotation failed: the error the owner
    /// reported, so that the close carries its cause (also kept as
    /// [`Session::rotation_error`]). Left out of the serialised form when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_error: Option<String>,
    /// The kind of event being handled, stamped on transition records.
    #[serde(skip)]
    cause: Option<EventKind>,
}

impl Step {
    fn for_event(kind: EventKind) -> Self {
        Self {
            cause: Some(kind),
            ..Self::default()
        }
    }
}

/// Bad input to the machine: refused before dispatch, so the state does not change.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MachineError {
    /// A token figure in an event is not a sane count.
    #[error("bad figure in {event:?}: {source}")]
    BadFigure {
        /// The event that carried it.
        event: EventKind,
        /// What is wrong with the figure.
        source: UsageError,
    },
    /// A session cannot hand over to itself.
    #[error("session {0} cannot be its own successor")]
    SelfSuccessor(SessionId),
}

/// The machine's shared storage: what one session knows about itself.
#[derive(Debug, Clone)]
pub struct Session {
    /// Stamped on every record and log line.
    id: SessionId,
    /// Thresholds for this session's agent type; shared by all sessions of the type.
    policy: Arc<Policy>,
    /// Compactions finished so far, sufficient or not (a failed one is not counted); checked
    /// against `max_compactions`.
    compactions: u32,
    /// The latest readings, oldest first, at most `policy.history_len()`.
    history: VecDeque<CompactReading>,
    /// Transitions so far; the next record's `seq` is this plus one.
    transitions: u64,
    /// How the rotation ended, once it did (one word: a fleet holds a machine per session).
    ending: Option<Ending>,
}

/// How a session's rotation ended: a successor took over, or it failed.
#[derive(Debug, Clone)]
enum Ending {
    /// Who took over.
    HandedOver(SessionId),
    /// Why the rotation failed: the session closed with this error on record (boxed: the
    /// rare case does not widen every session).
    #[allow(clippy::box_collection)]
    RotationFailed(Box<String>),
}

impl Session {
    /// A fresh session in Normal with no readings.
    pub fn new(id: SessionId, policy: Arc<Policy>) -> Self {
        Self {
            id,
            policy,
            compactions: 0,
            history: VecDeque::new(),
            transitions: 0,
            ending: None,
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }
    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    /// Compactions finished so far, sufficient or not (a failed one is not counted).
    pub fn compactions(&self) -> u32 {
        self.compactions
    }
    /// The latest reading, if any arrived.
    pub fn last_usage(&self) -> Option<Usage> {
        self.history.back().map(|r| r.to_usage())
    }
    /// The kept readings, oldest first.
    pub fn history(&self) -> impl Iterator<Item = Usage> + '_ {
        self.history.iter().map(|r| r.to_usage())
    }
    /// How many transitions the session has made.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }
    /// The successor, after a hand-over.
    pub fn successor(&self) -> Option<SessionId> {
        match self.ending {
            Some(Ending::HandedOver(s)) => Some(s),
            _ => None,
        }
    }
    /// The error the rotation failed with, when the session closed because of
    /// [`Event::RotationFailed`].
    pub fn rotation_error(&self) -> Option<&str> {
        match &self.ending {
            Some(Ending::RotationFailed(e)) => Some(e),
            _ => None,
        }
    }

    /// The reading an overflow's figures make: the server's prompt count against its window,
    /// or against the latest reading's window when it gave none. `None` without a prompt
    /// count or any window. The figures were validated before dispatch.
    fn overflow_reading(&self, prompt: Option<u64>, window: Option<u64>) -> Option<Usage> {
        let window = window.or_else(|| self.last_usage().map(|u| u.window()))?;
        Usage::new(prompt?, window, UsageSource::Reported).ok()
    }

    fn record(&mut self, usage: &Usage) {
        if self.history.len() >= self.policy.history_len() {
            self.history.pop_front();
        }
        self.history.push_back(CompactReading::from_usage(usage));
    }
}

/// The statig machine itself. Its generated `State` and `Superstate` enums are an
/// implementation detail (hence undocumented); [`Phase`] is their public view.
mod states {
    #![allow(missing_docs)]

    use super::*;

    /// A compact usage reading, kept in the bounded history and in the Compacting state (the
    /// window fits in 32 bits, see [`Usage::MAX_TOKENS`]). Unreachable from outside the crate:
    /// this module is private.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CompactReading {
        used: u32,
        window: u32,
        source: UsageSource,
    }

    impl CompactReading {
        pub fn from_usage(u: &Usage) -> Self {
            // Both figures are at most Usage::MAX_TOKENS == u32::MAX by construction.
            Self {
                used: u.used() as u32,
                window: u.window() as u32,
                source: u.source(),
            }
        }

        pub fn to_usage(self) -> Usage {
            Usage::new(self.used.into(), self.window.into(), self.source)
                .expect("a stored reading was valid when stored")
        }
    }

    #[state_machine(
        // Every session starts working.
        initial = "State::normal()",
        state(derive(Debug, Clone, Copy, PartialEq, Eq)),
        superstate(derive(Debug)),
        // Public inside this private module, so the rest of the file can name the states.
        visibility = "pub",
        // The only hook: statig 0.4.1's blocking before_transition swaps source and target.
        after_transition = "Self::after_transition"
    )]
    impl Session {
        /// Owns what every live state does alike: Close, manual rotation, and dropping results
        /// that arrive for a state the session has left.
        #[superstate]
        fn live(&mut self, context: &mut Step, event: &Event) -> Outcome<State> {
            match event {
                Event::Close => Transition(State::closed()),
                Event::Rotate => self.rotate(RotationReason::Manual),
                Event::Overflow { prompt, window } => {
                    if let Some(usage) = self.overflow_reading(*prompt, *window) {
                        self.record(&usage);
                    }
                    self.rotate(RotationReason::Overflow)
                }
                _ => {
                    context.ignored = true;
                    Handled
                }
            }
        }

        #[state(superstate = "live")]
        fn normal(&mut self, event: &Event) -> Outcome<State> {
            match event {
                Event::Usage(usage) => {
                    self.record(usage);
                    match self.policy.decide(usage, self.compactions) {
                        Action::Continue => Handled,
                        Action::Compact => {
                            Transition(State::compacting(CompactReading::from_usage(usage)))
                        }
                        Action::Rotate(reason) => self.rotate(reason),
                    }
                }
                _ => Super,
            }
        }

        /// `before` is the reading the compaction started from: it exists exactly while the
        /// session compacts.
        #[state(superstate = "live", entry_action = "enter_compacting")]
        fn compacting(
            &mut self,
            before: &CompactReading,
            context: &mut Step,
            event: &Event,
        ) -> Outcome<State> {
            match event {
                Event::Usage(usage) => {
                    self.record(usage);
                    if usage.ratio() >= self.policy.rotate_at() {
                        self.rotate(RotationReason::Threshold)
                    } else {
                        Handled
                    }
                }
                Event::Compacted {
                    after,
                    summary_tokens,
                } => self.finish_compaction(context, before.to_usage(), *after, *summary_tokens),
                Event::CompactionFailed { .. } => self.rotate(RotationReason::CompactionFailed),
                _ => Super,
            }
        }

        /// `reason` is why the session rotates: it exists exactly while the session rotates.
        #[state(superstate = "live", entry_action = "enter_rotating")]
        fn rotating(
            &mut self,
            reason: &RotationReason,
            context: &mut Step,
            event: &Event,
        ) -> Outcome<State> {
            let _ = reason; // Declares the state's storage; read by its entry action and records.
            match event {
                // Still recorded (the record shows the context it rotated from); no state change.
                Event::Usage(usage) => {
                    self.record(usage);
                    Handled
                }
                Event::HandedOver { successor } => {
                    self.ending = Some(Ending::HandedOver(*successor));
                    Transition(State::closed())
                }
                Event::RotationFailed { error } => {
                    tracing::warn!(session = %self.id, %error, "rotation failed; closing the session");
                    self.ending = Some(Ending::RotationFailed(Box::new(error.clone())));
                    context.rotation_error = Some(error.clone());
                    Transition(State::closed())
                }
                // Already rotating: a second request, or an overflow of a request still in
                // flight, changes nothing.
                Event::Rotate | Event::Overflow { .. } => {
                    context.ignored = true;
                    Handled
                }
                _ => Super,
            }
        }

        #[state(entry_action = "enter_closed")]
        fn closed(context: &mut Step, event: &Event) -> Outcome<State> {
            let _ = event;
            context.ignored = true;
            Handled
        }

        #[action]
        fn enter_compacting(before: &CompactReading, context: &mut Step) {
            context.effects.push(Effect::Compact {
                before: before.to_usage(),
            });
        }

        #[action]
        fn enter_rotating(&mut self, reason: &RotationReason, context: &mut Step) {
            context.effects.push(Effect::RequestRotation {
                reason: *reason,
                before: self.last_usage(),
            });
        }

        #[action]
        fn enter_closed(context: &mut Step) {
            context.effects.push(Effect::Stop);
        }
    }

    impl Session {
        fn rotate(&mut self, reason: RotationReason) -> Outcome<State> {
            Transition(State::rotating(reason))
        }

        fn finish_compaction(
            &mut self,
            context: &mut Step,
            before: Usage,
            after: u64,
            summary_tokens: u64,
        ) -> Outcome<State> {
            let after_usage = before
                .with_used(after, UsageSource::Estimated)
                .expect("figures are validated before dispatch");
            let red = reduction(before.used(), after);
            let sufficient = self
                .policy
                .is_sufficient(before.used(), after, before.window());
            context.compaction = Some(CompactionMeasure {
                before,
                after: after_usage,
                summary_tokens,
                reduction: red,
                sufficient,
                within_target: self.policy.within_target(red),
            });
            self.compactions += 1;
            self.record(&after_usage);
            if sufficient {
                Transition(State::normal())
            } else {
                self.rotate(RotationReason::InsufficientCompaction)
            }
        }

        fn after_transition(&mut self, source: &State, target: &State, context: &mut Step) {
            self.transitions += 1;
            let (from, to) = (phase(source), phase(target));
            let reason = match target {
                State::Rotating { reason } => Some(*reason),
                _ => None,
            };
            let usage = self.last_usage();
            tracing::info!(
                session = %self.id,
                seq = self.transitions,
                ?from,
                ?to,
                reason = reason.map(|r| r.as_str()),
                used = usage.map(|u| u.used()),
                window = usage.map(|u| u.window()),
                "session transition"
            );
            context.transitions.push(TransitionRecord {
                seq: self.transitions,
                session: self.id,
                from,
                to,
                cause: context.cause.unwrap_or(EventKind::Usage),
                usage,
                reason,
            });
        }
    }
}

use states::{CompactReading, State};

fn phase(state: &State) -> Phase {
    match state {
        State::Normal {} => Phase::Normal,
        State::Compacting { .. } => Phase::Compacting,
        State::Rotating { .. } => Phase::Rotating,
        State::Closed {} => Phase::Closed,
    }
}

/// One session's machine with input validation and logging around it: the type owners use.
pub struct SessionMachine {
    /// The statig machine; initialised on the first event.
    inner: statig::blocking::StateMachine<Session>,
}

impl fmt::Debug for SessionMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionMachine")
            .field("phase", &self.phase())
            .field("session", self.session())
            .finish()
    }
}

impl SessionMachine {
    /// A machine for a new session, in Normal.
    pub fn new(id: SessionId, policy: Arc<Policy>) -> Self {
        Self {
            inner: Session::new(id, policy).state_machine(),
        }
    }

    /// The current state.
    pub fn phase(&self) -> Phase {
        phase(self.inner.state())
    }

    /// Replaces the policy (its agent type's policy was updated at run time): every event
    /// handled from now on is decided by the new one. The kept history is not trimmed.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        // SAFETY: statig marks `inner_mut` unsafe because changing the shared storage behind
        // the machine's back could break an invariant a state relies on. No state holds
        // anything derived from the policy (states hold readings and reasons; the policy is
        // read afresh at each event), so replacing it breaks none.
        unsafe { self.inner.inner_mut() }.policy = policy;
    }

    /// What the session knows about itself.
    pub fn session(&self) -> &Session {
        &self.inner
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// Why the session is rotating, while it is (the reason lives in the Rotating state).
    pub fn rotation_reason(&self) -> Option<RotationReason> {
        match self.inner.state() {
            State::Rotating { reason } => Some(*reason),
            _ => None,
        }
    }

    /// The reading the running compaction started from, while the session compacts.
    pub fn compacting_from(&self) -> Option<Usage> {
        match self.inner.state() {
            State::Compacting { before } => Some(before.to_usage()),
            _ => None,
        }
    }

    /// Builds a reading from raw figures and handles it: the entry point for figures that come
    /// from outside (a provider response, a parsed file). A zero window or an absurd figure is
    /// refused with [`MachineError::BadFigure`], logged, and changes nothing.
    pub fn report_usage(
        &mut self,
        used: u64,
        window: u64,
        source: UsageSource,
    ) -> Result<Step, MachineError> {
        match Usage::new(used, window, source) {
            Ok(usage) => self.handle(&Event::Usage(usage)),
            Err(source) => {
                let e = MachineError::BadFigure {
                    event: EventKind::Usage,
                    source,
                };
                tracing::warn!(session = %self.id(), error = %e, "rejected input");
                Err(e)
            }
        }
    }

    /// Validates `event`, dispatches it, and returns what it produced. Bad input is refused
    /// with a typed error and a warning, and changes nothing.
    pub fn handle(&mut self, event: &Event) -> Result<Step, MachineError> {
        if let Err(e) = self.validate(event) {
            tracing::warn!(session = %self.id(), error = %e, "rejected input");
            return Err(e);
        }
        if let Event::Usage(u) = event
            && u.is_over_window()
        {
            tracing::warn!(
                session = %self.id(),
                used = u.used(),
                window = u.window(),
                "usage exceeds the window; the window is probably misconfigured"
            );
        }
        let mut step = Step::for_event(event.kind());
        self.inner.handle_with_context(event, &mut step);
        if step.ignored {
            tracing::info!(
                session = %self.id(),
                event = ?event.kind(),
                phase = ?self.phase(),
                "event does not apply to the session's state; ignored"
            );
        }
        Ok(step)
    }

    fn validate(&self, event: &Event) -> Result<(), MachineError> {
        let bad = |source| MachineError::BadFigure {
            event: event.kind(),
            source,
        };
        match event {
            Event::Compacted {
                after,
                summary_tokens,
            } => {
                for (field, v) in [("after", *after), ("summary_tokens", *summary_tokens)] {
                    if v > Usage::MAX_TOKENS {
                        return Err(bad(UsageError::Oversized {
                            field,
                            value: v,
                            max: Usage::MAX_TOKENS,
                        }));
                    }
                }
                Ok(())
            }
            Event::Overflow { prompt, window } => {
                if *window == Some(0) {
                    return Err(bad(UsageError::ZeroWindow));
                }
                for (field, v) in [("prompt", *prompt), ("window", *window)] {
                    if let Some(v) = v.filter(|v| *v > Usage::MAX_TOKENS) {
                        return Err(bad(UsageError::Oversized {
                            field,
                            value: v,
                            max: Usage::MAX_TOKENS,
                        }));
                    }
                }
                Ok(())
            }
            Event::HandedOver { successor } if *successor == self.id() => {
                Err(MachineError::SelfSuccessor(*successor))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million idle sessions each hold one machine: its size is part of every session's
    /// cost. State-local storage keeps the compaction's start (12 bytes) in the state itself;
    /// 144 bytes before, 128 with it.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_session_machine_stays_within_128_bytes() {
        assert!(
            std::mem::size_of::<SessionMachine>() <= 128,
            "{} bytes",
            std::mem::size_of::<SessionMachine>()
        );
        assert!(std::mem::size_of::<State>() <= 12);
    }
}

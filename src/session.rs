//! [`SessionActor`]: one agent session as an actix actor that owns its state machine.
//!
//! A usage message is dispatched to the machine synchronously, in mailbox order. Effects that
//! need the runtime run as actor futures (`ctx.spawn(fut.into_actor(self).map(..))`) under the
//! policy's deadlines, so the mailbox keeps flowing while a compaction runs: a 96% reading that
//! arrives during a slow compaction rotates the session at once, and the compaction is
//! cancelled. Rotation is the supervisor's job: the actor asks for it and waits for
//! `HandedOver` or `RotationFailed`.
//!
//! A session whose actor stops without reaching Closed (a panic in a handler or in a runtime
//! future) reports itself as crashed from its destructor, so the supervisor always notices.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{self, Poll};
use std::time::Duration;

use actix::prelude::*;
use futures_util::task::AtomicWaker;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::journal::Journal;
use crate::machine::{Effect, Event, Phase, SessionMachine, Step};
use crate::record::{CompactionRecord, EventBus, FleetEvent};
use crate::runtime::{AgentRuntime, RuntimeError};
use crate::usage::{Usage, UsageSource};
use crate::vocab::{AgentType, SessionId, SummaryPurpose, WorkItemId};

/// What every session of a fleet shares, behind one `Arc` so that a session stays small.
pub(crate) struct Fleet {
    /// Acts on the agents.
    pub runtime: Arc<dyn AgentRuntime>,
    /// Where events go.
    pub bus: EventBus,
    /// Caps concurrent compactions across the fleet (no summariser bursts).
    pub compaction_slots: Arc<Semaphore>,
    /// The supervisor, for rotation requests and the end of a session.
    pub supervisor: Recipient<SessionNotice>,
    /// How often to poll the runtime for usage, if at all.
    pub poll_interval: Option<Duration>,
    /// The journal, if any: a compaction waits until its start is durable before it replaces
    /// the agent's history, so that a crash cannot leave a replaced history unrecorded.
    pub journal: Option<Journal>,
}

/// What a session tells its supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum SessionNotice {
    /// The machine entered Rotating: start a successor.
    RotationRequested(RotationRequest),
    /// The session reached Closed and its actor stopped.
    Ended {
        /// Which session.
        session: SessionId,
    },
    /// The actor stopped without reaching Closed.
    Crashed {
        /// Which session.
        session: SessionId,
    },
}

/// Everything the supervisor needs to rotate a session, including what a fallback handoff is
/// built from.
#[derive(Debug)]
pub(crate) struct RotationRequest {
    /// The rotating session.
    pub session: SessionId,
    /// Why.
    pub reason: crate::policy::RotationReason,
    /// Its latest reading.
    pub before: Option<Usage>,
    /// Compactions it did.
    pub compactions: u32,
    /// Its kept readings, oldest first.
    pub history: Vec<Usage>,
    /// The summary of its last compaction, if any.
    pub last_summary: Option<Arc<str>>,
}

/// A usage reading for a session, as raw figures: validated by the session, refused (and
/// reported as [`FleetEvent::Rejected`]) when bad. Answers the session's state once the
/// reading was handled (every event it caused has been published by then).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Phase")]
pub struct ReportUsage {
    /// Tokens in use.
    pub used: u64,
    /// The window, when the reporter knows it; the agent type's window otherwise.
    pub window: Option<u64>,
    /// Who measured it.
    pub source: UsageSource,
}

/// The newest usage reading waiting for a session, written from any thread by a
/// [`SessionHandle`](crate::supervisor::SessionHandle). Readings that arrive while one is
/// already waiting replace it instead of queueing behind it: on the hot path only the newest
/// reading matters (usage only grows between compactions, so the newest is also the largest).
///
/// A waiting reading wakes the session's actor directly through the slot's waker (the actor
/// looks at the slot from an actor future, `Readings`), so a report costs a few atomic
/// operations and no mailbox envelope. Every mailbox handler of the session first takes a
/// waiting reading, so a message sent after a report is still handled after it.
///
/// A reading is one word (`used`, `window` and `source` packed together, see
/// [`UsageSlot::pack`]), swapped in and out whole, so a reading stored while another is taken
/// can never be read half old, half new.
///
/// The slot is also the one small allocation the session and its supervisor share, so it
/// carries what the registry would otherwise keep a copy of (and be told of by message): the
/// session's phase, written at each transition; its shard; and the flag that tells the session
/// its supervisor went away.
#[derive(Debug)]
pub(crate) struct UsageSlot {
    /// The waiting reading, packed, or [`UsageSlot::EMPTY`] when none waits.
    reading: AtomicU64,
    /// The session's task, woken when a reading starts waiting.
    waker: AtomicWaker,
    /// The session's phase as of its last transition (see [`UsageSlot::phase`]).
    phase: AtomicU8,
    /// Set when the supervisor went away: the session's actor stops once nobody else holds
    /// its address (see [`Readings`]).
    orphaned: AtomicBool,
    /// The shard the session runs on, or [`UsageSlot::NO_SHARD`].
    shard: u32,
}

impl Default for UsageSlot {
    fn default() -> Self {
        Self::new(None)
    }
}

impl UsageSlot {
    /// The slot of a session running on `shard` (`None`: the supervisor's own thread).
    pub(crate) fn new(shard: Option<usize>) -> Self {
        Self {
            reading: AtomicU64::new(Self::EMPTY),
            waker: AtomicWaker::new(),
            phase: AtomicU8::new(Phase::Normal as u8),
            orphaned: AtomicBool::new(false),
            shard: shard.map_or(Self::NO_SHARD, |s| {
                u32::try_from(s).expect("fewer than 2^32 shards")
            }),
        }
    }

    /// `shard` of a session on the supervisor's own thread.
    const NO_SHARD: u32 = u32::MAX;

    /// The shard the session runs on, if sessions are sharded.
    pub(crate) fn shard(&self) -> Option<usize> {
        (self.shard != Self::NO_SHARD).then_some(self.shard as usize)
    }

    /// The session's phase as of its last transition (for listings; written by the session
    /// before it publishes the transition).
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            x if x == Phase::Compacting as u8 => Phase::Compacting,
            x if x == Phase::Rotating as u8 => Phase::Rotating,
            x if x == Phase::Closed as u8 => Phase::Closed,
            _ => Phase::Normal,
        }
    }

    /// Records the session's new phase.
    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The supervisor went away: the session stops once no handle holds its address (as an
    /// actix actor nobody can reach does).
    pub(crate) fn orphan(&self) {
        self.orphaned.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl UsageSlot {
    /// No reading waits. Never a packed reading: its source bits (3) name no source.
    const EMPTY: u64 = u64::MAX;
    /// Bits of the window in a packed reading (windows of 2^30 tokens and more go by message).
    const WINDOW_BITS: u32 = 30;

    /// `used << 32 | window << 2 | source`; `None` when the figures do not fit (`used` above
    /// 2^32 - 1, `window` 0 or of 2^30 and more). A window of `None` is stored as 0.
    fn pack(used: u64, window: Option<u64>, source: UsageSource) -> Option<u64> {
        let window = match window {
            None => 0,
            Some(0) => return None,
            Some(w) if w >> Self::WINDOW_BITS != 0 => return None,
            Some(w) => w,
        };
        let used = u32::try_from(used).ok()?;
        Some(u64::from(used) << 32 | window << 2 | source as u64)
    }

    /// The figures of a packed reading.
    fn unpack(packed: u64) -> (u64, Option<u64>, UsageSource) {
        let source = match packed & 3 {
            x if x == UsageSource::Estimated as u64 => UsageSource::Estimated,
            x if x == UsageSource::Modelled as u64 => UsageSource::Modelled,
            _ => UsageSource::Reported,
        };
        let window = (packed >> 2) & ((1 << Self::WINDOW_BITS) - 1);
        (packed >> 32, (window != 0).then_some(window), source)
    }

    /// Stores a reading and wakes the session unless a reading was already waiting (it will
    /// take the newest). Returns false, storing nothing, when the figures do not fit the slot
    /// (they go by message instead, where the session refuses bad ones with a typed error).
    pub(crate) fn put(&self, used: u64, window: Option<u64>, source: UsageSource) -> bool {
        let Some(packed) = Self::pack(used, window, source) else {
            return false;
        };
        if self.reading.swap(packed, Ordering::AcqRel) == Self::EMPTY {
            self.waker.wake();
        }
        true
    }

    /// Whether a reading waits.
    #[cfg(test)]
    fn is_pending(&self) -> bool {
        self.reading.load(Ordering::Acquire) != Self::EMPTY
    }

    /// Takes the waiting reading, `(used, window, source)`, leaving the slot empty: a reading
    /// stored after this wakes the session again.
    fn take(&self) -> Option<(u64, Option<u64>, UsageSource)> {
        // Every mailbox handler asks first: a plain load when nothing waits (the usual case
        // there), the swap only when a reading does.
        if self.reading.load(Ordering::Acquire) == Self::EMPTY {
            return None;
        }
        match self.reading.swap(Self::EMPTY, Ordering::AcqRel) {
            Self::EMPTY => None,
            packed => Some(Self::unpack(packed)),
        }
    }
}

/// The session's side of its [`UsageSlot`]: an actor future that handles the waiting reading
/// each time the slot wakes it. It keeps the actor alive (the registry holds only a weak
/// address, so that an idle session carries no sender of its own), and ends once the
/// supervisor went away ([`UsageSlot::orphan`]) and no handle holds the session's address:
/// the actor then stops, as actix stops an actor nobody can reach (dropping the last handle
/// wakes the actor through its mailbox). Zero-sized, so actix's box of it costs no
/// allocation.
struct Readings;

impl ActorFuture<SessionActor> for Readings {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut SessionActor,
        ctx: &mut Context<SessionActor>,
        task: &mut task::Context<'_>,
    ) -> Poll<()> {
        // Register before looking, so a reading stored in between still wakes us.
        act.slot.waker.register(task.waker());
        act.take_waiting(ctx);
        if act.slot.orphaned.load(Ordering::Acquire) && !ctx.connected() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Orders for a session from its supervisor.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) enum Command {
    /// Close the session.
    Close,
    /// Rotate now (manual).
    Rotate,
    /// The successor holds the work item.
    HandedOver(SessionId),
    /// The rotation failed; close.
    RotationFailed(String),
}

/// A session's state, for listings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SessionInfo {
    /// The session.
    pub session: SessionId,
    /// Its agent type.
    pub agent_type: Arc<str>,
    /// The work item it holds.
    pub work_item: WorkItemId,
    /// Its state.
    pub phase: Phase,
    /// Its latest reading.
    pub usage: Option<Usage>,
    /// Compactions it did.
    pub compactions: u32,
    /// Its kept readings, oldest first (at most the policy's `history_len`).
    pub history: Vec<Usage>,
}

/// What a session's watchers see (see [`SessionHandle::status`](crate::SessionHandle::status)):
/// its phase, updated at each transition, and the successor it handed its work item to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStatus {
    /// The session's phase now. `Closed` is final: the session's actor stops right after.
    pub phase: Phase,
    /// The session that took the work item over, once a rotation handed it over (set just
    /// before the phase becomes `Closed`).
    pub successor: Option<SessionId>,
}

/// What a [`Watch`] hands the session before it answers.
#[derive(Debug)]
pub(crate) enum Input {
    /// A usage reading, as [`ReportUsage`].
    Usage(ReportUsage),
    /// The endpoint refused a request of the session as too big for its window:
    /// [`Event::Overflow`], with the server's figures when it gave them.
    Overflow {
        /// Tokens the server counted in the refused prompt.
        prompt: Option<u64>,
        /// The window the server enforces.
        window: Option<u64>,
    },
}

/// Handles `input` (if any), then answers a receiver of the session's [`SessionStatus`] whose
/// current value is the status after the input: a caller that awaits its changes cannot miss
/// one that the input caused.
#[derive(Debug, Message)]
#[rtype(result = "watch::Receiver<SessionStatus>")]
pub(crate) struct Watch(pub Option<Input>);

/// Asks a session for its [`SessionInfo`].
#[derive(Debug, Message)]
#[rtype(result = "SessionInfo")]
pub(crate) struct Inspect;

/// Usage polling for runtimes that report usage, behind a circuit breaker.
struct Poller {
    /// Opens after repeated failures.
    breaker: CircuitBreaker,
    /// A poll is running; do not start another.
    in_flight: bool,
}

/// One agent session.
///
/// Kept small: a fleet holds one per session, so what only some sessions need (a compaction
/// under way, a summary, polling, watchers) lives in `Extras`, boxed on first use; an idle
/// session carries one word for all of it.
pub struct SessionActor {
    /// The state machine; the only place the session's state lives. Boxed: the actor lives
    /// in its task's allocation, which tokio aligns to 128 bytes, and with the machine inline
    /// that allocation is 640 bytes instead of 512 (see docs/performance.md).
    machine: Box<SessionMachine>,
    /// Its agent type (shared).
    agent: Arc<AgentType>,
    /// The work item it holds.
    item: WorkItemId,
    /// What the fleet shares.
    fleet: Arc<Fleet>,
    /// Coalesced usage readings from session handles (and the phase the registry lists).
    slot: Arc<UsageSlot>,
    /// What only some sessions need, made on first use.
    extras: Option<Box<Extras>>,
    /// Set when the machine reached Closed: the actor stopped on purpose.
    finished: bool,
}

/// The part of a session that an idle one does without (see [`SessionActor`]).
#[derive(Default)]
struct Extras {
    /// The actor future running the compaction under way, if any; cancelled if the session
    /// leaves Compacting first.
    compaction: Option<SpawnHandle>,
    /// The summary of the last compaction, for a fallback handoff.
    last_summary: Option<Arc<str>>,
    /// Polling state, when polling is on.
    poller: Option<Poller>,
    /// Where watchers of the session's status are told of each transition; made when the first
    /// watcher asks.
    watchers: Option<watch::Sender<SessionStatus>>,
}

impl SessionActor {
    pub(crate) fn new(
        id: SessionId,
        agent: Arc<AgentType>,
        item: WorkItemId,
        fleet: Arc<Fleet>,
        slot: Arc<UsageSlot>,
    ) -> Self {
        let extras = fleet.poll_interval.map(|_| {
            Box::new(Extras {
                poller: Some(Poller {
                    breaker: CircuitBreaker::default(),
                    in_flight: false,
                }),
                ..Extras::default()
            })
        });
        Self {
            machine: Box::new(SessionMachine::new(id, agent.policy.clone())),
            agent,
            item,
            fleet,
            slot,
            extras,
            finished: false,
        }
    }

    /// The session's extras, made on first use.
    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// The watchers' sender, if anyone watches.
    fn watchers(&self) -> Option<&watch::Sender<SessionStatus>> {
        self.extras.as_ref()?.watchers.as_ref()
    }

    /// The summary of the last compaction, if any.
    fn last_summary(&self) -> Option<Arc<str>> {
        self.extras.as_ref()?.last_summary.clone()
    }

    /// Handles a reading given as raw figures: validated by the machine; a bad one is
    /// published as rejected input and changes nothing.
    fn usage(
        &mut self,
        used: u64,
        window: Option<u64>,
        source: UsageSource,
        ctx: &mut Context<Self>,
    ) {
        let window = window.unwrap_or(self.agent.window);
        match self.machine.report_usage(used, window, source) {
            Ok(step) => {
                if !(step.effects.is_empty() && step.transitions.is_empty()) {
                    self.apply(step, ctx);
                }
            }
            Err(e) => self.fleet.bus.publish(FleetEvent::Rejected {
                session: Some(self.id()),
                error: e.to_string(),
            }),
        }
    }

    /// Handles the reading waiting in the slot, if any (a stopped machine ignores it).
    fn take_waiting(&mut self, ctx: &mut Context<Self>) {
        if !self.finished
            && let Some((used, window, source)) = self.slot.take()
        {
            self.usage(used, window, source, ctx);
        }
    }

    fn id(&self) -> SessionId {
        self.machine.id()
    }

    /// Dispatches one event and carries out what it produced.
    fn dispatch(&mut self, event: &Event, ctx: &mut Context<Self>) {
        match self.machine.handle(event) {
            Ok(step) => self.apply(step, ctx),
            Err(e) => self.fleet.bus.publish(FleetEvent::Rejected {
                session: Some(self.id()),
                error: e.to_string(),
            }),
        }
    }

    fn apply(&mut self, step: Step, ctx: &mut Context<Self>) {
        for t in step.transitions {
            if t.from == Phase::Compacting
                && let Some(handle) = self.extras.as_mut().and_then(|e| e.compaction.take())
            {
                // Leaving Compacting before the result came back: cancel the call. Its result,
                // should it still come, is never applied.
                tracing::info_span!("compaction", session = %t.session).in_scope(|| {
                    tracing::info!(to = ?t.to, cause = ?t.cause, "compaction cancelled: the session left Compacting; a late result is ignored");
                });
                ctx.cancel_future(handle);
            }
            if let Some(w) = self.watchers() {
                w.send_modify(|s| s.phase = t.to);
            }
            self.slot.set_phase(t.to);
            self.fleet.bus.publish(FleetEvent::Transition(t));
        }
        for effect in step.effects {
            match effect {
                Effect::Compact { before } => self.start_compaction(before, ctx),
                Effect::RequestRotation { reason, before } => {
                    let s = self.machine.session();
                    self.fleet
                        .supervisor
                        .do_send(SessionNotice::RotationRequested(RotationRequest {
                            session: self.id(),
                            reason,
                            before,
                            compactions: s.compactions(),
                            history: s.history().collect(),
                            last_summary: self.last_summary(),
                        }));
                }
                Effect::Stop => {
                    self.finished = true;
                    self.fleet
                        .supervisor
                        .do_send(SessionNotice::Ended { session: self.id() });
                    ctx.stop();
                }
            }
        }
    }

    fn start_compaction(&mut self, before: Usage, ctx: &mut Context<Self>) {
        let id = self.id();
        let runtime = self.fleet.runtime.clone();
        let slots = self.fleet.compaction_slots.clone();
        let limit = self.agent.policy.compaction_timeout();
        let journal = self.fleet.journal.clone();
        let started = Instant::now();
        let span = tracing::info_span!("compaction", session = %id, before = before.used());
        let work = async move {
            // Waiting for a slot counts against the deadline.
            tokio::time::timeout(limit, async {
                let _slot = slots
                    .acquire_owned()
                    .await
                    .map_err(|_| RuntimeError::permanent("compaction slots closed"))?;
                let summary = runtime.summarise(id, SummaryPurpose::Compaction).await?;
                // The transition into Compacting is the compaction's intent: durable before the
                // history is replaced. (A failed journal is reported by the supervisor; the
                // compaction goes on.)
                if let Some(j) = &journal
                    && let Err(e) = j.flush().await
                {
                    tracing::error!(session = %id, error = %e, "compaction start not durable");
                }
                let after = runtime.replace_history(id, &summary).await?;
                Ok::<_, RuntimeError>((after, summary))
            })
            .await
            .unwrap_or(Err(RuntimeError::Timeout(limit)))
        }
        .instrument(span);
        let handle = ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.extras().compaction = None;
            let duration = started.elapsed();
            match result {
                Ok((after, summary)) => {
                    let summary_tokens = summary.tokens;
                    act.extras().last_summary = Some(summary.text.into());
                    let event = Event::Compacted {
                        after,
                        summary_tokens,
                    };
                    match act.machine.handle(&event) {
                        Ok(step) => {
                            if let Some(m) = &step.compaction {
                                act.fleet.bus.publish(FleetEvent::Compaction(
                                    CompactionRecord::finished(
                                        act.id(),
                                        act.agent.name.clone(),
                                        act.item,
                                        m,
                                        duration,
                                    ),
                                ));
                            }
                            act.apply(step, ctx);
                        }
                        Err(e) => {
                            // The runtime reported an absurd size: the compaction cannot be
                            // trusted, so it counts as failed.
                            let error = format!("runtime reported a bad size: {e}");
                            act.compaction_failed(before, duration, error, ctx);
                        }
                    }
                }
                Err(e) => act.compaction_failed(before, duration, e.to_string(), ctx),
            }
        }));
        self.extras().compaction = Some(handle);
    }

    fn compaction_failed(
        &mut self,
        before: Usage,
        duration: Duration,
        error: String,
        ctx: &mut Context<Self>,
    ) {
        tracing::warn!(session = %self.id(), %error, "compaction failed");
        self.fleet
            .bus
            .publish(FleetEvent::Compaction(CompactionRecord::failed(
                self.id(),
                self.agent.name.clone(),
                self.item,
                before,
                duration,
                error.clone(),
            )));
        self.dispatch(&Event::CompactionFailed { error }, ctx);
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let Some(p) = self.extras.as_mut().and_then(|e| e.poller.as_mut()) else {
            return;
        };
        if p.in_flight || !p.breaker.allow(Instant::now()) {
            return;
        }
        p.in_flight = true;
        let (id, runtime) = (self.id(), self.fleet.runtime.clone());
        let limit = self.fleet.poll_interval.unwrap_or(Duration::from_secs(10));
        let call = async move {
            tokio::time::timeout(limit, runtime.usage(id))
                .await
                .unwrap_or(Err(RuntimeError::Timeout(limit)))
        };
        ctx.spawn(call.into_actor(self).map(|result, act, ctx| {
            let Some(p) = act.extras.as_mut().and_then(|e| e.poller.as_mut()) else {
                return;
            };
            p.in_flight = false;
            match result {
                Ok(usage) => {
                    p.breaker.success();
                    act.dispatch(&Event::Usage(usage), ctx);
                }
                Err(RuntimeError::Unsupported(_)) => {
                    tracing::info!(session = %act.id(), "runtime does not report usage; polling stops");
                    act.extras().poller = None;
                }
                Err(e) => {
                    p.breaker.failure(Instant::now());
                    let open = p.breaker.is_open();
                    tracing::warn!(session = %act.id(), error = %e, open, "usage poll failed");
                }
            }
        }));
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(Readings);
        let polls = self.extras.as_ref().is_some_and(|e| e.poller.is_some());
        if let Some(every) = self.fleet.poll_interval.filter(|_| polls) {
            ctx.run_interval(every, |act, ctx| act.poll(ctx));
        }
    }
}

impl Drop for SessionActor {
    fn drop(&mut self) {
        if !self.finished {
            tracing::error!(session = %self.id(), phase = ?self.machine.phase(), "session stopped without closing");
            self.fleet
                .supervisor
                .do_send(SessionNotice::Crashed { session: self.id() });
        }
    }
}

impl Handler<ReportUsage> for SessionActor {
    type Result = MessageResult<ReportUsage>;

    fn handle(&mut self, msg: ReportUsage, ctx: &mut Self::Context) -> Self::Result {
        self.take_waiting(ctx);
        self.usage(msg.used, msg.window, msg.source, ctx);
        MessageResult(self.machine.phase())
    }
}

impl Handler<Command> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Command, ctx: &mut Self::Context) {
        self.take_waiting(ctx);
        let event = match msg {
            Command::Close => Event::Close,
            Command::Rotate => Event::Rotate,
            Command::HandedOver(successor) => {
                if let Some(w) = self.watchers() {
                    w.send_modify(|s| s.successor = Some(successor));
                }
                Event::HandedOver { successor }
            }
            Command::RotationFailed(error) => Event::RotationFailed { error },
        };
        self.dispatch(&event, ctx);
    }
}

impl Handler<Watch> for SessionActor {
    type Result = MessageResult<Watch>;

    fn handle(&mut self, Watch(input): Watch, ctx: &mut Self::Context) -> Self::Result {
        self.take_waiting(ctx);
        match input {
            Some(Input::Usage(r)) => self.usage(r.used, r.window, r.source, ctx),
            Some(Input::Overflow { prompt, window }) => {
                self.dispatch(&Event::Overflow { prompt, window }, ctx)
            }
            None => {}
        }
        let phase = self.machine.phase();
        let watchers = self.extras().watchers.get_or_insert_with(|| {
            watch::Sender::new(SessionStatus {
                phase,
                successor: None,
            })
        });
        MessageResult(watchers.subscribe())
    }
}

impl Handler<Inspect> for SessionActor {
    type Result = MessageResult<Inspect>;

    fn handle(&mut self, _: Inspect, ctx: &mut Self::Context) -> Self::Result {
        self.take_waiting(ctx);
        let s = self.machine.session();
        MessageResult(SessionInfo {
            session: self.id(),
            agent_type: self.agent.name.clone(),
            work_item: self.item,
            phase: self.machine.phase(),
            usage: s.last_usage(),
            compactions: s.compactions(),
            history: s.history().collect(),
        })
    }
}

/// Stops calling a failing dependency for a while: opens after `threshold` consecutive
/// failures, stays open for `cooldown`, then lets one trial call through (half-open); a success
/// closes it, a failure opens it again.
#[derive(Debug, Clone)]
pub(crate) struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    threshold: u32,
    /// How long it stays open.
    cooldown: Duration,
    /// Consecutive failures so far.
    failures: u32,
    /// When open: until when.
    open_until: Option<Instant>,
    /// A trial call is out after the cool-down.
    trial: bool,
}

impl Default for CircuitBreaker {
    /// 5 failures, 30 s cool-down, as the seed's coordinator did.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(30))
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
            trial: false,
        }
    }

    /// Whether a call may go out now.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(until) if now >= until && !self.trial => {
                self.trial = true;
                true
            }
            Some(_) => false,
        }
    }

    /// The call succeeded: close.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.trial = false;
    }

    /// The call failed: count it, and open (again) at the threshold or after a failed trial.
    pub fn failure(&mut self, now: Instant) {
        self.failures += 1;
        if self.trial || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            self.trial = false;
        }
    }

    /// Whether calls are being held back.
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// The session's agent type was updated at run time (only its policy may change): from now
/// on the session decides with the new policy. Readings sent before are handled first, under
/// the old one.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SetAgentType(pub Arc<AgentType>);

impl Handler<SetAgentType> for SessionActor {
    type Result = ();

    fn handle(&mut self, SetAgentType(agent): SetAgentType, ctx: &mut Self::Context) {
        self.take_waiting(ctx);
        self.machine.set_policy(agent.policy.clone());
        self.agent = agent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts wake-ups.
    #[derive(Default)]
    struct WakeCount(std::sync::atomic::AtomicUsize);

    impl task::Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn usage_slot_keeps_the_newest_reading_and_wakes_once() {
        let slot = UsageSlot::default();
        let wakes = Arc::new(WakeCount::default());
        let waker = task::Waker::from(wakes.clone());
        slot.waker.register(&waker);
        assert!(slot.put(100, None, UsageSource::Reported));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the first wakes");
        assert!(slot.put(200, Some(1000), UsageSource::Estimated));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake is enough");
        assert!(slot.is_pending());
        // The session registers again each time it looks at the slot.
        slot.waker.register(&waker);
        assert_eq!(slot.take(), Some((200, Some(1000), UsageSource::Estimated)));
        assert_eq!(slot.take(), None, "taken once");
        assert!(!slot.is_pending());
        assert!(slot.put(300, None, UsageSource::Reported));
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            2,
            "taken: the next wakes again"
        );
        assert_eq!(slot.take(), Some((300, None, UsageSource::Reported)));
        // Figures that do not fit go by message, where the machine refuses them.
        assert!(!slot.put(u64::from(u32::MAX) + 1, None, UsageSource::Reported));
        assert!(!slot.put(1, Some(0), UsageSource::Reported));
        assert!(!slot.put(1, Some(u64::MAX), UsageSource::Reported));
        assert!(!slot.put(1, Some(1 << 30), UsageSource::Reported));
        assert!(slot.put(
            u64::from(u32::MAX),
            Some((1 << 30) - 1),
            UsageSource::Modelled
        ));
        assert_eq!(
            slot.take(),
            Some((
                u64::from(u32::MAX),
                Some((1 << 30) - 1),
                UsageSource::Modelled
            )),
            "the largest figures that fit come back whole"
        );
        assert!(!slot.is_pending(), "a refused reading is not stored");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn usage_slot_readings_are_never_torn_between_writers() {
        // Two writers store readings whose three figures agree (used = window = n, and the
        // source follows n); whatever interleaving, every reading taken agrees with itself.
        let slot = Arc::new(UsageSlot::default());
        let source = |n: u64| match n % 3 {
            0 => UsageSource::Reported,
            1 => UsageSource::Estimated,
            _ => UsageSource::Modelled,
        };
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let slot = slot.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let n = 1 + (i * 2 + w) % 1_000_000;
                        assert!(slot.put(n, Some(n), source(n)));
                    }
                })
            })
            .collect();
        let mut taken = 0;
        while writers.iter().any(|w| !w.is_finished()) || slot.is_pending() {
            if let Some((used, window, src)) = slot.take() {
                assert_eq!((Some(used), src), (window, source(used)), "a torn reading");
                taken += 1;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(taken > 0);
    }

    #[test]
    fn breaker_opens_after_five_failures_and_lets_one_trial_through() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::default();
        for _ in 0..4 {
            assert!(b.allow(t0));
            b.failure(t0);
        }
        assert!(!b.is_open());
        b.failure(t0);
        assert!(b.is_open());
        assert!(!b.allow(t0 + Duration::from_secs(29)));
        let later = t0 + Duration::from_secs(30);
        assert!(b.allow(later), "one trial after the cool-down");
        assert!(!b.allow(later), "only one");
        b.failure(later);
        assert!(
            !b.allow(later + Duration::from_secs(1)),
            "a failed trial opens it again"
        );
        let again = later + Duration::from_secs(30);
        assert!(b.allow(again));
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(again) && b.allow(again));
    }
}

#[cfg(test)]
mod footprint {
    use super::*;

    #[test]
    fn an_idle_session_carries_only_what_it_needs() {
        use std::mem::size_of;
        // A fleet holds one actor, one machine and one slot per session: these bounds keep an
        // idle session near the floor of one actix actor (see docs/performance.md).
        let sizes = format!(
            "SessionActor {} SessionMachine {} UsageSlot {} Extras {}",
            size_of::<SessionActor>(),
            size_of::<SessionMachine>(),
            size_of::<UsageSlot>(),
            size_of::<Extras>()
        );
        assert!(size_of::<SessionMachine>() <= 104, "{sizes}");
        assert!(size_of::<SessionActor>() <= 56, "{sizes}");
        // The actor lives in its task's allocation, which tokio rounds up to a multiple of 128
        // bytes: with its 32-byte header, 16 of scheduler and id, 8 of stage tag and 48 of
        // trailer, a future of at most 408 bytes keeps it at 512.
        let task = size_of::<actix::dev::ContextFut<SessionActor, Context<SessionActor>>>();
        assert!(task <= 408, "ContextFut is {task} bytes; {sizes}");
        // With the Arc's two counts, one 64-byte allocation.
        assert!(size_of::<UsageSlot>() <= 48, "{sizes}");
    }
}

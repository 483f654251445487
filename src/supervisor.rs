//! [`Supervisor`]: owns the fleet's sessions and work items, and carries out rotations.
//!
//! (Mind the name: `actix::prelude::*` exports an unrelated `Supervisor`; import this one by
//! name, `use baton::supervisor::Supervisor`, or use [`SupervisorHandle`].)
//!
//! The supervisor keeps the registry of live sessions and the queue of work items. It starts a
//! session for each queued item, up to `max_sessions`. When a session asks to rotate it, in this
//! order: asks the runtime for a handoff summary (building a deterministic fallback when that
//! fails), spawns a successor of the **same agent type**, assigns it the work item with the
//! handoff, closes the old session (a failed close is reported, not fatal), tells the old actor
//! `HandedOver`, and records a [`RotationRecord`]. Spawn and assign are retried with backoff
//! within the rotation timeout; past it, the old session closes and the work item goes back to
//! the queue with its handoff kept.
//!
//! Fleet safety: a cap on concurrent summaries, compactions and handoffs alike (they wait their
//! turn, and the wait counts against their timeout); a rotation budget per work item (too many
//! rotations too fast sends it to dead letter, so an item whose floor exceeds its window cannot
//! loop forever); an OTP-style restart budget per agent type for sessions that crash (past it,
//! no more sessions of that type are started, successors included, and an event says so); an
//! attempt limit per work item. A runtime call that panics fails that call (a permanent
//! [`RuntimeError`]); it never takes the supervisor down.
//!
//! Durability (optional): with a [`Journal`], every event is durable before any subscriber sees
//! it (the journal's writer delivers it after its commit), each rotation step is durable before
//! the runtime call that follows it (`supervisor/rotation.rs`), and a restarted supervisor
//! recovers from the journal (`supervisor/recovery.rs`).
//!
//! Starts and rotations run the same way: their runtime calls (behind one retry, timeout and
//! panic wrapper) run as a task of their own on the supervisor's thread, and the outcome comes
//! back as a message the actor handles (`run_work`). Nothing is counted by hand: starts under
//! way are the ledger's items in `Starting`, and runtime work under way (starts, rotations,
//! closes) is a [`TaskTracker`] whose tokens the work holds until its outcome is handled;
//! shutdown waits until both the registry and the tracker are empty.
//!
//! At run time (for a server such as `baton serve`): agent types can be listed, created, or
//! have their policy updated (`put_agent_type`; live sessions of the type get the new policy),
//! work items looked up with their place (`work_item`, `work_items`) and cancelled (`cancel`),
//! and events followed with their journal sequence numbers (`subscribe_sequenced`), so that an
//! event stream can resume from the journal. `docs/semantics.md` (Supervisor, rules 14 to 18)
//! states the guarantees.
//!
//! Hosting: [`SupervisorBuilder::start`] joins the caller's actix system if there is one, and
//! otherwise starts one of its own on a thread baton owns, so any tokio program (or plain thread)
//! can embed a fleet; the handles work from any runtime.
//!
//! | file | what it is for |
//! | --- | --- |
//! | `supervisor.rs` | configuration, the builder, the actor: starts (`run_work`), closes, crashes, shutdown |
//! | `ledger.rs` | the pure core: items and places, the queue, budgets, crash and halt decisions |
//! | `rotation.rs` | a rotation's runtime work, step by step, and its conclusion |
//! | `outbox.rs` | session actors on their way to their shard, in batches |
//! | `recovery.rs` | writing through the journal, and recovering from it at start-up |
//! | `api.rs` | one message per handle call, with its handler |
//! | `handle.rs` | [`SupervisorHandle`], [`SessionHandle`], [`Settled`] |

mod api;
mod handle;
mod ledger;
mod outbox;
mod recovery;
mod rotation;

pub use api::{Inventory, ShutdownReport};
pub use handle::{SessionHandle, Settled, SupervisorHandle};
pub use ledger::Budget;

use ledger::{ItemEntry, Ledger, spawn_key};

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::WeakAddr;
use actix::prelude::*;
use backon::{ExponentialBuilder, Retryable};
use futures_util::FutureExt;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::journal::recovery::RecoveryState;
use crate::journal::{Journal, Op};
use crate::machine::Phase;
use crate::record::{CrashOutcome, EventBus, FleetEvent, RotationId, RotationRecord, Sequenced};
use crate::runtime::{AgentRuntime, RuntimeError};
use crate::session::{Command, Fleet, RotationRequest, SessionActor, SessionNotice, UsageSlot};
use crate::vocab::{AgentType, Handoff, SessionId, WorkItem, WorkItemId};

/// How the supervisor runs the fleet.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Live sessions at most; queued items wait for a free place.
    pub max_sessions: usize,
    /// Compactions running at once across the fleet, at most.
    pub max_concurrent_compactions: usize,
    /// Rotations allowed per work item (default 5 per 10 minutes); one more sends the item to
    /// dead letter.
    pub rotation_budget: Budget,
    /// Crash restarts allowed per agent type (default 3 per 30 s); one more halts the type.
    pub restart_budget: Budget,
    /// Crashes and failed starts a work item may suffer before it goes to dead letter.
    pub max_attempts: u32,
    /// Poll each session's usage from the runtime this often (off by default).
    pub poll_interval: Option<Duration>,
    /// First delay between retries of a failed spawn or assign.
    pub retry_min_delay: Duration,
    /// Longest delay between retries.
    pub retry_max_delay: Duration,
    /// How long closing a session at the runtime may take, retries included.
    pub close_timeout: Duration,
    /// Threads (actix Arbiters) to spread session actors over, round-robin; 0 runs them on the
    /// supervisor's own thread. actix never moves an actor between threads, so one Arbiter per
    /// core is what lets a fleet use every core.
    pub shards: usize,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_concurrent_compactions: 8,
            rotation_budget: Budget {
                count: 5,
                period: Duration::from_secs(600),
            },
            restart_budget: Budget {
                count: 3,
                period: Duration::from_secs(30),
            },
            max_attempts: 3,
            poll_interval: None,
            retry_min_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(2),
            close_timeout: Duration::from_secs(30),
            shards: 0,
        }
    }
}

/// Where a work item is. Every item is in exactly one place at any moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// Waiting for a session.
    Queued,
    /// A session is being spawned and assigned for it (with a journal, also: a rotation's
    /// successor is being committed, or a rotation resumed after a restart is under way).
    Starting,
    /// Held by this live session.
    Live(SessionId),
    /// Held by this session while its successor is prepared.
    Rotating(SessionId),
    /// Finished; the session that held it last.
    Done(SessionId),
    /// Given up on, and why.
    Dead(String),
}

/// A work item and where it is: what [`SupervisorHandle::work_item`] and
/// [`SupervisorHandle::work_items`] answer, so that a server can show an item and check a
/// resubmission against it (same id: same agent type and text, or a conflict).
///
/// The supervisor keeps every item it was given or recovered, done and dead ones included,
/// with its text, for its whole life. (After a restart, an item of an agent type the new
/// supervisor does not know is not recovered, so not listed.)
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkItemInfo {
    /// The item as submitted.
    pub item: WorkItem,
    /// Where it is now.
    pub place: Place,
}

/// The dead-letter reason of a cancelled work item (see [`SupervisorHandle::cancel`]).
pub const CANCELLED: &str = "cancelled";

/// What [`SupervisorHandle::put_agent_type`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// The type is new: work items may name it from now on.
    Created,
    /// The type's policy changed: every reading from now on is decided by the new one, live
    /// sessions of the type included.
    Updated,
    /// The type exists exactly so: nothing changed.
    Unchanged,
}

/// Errors of the supervisor's API.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SupervisorError {
    /// The work item names an agent type the supervisor does not know.
    #[error("unknown agent type {0:?}")]
    UnknownAgentType(String),
    /// A work item with this id was already submitted.
    #[error("work item {0} was already submitted")]
    DuplicateWorkItem(WorkItemId),
    /// No live session has this id.
    #[error("no live session {0}")]
    UnknownSession(SessionId),
    /// The supervisor is shutting down or has stopped.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// The agent type exists with another window, model or system prompt (only its policy may
    /// change at run time): what differs.
    #[error("{0}")]
    AgentTypeConflict(String),
    /// No work item has this id.
    #[error("no work item {0}")]
    UnknownWorkItem(WorkItemId),
    /// The work item has already ended (done or dead): it cannot be cancelled.
    #[error("work item {0} has already ended")]
    AlreadyEnded(WorkItemId),
    /// The journal could not make the request durable.
    #[error("journal: {0}")]
    Journal(#[source] crate::journal::JournalError),
}

/// A live session in the registry: three words. The actor is kept by a weak address (a
/// strong one costs two allocations per session; the session keeps itself alive until it
/// closes, see `session::Readings`), and its phase and shard live in the slot it shares with
/// its handles.
struct SessionEntry {
    /// The actor.
    addr: SessionAddr,
    /// The work item it holds.
    item: WorkItemId,
    /// Where session handles leave usage readings for it; also its phase and shard.
    slot: Arc<UsageSlot>,
}

impl SessionEntry {
    /// Its state, as of its last transition.
    fn phase(&self) -> Phase {
        self.slot.phase()
    }

    /// The shard it runs on, if sessions are sharded.
    fn shard(&self) -> Option<usize> {
        self.slot.shard()
    }
}

/// A session actor's address as the registry keeps it: weak, upgraded for each use. A message
/// to a session whose actor has stopped is dropped, as actix drops one sent to a stopped actor.
#[derive(Clone)]
pub(super) struct SessionAddr(WeakAddr<SessionActor>);

impl SessionAddr {
    /// A strong address, while the actor runs.
    pub(super) fn upgrade(&self) -> Option<Addr<SessionActor>> {
        self.0.upgrade()
    }

    /// Sends `msg` if the actor still runs.
    pub(super) fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        if let Some(addr) = self.upgrade() {
            addr.do_send(msg);
        }
    }

    /// Sends `msg` and waits for the answer (an error when the actor has stopped).
    pub(super) fn send<M>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Result, MailboxError>> + use<M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        let request = self.upgrade().map(|addr| addr.send(msg));
        async move {
            match request {
                Some(r) => r.await,
                None => Err(MailboxError::Closed),
            }
        }
    }
}

/// The supervisor actor. Start it with [`Supervisor::builder`].
pub struct Supervisor {
    /// How the fleet is run (capacity, budgets, retries, shards).
    config: SupervisorConfig,
    /// Acts on the agents; every runtime call of the fleet goes through it.
    runtime: Arc<dyn AgentRuntime>,
    /// Where every event goes (and, with a journal, the journal's sink).
    bus: EventBus,
    /// The fleet-wide cap on summaries: compactions and rotations' handoff summaries each take
    /// a slot while they run, so no burst overloads the summariser.
    compaction_slots: Arc<Semaphore>,
    /// Work items, where each is, the queue, and the agent types with their budgets.
    ledger: Ledger,
    /// The registry of live sessions (Live or Rotating items point back at them).
    sessions: HashMap<SessionId, SessionEntry>,
    /// Runtime work under way (starts, rotations, closes): each holds one of its tokens until
    /// its outcome is handled, and shutdown waits until none is left.
    work: TaskTracker,
    /// Cancelled when the supervisor goes away: the tasks of `run_work` end with it, as actor
    /// futures would.
    cancel: CancellationToken,
    /// Shared with every session; made when the actor starts (it needs the actor's address).
    fleet: Option<Arc<Fleet>>,
    /// The last spawn key / rotation number handed out.
    next_key: u64,
    /// Set by `Shutdown`: no new sessions; waiters are told when the fleet is empty.
    shutdown: Option<Vec<oneshot::Sender<()>>>,
    /// The threads sessions run on (empty: the supervisor's own).
    shards: Vec<Arbiter>,
    /// The shard the next session goes to.
    next_shard: usize,
    /// Session actors waiting to be sent to their shard, a batch per shard: one cross-thread
    /// send (and wake-up) per batch instead of one per session (see `start_actor`).
    batches: Vec<outbox::Outbox>,
    /// The durable record, if any (see `supervisor/recovery.rs`).
    journal: Option<Journal>,
    /// What the journal said was unfinished; taken when the actor starts.
    recovery: Option<RecoveryState>,
    /// Spawn and assign calls retried while starting sessions (rotations count theirs in their
    /// records), for reports.
    start_retries: u64,
    /// The supervisor runs on an actix system baton started for it (see
    /// [`SupervisorBuilder::start`]): stopping the supervisor stops that system and its thread.
    owns_system: bool,
}

/// Builds and starts a [`Supervisor`].
pub struct SupervisorBuilder {
    /// The runtime the supervisor will act through.
    runtime: Arc<dyn AgentRuntime>,
    /// The configuration (the default until replaced).
    config: SupervisorConfig,
    /// The agent types work items may name.
    agents: Vec<AgentType>,
    /// The journal and what it said was unfinished (see `supervisor/recovery.rs`).
    journal: Option<(Journal, RecoveryState)>,
    /// The event bus, made with the builder so that subscriptions made before `start` see
    /// every event (recovery's included).
    bus: EventBus,
}

impl SupervisorBuilder {
    /// Replaces the configuration.
    pub fn config(mut self, config: SupervisorConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds an agent type work items may name.
    pub fn agent_type(mut self, agent: AgentType) -> Self {
        self.agents.push(agent);
        self
    }

    /// A stream of every event the supervisor will publish, from its very first: subscribed
    /// before [`start`](Self::start), it cannot miss recovery's `Recovered` events or anything
    /// else, however long the caller takes after `start` (see `docs/semantics.md`, "Events").
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<FleetEvent> {
        self.bus.subscribe()
    }

    /// [`subscribe`](Self::subscribe), each event with its sequence number (with a journal,
    /// its row in the journal's log): what an event stream that resumes from the journal
    /// needs (see [`Sequenced`] and `docs/semantics.md`, "Events").
    pub fn subscribe_sequenced(&self) -> tokio::sync::mpsc::UnboundedReceiver<Sequenced> {
        self.bus.subscribe_sequenced()
    }

    /// Starts the supervisor, from any thread, async or not.
    ///
    /// Called inside an actix system (an actix program, `#[actix::test]`), the supervisor and
    /// its sessions join that system, so they share its thread and its clock (paused tokio
    /// time included). Called anywhere else (`#[tokio::main]`, any tokio runtime, a plain
    /// thread), baton starts an actix system of its own on a thread it owns
    /// (`baton-supervisor`), which stops when the supervisor stops. Either way the handle is
    /// `Send + Sync + Clone` and every call on it works from any runtime.
    pub fn start(self) -> SupervisorHandle {
        let (journal, recovery) = self.journal.unzip();
        let bus = self.bus;
        let sup = Supervisor {
            compaction_slots: Arc::new(Semaphore::new(
                self.config.max_concurrent_compactions.max(1),
            )),
            config: self.config,
            runtime: self.runtime,
            bus: bus.clone(),
            ledger: Ledger::new(self.agents),
            sessions: HashMap::new(),
            work: TaskTracker::new(),
            cancel: CancellationToken::new(),
            fleet: None,
            next_key: 0,
            shutdown: None,
            shards: Vec::new(),
            next_shard: 0,
            batches: Vec::new(),
            journal: journal.clone(),
            recovery,
            start_retries: 0,
            owns_system: false,
        };
        let addr = if Arbiter::try_current().is_some() {
            sup.start()
        } else {
            host(sup)
        };
        SupervisorHandle { addr, bus, journal }
    }
}

/// Starts `sup` on an actix system of its own, on a new thread that runs until the supervisor
/// stops.
fn host(mut sup: Supervisor) -> Addr<Supervisor> {
    sup.owns_system = true;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("baton-supervisor".into())
        .spawn(move || {
            let system = System::new();
            system.block_on(async move {
                let _ = tx.send(sup.start());
            });
            if let Err(e) = system.run() {
                tracing::error!(error = %e, "the supervisor's actix system failed");
            }
        })
        .expect("spawn the supervisor's thread");
    rx.recv()
        .expect("the supervisor's thread starts the supervisor")
}

impl Supervisor {
    /// A builder over `runtime`, with the default configuration and no agent types.
    pub fn builder(runtime: Arc<dyn AgentRuntime>) -> SupervisorBuilder {
        SupervisorBuilder {
            runtime,
            config: SupervisorConfig::default(),
            agents: Vec::new(),
            journal: None,
            bus: EventBus::default(),
        }
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn fleet(&self) -> Arc<Fleet> {
        self.fleet
            .clone()
            .expect("the fleet is made when the supervisor starts")
    }

    fn item(&mut self, id: WorkItemId) -> &mut ItemEntry {
        self.ledger.item(id)
    }

    /// Starts sessions for queued items while there is room.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_some() {
            return;
        }
        while self.sessions.len() + self.ledger.starting() < self.config.max_sessions {
            let Some(id) = self.ledger.next_startable() else {
                break;
            };
            self.start_item(id, ctx);
        }
    }

    /// Spawns and assigns a session for a queued item.
    fn start_item(&mut self, id: WorkItemId, ctx: &mut Context<Self>) {
        let (key, n) = self.ledger.begin_start(id);
        let entry = self.item(id);
        let spawning = Op::Spawning {
            work_item: id,
            n,
            key,
            attempts: entry.attempts,
        };
        let (item, handoff) = (entry.item.clone(), entry.handoff().cloned());
        let journal = self.journal.clone();
        let agent = self.ledger.agents[&item.agent_type].agent.clone();
        let runtime = self.runtime.clone();
        let retry = self.retry_policy();
        let limit = agent.policy.rotation_timeout();
        let token = self.work.token();
        let span = tracing::info_span!("start", work_item = %id, agent_type = %agent.name);
        let work = async move {
            // The key is durable before the spawn, so a restart finds this session again.
            if let Some(j) = &journal
                && let Err(e) = j.commit(spawning).await
            {
                tracing::error!(work_item = %id, error = %e, "spawn key not durable");
            }
            let (spawned, attempts) = (Cell::new(None), Cell::new(0u32));
            let result = tokio::time::timeout(limit, async {
                let session =
                    call_with_retry(retry, &attempts, || runtime.spawn(&agent, key)).await?;
                spawned.set(Some(session));
                call_with_retry(retry, &attempts, || {
                    runtime.assign(session, &item, handoff.as_ref())
                })
                .await?;
                Ok::<_, RuntimeError>(session)
            })
            .await
            .unwrap_or(Err(RuntimeError::Timeout(limit)));
            StartWorked {
                id,
                result,
                spawned: spawned.get(),
                attempts: attempts.get(),
                _work: token,
            }
        };
        self.run_work(ctx, work, span);
    }

    /// Runs a start's or a rotation's runtime work as a task of its own on the supervisor's
    /// thread, and hands what it produced back to the supervisor as a message. Not an actor
    /// future: actix polls every pending actor future whenever one of them wakes, so a storm
    /// of starts or rotations waiting (for a summary slot, a backoff) would cost quadratic
    /// time. The task ends if the supervisor goes away first.
    fn run_work<M>(
        &self,
        ctx: &mut Context<Self>,
        work: impl Future<Output = M> + 'static,
        span: tracing::Span,
    ) where
        M: Message<Result = ()> + Send + 'static,
        Self: Handler<M>,
    {
        // Boxed once here: the work's future is large (its retries and deadlines), and
        // the task's wrappers would otherwise copy it again at each layer.
        let work = Box::pin(work);
        let (addr, cancel) = (ctx.address(), self.cancel.clone());
        actix::spawn(
            async move {
                if let Some(done) = cancel.run_until_cancelled(work).await {
                    addr.do_send(done);
                }
            }
            .instrument(span),
        );
    }

    fn finish_start(
        &mut self,
        id: WorkItemId,
        result: Result<SessionId, RuntimeError>,
        spawned: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) {
        if *self.ledger.items[&id].place() != Place::Starting {
            // Cancelled while it started: the session its spawn returned is closed, never
            // registered.
            if let Some(session) = spawned {
                self.note(Op::SpawnAbandoned {
                    work_item: id,
                    session,
                });
                self.close_at_runtime(session, ctx);
            }
            return;
        }
        match result {
            Ok(session) if self.shutdown.is_none() => {
                self.ledger.set_place(id, Place::Live(session));
                self.start_actor(session, id, ctx);
            }
            Ok(session) => {
                self.note(Op::SpawnAbandoned {
                    work_item: id,
                    session,
                });
                self.close_at_runtime(session, ctx);
                self.requeue(id, "shutting down".into());
            }
            Err(e) => {
                tracing::warn!(work_item = %id, error = %e, "could not start a session");
                if let Some(s) = spawned {
                    self.note(Op::SpawnAbandoned {
                        work_item: id,
                        session: s,
                    });
                    self.close_at_runtime(s, ctx);
                }
                self.item(id).attempts += 1;
                self.requeue_or_bury(id, format!("start failed: {e}"));
            }
        }
    }

    fn start_actor(&mut self, session: SessionId, item: WorkItemId, ctx: &mut Context<Self>) {
        let agent_type = self.ledger.items[&item].item.agent_type.clone();
        let agent = self.ledger.agents[&agent_type].agent.clone();
        let shard = (!self.shards.is_empty()).then(|| {
            self.next_shard = (self.next_shard + 1) % self.shards.len();
            self.next_shard
        });
        let slot = Arc::new(UsageSlot::new(shard));
        let seed = outbox::Seed {
            session,
            agent,
            item,
            fleet: self.fleet(),
            slot: slot.clone(),
        };
        // The mailbox is made here and its only strong sender dropped before the actor first
        // runs (so the drop wakes nobody): the registry keeps the weak address.
        let (tx, rx) = actix::dev::channel::channel(16);
        let addr = SessionAddr(Addr::new(tx).downgrade());
        match shard {
            None => {
                actix::spawn(Context::with_receiver(rx).into_future(seed.into_actor()));
            }
            // Batched: the batch leaves once the supervisor has handled what its mailbox
            // holds now (`SendBatches`). Meanwhile the session is registered, and messages to
            // it wait in its mailbox as they would while its shard had yet to start it.
            Some(s) => {
                if self.batches.iter().all(outbox::Outbox::is_empty) {
                    ctx.notify(SendBatches);
                }
                self.batches
                    .resize_with(self.shards.len(), outbox::Outbox::default);
                self.batches[s].push(seed, rx);
            }
        }
        self.sessions
            .insert(session, SessionEntry { addr, item, slot });
        self.bus.publish(FleetEvent::SessionStarted {
            session,
            agent_type,
            work_item: item,
        });
    }

    /// Back to the queue, or to dead letter past the attempt limit.
    fn requeue_or_bury(&mut self, id: WorkItemId, reason: String) {
        if self.ledger.items[&id].attempts >= self.config.max_attempts {
            let reason = format!(
                "{reason} (attempt {} of {})",
                self.ledger.items[&id].attempts, self.config.max_attempts
            );
            self.bury(id, reason);
        } else {
            self.requeue(id, reason);
        }
    }

    fn requeue(&mut self, id: WorkItemId, reason: String) {
        self.ledger.requeue(id);
        self.bus.publish(FleetEvent::WorkItemRequeued {
            work_item: id,
            reason,
        });
    }

    /// Cancels a work item wherever it is short of its end (see
    /// [`SupervisorHandle::cancel`]): it goes to dead letter with reason [`CANCELLED`] at
    /// once; a queued one leaves the queue; a live one's session is closed without the item
    /// counting as done; a start or rotation under way finds the item gone when it concludes
    /// and closes what it started.
    fn cancel(
        &mut self,
        id: WorkItemId,
        ctx: &mut Context<Self>,
    ) -> Result<Place, SupervisorError> {
        let place = match self.ledger.items.get(&id) {
            None => return Err(SupervisorError::UnknownWorkItem(id)),
            Some(e) => e.place().clone(),
        };
        match place {
            Place::Done(_) | Place::Dead(_) => return Err(SupervisorError::AlreadyEnded(id)),
            Place::Queued => self.ledger.queue.retain(|q| *q != id),
            // A rotating session's rotation closes it at the runtime itself.
            Place::Live(s) | Place::Rotating(s) => {
                if let Some(e) = self.sessions.get(&s) {
                    e.addr.do_send(Command::Close);
                }
                if place == Place::Live(s) {
                    self.close_at_runtime(s, ctx);
                }
            }
            Place::Starting => {}
        }
        tracing::info!(work_item = %id, was = ?place, "work item cancelled");
        let dead = Place::Dead(CANCELLED.into());
        self.ledger.set_place(id, dead.clone());
        self.bus.publish(FleetEvent::DeadLetter {
            work_item: id,
            reason: CANCELLED.into(),
        });
        self.pump(ctx);
        Ok(dead)
    }

    fn bury(&mut self, id: WorkItemId, reason: String) {
        tracing::warn!(work_item = %id, %reason, "work item sent to dead letter");
        self.ledger.set_place(id, Place::Dead(reason.clone()));
        self.bus.publish(FleetEvent::DeadLetter {
            work_item: id,
            reason,
        });
    }

    fn retry_policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(self.config.retry_max_delay)
            .with_jitter()
            .without_max_times()
    }

    /// Closes a session at the runtime in the background, retrying transient failures within
    /// the close deadline; a final failure is reported, not fatal.
    fn close_at_runtime(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        self.close_in_background(session, false, ctx);
    }

    /// Closes a session that died with an earlier process (recovery): as
    /// [`close_at_runtime`](Self::close_at_runtime), except that a runtime which no longer
    /// knows the session (its agents died with that process too) is what was expected, not a
    /// warning.
    pub(super) fn close_stale(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        self.close_in_background(session, true, ctx);
    }

    fn close_in_background(&mut self, session: SessionId, stale: bool, ctx: &mut Context<Self>) {
        let runtime = self.runtime.clone();
        let (retry, limit) = (self.retry_policy(), self.config.close_timeout);
        let token = self.work.token();
        let span = tracing::info_span!("close", %session);
        ctx.spawn(
            async move { close_with_retry(&*runtime, session, retry, limit).await }
                .instrument(span)
                .into_actor(self)
                .map(move |result, act, _| {
                    drop(token);
                    if matches!(result, Ok(()) | Err(RuntimeError::UnknownSession(_))) {
                        act.note(Op::Released { session });
                    }
                    match result {
                        Ok(()) => {}
                        Err(RuntimeError::UnknownSession(_)) if stale => {
                            tracing::debug!(%session, "a session of the previous process is unknown to the runtime: nothing to close");
                        }
                        Err(e) => act.runtime_warning(session, format!("close failed: {e}")),
                    }
                    act.check_shutdown();
                }),
        );
    }

    fn runtime_warning(&self, session: SessionId, error: String) {
        tracing::warn!(%session, %error, "runtime call failed (not fatal)");
        self.bus
            .publish(FleetEvent::RuntimeWarning { session, error });
    }

    fn rotate(&mut self, req: RotationRequest, ctx: &mut Context<Self>) {
        let Some(entry) = self.sessions.get(&req.session) else {
            tracing::warn!(session = %req.session, "rotation requested by a session not in the registry");
            return;
        };
        let item_id = entry.item;
        let old_addr = entry.addr.clone();
        let rotation = RotationId(self.key());
        let budget = self.config.rotation_budget;
        let agent_type = self.ledger.items[&item_id].item.agent_type.clone();
        let entry = &self.ledger.agents[&agent_type];
        let (agent, halted) = (entry.agent.clone(), entry.halted);
        if halted {
            // A successor is a new session of the type, which a halt forbids: the item waits in
            // the queue like the type's other items.
            let error = format!("agent type {agent_type} is halted (restart budget spent)");
            self.refuse_rotation(rotation, &req, &agent, item_id, error.clone(), ctx);
            self.requeue(item_id, format!("rotation refused: {error}"));
            return;
        }
        if !self.ledger.take_rotation(item_id, budget, Instant::now()) {
            let error = format!(
                "rotation budget spent: more than {} rotations in {:?}",
                budget.count, budget.period
            );
            self.refuse_rotation(rotation, &req, &agent, item_id, error.clone(), ctx);
            self.bury(item_id, error);
            return;
        }
        self.ledger.set_place(item_id, Place::Rotating(req.session));
        let item = self.item(item_id);
        item.spawns += 1;
        let rot = rotation::Rotation {
            id: rotation,
            key: spawn_key(item_id, item.spawns),
            spawn_n: item.spawns,
            item: item.item.clone(),
            agent,
            req,
            started: Instant::now(),
            old_addr: Some(old_addr),
            _work: self.work.token(),
        };
        self.run_rotation(rot, rotation::Resume::Start, ctx);
    }

    /// A rotation refused before any runtime work: its (failed) record, and the old session
    /// closes. The caller decides where the item goes.
    fn refuse_rotation(
        &mut self,
        rotation: RotationId,
        req: &RotationRequest,
        agent: &AgentType,
        item: WorkItemId,
        error: String,
        ctx: &mut Context<Self>,
    ) {
        tracing::warn!(session = %req.session, work_item = %item, %error, "rotation refused");
        let record = rotation_record(
            rotation,
            req,
            agent,
            item,
            None,
            None,
            0,
            Duration::ZERO,
            Some(error.clone()),
        );
        self.bus.publish(FleetEvent::Rotation(record));
        self.sessions[&req.session]
            .addr
            .do_send(Command::RotationFailed(error));
        self.close_at_runtime(req.session, ctx);
    }

    fn ended(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        let id = entry.item;
        match *self.ledger.items[&id].place() {
            // Closed by the orchestrator, or by shutdown; or closed while its rotation is under
            // way, in which case the rotation closes it at the runtime and finds the item gone.
            Place::Live(s) | Place::Rotating(s) if s == session => {
                if *self.ledger.items[&id].place() == Place::Live(session) {
                    self.close_at_runtime(session, ctx);
                }
                if self.shutdown.is_some() {
                    self.requeue(id, "shutdown".into());
                } else {
                    self.ledger.set_place(id, Place::Done(session));
                    self.bus.publish(FleetEvent::WorkItemDone {
                        work_item: id,
                        session,
                    });
                }
            }
            // Handed over, or its rotation failed: the item has already moved.
            _ => {}
        }
        self.pump(ctx);
        self.check_shutdown();
    }

    fn crashed(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        let id = entry.item;
        match *self.ledger.items[&id].place() {
            Place::Live(s) if s == session => self.crashed_live(session, id, ctx),
            Place::Rotating(s) if s == session => self.crashed_rotating(session, id),
            // The item already moved on (handed over, or its rotation failed).
            _ => {}
        }
        self.pump(ctx);
        self.check_shutdown();
    }

    /// A live session crashed: its item is restarted, requeued (the type halts) or buried.
    fn crashed_live(&mut self, session: SessionId, id: WorkItemId, ctx: &mut Context<Self>) {
        self.close_at_runtime(session, ctx);
        let agent_type = self.ledger.items[&id].item.agent_type.clone();
        let outcome = self.ledger.crash(
            id,
            self.config.max_attempts,
            self.config.restart_budget,
            self.shutdown.is_some(),
            Instant::now(),
        );
        self.bus.publish(FleetEvent::Crashed {
            session,
            work_item: id,
            outcome: outcome.clone(),
        });
        match outcome {
            CrashOutcome::DeadLetter => self.bury(
                id,
                format!("crashed {} times", self.ledger.items[&id].attempts),
            ),
            CrashOutcome::Restarted => self.ledger.restart(id),
            // (A live session's crash is never `RotationContinues`.)
            CrashOutcome::Requeued | CrashOutcome::RotationContinues => {
                self.halt(&agent_type);
                self.requeue(id, "restart budget of its agent type spent".into());
            }
        }
    }

    /// A session crashed while its rotation is under way. The rotation goes on without the old
    /// actor (it closes the old session at the runtime itself), so the item needs no restart;
    /// the crash still spends its agent type's restart budget, and past it the type halts.
    fn crashed_rotating(&mut self, session: SessionId, id: WorkItemId) {
        let agent_type = self.ledger.items[&id].item.agent_type.clone();
        self.bus.publish(FleetEvent::Crashed {
            session,
            work_item: id,
            outcome: CrashOutcome::RotationContinues,
        });
        if self.shutdown.is_none() && !self.spend_restart(&agent_type) {
            self.halt(&agent_type);
        }
    }

    /// Takes one restart from the agent type's budget, if it allows one now.
    fn spend_restart(&mut self, agent_type: &str) -> bool {
        let budget = self.config.restart_budget;
        self.ledger
            .spend_restart(agent_type, budget, Instant::now())
    }

    /// Halts an agent type whose restart budget is spent (once; not while shutting down): no
    /// more sessions of it are started.
    fn halt(&mut self, agent_type: &Arc<str>) {
        if self.shutdown.is_some() || !self.ledger.halt(agent_type) {
            return;
        }
        let budget = self.config.restart_budget;
        tracing::error!(agent_type = %agent_type, "restart budget spent; no more sessions of this type are started");
        self.bus.publish(FleetEvent::AgentTypeHalted {
            agent_type: agent_type.clone(),
            intensity: budget.count,
            period: budget.period,
        });
    }

    fn check_shutdown(&mut self) {
        if self.sessions.is_empty()
            && self.work.is_empty()
            && let Some(waiters) = self.shutdown.as_mut()
        {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// Calls `op` until it succeeds, fails for good, or the caller's deadline drops the future;
/// counts the attempts.
async fn call_with_retry<T, Fut>(
    policy: ExponentialBuilder,
    attempts: &Cell<u32>,
    op: impl FnMut() -> Fut,
) -> Result<T, RuntimeError>
where
    Fut: Future<Output = Result<T, RuntimeError>>,
{
    let mut op = op;
    (|| {
        attempts.set(attempts.get() + 1);
        unpanicked(op())
    })
    .retry(policy)
    .sleep(tokio::time::sleep)
    .when(RuntimeError::is_retryable)
    .notify(|e, delay| tracing::warn!(error = %e, ?delay, "runtime call failed; retrying"))
    .await
}

/// Runs a runtime call, turning a panic inside it into a permanent error with a log line: a
/// runtime that panics must not take the supervisor (and the whole fleet) down with it.
async fn unpanicked<T>(
    call: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            tracing::error!(panic = %what, "a runtime call panicked; it counts as a permanent failure");
            Err(RuntimeError::permanent(format!(
                "the runtime panicked: {what}"
            )))
        }
    }
}

/// Closes `session`, retrying transient failures for at most `limit`.
async fn close_with_retry(
    runtime: &dyn AgentRuntime,
    session: SessionId,
    retry: ExponentialBuilder,
    limit: Duration,
) -> Result<(), RuntimeError> {
    let attempts = Cell::new(0);
    tokio::time::timeout(
        limit,
        call_with_retry(retry, &attempts, || runtime.close(session)),
    )
    .await
    .unwrap_or(Err(RuntimeError::Timeout(limit)))
}

/// The handoff baton writes itself when the agent cannot summarise: deterministic, from what
/// baton knows.
fn fallback_handoff(
    item: &WorkItem,
    history: &[crate::usage::Usage],
    last_summary: Option<&str>,
    error: &str,
) -> Handoff {
    use std::fmt::Write;
    let mut text = format!(
        "Handoff written by baton (the previous session could not summarise: {error}).\nWork item {}: {}\n",
        item.id, item.text
    );
    if let Some(last) = history.last() {
        let _ = writeln!(
            text,
            "The previous session ended at {} of {} tokens ({:.1}%) after {} readings.",
            last.used(),
            last.window(),
            last.percent(),
            history.len()
        );
    }
    if let Some(summary) = last_summary {
        let _ = writeln!(text, "Its last compaction summary:\n{summary}");
    }
    Handoff {
        tokens: (text.len() as u64).div_ceil(4),
        text,
        fallback: true,
    }
}

#[allow(clippy::too_many_arguments)]
fn rotation_record(
    rotation: RotationId,
    req: &RotationRequest,
    agent: &AgentType,
    work_item: WorkItemId,
    new_session: Option<SessionId>,
    handoff: Option<&Handoff>,
    attempts: u32,
    duration: Duration,
    error: Option<String>,
) -> RotationRecord {
    RotationRecord {
        rotation,
        old_session: req.session,
        new_session,
        agent_type: agent.name.clone(),
        work_item,
        reason: req.reason,
        before_tokens: req.before.map_or(0, |u| u.used()),
        before_percent: req.before.map_or(0.0, |u| u.percent()),
        compactions: req.compactions,
        handoff_tokens: handoff.map_or(0, |h| h.tokens),
        handoff_fallback: handoff.is_some_and(|h| h.fallback),
        attempts,
        duration,
        success: error.is_none(),
        error,
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shards = (0..self.config.shards).map(|_| Arbiter::new()).collect();
        self.fleet = Some(Arc::new(Fleet {
            runtime: self.runtime.clone(),
            bus: self.bus.clone(),
            compaction_slots: self.compaction_slots.clone(),
            supervisor: ctx.address().recipient(),
            poll_interval: self.config.poll_interval,
            journal: self.journal.clone(),
        }));
        if let Some(state) = self.recovery.take() {
            self.recover(state, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.owns_system {
            System::current().stop();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The registry's addresses are weak: tell each session it is on its own, so that it
        // stops once nobody holds its address (as it would have when the registry's strong
        // address was dropped).
        for e in self.sessions.values() {
            e.slot.orphan();
        }
        self.send_batches();
        self.cancel.cancel();
        for shard in &self.shards {
            shard.stop();
        }
    }
}

/// A session start's runtime work has finished (see `Supervisor::run_work`).
struct StartWorked {
    /// The work item it was for.
    id: WorkItemId,
    /// The session holding the item, or why not.
    result: Result<SessionId, RuntimeError>,
    /// A session that was spawned (to close if the start fails).
    spawned: Option<SessionId>,
    /// Spawn and assign attempts.
    attempts: u32,
    /// Counts the start as work under way until it is handled.
    _work: TaskTrackerToken,
}

impl Message for StartWorked {
    type Result = ();
}

impl Handler<StartWorked> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: StartWorked, ctx: &mut Self::Context) {
        // One call of spawn, and of assign once a session was spawned, is no retry.
        let first_calls = if msg.spawned.is_some() { 2 } else { 1 };
        self.start_retries += u64::from(msg.attempts.saturating_sub(first_calls));
        self.finish_start(msg.id, msg.result, msg.spawned, ctx);
        drop(msg._work);
        self.pump(ctx);
        self.check_shutdown();
    }
}

/// Sends the batches of session actors to their shards (see `Supervisor::start_actor`).
struct SendBatches;

impl Message for SendBatches {
    type Result = ();
}

impl Handler<SendBatches> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: SendBatches, _: &mut Self::Context) {
        self.send_batches();
    }
}

impl Supervisor {
    /// Sends each shard its batch of session actors, started there in order (see
    /// `supervisor/outbox.rs`).
    fn send_batches(&mut self) {
        for (shard, batch) in self.shards.iter().zip(&mut self.batches) {
            batch.send(shard);
        }
    }
}

impl Handler<SessionNotice> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SessionNotice, ctx: &mut Self::Context) {
        match msg {
            SessionNotice::RotationRequested(req) => self.rotate(req, ctx),
            SessionNotice::Ended { session } => self.ended(session, ctx),
            SessionNotice::Crashed { session } => self.crashed(session, ctx),
        }
    }
}

#[cfg(test)]
mod footprint {
    use super::*;

    #[test]
    fn a_registry_entry_is_three_words() {
        use std::mem::size_of;
        // One per live session, in a hash map that is up to half empty: a weak address, the
        // item and the slot (phase and shard live in the slot). See docs/performance.md.
        assert_eq!(
            size_of::<SessionEntry>(),
            24,
            "ItemEntry is {}",
            size_of::<ItemEntry>()
        );
    }
}

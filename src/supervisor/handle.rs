//! The handles an embedding orchestrator holds: [`SupervisorHandle`] on the fleet and
//! [`SessionHandle`] on one session. Both are `Send + Sync + Clone` and every call works from
//! any thread and any async runtime: they only send messages to the actors and await answers.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use super::api::{
    Cancel, ForSession, ListAgentTypes, ListSessions, Lookup, PutAgentType, Shards, Shutdown,
    Submit, TakeInventory, ToSession, WorkItems,
};
use super::{
    Inventory, Place, PutOutcome, ShutdownReport, Supervisor, SupervisorError, WorkItemInfo,
};
use crate::journal::Journal;
use crate::machine::Phase;
use crate::record::{EventBus, FleetEvent, Sequenced};
use crate::session::{
    Command, Input, Inspect, ReportUsage, SessionActor, SessionInfo, SessionStatus, UsageSlot,
    Watch,
};
use crate::usage::UsageSource;
use crate::vocab::{AgentType, SessionId, WorkItem, WorkItemId};

/// The embedding orchestrator's handle on a running supervisor. Cheap to clone.
#[derive(Clone)]
pub struct SupervisorHandle {
    /// The actor.
    pub(super) addr: Addr<Supervisor>,
    /// Its event stream.
    pub(super) bus: EventBus,
    /// Its journal, to wait for durability where the API promises it.
    pub(super) journal: Option<Journal>,
}

/// A direct handle on one live session: usage reported here skips the supervisor's mailbox,
/// and the session's phase changes can be awaited ([`status`](Self::status),
/// [`report_and_settle`](Self::report_and_settle)).
#[derive(Clone)]
pub struct SessionHandle {
    /// The session.
    pub session: SessionId,
    /// The shard (see [`SupervisorHandle::shards`]) it runs on; reports sent from a task on
    /// the same shard avoid waking another thread.
    pub shard: Option<usize>,
    /// Its actor.
    pub(super) addr: Addr<SessionActor>,
    /// Where readings wait for it.
    pub(super) slot: Arc<UsageSlot>,
}

/// Where a session stands once it has settled after a report (see
/// [`SessionHandle::report_and_settle`]): it is back to work, or its work item moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The session is Normal (it did not need to compact, or its compaction freed enough):
    /// go on with it.
    Normal,
    /// The session rotated: `successor` holds the work item now (already registered, so
    /// [`SupervisorHandle::session`] finds it); go on with it.
    Rotated {
        /// The session that took the work item over.
        successor: SessionId,
    },
    /// The session ended without handing its work item over: it was closed (the item is done),
    /// its rotation failed (the item went back to the queue), or it crashed. The event stream
    /// says which.
    Closed,
}

/// Waits until the status `rx` watches is Normal or Closed; a session whose actor stopped
/// without saying Closed (a crash) counts as closed.
async fn settle(mut rx: watch::Receiver<SessionStatus>) -> Settled {
    let settled = rx
        .wait_for(|s| matches!(s.phase, Phase::Normal | Phase::Closed))
        .await
        .map(|s| *s);
    let status = settled.unwrap_or_else(|_| *rx.borrow());
    match (status.phase, status.successor) {
        (Phase::Normal, _) => Settled::Normal,
        (_, Some(successor)) => Settled::Rotated { successor },
        _ => Settled::Closed,
    }
}

impl SessionHandle {
    /// Reports a reading to the session (fire and forget; bad figures are published as
    /// [`FleetEvent::Rejected`]). Coalesced: if the session has not yet handled an earlier
    /// reading sent this way, the newer one replaces it, so a session that falls behind does
    /// one dispatch for the newest figure instead of one per report.
    pub fn report_usage(&self, used: u64, window: Option<u64>, source: UsageSource) {
        if !self.slot.put(used, window, source) {
            self.addr.do_send(ReportUsage {
                used,
                window,
                source,
            });
        }
    }

    /// Reports a reading and waits until the session handled it; answers its state then
    /// (`None` when it has stopped). Every event the reading caused has been published by the
    /// time the answer arrives.
    pub async fn report_usage_and_wait(
        &self,
        used: u64,
        window: Option<u64>,
        source: UsageSource,
    ) -> Option<Phase> {
        self.addr
            .send(ReportUsage {
                used,
                window,
                source,
            })
            .await
            .ok()
    }

    /// Reports a reading and, if the session compacts or rotates because of it (or was
    /// already doing so), waits until it is Normal again, has handed its work item to a
    /// successor, or has closed. The figures are checked as for
    /// [`report_usage`](Self::report_usage) (a bad reading is published as rejected and changes
    /// nothing). Every event the reading caused has been published by the time this returns,
    /// and a successor it names is registered. No polling: the session's actor tells the caller
    /// of each transition. Fails with [`SupervisorError::UnknownSession`] when the session had
    /// stopped before the reading reached it.
    pub async fn report_and_settle(
        &self,
        used: u64,
        window: Option<u64>,
        source: UsageSource,
    ) -> Result<Settled, SupervisorError> {
        let reading = ReportUsage {
            used,
            window,
            source,
        };
        Ok(settle(self.watch(Some(Input::Usage(reading))).await?).await)
    }

    /// Tells the session that its endpoint refused a request as too big for the context
    /// window (a context overflow), with the server's figures when it gave them: the refused
    /// prompt's tokens and the window it enforces. The machine decides what that means (it
    /// rotates the session, reason `overflow`, from any live state; see `docs/semantics.md`),
    /// and this waits as [`report_and_settle`](Self::report_and_settle) does, so it normally
    /// returns [`Settled::Rotated`] with the successor to retry with.
    pub async fn overflow_and_settle(
        &self,
        prompt: Option<u64>,
        window: Option<u64>,
    ) -> Result<Settled, SupervisorError> {
        let input = Input::Overflow { prompt, window };
        Ok(settle(self.watch(Some(input)).await?).await)
    }

    /// Waits, without reporting anything, until the session is Normal, has handed over, or
    /// has closed (see [`report_and_settle`](Self::report_and_settle)).
    pub async fn settled(&self) -> Result<Settled, SupervisorError> {
        Ok(settle(self.watch(None).await?).await)
    }

    /// The session's status, to await its changes (`changed`, `wait_for` on the receiver): its
    /// value is the status once every message sent to the session before has been handled,
    /// and it changes at each transition. The sender side is dropped when the session's actor
    /// stops, after the final `Closed`.
    pub async fn status(&self) -> Result<watch::Receiver<SessionStatus>, SupervisorError> {
        self.watch(None).await
    }

    async fn watch(
        &self,
        input: Option<Input>,
    ) -> Result<watch::Receiver<SessionStatus>, SupervisorError> {
        self.addr
            .send(Watch(input))
            .await
            .map_err(|_| SupervisorError::UnknownSession(self.session))
    }

    /// Closes the session: its work item is done (as [`SupervisorHandle::close`]).
    pub fn close(&self) {
        self.addr.do_send(Command::Close);
    }

    /// Rotates the session now, reason `manual` (as [`SupervisorHandle::rotate`]).
    pub fn rotate(&self) {
        self.addr.do_send(Command::Rotate);
    }

    /// The session's state, once every message sent to it before has been handled; `None`
    /// when it has stopped.
    pub async fn info(&self) -> Option<SessionInfo> {
        self.addr.send(Inspect).await.ok()
    }
}

fn gone<T>(_: MailboxError) -> Result<T, SupervisorError> {
    Err(SupervisorError::ShuttingDown)
}

impl SupervisorHandle {
    /// Every event published from now on.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<FleetEvent> {
        self.bus.subscribe()
    }

    /// Every event published from now on, each with its sequence number (with a journal, its
    /// `seq` in the journal's log, delivered after its commit): a stream that resumes from the
    /// journal subscribes here first, then reads the backlog with
    /// [`Filter::after`](crate::journal::Filter::after), then forwards the live events numbered
    /// above the backlog's last (see [`Sequenced`]).
    pub fn subscribe_sequenced(&self) -> tokio::sync::mpsc::UnboundedReceiver<Sequenced> {
        self.bus.subscribe_sequenced()
    }

    /// Queues a work item; a session starts for it when there is room. With a journal, returns
    /// once the item is durable.
    pub async fn submit(&self, item: WorkItem) -> Result<(), SupervisorError> {
        self.addr.send(Submit(item)).await.or_else(gone)??;
        if let Some(journal) = &self.journal {
            journal.flush().await.map_err(SupervisorError::Journal)?;
        }
        Ok(())
    }

    /// Reports a usage reading for a session (the window defaults to its agent type's).
    pub async fn report_usage(
        &self,
        session: SessionId,
        used: u64,
        window: Option<u64>,
        source: UsageSource,
    ) -> Result<(), SupervisorError> {
        self.addr
            .send(ToSession(
                session,
                ForSession::Usage(ReportUsage {
                    used,
                    window,
                    source,
                }),
            ))
            .await
            .or_else(gone)?
    }

    /// A direct handle on a live session, for reporting usage without the supervisor and
    /// awaiting its phases; `None` when no live session has this id. A session is registered
    /// before its `SessionStarted` event is published (and a successor before its predecessor
    /// hears `HandedOver`), so an id taken from the event stream or from
    /// [`Settled::Rotated`] is always found while the session lives: no waiting or retrying.
    pub async fn session(&self, session: SessionId) -> Option<SessionHandle> {
        self.addr.send(Lookup(session)).await.ok().flatten()
    }

    /// Closes a session: its work item is done.
    pub async fn close(&self, session: SessionId) -> Result<(), SupervisorError> {
        self.addr
            .send(ToSession(session, ForSession::Command(Command::Close)))
            .await
            .or_else(gone)?
    }

    /// Rotates a session now (reason `manual`).
    pub async fn rotate(&self, session: SessionId) -> Result<(), SupervisorError> {
        self.addr
            .send(ToSession(session, ForSession::Command(Command::Rotate)))
            .await
            .or_else(gone)?
    }

    /// The threads sessions run on (empty when they run on the supervisor's): an orchestrator
    /// can run its own per-shard tasks there to report usage without crossing threads.
    pub async fn shards(&self) -> Vec<ArbiterHandle> {
        self.addr.send(Shards).await.unwrap_or_default()
    }

    /// Every live session with its state and usage, by id.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        self.addr.send(ListSessions).await.unwrap_or_default()
    }

    /// Where every work item is.
    pub async fn inventory(&self) -> Result<Inventory, SupervisorError> {
        self.addr.send(TakeInventory).await.or_else(gone)
    }

    /// Asks every session to close, waits until all have (or the deadline passes), then stops
    /// the supervisor. Work items held by sessions go back to the queue (the journal keeps
    /// them across restarts).
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let report = self
            .addr
            .send(Shutdown(deadline))
            .await
            .unwrap_or(ShutdownReport {
                clean: false,
                remaining: 0,
            });
        if let Some(journal) = &self.journal
            && let Err(e) = journal.flush().await
        {
            tracing::error!(error = %e, "the journal could not be flushed at shutdown");
        }
        report
    }

    /// Every agent type work items may name, by name.
    pub async fn agent_types(&self) -> Vec<AgentType> {
        self.addr.send(ListAgentTypes).await.unwrap_or_default()
    }

    /// The agent type named `name`, if there is one.
    pub async fn agent_type(&self, name: &str) -> Option<AgentType> {
        self.agent_types()
            .await
            .into_iter()
            .find(|a| &*a.name == name)
    }

    /// Creates an agent type, or updates its policy, at run time.
    ///
    /// A new type is [`PutOutcome::Created`]: work items may name it from now on, with the
    /// supervisor's restart budget like the builder's types. An existing type may change only
    /// its policy ([`PutOutcome::Updated`]; [`PutOutcome::Unchanged`] when it is the same): a
    /// different window, model or system prompt is [`SupervisorError::AgentTypeConflict`],
    /// since sessions of the type run with them. An updated policy decides every reading
    /// handled from then on, live sessions of the type included (readings they were sent
    /// before are handled first, under the old one); a compaction or rotation already under
    /// way finishes under the policy it started with. Not journaled: a restarted supervisor
    /// knows the types its builder is given.
    pub async fn put_agent_type(&self, agent: AgentType) -> Result<PutOutcome, SupervisorError> {
        self.addr.send(PutAgentType(agent)).await.or_else(gone)?
    }

    /// A work item with its place; `None` when the supervisor was never given it (done and
    /// dead items are kept, see [`WorkItemInfo`]).
    pub async fn work_item(&self, id: WorkItemId) -> Option<WorkItemInfo> {
        self.addr.send(WorkItems(Some(id))).await.ok()?.pop()
    }

    /// Every work item with its place, in id order.
    pub async fn work_items(&self) -> Vec<WorkItemInfo> {
        self.addr.send(WorkItems(None)).await.unwrap_or_default()
    }

    /// Cancels a work item: it ends [`Place::Dead`]`("cancelled")` at once, and a
    /// [`FleetEvent::DeadLetter`] with reason [`CANCELLED`](super::CANCELLED) is published
    /// (with a journal, durable before this returns, so a restarted supervisor never runs the
    /// item again). A queued item leaves the queue. A live item's session is closed, at the
    /// runtime too, without the item counting as done. A rotating item's session is closed
    /// and its rotation closes the successor it spawned. An item whose session is being
    /// started has that session closed as soon as its spawn returns, never registered.
    ///
    /// Fails with [`SupervisorError::UnknownWorkItem`] for an id never submitted, and
    /// [`SupervisorError::AlreadyEnded`] for an item already done or dead.
    pub async fn cancel(&self, id: WorkItemId) -> Result<Place, SupervisorError> {
        let place = self.addr.send(Cancel(id)).await.or_else(gone)??;
        if let Some(journal) = &self.journal {
            journal.flush().await.map_err(SupervisorError::Journal)?;
        }
        Ok(place)
    }

    /// Takes over a lost cluster node's unfinished work, which [`Journal::adopt`] moved to this
    /// node's epoch: recovered as a restart recovers (`supervisor/recovery.rs`): its live
    /// sessions closed at the runtime and their items requeued with their last handoff, its
    /// unfinished rotations resumed from their last step. Returns once the supervisor has taken
    /// it in (its runtime calls go on in the background).
    pub async fn adopt(&self, adopted: crate::journal::Adopted) -> Result<(), SupervisorError> {
        self.addr
            .send(super::api::Adopt(adopted.0))
            .await
            .or_else(gone)
    }

    /// The journal the supervisor writes through, if it has one: to read the backlog of a
    /// resumed event stream ([`Journal::read`] on the writer's own connection, which works for a
    /// journal in memory too, or a [`JournalReader`](crate::journal::JournalReader) opened on
    /// [`Journal::path`] beside the writer), to wait for durability ([`Journal::flush`]), and to
    /// observe commits for metrics ([`Journal::on_commit`], [`Journal::stats`]).
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }
}

//! The messages behind the handles' calls (see `handle.rs`), each with the supervisor's
//! handler: one message per call.

use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{Place, PutOutcome, SessionHandle, Supervisor, SupervisorError, WorkItemInfo};
use crate::journal::Op;
use crate::machine::Phase;
use crate::record::FleetEvent;
use crate::session::{Command, Inspect, ReportUsage, SessionInfo, SetAgentType};
use crate::vocab::SessionId;
use crate::vocab::{AgentType, WorkItem, WorkItemId};

/// Queue a work item.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), SupervisorError>")]
pub(super) struct Submit(pub(super) WorkItem);

impl Handler<Submit> for Supervisor {
    type Result = Result<(), SupervisorError>;

    fn handle(&mut self, Submit(item): Submit, ctx: &mut Self::Context) -> Self::Result {
        if self.shutdown.is_some() {
            return Err(SupervisorError::ShuttingDown);
        }
        self.ledger.check_submit(&item)?;
        self.note(Op::Submitted(item.clone()));
        self.ledger.submit(item);
        self.pump(ctx);
        Ok(())
    }
}

/// Something for a live session, routed by the supervisor.
#[derive(Debug)]
pub(super) enum ForSession {
    /// A usage reading.
    Usage(ReportUsage),
    /// An order.
    Command(Command),
}

/// Route a message to a live session; an unknown session is an error (and, for usage, a
/// rejected input on the event stream).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), SupervisorError>")]
pub(super) struct ToSession(pub(super) SessionId, pub(super) ForSession);

impl Handler<ToSession> for Supervisor {
    type Result = Result<(), SupervisorError>;

    fn handle(
        &mut self,
        ToSession(session, msg): ToSession,
        _: &mut Self::Context,
    ) -> Self::Result {
        let Some(e) = self.sessions.get(&session) else {
            let error = SupervisorError::UnknownSession(session);
            if matches!(msg, ForSession::Usage(_)) {
                self.bus.publish(FleetEvent::Rejected {
                    session: Some(session),
                    error: error.to_string(),
                });
            }
            return Err(error);
        };
        match msg {
            ForSession::Usage(usage) => e.addr.do_send(usage),
            ForSession::Command(cmd) => e.addr.do_send(cmd),
        }
        Ok(())
    }
}

/// A live session's address, to report usage to it directly (the hot path bypasses the
/// supervisor's mailbox).
#[derive(Debug, Message)]
#[rtype(result = "Option<SessionHandle>")]
pub(super) struct Lookup(pub(super) SessionId);

impl Handler<Lookup> for Supervisor {
    type Result = Option<SessionHandle>;

    fn handle(&mut self, Lookup(session): Lookup, _: &mut Self::Context) -> Self::Result {
        self.sessions.get(&session).and_then(|e| {
            Some(SessionHandle {
                session,
                shard: e.shard(),
                addr: e.addr.upgrade()?,
                slot: e.slot.clone(),
            })
        })
    }
}

/// Every live session with its state and usage.
#[derive(Debug, Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub(super) struct ListSessions;

impl Handler<ListSessions> for Supervisor {
    type Result = ResponseFuture<Vec<SessionInfo>>;

    fn handle(&mut self, _: ListSessions, _: &mut Self::Context) -> Self::Result {
        let asks: Vec<_> = self
            .sessions
            .values()
            .map(|e| e.addr.send(Inspect))
            .collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(asks.len());
            for ask in asks {
                // A session that stopped meanwhile is simply not listed.
                if let Ok(info) = ask.await {
                    out.push(info);
                }
            }
            out.sort_by_key(|i| i.session);
            out
        })
    }
}

/// The threads sessions run on.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ArbiterHandle>")]
pub(super) struct Shards;

impl Handler<Shards> for Supervisor {
    type Result = MessageResult<Shards>;

    fn handle(&mut self, _: Shards, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.shards.iter().map(|a| a.handle()).collect())
    }
}

/// Where every work item is, and which session holds what.
#[derive(Debug, Message)]
#[rtype(result = "Inventory")]
pub(super) struct TakeInventory;

/// Where every work item is, for checks and reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    /// Every submitted item and its place, by id.
    pub items: Vec<(WorkItemId, Place)>,
    /// Every registered session, its item and last known phase.
    pub sessions: Vec<(SessionId, WorkItemId, Phase)>,
    /// Items waiting, in queue order.
    pub queue: Vec<WorkItemId>,
    /// Runtime work under way: starts, rotations and closes.
    pub in_flight: usize,
    /// Spawn and assign calls retried while starting sessions so far (a rotation's retries
    /// are in its [`RotationRecord`](crate::record::RotationRecord)).
    pub start_retries: u64,
}

impl Handler<TakeInventory> for Supervisor {
    type Result = MessageResult<TakeInventory>;

    fn handle(&mut self, _: TakeInventory, _: &mut Self::Context) -> Self::Result {
        let mut items: Vec<_> = self
            .ledger
            .items
            .iter()
            .map(|(id, e)| (*id, e.place().clone()))
            .collect();
        items.sort_by_key(|(id, _)| *id);
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, e)| (*id, e.item, e.phase()))
            .collect();
        sessions.sort_by_key(|(id, _, _)| *id);
        MessageResult(Inventory {
            items,
            sessions,
            queue: self.ledger.queue.iter().copied().collect(),
            in_flight: self.work.len(),
            start_retries: self.start_retries,
        })
    }
}

/// Close every session, wait up to the deadline, then stop.
#[derive(Debug, Message)]
#[rtype(result = "ShutdownReport")]
pub(super) struct Shutdown(pub(super) Duration);

/// How a shutdown went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// Every session closed and every runtime call finished before the deadline.
    pub clean: bool,
    /// Sessions still registered when the supervisor stopped.
    pub remaining: usize,
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ShutdownReport>;

    fn handle(&mut self, Shutdown(deadline): Shutdown, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.shutdown.get_or_insert_with(Vec::new).push(tx);
        // In id order, so that a shutdown's event log is deterministic.
        let mut ids: Vec<_> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.sessions[&id].addr.do_send(Command::Close);
        }
        self.check_shutdown();
        Box::pin(
            async move { tokio::time::timeout(deadline, rx).await.is_ok() }
                .into_actor(self)
                .map(|clean, act, ctx| {
                    let report = ShutdownReport {
                        clean,
                        remaining: act.sessions.len(),
                    };
                    tracing::info!(clean, remaining = report.remaining, "supervisor stopped");
                    ctx.stop();
                    report
                }),
        )
    }
}

/// Every agent type, by name.
#[derive(Debug, Message)]
#[rtype(result = "Vec<AgentType>")]
pub(super) struct ListAgentTypes;

impl Handler<ListAgentTypes> for Supervisor {
    type Result = MessageResult<ListAgentTypes>;

    fn handle(&mut self, _: ListAgentTypes, _: &mut Self::Context) -> Self::Result {
        let mut types: Vec<AgentType> = self
            .ledger
            .agents
            .values()
            .map(|e| AgentType::clone(&e.agent))
            .collect();
        types.sort_by(|a, b| a.name.cmp(&b.name));
        MessageResult(types)
    }
}

/// Create an agent type, or update its policy.
#[derive(Debug, Message)]
#[rtype(result = "Result<PutOutcome, SupervisorError>")]
pub(super) struct PutAgentType(pub(super) AgentType);

impl Handler<PutAgentType> for Supervisor {
    type Result = Result<PutOutcome, SupervisorError>;

    fn handle(
        &mut self,
        PutAgentType(agent): PutAgentType,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let (outcome, agent) = self.ledger.put_agent(agent)?;
        match outcome {
            PutOutcome::Updated => {
                tracing::info!(agent_type = %agent.name, "agent type's policy updated");
                // Live sessions of the type decide with the new policy from their next message
                // on; new sessions and successors take it from the ledger.
                for e in self.sessions.values() {
                    if self.ledger.items[&e.item].item.agent_type == agent.name {
                        e.addr.do_send(SetAgentType(agent.clone()));
                    }
                }
            }
            PutOutcome::Created => {
                tracing::info!(agent_type = %agent.name, "agent type created");
                // Items of the type may have been waiting (recovered from a journal).
                self.pump(ctx);
            }
            PutOutcome::Unchanged => {}
        }
        Ok(outcome)
    }
}

/// One work item, or every one (`None`), with its place.
#[derive(Debug, Message)]
#[rtype(result = "Vec<WorkItemInfo>")]
pub(super) struct WorkItems(pub(super) Option<WorkItemId>);

impl Handler<WorkItems> for Supervisor {
    type Result = MessageResult<WorkItems>;

    fn handle(&mut self, WorkItems(id): WorkItems, _: &mut Self::Context) -> Self::Result {
        let info = |e: &super::ItemEntry| WorkItemInfo {
            item: e.item.clone(),
            place: e.place().clone(),
        };
        let mut items: Vec<WorkItemInfo> = match id {
            Some(id) => self.ledger.items.get(&id).map(info).into_iter().collect(),
            None => self.ledger.items.values().map(info).collect(),
        };
        items.sort_by_key(|i| i.item.id);
        MessageResult(items)
    }
}

/// Take over a lost node's unfinished work (see `recovery.rs`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Adopt(pub(super) crate::journal::recovery::RecoveryState);

impl Handler<Adopt> for Supervisor {
    type Result = ();

    fn handle(&mut self, Adopt(state): Adopt, ctx: &mut Self::Context) {
        self.adopt(state, ctx);
    }
}

/// Cancel a work item.
#[derive(Debug, Message)]
#[rtype(result = "Result<Place, SupervisorError>")]
pub(super) struct Cancel(pub(super) WorkItemId);

impl Handler<Cancel> for Supervisor {
    type Result = Result<Place, SupervisorError>;

    fn handle(&mut self, Cancel(id): Cancel, ctx: &mut Self::Context) -> Self::Result {
        self.cancel(id, ctx)
    }
}

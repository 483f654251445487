//! Session actors on their way to their shard: made on the supervisor's thread, started on the
//! shard's. A cross-thread send wakes the shard's thread (a system call), so actors go in
//! batches, and a batch sent while the shard has not yet taken the previous one joins it
//! instead of waking the shard again: one wake-up per time the shard catches up, not per
//! session.
//!
//! The actor itself is built on the shard's thread, from its [`Seed`]: its parts that are not
//! in the task's own allocation (the state machine's box, see `session.rs`) are then made by
//! the thread whose allocator also made the task, where they fill the space the task's
//! 128-byte alignment leaves between tasks instead of adding to the supervisor's heap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix::Arbiter;
use actix::dev::channel::AddressReceiver;
use actix::prelude::*;

use crate::session::{Fleet, SessionActor, UsageSlot};
use crate::vocab::{AgentType, SessionId, WorkItemId};

/// What a session actor is made from (the arguments of `SessionActor::new`).
pub(super) struct Seed {
    /// The session.
    pub(super) session: SessionId,
    /// Its agent type.
    pub(super) agent: Arc<AgentType>,
    /// The work item it holds.
    pub(super) item: WorkItemId,
    /// What the fleet's sessions share.
    pub(super) fleet: Arc<Fleet>,
    /// The slot it shares with the registry and its handles.
    pub(super) slot: Arc<UsageSlot>,
}

impl Seed {
    /// The session actor, built where this is called.
    pub(super) fn into_actor(self) -> SessionActor {
        SessionActor::new(self.session, self.agent, self.item, self.fleet, self.slot)
    }
}

/// A session actor's seed with its mailbox, ready to start.
type Ready = (Seed, AddressReceiver<SessionActor>);

/// One shard's outbox.
#[derive(Default)]
pub(super) struct Outbox {
    /// Actors made since the last [`send`](Self::send), in order.
    pending: Vec<Ready>,
    /// What the shard's thread takes them from.
    shared: Arc<Shared>,
}

/// The part of an [`Outbox`] the shard's thread sees.
#[derive(Default)]
struct Shared {
    /// Actors sent and not yet started, in order.
    actors: Mutex<Vec<Ready>>,
    /// A job that will take `actors` is on its way to the shard.
    scheduled: AtomicBool,
}

impl Outbox {
    /// Queues an actor until the next [`send`](Self::send).
    pub(super) fn push(&mut self, seed: Seed, rx: AddressReceiver<SessionActor>) {
        self.pending.push((seed, rx));
    }

    /// Whether no actor waits to be sent.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands the queued actors to `shard`, which starts them in order; wakes the shard only if
    /// no job of this outbox is already on its way there.
    pub(super) fn send(&mut self, shard: &Arbiter) {
        if self.pending.is_empty() {
            return;
        }
        {
            let mut actors = self
                .shared
                .actors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if actors.is_empty() {
                std::mem::swap(&mut *actors, &mut self.pending);
            } else {
                actors.append(&mut self.pending);
            }
        }
        // The job clears the flag before it takes the actors: an actor added after it took
        // them finds the flag clear and schedules another job.
        if !self.shared.scheduled.swap(true, Ordering::AcqRel) {
            let shared = self.shared.clone();
            shard.spawn_fn(move || {
                shared.scheduled.store(false, Ordering::Release);
                let actors = std::mem::take(
                    &mut *shared.actors.lock().unwrap_or_else(PoisonError::into_inner),
                );
                for (seed, rx) in actors {
                    actix::spawn(Context::with_receiver(rx).into_future(seed.into_actor()));
                }
            });
        }
    }
}

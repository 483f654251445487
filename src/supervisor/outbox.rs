//! Session actors on their way to their shard: made on the supervisor's thread, started on the
//! shard's. A cross-thread send wakes the shard's thread (a system call), so actors go in
//! batches, and a batch sent while the shard has not yet taken the previous one joins it
//! instead of waking the shard again: one wake-up per time the shard catches up, not per
//! session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix::Arbiter;
use actix::dev::channel::AddressReceiver;
use actix::prelude::*;

use crate::session::SessionActor;

/// A session actor with its mailbox, ready to start.
type Ready = (SessionActor, AddressReceiver<SessionActor>);

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
    pub(super) fn push(&mut self, actor: SessionActor, rx: AddressReceiver<SessionActor>) {
        self.pending.push((actor, rx));
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
                for (actor, rx) in actors {
                    actix::spawn(Context::with_receiver(rx).into_future(actor));
                }
            });
        }
    }
}

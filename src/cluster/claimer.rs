//! The claimer: while the local supervisor has room, claims work items from the pool and hands
//! them to it. It claims when `baton_pool` wakes it (a submission on any node), when one of its
//! own items ends (room freed), and at every sweep interval.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pool::{self, POOL_CHANNEL};
use super::{ClusterError, Conn, Epoch, connect};
use crate::record::FleetEvent;
use crate::supervisor::{Place, SupervisorHandle};

/// How long the listener waits for a notification before it looks at its stop signal again.
const LISTEN_TICK: Duration = Duration::from_millis(250);

/// What the claimer needs.
pub(crate) struct Claimer {
    /// Its own connection for the claims.
    pub conn: Conn,
    /// The database, for the listener's connection.
    pub url: Arc<str>,
    /// This node.
    pub epoch: Epoch,
    /// The local supervisor.
    pub supervisor: SupervisorHandle,
    /// Live sessions at most, as the supervisor is configured: claims fill up to it.
    pub max_sessions: usize,
    /// Claims at least this often, notified or not.
    pub every: Duration,
}

/// The room the supervisor has for more items: its capacity less what it holds, queued
/// included.
pub(crate) async fn room(supervisor: &SupervisorHandle, max_sessions: usize) -> usize {
    let Ok(inv) = supervisor.inventory().await else {
        return 0;
    };
    let starting = inv
        .items
        .iter()
        .filter(|(_, p)| matches!(p, Place::Starting))
        .count();
    max_sessions.saturating_sub(inv.sessions.len() + inv.queue.len() + starting)
}

impl Claimer {
    /// Claims until `stop` is cancelled, or the node turns out to be fenced.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        {
            // A thread of its own, not the runtime's blocking pool: a runtime that shuts down
            // (a test that panicked before its node left) does not wait for it, and it ends
            // with this loop (the last `wake`) or with `stop`.
            let (url, weak, stop, timeout) = (
                self.url.clone(),
                Arc::downgrade(&wake),
                stop.clone(),
                self.every,
            );
            let spawned = std::thread::Builder::new()
                .name("baton-pool-listen".into())
                .spawn(move || listen(&url, timeout, &weak, &stop));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the pool listener; claiming every sweep interval only");
            }
        }
        let mut events = self.supervisor.subscribe();
        loop {
            match self.claim_once().await {
                Ok(n) if n > 0 => {
                    tracing::debug!(epoch = %self.epoch, claimed = n, "claimed from the pool")
                }
                Ok(_) => {}
                Err(ClusterError::Fenced(_)) => {
                    tracing::error!(epoch = %self.epoch, "claim refused: this node has been fenced");
                    return;
                }
                Err(e) => tracing::warn!(epoch = %self.epoch, error = %e, "claim failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.every) => {}
                e = next_ending(&mut events) => if !e { return },
            }
        }
    }

    /// One claim: as many items as there is room for, handed to the supervisor. An item the
    /// supervisor refuses goes back to the pool.
    pub(crate) async fn claim_once(&self) -> Result<usize, ClusterError> {
        let room = room(&self.supervisor, self.max_sessions).await;
        if room == 0 {
            return Ok(0);
        }
        let types: Vec<String> = self
            .supervisor
            .agent_types()
            .await
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        let epoch = self.epoch;
        let items = self
            .conn
            .call(move |c| pool::claim(c, epoch, &types, room))
            .await?;
        let n = items.len();
        for item in items {
            let id = item.id;
            if let Err(e) = self.supervisor.submit(item).await {
                tracing::warn!(work_item = %id, error = %e, "the supervisor refused a claimed item; giving it back to the pool");
                if let Err(e) = self.conn.call(move |c| pool::release(c, epoch, id)).await {
                    tracing::warn!(work_item = %id, error = %e, "could not give a claimed item back; it is adopted with this node");
                }
            }
        }
        Ok(n)
    }
}

/// Waits until an item of this node ends (room is freed); `false` when the supervisor is gone.
async fn next_ending(events: &mut tokio::sync::mpsc::UnboundedReceiver<FleetEvent>) -> bool {
    loop {
        match events.recv().await {
            None => return false,
            Some(FleetEvent::WorkItemDone { .. } | FleetEvent::DeadLetter { .. }) => {
                // Whatever else ended meanwhile is covered by the one claim.
                while events.try_recv().is_ok() {}
                return true;
            }
            Some(_) => {}
        }
    }
}

/// `LISTEN baton_pool` on a connection of its own, waking the claimer at each notification,
/// until `stop` is cancelled or the claimer is gone (`wake` cannot be upgraded). A lost
/// connection is opened again after `retry`.
fn listen(url: &str, retry: Duration, wake: &Weak<Notify>, stop: &CancellationToken) {
    let gone = || stop.is_cancelled() || wake.strong_count() == 0;
    let notify = || wake.upgrade().inspect(|w| w.notify_one()).is_some();
    while !gone() {
        let mut client = match connect(url, retry).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {POOL_CHANNEL}"))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for pool submissions; retrying");
                std::thread::sleep(retry);
                continue;
            }
        };
        // Anything submitted while the listener was away is claimed at this wake.
        if !notify() {
            return;
        }
        loop {
            if gone() {
                return;
            }
            let next = {
                let mut notifications = client.notifications();
                let mut it = notifications.timeout_iter(LISTEN_TICK);
                postgres::fallible_iterator::FallibleIterator::next(&mut it).map(|n| n.is_some())
            };
            match next {
                Ok(true) => {
                    if !notify() {
                        return;
                    }
                }
                // Also what a closed connection answers.
                Ok(false) if client.is_closed() => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the pool listener's connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

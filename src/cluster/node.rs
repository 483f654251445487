//! Nodes, leases and epochs: joining with a new epoch, heartbeating, being lost.
//!
//! A node joins with an epoch from `baton_epochs` and a lease until the database's now plus the
//! TTL. It heartbeats every TTL / 3. A node whose row is gone has been **fenced** (the sweeper
//! adopted its work); one that could not heartbeat for a whole TTL must assume it will be. Either
//! way it is **lost**: [`Node::lost`] resolves, and the server stops taking work and exits.

use std::time::Duration;

use postgres::Client;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ClusterError, Conn, DB_NOW, Epoch, millis};
use crate::journal::Journal;

/// One row of `baton_nodes`: a live (or expired, not yet adopted) node incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeRow {
    /// Its fencing epoch.
    pub epoch: i64,
    /// Its name (`--node`, the host name by default).
    pub name: String,
    /// Where other nodes and orchestrators reach it (`--advertise`).
    pub addr: Option<String>,
    /// Its lease ends then (milliseconds since the Unix epoch, the database's clock).
    pub lease_until: i64,
    /// When it joined (same clock).
    pub started_at: i64,
}

/// Joins the cluster: a new row in `baton_nodes` with the next epoch and a lease of `ttl` from
/// the database's now.
pub fn join(
    c: &mut Client,
    name: &str,
    addr: Option<&str>,
    ttl: Duration,
) -> Result<Epoch, ClusterError> {
    let sql = format!(
        "INSERT INTO baton_nodes (epoch, name, addr, lease_until, started_at)
         VALUES (nextval('baton_epochs'), $1, $2, {DB_NOW} + $3, {DB_NOW})
         RETURNING epoch"
    );
    let row = c.query_one(&sql, &[&name, &addr, &millis(ttl)])?;
    Ok(Epoch(row.get(0)))
}

/// Renews the lease to `ttl` from the database's now. `false`: the row is gone, the node has
/// been fenced.
pub fn heartbeat(c: &mut Client, epoch: Epoch, ttl: Duration) -> Result<bool, ClusterError> {
    let sql = format!("UPDATE baton_nodes SET lease_until = {DB_NOW} + $2 WHERE epoch = $1");
    Ok(c.execute(&sql, &[&epoch.0, &millis(ttl)])? == 1)
}

/// Ends the lease now (a clean stop): the sweeper adopts whatever the node still owns at its
/// next sweep, rather than after a whole TTL.
pub fn expire(c: &mut Client, epoch: Epoch) -> Result<(), ClusterError> {
    c.execute(
        "UPDATE baton_nodes SET lease_until = 0 WHERE epoch = $1",
        &[&epoch.0],
    )?;
    Ok(())
}

/// Every node row, by epoch, and the database's now (to tell live leases from expired ones).
pub fn list(c: &mut Client) -> Result<(Vec<NodeRow>, i64), ClusterError> {
    let mut tx = c.transaction()?;
    let now: i64 = tx.query_one(&format!("SELECT {DB_NOW}"), &[])?.get(0);
    let rows = tx
        .query(
            "SELECT epoch, name, addr, lease_until, started_at FROM baton_nodes ORDER BY epoch",
            &[],
        )?
        .iter()
        .map(|r| NodeRow {
            epoch: r.get(0),
            name: r.get(1),
            addr: r.get(2),
            lease_until: r.get(3),
            started_at: r.get(4),
        })
        .collect();
    tx.commit()?;
    Ok((rows, now))
}

/// Why a node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Its row is gone: another node adopted its work.
    Fenced,
    /// No heartbeat succeeded for a whole TTL: its lease has run out, or is about to.
    Expired,
    /// Its journal failed (its connection was lost, or a write was refused): it can record
    /// nothing more, so it stops heartbeating and another node adopts its work.
    JournalFailed,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lost::Fenced => "fenced: another node has adopted this node's work",
            Lost::Expired => "no heartbeat succeeded for a whole lease TTL",
            Lost::JournalFailed => "its journal failed: another node adopts its work",
        })
    }
}

/// A joined node: its epoch, and whether it is lost.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its fencing epoch: the journal writes with it, claims are fenced by it.
    pub epoch: Epoch,
    /// Set once, when the node is lost.
    lost: watch::Receiver<Option<Lost>>,
}

impl Node {
    /// Resolves when the node is lost (at once if it already is); never if the heartbeat loop
    /// stopped cleanly.
    pub async fn lost(&self) -> Lost {
        let mut rx = self.lost.clone();
        loop {
            if let Some(lost) = *rx.borrow_and_update() {
                return lost;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether the node is lost, now.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }
}

/// Heartbeats for `epoch` on a connection of its own to `url`, every `ttl / 3`, as a task on
/// `tracker`, until `stop` is cancelled or the node is lost: the returned [`Node`] says when.
/// With `journal`, the node is also lost once that journal has failed (checked before each
/// heartbeat): a node that can record nothing must not keep its lease.
pub fn spawn_heartbeat(
    url: &str,
    epoch: Epoch,
    ttl: Duration,
    journal: Option<Journal>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Node {
    let (tx, rx) = watch::channel(None);
    let conn = Conn::new(url, ttl.max(Duration::from_secs(1)));
    tracker.spawn(heartbeat_loop(conn, epoch, ttl, journal, tx, stop));
    Node { epoch, lost: rx }
}

/// The heartbeat loop. The last successful heartbeat is timed from before it was sent, so the
/// node gives itself up no later than the database lets its lease expire.
async fn heartbeat_loop(
    conn: Conn,
    epoch: Epoch,
    ttl: Duration,
    journal: Option<Journal>,
    tx: watch::Sender<Option<Lost>>,
    stop: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Some(failure) = journal.as_ref().and_then(Journal::failure) {
            tracing::error!(%epoch, error = %failure, "this node's journal failed: it stops heartbeating, and its lease runs out");
            tx.send_replace(Some(Lost::JournalFailed));
            return;
        }
        let sent = Instant::now();
        let beat = conn.call(move |c| heartbeat(c, epoch, ttl));
        match tokio::time::timeout(every, beat).await {
            Ok(Ok(true)) => last_ok = sent,
            Ok(Ok(false)) => {
                tracing::error!(%epoch, "this node's row is gone: it has been fenced");
                tx.send_replace(Some(Lost::Fenced));
                return;
            }
            Ok(Err(e)) => tracing::warn!(%epoch, error = %e, "heartbeat failed"),
            Err(_) => tracing::warn!(%epoch, "heartbeat timed out"),
        }
        if last_ok.elapsed() >= ttl {
            tracing::error!(%epoch, ?ttl, "no heartbeat succeeded for a whole TTL: this node is lost");
            tx.send_replace(Some(Lost::Expired));
            return;
        }
    }
}

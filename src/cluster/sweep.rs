//! The sweeper: one per cluster, the node holding [`SWEEPER_LOCK`] on a connection of its own.
//! At each sweep interval it finds the nodes whose lease has run out and adopts their work:
//! `Journal::adopt` (one fenced transaction that deletes the dead node's row and takes over its
//! unfinished rows), then the local supervisor recovers what it took over, as a restart would.

use std::time::Duration;

use postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{ClusterError, Conn, DB_NOW, Epoch};
use crate::journal::Journal;
use crate::supervisor::SupervisorHandle;

/// The session-level advisory lock whose holder is the cluster's sweeper ("baton" and 1).
pub const SWEEPER_LOCK: i64 = 0x6261_746f_6e00_0001;

/// Tries to become the sweeper: takes [`SWEEPER_LOCK`] on this connection if no other holds it.
/// Held until the connection closes (or [`unlock`]); taking it again on the same connection
/// succeeds (and stacks).
pub fn try_lock(c: &mut Client) -> Result<bool, ClusterError> {
    Ok(
        c.query_one("SELECT pg_try_advisory_lock($1)", &[&SWEEPER_LOCK])?
            .get(0),
    )
}

/// Whether this connection holds [`SWEEPER_LOCK`], taking it if it is free: what each sweep
/// asks first. Holding it already does not stack it again, and a connection opened anew (the
/// old one failed, and its lock went with it) tries afresh.
pub fn hold(c: &mut Client) -> Result<bool, ClusterError> {
    Ok(c.query_one(
        "SELECT CASE WHEN EXISTS (
                    SELECT 1 FROM pg_locks
                    WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                      AND objsubid = 1 AND classid = ($1::bigint >> 32)::oid
                      AND objid = ($1::bigint & 4294967295)::oid)
                THEN true ELSE pg_try_advisory_lock($1::bigint) END",
        &[&SWEEPER_LOCK],
    )?
    .get(0))
}

/// Gives the sweeper's lock up (once per time it was taken on this connection).
pub fn unlock(c: &mut Client) -> Result<bool, ClusterError> {
    Ok(
        c.query_one("SELECT pg_advisory_unlock($1)", &[&SWEEPER_LOCK])?
            .get(0),
    )
}

/// The nodes whose lease ran out by the database's clock, by epoch, never `me`.
pub fn expired(c: &mut Client, me: Epoch) -> Result<Vec<Epoch>, ClusterError> {
    let sql = format!(
        "SELECT epoch FROM baton_nodes WHERE lease_until < {DB_NOW} AND epoch <> $1 ORDER BY epoch"
    );
    Ok(c.query(&sql, &[&me.0])?
        .iter()
        .map(|r| Epoch(r.get(0)))
        .collect())
}

/// What the sweeper loop needs.
pub(crate) struct Sweeper {
    /// Its own connection: the lock lives and dies with it.
    pub conn: Conn,
    /// This node.
    pub epoch: Epoch,
    /// How often it sweeps.
    pub every: Duration,
    /// This node's journal, which adopts.
    pub journal: Journal,
    /// This node's supervisor, which recovers what was adopted.
    pub supervisor: SupervisorHandle,
}

impl Sweeper {
    /// Sweeps every interval until `stop` is cancelled or this node's journal refuses to adopt
    /// (it is fenced, or failed).
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut sweeper = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
            match self.sweep_once().await {
                Ok(Some(n)) => {
                    if !sweeper {
                        tracing::info!(epoch = %self.epoch, "this node is the cluster's sweeper");
                    }
                    sweeper = true;
                    if n > 0 {
                        tracing::info!(epoch = %self.epoch, adopted = n, "adopted lost nodes");
                    }
                }
                Ok(None) => sweeper = false,
                Err(e @ (ClusterError::Journal(_) | ClusterError::Supervisor(_))) => {
                    tracing::error!(epoch = %self.epoch, error = %e, "adoption failed; this node sweeps no more");
                    return;
                }
                Err(e) => {
                    sweeper = false;
                    tracing::warn!(epoch = %self.epoch, error = %e, "sweep failed");
                }
            }
        }
    }

    /// One sweep: `None` when another node is the sweeper; else every expired node adopted,
    /// and how many.
    pub(crate) async fn sweep_once(&self) -> Result<Option<usize>, ClusterError> {
        let me = self.epoch;
        let dead = self
            .conn
            .call(move |c| {
                if !hold(c)? {
                    return Ok(None);
                }
                expired(c, me).map(Some)
            })
            .await?;
        let Some(dead) = dead else { return Ok(None) };
        for &d in &dead {
            adopt(&self.journal, &self.supervisor, d).await?;
        }
        Ok(Some(dead.len()))
    }
}

/// Adopts the node `dead`: its row deleted and its unfinished work moved to this node in one
/// fenced transaction (`Journal::adopt`), then recovered by this node's supervisor.
pub async fn adopt(
    journal: &Journal,
    supervisor: &SupervisorHandle,
    dead: Epoch,
) -> Result<(), ClusterError> {
    let j = journal.clone();
    let adopted = tokio::task::spawn_blocking(move || j.adopt(dead))
        .await
        .map_err(|e| ClusterError::Task(e.to_string()))?
        .map_err(ClusterError::Journal)?;
    tracing::info!(%dead, work_items = adopted.work_items(), sessions = adopted.sessions(),
        rotations = adopted.rotations(), "adopting a lost node's work");
    supervisor
        .adopt(adopted)
        .await
        .map_err(ClusterError::Supervisor)
}

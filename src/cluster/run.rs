//! [`ClusterConfig`] and [`start`]: joining, then the node's loops (heartbeat, claimer, sweeper)
//! on the caller's task tracker.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::claimer::Claimer;
use super::node::{self, Node};
use super::sweep::Sweeper;
use super::{ClusterError, Conn, Epoch};
use crate::journal::{Journal, PgUrl, pg};
use crate::supervisor::SupervisorHandle;

/// How a node takes part in the cluster. Its `Debug` never shows the database's password.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The database (`postgres://...`).
    pub url: String,
    /// The node's name, shown in `GET /v1/cluster/nodes` (the host name by default).
    pub name: String,
    /// Where other nodes and orchestrators reach this node's API.
    pub advertise: Option<String>,
    /// The lease: a node that has not heartbeat for this long is adopted.
    pub ttl: Duration,
    /// How often the sweeper looks for expired nodes, and the claimer claims unprompted.
    pub sweep_every: Duration,
    /// Live sessions at most on this node: claims fill up to it.
    pub max_sessions: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = PgUrl::parse(&self.url)
            .map_or_else(|_| "<not a PostgreSQL URL>".to_owned(), |u| u.to_string());
        f.debug_struct("ClusterConfig")
            .field("url", &url)
            .field("name", &self.name)
            .field("advertise", &self.advertise)
            .field("ttl", &self.ttl)
            .field("sweep_every", &self.sweep_every)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl ClusterConfig {
    /// A bounded wait for a database call: a stalled network must not hold a loop longer than
    /// the lease.
    fn timeout(&self) -> Duration {
        self.ttl.max(Duration::from_secs(1))
    }
}

/// Joins the cluster: a new epoch and a lease (the journal then opens with the epoch). The
/// journal's schema is created first if the database has none (as the journal creates it: once,
/// however many nodes start together).
pub async fn join(config: &ClusterConfig) -> Result<Epoch, ClusterError> {
    let url = PgUrl::parse(&config.url).map_err(ClusterError::Journal)?;
    tokio::task::spawn_blocking(move || {
        let conn = pg::PgConn::connect(&url, None, false)?;
        pg::migrate(&conn, &pg::place(&url))
    })
    .await
    .map_err(|e| ClusterError::Task(e.to_string()))?
    .map_err(ClusterError::Journal)?;
    let conn = Conn::new(&config.url, config.timeout());
    let (name, addr, ttl) = (config.name.clone(), config.advertise.clone(), config.ttl);
    let epoch = conn
        .call(move |c| node::join(c, &name, addr.as_deref(), ttl))
        .await?;
    tracing::info!(%epoch, name = %config.name, "joined the cluster");
    Ok(epoch)
}

/// A node's loops, started.
pub struct Running {
    /// This node: [`Node::lost`] says when it is lost.
    pub node: Node,
    /// Cancelled to stop taking work: the claimer and the sweeper.
    work: CancellationToken,
    /// Cancelled to stop heartbeating.
    beat: CancellationToken,
    /// A connection to end the lease at a clean stop.
    conn: Conn,
}

impl Running {
    /// Stops taking work: no more claims, no more adoptions (the heartbeat goes on, so that the
    /// node keeps what it holds while its fleet closes).
    pub fn stop_taking_work(&self) {
        self.work.cancel();
    }

    /// Leaves the cluster: every loop stops, then the lease ends now so that what the node still
    /// owns is adopted at the next sweep (unless it is lost: its row is not its own any more).
    pub async fn leave(self) {
        self.work.cancel();
        self.beat.cancel();
        if self.node.is_lost() {
            return;
        }
        let epoch = self.node.epoch;
        if let Err(e) = self.conn.call(move |c| node::expire(c, epoch)).await {
            tracing::warn!(%epoch, error = %e, "could not end this node's lease; it runs out by itself");
        }
    }
}

/// Starts the loops of the node `epoch` (joined with [`join`]) on `tracker`: the heartbeat, the
/// claimer feeding `supervisor`, and the sweeper adopting through `journal` (opened with the
/// same epoch).
pub fn start(
    config: &ClusterConfig,
    epoch: Epoch,
    journal: Journal,
    supervisor: SupervisorHandle,
    tracker: &TaskTracker,
) -> Running {
    let (work, beat) = (CancellationToken::new(), CancellationToken::new());
    let node = node::spawn_heartbeat(
        &config.url,
        epoch,
        config.ttl,
        Some(journal.clone()),
        tracker,
        beat.clone(),
    );
    // The sweeper's lock lives with its connection: if this node is stopped or cut off while
    // the connection stays open, the server ends the idle session and another node sweeps.
    let sweeper = Sweeper {
        conn: Conn::new(&config.url, config.timeout())
            .with_idle_timeout(config.ttl.max(config.sweep_every * 2)),
        epoch,
        every: config.sweep_every,
        journal,
        supervisor: supervisor.clone(),
    };
    tracker.spawn(sweeper.run(work.clone()));
    let claimer = Claimer {
        conn: Conn::new(&config.url, config.timeout()),
        url: Arc::from(config.url.as_str()),
        epoch,
        supervisor,
        max_sessions: config.max_sessions,
        every: config.sweep_every,
    };
    tracker.spawn(claimer.run(work.clone()));
    // A lost node takes no more work.
    let (lost, w) = (node.clone(), work.clone());
    tracker.spawn(async move {
        tokio::select! {
            _ = lost.lost() => w.cancel(),
            () = w.cancelled() => {}
        }
    });
    Running {
        node,
        work,
        beat,
        conn: Conn::new(&config.url, config.timeout()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_s_debug_never_shows_the_database_password() {
        let config = ClusterConfig {
            url: "postgres://baton:s3cret-pw@127.0.0.1:5432/baton".into(),
            name: "a".into(),
            advertise: None,
            ttl: Duration::from_secs(10),
            sweep_every: Duration::from_secs(2),
            max_sessions: 8,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("127.0.0.1:5432"), "{shown}");
    }
}

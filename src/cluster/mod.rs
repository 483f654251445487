//! Several `baton serve` nodes on one PostgreSQL: nodes, leases and epochs, the shared pool of
//! work items, the sweeper and adoption (`docs/cluster.md` is the contract; `docs/semantics.md`,
//! "Cluster", the guarantees).
//!
//! Every decision is one SQL statement or transaction in a plain function over a
//! [`postgres::Client`] (tested against a real server); the loops around them run as tokio
//! tasks that hand each call to a blocking thread. Times are the database's clock
//! ([`DB_NOW`]), never a node's.
//!
//! | file | what it is for |
//! | --- | --- |
//! | `mod.rs` | [`Epoch`], [`DB_NOW`], connecting |
//! | `error.rs` | [`ClusterError`] |
//! | `node.rs` | joining with a new epoch, heartbeats, being lost ([`Node`], [`Lost`]) |
//! | `pool.rs` | the shared pool: submitting into it, claiming from it (`FOR UPDATE SKIP LOCKED`) |
//! | `claimer.rs` | the loop that claims while the supervisor has room, woken by `baton_pool` |
//! | `sweep.rs` | the sweeper: one per cluster by advisory lock, adopting expired nodes' work |
//! | `run.rs` | [`ClusterConfig`] and [`start`]: the three loops of a node, on a task tracker |

mod claimer;
mod error;
pub mod node;
pub mod pool;
mod run;
pub mod sweep;

use std::time::Duration;

pub use error::ClusterError;
pub use node::{Lost, Node};
pub use run::{ClusterConfig, Running, join, start};

/// The database's clock in milliseconds since the Unix epoch, as SQL: every lease is set and
/// compared with it, so that nodes' clocks never matter.
pub const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A node incarnation's fencing epoch: from the `baton_epochs` sequence, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Epoch(pub i64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Opens a connection of its own (each loop has one: a session-level advisory lock and a
/// `LISTEN` belong to their connection). The connect attempt is bounded by `timeout`, and TCP
/// keepalives notice a peer that went away.
pub fn connect(url: &str, timeout: Duration) -> Result<postgres::Client, ClusterError> {
    let mut config: postgres::Config = url.parse().map_err(ClusterError::url)?;
    config
        .connect_timeout(timeout.max(Duration::from_millis(100)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .application_name("baton-cluster");
    config
        .connect(postgres::NoTls)
        .map_err(ClusterError::Postgres)
}

/// A connection a loop owns, (re)opened on demand; each call runs on a blocking thread, as the
/// synchronous client needs. A connection that failed is dropped and opened again at the next
/// call. A call while the previous one still runs (a stalled network) fails at once rather than
/// queueing behind it.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The database.
    url: std::sync::Arc<str>,
    /// The connection, when open.
    client: std::sync::Arc<std::sync::Mutex<Option<postgres::Client>>>,
    /// How long connecting may take.
    timeout: Duration,
}

impl Conn {
    /// A connection to `url`, opened at the first call.
    pub(crate) fn new(url: &str, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            client: Default::default(),
            timeout,
        }
    }

    /// Runs `f` on the connection, on a blocking thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce(&mut postgres::Client) -> Result<T, ClusterError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.call_blocking(f))
            .await
            .map_err(|e| ClusterError::Task(e.to_string()))?
    }

    /// Runs `f` on the connection, on this thread.
    pub(crate) fn call_blocking<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let mut slot = match self.client.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(ClusterError::Task(
                    "the previous call on this connection has not finished".into(),
                ));
            }
        };
        if slot.as_ref().is_none_or(postgres::Client::is_closed) {
            *slot = Some(connect(&self.url, self.timeout)?);
        }
        let client = slot.as_mut().expect("opened above");
        let result = f(client);
        if matches!(result, Err(ClusterError::Postgres(_))) {
            // Whatever the failure, the next call starts from a fresh connection (a failed
            // transaction or a half-read reply must not leak into it).
            *slot = None;
        }
        result
    }
}

/// `ttl` in whole milliseconds, as SQL takes it.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

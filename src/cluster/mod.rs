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
//! | `mod.rs` | [`DB_NOW`]; [`Epoch`] is the journal's |
//! | `db.rs` | connections: one per loop, and a small [`Pool`] for the HTTP handlers |
//! | `error.rs` | [`ClusterError`] |
//! | `node.rs` | joining with a new epoch, heartbeats, being lost ([`Node`], [`Lost`]) |
//! | `pool.rs` | the shared pool: submitting into it, claiming from it (`FOR UPDATE SKIP LOCKED`) |
//! | `sessions.rs` | sessions as the database holds them, and where each one's owner answers |
//! | `claimer.rs` | the loop that claims while the supervisor has room, woken by `baton_pool` |
//! | `sweep.rs` | the sweeper: one per cluster by advisory lock, adopting expired nodes' work |
//! | `run.rs` | [`ClusterConfig`] and [`start`]: the three loops of a node, on a task tracker |

mod claimer;
mod db;
mod error;
pub mod node;
pub mod pool;
mod run;
pub mod sessions;
pub mod sweep;

use std::time::Duration;

pub use crate::journal::Epoch;
pub(crate) use db::Conn;
pub use db::{Pool, connect};
pub use error::ClusterError;
pub use node::{Lost, Node};
pub use run::{ClusterConfig, Running, join, start};

/// The database's clock in milliseconds since the Unix epoch, as SQL: every lease is set and
/// compared with it, so that nodes' clocks never matter.
pub const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// `ttl` in whole milliseconds, as SQL takes it.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! The sweeper: one per cluster, the node holding [`SWEEPER_LOCK`] on a connection of its own.
//! At each sweep interval it finds the nodes whose lease has run out and adopts their work:
//! `Journal::adopt` (one fenced transaction that deletes the dead node's row and takes over its
//! unfinished rows), then the local supervisor recovers what it took over, as a restart would.

use postgres::Client;

use super::{ClusterError, DB_NOW, Epoch};

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

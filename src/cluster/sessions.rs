//! Sessions as the database holds them, whichever node owns them: what `GET /v1/sessions` on
//! any node lists, and where the owner of a session answers (a write for a session another node
//! owns is forwarded there).

use std::collections::HashMap;

use postgres::Client;

use super::{ClusterError, DB_NOW, Epoch};

/// A session that has not ended, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Its id.
    pub id: u64,
    /// Its agent type.
    pub agent_type: String,
    /// The work item it holds.
    pub work_item: u64,
    /// Its `phase` column, as the journal writes it: `Normal`, `Compacting`, `Rotating` or
    /// `Closed`.
    pub phase: String,
    /// Compactions it did.
    pub compactions: u32,
    /// The epoch of the node that owns it (`None` only for rows a single host wrote).
    pub owner: Option<Epoch>,
}

/// The columns [`SessionRow`] reads, in order.
const COLUMNS: &str = "id, agent_type, work_item, phase, compactions, owner";

/// An id as PostgreSQL stores it (the `u64`'s bit pattern as `BIGINT`, as on SQLite).
fn sql_id(id: u64) -> i64 {
    id as i64
}

fn session_row(r: &postgres::Row) -> SessionRow {
    SessionRow {
        id: r.get::<_, i64>(0) as u64,
        agent_type: r.get(1),
        work_item: r.get::<_, i64>(2) as u64,
        phase: r.get(3),
        compactions: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
        owner: r.get::<_, Option<i64>>(5).map(Epoch),
    }
}

/// One session that has not ended, wherever it is in the cluster.
pub fn live(c: &mut Client, id: u64) -> Result<Option<SessionRow>, ClusterError> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1 AND state <> 'closed'");
    Ok(c.query_opt(&sql, &[&sql_id(id)])?.as_ref().map(session_row))
}

/// Every session of the cluster that has not ended, by id, at most `limit`.
pub fn all_live(c: &mut Client, limit: usize) -> Result<Vec<SessionRow>, ClusterError> {
    let sql =
        format!("SELECT {COLUMNS} FROM sessions WHERE state <> 'closed' ORDER BY id LIMIT $1");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(c.query(&sql, &[&limit])?.iter().map(session_row).collect())
}

/// Who owns a session that has not ended, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A node that is in `baton_nodes`.
    Node {
        /// Its epoch.
        epoch: Epoch,
        /// Where it answers (`--advertise`), if it said.
        addr: Option<String>,
        /// Its lease has not run out.
        live: bool,
    },
    /// No node row: the owner has been fenced (its work is being adopted), or the row has no
    /// owner at all (`None`: written by a single host).
    Gone(Option<Epoch>),
}

/// The owners of those of `ids` that are sessions which have not ended; an id missing from the
/// answer is no such session.
pub fn owners(c: &mut Client, ids: &[u64]) -> Result<HashMap<u64, Owner>, ClusterError> {
    let ids: Vec<i64> = ids.iter().copied().map(sql_id).collect();
    let sql = format!(
        "SELECT s.id, s.owner, n.epoch, n.addr, n.lease_until >= {DB_NOW}
         FROM sessions s LEFT JOIN baton_nodes n ON n.epoch = s.owner
         WHERE s.id = ANY($1) AND s.state <> 'closed'"
    );
    Ok(c.query(&sql, &[&ids])?
        .iter()
        .map(|r| {
            let id = r.get::<_, i64>(0) as u64;
            let owner = r.get::<_, Option<i64>>(1).map(Epoch);
            let owner = match r.get::<_, Option<i64>>(2) {
                Some(epoch) => Owner::Node {
                    epoch: Epoch(epoch),
                    addr: r.get(3),
                    live: r.get::<_, Option<bool>>(4).unwrap_or(false),
                },
                None => Owner::Gone(owner),
            };
            (id, owner)
        })
        .collect())
}

/// The owner of the session `id`, or `None` when no session with this id is live anywhere.
pub fn owner(c: &mut Client, id: u64) -> Result<Option<Owner>, ClusterError> {
    Ok(owners(c, &[id])?.remove(&id))
}

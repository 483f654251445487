//! The shared pool of work items: what `POST /v1/work-items` on any node inserts into, and what
//! every node claims from (`FOR UPDATE SKIP LOCKED`, fenced by its epoch).

use postgres::{Client, Transaction};

use super::sessions::Owner;
use super::{ClusterError, DB_NOW, Epoch};
use crate::journal::pg::EVENTS_LOCK;
use crate::record::FleetEvent;
use crate::supervisor::CANCELLED;
use crate::vocab::{WorkItem, WorkItemId};

/// The channel a submission notifies, so that claimers wake at once.
pub const POOL_CHANNEL: &str = "baton_pool";

/// What a submission to the pool did.
#[derive(Debug, Clone, PartialEq)]
pub enum Pooled {
    /// The item is new: it waits in the pool.
    Inserted,
    /// An item with this id exists already: it, as it was first submitted (same agent type and
    /// text: the same item, accepted again; anything else: a conflict).
    Exists(WorkItem),
}

/// An id as PostgreSQL stores it (the `u64`'s bit pattern as `BIGINT`, as on SQLite).
fn sql_id(id: WorkItemId) -> i64 {
    id.0 as i64
}

/// Inserts `item` into the pool (`owner` NULL, queued) unless its id exists, with its
/// `work_item_submitted` row in the log, and notifies [`POOL_CHANNEL`] (delivered at commit).
pub fn submit(c: &mut Client, item: &WorkItem) -> Result<Pooled, ClusterError> {
    let mut tx = c.transaction()?;
    let sql = format!(
        "INSERT INTO work_items (id, agent_type, text, place, queue_seq, submitted_at, updated_at, owner)
         VALUES ($1, $2, $3, 'queued',
                 (SELECT coalesce(max(queue_seq), 0) + 1 FROM work_items), {DB_NOW}, {DB_NOW}, NULL)
         ON CONFLICT (id) DO NOTHING"
    );
    let n = tx.execute(&sql, &[&sql_id(item.id), &&*item.agent_type, &item.text])?;
    if n == 1 {
        // The submission's step in the log, as a single host's journal writes it (the claiming
        // node's journal finds the row there and writes none).
        let payload = serde_json::to_string(item)?;
        tx.query_one("SELECT pg_advisory_xact_lock($1)::text", &[&EVENTS_LOCK])?;
        tx.execute(
            &format!(
                "INSERT INTO events (at, kind, work_item, dedup, payload)
                 VALUES ({DB_NOW}, 'work_item_submitted', $1, $2, $3) ON CONFLICT (dedup) DO NOTHING"
            ),
            &[&sql_id(item.id), &format!("submitted:{}", item.id.0), &payload],
        )?;
        tx.batch_execute(&format!("NOTIFY {POOL_CHANNEL}; NOTIFY baton_events"))?;
        tx.commit()?;
        return Ok(Pooled::Inserted);
    }
    let row = tx.query_one(
        "SELECT agent_type, text FROM work_items WHERE id = $1",
        &[&sql_id(item.id)],
    )?;
    tx.commit()?;
    let agent_type: String = row.get(0);
    Ok(Pooled::Exists(WorkItem {
        id: item.id,
        agent_type: agent_type.into(),
        text: row.get(1),
    }))
}

/// Locks this node's row for the rest of `tx` (as the journal's every write does): no row, the
/// node has been fenced, and nothing in `tx` may be committed.
pub fn fence(tx: &mut Transaction<'_>, epoch: Epoch) -> Result<(), ClusterError> {
    let rows = tx.query(
        "SELECT 1 FROM baton_nodes WHERE epoch = $1 FOR KEY SHARE",
        &[&epoch.0],
    )?;
    if rows.is_empty() {
        return Err(ClusterError::Fenced(epoch));
    }
    Ok(())
}

/// Claims up to `room` queued pool items of `types` for `epoch`, oldest first, in one fenced
/// transaction. Rows another claimer holds are skipped, never waited for: no item goes to two
/// nodes, and claimers never block one another.
pub fn claim(
    c: &mut Client,
    epoch: Epoch,
    types: &[String],
    room: usize,
) -> Result<Vec<WorkItem>, ClusterError> {
    if room == 0 || types.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = c.transaction()?;
    fence(&mut tx, epoch)?;
    let sql = format!(
        "UPDATE work_items SET owner = $1, updated_at = {DB_NOW}
         WHERE id IN (SELECT id FROM work_items
                      WHERE owner IS NULL AND place = 'queued' AND agent_type = ANY($2)
                      ORDER BY queue_seq LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, agent_type, text, queue_seq"
    );
    let limit = i64::try_from(room).unwrap_or(i64::MAX);
    let mut rows = tx.query(&sql, &[&epoch.0, &types, &limit])?;
    tx.commit()?;
    rows.sort_by_key(|r| r.get::<_, i64>(3));
    Ok(rows
        .iter()
        .map(|r| {
            let agent_type: String = r.get(1);
            WorkItem {
                id: WorkItemId(r.get::<_, i64>(0) as u64),
                agent_type: agent_type.into(),
                text: r.get(2),
            }
        })
        .collect())
}

/// Gives a claimed item back to the pool (its supervisor refused it): only while `epoch` owns it
/// and it is still queued. Notifies [`POOL_CHANNEL`] when it did.
pub fn release(c: &mut Client, epoch: Epoch, id: WorkItemId) -> Result<bool, ClusterError> {
    let mut tx = c.transaction()?;
    let n = tx.execute(
        "UPDATE work_items SET owner = NULL WHERE id = $1 AND owner = $2 AND place = 'queued'",
        &[&sql_id(id), &epoch.0],
    )?;
    if n == 1 {
        tx.batch_execute(&format!("NOTIFY {POOL_CHANNEL}"))?;
    }
    tx.commit()?;
    Ok(n == 1)
}

/// A work item as the database holds it: any node's, or the pool's.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    /// The item.
    pub item: WorkItem,
    /// Its `place` column: `queued`, `live`, `rotating`, `done` or `dead`.
    pub place: String,
    /// The session holding it, or that held it last.
    pub session: Option<u64>,
    /// Why it was requeued or buried last.
    pub reason: Option<String>,
    /// The epoch of the node that owns it; `None` while in the pool.
    pub owner: Option<Epoch>,
}

/// The columns [`ItemRow`] reads, in order.
const ITEM_COLUMNS: &str = "id, agent_type, text, place, session, reason, owner";

fn item_row(r: &postgres::Row) -> ItemRow {
    let agent_type: String = r.get(1);
    ItemRow {
        item: WorkItem {
            id: WorkItemId(r.get::<_, i64>(0) as u64),
            agent_type: agent_type.into(),
            text: r.get(2),
        },
        place: r.get(3),
        session: r.get::<_, Option<i64>>(4).map(|s| s as u64),
        reason: r.get(5),
        owner: r.get::<_, Option<i64>>(6).map(Epoch),
    }
}

/// One work item, wherever it is in the cluster.
pub fn item(c: &mut Client, id: WorkItemId) -> Result<Option<ItemRow>, ClusterError> {
    let sql = format!("SELECT {ITEM_COLUMNS} FROM work_items WHERE id = $1");
    Ok(c.query_opt(&sql, &[&sql_id(id)])?.as_ref().map(item_row))
}

/// Every work item of the cluster, by id, at most `limit`.
pub fn items(c: &mut Client, limit: usize) -> Result<Vec<ItemRow>, ClusterError> {
    let sql = format!("SELECT {ITEM_COLUMNS} FROM work_items ORDER BY id LIMIT $1");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(c.query(&sql, &[&limit])?.iter().map(item_row).collect())
}

/// One work item, wherever it is in the cluster, and who holds it: `None` while nobody does (in
/// the pool); else its owner's node row (`Owner::Gone` when the row is gone: the owner has
/// been fenced and its work is being adopted).
pub fn item_holder(
    c: &mut Client,
    id: WorkItemId,
) -> Result<Option<(ItemRow, Option<Owner>)>, ClusterError> {
    let sql = format!(
        "SELECT w.id, w.agent_type, w.text, w.place, w.session, w.reason, w.owner,
                n.epoch, n.addr, n.lease_until >= {DB_NOW}
         FROM work_items w LEFT JOIN baton_nodes n ON n.epoch = w.owner WHERE w.id = $1"
    );
    Ok(c.query_opt(&sql, &[&sql_id(id)])?.map(|r| {
        let row = item_row(&r);
        let owner = match (row.owner, r.get::<_, Option<i64>>(7)) {
            (None, _) => None,
            (Some(_), Some(epoch)) => Some(Owner::Node {
                epoch: Epoch(epoch),
                addr: r.get(8),
                live: r.get::<_, Option<bool>>(9).unwrap_or(false),
            }),
            (Some(gone), None) => Some(Owner::Gone(Some(gone))),
        };
        (row, owner)
    }))
}

/// Cancels `id` while it waits in the pool (`owner` NULL, queued), in one transaction fenced by
/// `epoch` (the node that answers): the row becomes `dead` with reason `cancelled`, and its
/// `dead_letter` event is written with it, under the events lock, notifying `baton_events`, as a
/// node's journal records a cancel. `false` when the item is not (or no longer) in the pool: a
/// claim that holds the row is waited for, and the row then no longer matches, so no node both
/// claims and cancels it.
pub fn cancel(c: &mut Client, epoch: Epoch, id: WorkItemId) -> Result<bool, ClusterError> {
    let mut tx = c.transaction()?;
    fence(&mut tx, epoch)?;
    let n = tx.execute(
        &format!(
            "UPDATE work_items SET place = 'dead', session = NULL, reason = $2,
                 updated_at = {DB_NOW}
             WHERE id = $1 AND owner IS NULL AND place = 'queued'"
        ),
        &[&sql_id(id), &CANCELLED],
    )?;
    if n == 0 {
        return Ok(false);
    }
    let event = FleetEvent::DeadLetter {
        work_item: id,
        reason: CANCELLED.into(),
    };
    let payload = serde_json::to_string(&event)?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)::text", &[&EVENTS_LOCK])?;
    tx.execute(
        &format!(
            "INSERT INTO events (at, kind, work_item, payload)
             VALUES ({DB_NOW}, 'dead_letter', $1, $2)"
        ),
        &[&sql_id(id), &payload],
    )?;
    tx.batch_execute("NOTIFY baton_events")?;
    tx.commit()?;
    Ok(true)
}

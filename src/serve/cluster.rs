//! `GET /v1/cluster/nodes`, and what a node of a cluster (`baton serve --cluster`) gives its
//! handlers: [`ClusterApi`], and the [`Services`] built once per server from it: the
//! [`Forwarder`] and the [`EventReaders`] (see `docs/cluster.md`, "The API on any node").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::{OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::forward::Forwarder;
use crate::cluster::node::{self, NodeRow};
use crate::cluster::{ClusterError, Epoch, Pool};
use crate::journal::{EventRow, Filter, JournalError, JournalReader, JournalTarget, PgUrl};

/// What the handlers of a cluster node share.
#[derive(Debug, Clone)]
pub struct ClusterApi {
    /// This node's epoch.
    pub epoch: Epoch,
    /// Connections to the cluster's database, for submissions into the pool and reads.
    pub db: Pool,
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        tracing::warn!(error = %e, "cluster database call failed");
        ApiError::unavailable(format!("the cluster's database: {e}"))
    }
}

/// Connections of their own on which a cluster node reads the shared event log (any node's
/// events), with the journal's own queries, so that reads neither wait for nor delay the
/// journal's writes. At most `size` reads at once; connections are opened on demand and kept
/// while healthy.
pub struct EventReaders {
    /// The cluster's database.
    target: JournalTarget,
    /// Idle readers.
    idle: Arc<Mutex<Vec<JournalReader>>>,
    /// One permit per read under way.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for EventReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReaders")
            .field("target", &self.target.to_string())
            .field("free", &self.permits.available_permits())
            .finish()
    }
}

impl EventReaders {
    /// Readers of the database at `url`, at most `size` at once.
    pub fn new(url: &str, size: usize) -> Result<Self, JournalError> {
        Ok(Self {
            target: JournalTarget::Postgres(PgUrl::parse(url)?),
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    /// The event log's rows that match `filter` (see [`crate::journal::JournalView::events`]),
    /// read on a blocking thread.
    pub async fn events(&self, filter: Filter) -> Result<Vec<EventRow>, JournalError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| JournalError::Closed)?;
        let (target, idle) = (self.target.clone(), self.idle.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let reader = match taken {
                Some(r) => r,
                None => JournalReader::open_target(&target)?,
            };
            let rows = reader.view().events(&filter)?;
            // Kept only when it worked: a failed connection is opened afresh next time.
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(reader);
            Ok(rows)
        })
        .await
        .unwrap_or(Err(JournalError::Closed))
    }
}

/// What a cluster node's handlers share beyond [`ClusterApi`], built once per server.
#[derive(Debug, Clone)]
pub struct Services {
    /// Sends writes for sessions other nodes own to their owners.
    pub forwarder: Forwarder,
    /// Reads the shared event log.
    pub readers: Arc<EventReaders>,
}

/// Event log reads at once at most, per server.
const EVENT_READERS: usize = 4;

impl Services {
    /// The services of a node of `cluster` whose requests time out after `request_timeout`.
    pub fn new(cluster: &ClusterApi, request_timeout: Duration) -> std::io::Result<Self> {
        let forwarder = Forwarder::new(request_timeout).map_err(std::io::Error::other)?;
        let readers =
            EventReaders::new(cluster.db.url(), EVENT_READERS).map_err(std::io::Error::other)?;
        Ok(Self {
            forwarder,
            readers: Arc::new(readers),
        })
    }
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Its fencing epoch (a new one each time a node starts).
    pub epoch: i64,
    /// Its name (`--node`).
    pub name: String,
    /// Where it answers (`--advertise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Its lease ends then (milliseconds since the Unix epoch, the database's clock).
    pub lease_until: i64,
    /// When it joined (same clock).
    pub started_at: i64,
    /// Its lease has not run out: it is live (an expired node is adopted at the next sweep).
    pub live: bool,
    /// It is the node that answered.
    pub this: bool,
}

/// `GET /v1/cluster/nodes`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// The database's clock when it answered (milliseconds since the Unix epoch).
    pub now: i64,
    /// Every node row, by epoch: live nodes, and expired ones not yet adopted.
    pub nodes: Vec<NodeView>,
}

/// The view of `rows` at `now` from the node `me`.
pub fn node_list(rows: Vec<NodeRow>, now: i64, me: Epoch) -> NodeList {
    NodeList {
        now,
        nodes: rows
            .into_iter()
            .map(|r| NodeView {
                live: r.lease_until >= now,
                this: r.epoch == me.0,
                epoch: r.epoch,
                name: r.name,
                addr: r.addr,
                lease_until: r.lease_until,
                started_at: r.started_at,
            })
            .collect(),
    }
}

/// The cluster's nodes, as the database has them.
#[utoipa::path(
    get,
    path = "/v1/cluster/nodes",
    tag = "cluster",
    responses(
        (status = 200, description = "Every node, by epoch", body = NodeList),
        (status = 404, description = "This server is not a cluster node (no --cluster)", body = ErrorBody),
        (status = 503, description = "The database could not be read, or the request timed out", body = ErrorBody)
    )
)]
async fn nodes(cluster: Option<web::Data<ClusterApi>>) -> Result<web::Json<NodeList>, ApiError> {
    let Some(cluster) = cluster else {
        return Err(ApiError::not_found(
            "this server is not a cluster node (it was started without --cluster)",
        ));
    };
    let (rows, now) = cluster.db.call(node::list).await?;
    Ok(web::Json(node_list(rows, now, cluster.epoch)))
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(nodes), components(schemas(NodeList, NodeView)))]
pub struct ClusterDoc;

/// Registers `/v1/cluster/nodes` (and, on a cluster node, the [`ClusterApi`] and the
/// [`Services`] the handlers use).
pub fn configure(
    cfg: &mut web::ServiceConfig,
    cluster: Option<&ClusterApi>,
    services: Option<&Services>,
) {
    if let Some(c) = cluster {
        cfg.app_data(web::Data::new(c.clone()));
    }
    if let Some(s) = services {
        cfg.app_data(web::Data::new(s.forwarder.clone()))
            .app_data(web::Data::from(s.readers.clone()));
    }
    cfg.service(web::resource("/v1/cluster/nodes").route(web::get().to(nodes)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_live_while_its_lease_has_not_run_out_and_this_one_is_marked() {
        let row = |epoch, lease_until| NodeRow {
            epoch,
            name: format!("n{epoch}"),
            addr: None,
            lease_until,
            started_at: 0,
        };
        let list = node_list(vec![row(1, 99), row(2, 100), row(3, 101)], 100, Epoch(2));
        let live: Vec<_> = list
            .nodes
            .iter()
            .map(|n| (n.epoch, n.live, n.this))
            .collect();
        assert_eq!(live, [(1, false, false), (2, true, true), (3, true, false)]);
    }
}

//! `/v1/work-items`: submit one or a batch, idempotent by the client's id; list, get, cancel.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::cluster::ClusterApi;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::forward::{Forwarder, Subject, is_forwarded, meant_for_another};
use crate::cluster::pool::{self, ItemRow, Pooled};
use crate::cluster::sessions::Owner;
use crate::supervisor::{CANCELLED, Place, SupervisorError, SupervisorHandle, WorkItemInfo};
use crate::vocab::{WorkItem, WorkItemId};

/// The most items one batch may hold.
pub const MAX_BATCH: usize = 1_000;
/// The most items one list answers (and its default).
pub const MAX_LIST: usize = 10_000;
/// The most rows a cluster node reads from the database for one list, before filtering.
const MAX_DB_LIST: usize = 100_000;

/// Where a work item is, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlaceView {
    /// Waiting for a session.
    Queued,
    /// A session is being started for it.
    Starting,
    /// Held by a live session (`session`).
    Live,
    /// Its session (`session`) is rotating.
    Rotating,
    /// Finished (`session` held it last).
    Done,
    /// Given up on (`reason` says why).
    Dead,
}

/// A work item and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkItemView {
    /// The client's id.
    pub id: u64,
    /// The agent type that must work on it.
    pub agent_type: String,
    /// What to do, as given to the agent.
    pub text: String,
    /// Where it is.
    pub place: PlaceView,
    /// The session holding it (live, rotating), or that held it last (done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// Why it was given up on (dead): `cancelled`, a dead letter's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&WorkItemInfo> for WorkItemView {
    fn from(info: &WorkItemInfo) -> Self {
        let (place, session, reason) = match &info.place {
            Place::Queued => (PlaceView::Queued, None, None),
            Place::Starting => (PlaceView::Starting, None, None),
            Place::Live(s) => (PlaceView::Live, Some(s.0), None),
            Place::Rotating(s) => (PlaceView::Rotating, Some(s.0), None),
            Place::Done(s) => (PlaceView::Done, Some(s.0), None),
            Place::Dead(r) => (PlaceView::Dead, None, Some(r.clone())),
        };
        Self {
            id: info.item.id.0,
            agent_type: info.item.agent_type.to_string(),
            text: info.item.text.clone(),
            place,
            session,
            reason,
        }
    }
}

impl From<&ItemRow> for WorkItemView {
    fn from(row: &ItemRow) -> Self {
        let place = match row.place.as_str() {
            "live" => PlaceView::Live,
            "rotating" => PlaceView::Rotating,
            "done" => PlaceView::Done,
            "dead" => PlaceView::Dead,
            _ => PlaceView::Queued,
        };
        Self {
            id: row.item.id.0,
            agent_type: row.item.agent_type.to_string(),
            text: row.item.text.clone(),
            place,
            session: match place {
                PlaceView::Live | PlaceView::Rotating | PlaceView::Done => row.session,
                _ => None,
            },
            reason: match place {
                PlaceView::Dead => row.reason.clone(),
                _ => None,
            },
        }
    }
}

/// A work item to submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItemBody {
    /// The client's id: submitting the same id again with the same content is harmless.
    pub id: u64,
    /// The agent type that must work on it (it must exist).
    #[schema(min_length = 1)]
    pub agent_type: String,
    /// What to do, as given to the agent.
    #[schema(min_length = 1)]
    pub text: String,
}

impl WorkItemBody {
    fn item(&self) -> WorkItem {
        WorkItem {
            id: WorkItemId(self.id),
            agent_type: self.agent_type.as_str().into(),
            text: self.text.clone(),
        }
    }
}

/// Whether `existing` is what `body` submits (same agent type and text).
pub fn same_content(existing: &WorkItem, body: &WorkItemBody) -> bool {
    *existing.agent_type == *body.agent_type && existing.text == body.text
}

/// How a submission went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmitStatus {
    /// New: queued.
    Created,
    /// Submitted before with the same content: nothing changed.
    Exists,
    /// Submitted before with other content: refused.
    Conflict,
    /// Refused (an unknown agent type, an empty text, shutting down): `message` says why.
    Rejected,
}

/// Submits `body` (into the cluster's pool on a cluster node, else to the local supervisor): the
/// item and how it went, or why it was refused.
async fn submit(
    supervisor: &SupervisorHandle,
    cluster: Option<&ClusterApi>,
    body: &WorkItemBody,
) -> Result<(SubmitStatus, WorkItemView), ApiError> {
    if body.text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "a work item's text must not be empty",
        ));
    }
    if body.agent_type.is_empty() {
        return Err(ApiError::bad_request(
            "a work item's agent_type must not be empty",
        ));
    }
    if let Some(cluster) = cluster {
        return submit_to_pool(supervisor, cluster, body).await;
    }
    let known = |info: WorkItemInfo| {
        if same_content(&info.item, body) {
            Ok((SubmitStatus::Exists, WorkItemView::from(&info)))
        } else {
            Err(ApiError::conflict(format!(
                "work item {} was submitted with other content",
                body.id
            )))
        }
    };
    if let Some(info) = supervisor.work_item(WorkItemId(body.id)).await {
        return known(info);
    }
    let created = match supervisor.submit(body.item()).await {
        Ok(()) => true,
        // Submitted meanwhile by another request: judged as a retry.
        Err(SupervisorError::DuplicateWorkItem(_)) => false,
        Err(SupervisorError::UnknownAgentType(t)) => {
            return Err(ApiError::not_found(format!("no agent type {t:?}")));
        }
        Err(e) => return Err(e.into()),
    };
    match supervisor.work_item(WorkItemId(body.id)).await {
        Some(info) if created => Ok((SubmitStatus::Created, WorkItemView::from(&info))),
        Some(info) => known(info),
        // Known to the journal but not listed (its agent type is unknown since a restart).
        None => Err(ApiError::conflict(format!(
            "work item {} was already submitted",
            body.id
        ))),
    }
}

/// Submits `body` into the cluster's pool, whence a node with room claims it. Its agent type
/// must be one this node knows (the nodes of a cluster are given the same ones).
async fn submit_to_pool(
    supervisor: &SupervisorHandle,
    cluster: &ClusterApi,
    body: &WorkItemBody,
) -> Result<(SubmitStatus, WorkItemView), ApiError> {
    if supervisor.agent_type(&body.agent_type).await.is_none() {
        return Err(ApiError::not_found(format!(
            "no agent type {:?}",
            body.agent_type
        )));
    }
    let item = body.item();
    let pooled = cluster.db.call(move |c| pool::submit(c, &item)).await?;
    match pooled {
        Pooled::Inserted => Ok((
            SubmitStatus::Created,
            WorkItemView::from(&WorkItemInfo {
                item: body.item(),
                place: Place::Queued,
            }),
        )),
        Pooled::Exists(existing) if same_content(&existing, body) => {
            let id = existing.id;
            let row = cluster.db.call(move |c| pool::item(c, id)).await?;
            let view = match row {
                Some(row) => WorkItemView::from(&row),
                None => WorkItemView::from(&WorkItemInfo {
                    item: existing,
                    place: Place::Queued,
                }),
            };
            Ok((SubmitStatus::Exists, view))
        }
        Pooled::Exists(_) => Err(ApiError::conflict(format!(
            "work item {} was submitted with other content",
            body.id
        ))),
    }
}

/// Submits a work item: 201 when new, 200 when this id was submitted with the same content.
#[utoipa::path(
    post,
    path = "/v1/work-items",
    tag = "work items",
    request_body = WorkItemBody,
    responses(
        (status = 201, description = "Queued", body = WorkItemView),
        (status = 200, description = "Submitted before with the same content (an idempotent retry)", body = WorkItemView),
        (status = 400, description = "A malformed body or an empty text", body = ErrorBody),
        (status = 404, description = "No agent type has this name", body = ErrorBody),
        (status = 409, description = "This id was submitted with other content", body = ErrorBody),
        (status = 503, description = "Shutting down, the journal failed, or the request timed out", body = ErrorBody)
    )
)]
async fn create(
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    body: web::Json<WorkItemBody>,
) -> Result<HttpResponse, ApiError> {
    let (status, view) = submit(&supervisor, cluster.as_ref().map(|c| c.get_ref()), &body).await?;
    Ok(match status {
        SubmitStatus::Created => HttpResponse::Created().json(view),
        _ => HttpResponse::Ok().json(view),
    })
}

/// `POST /v1/work-items/batch`'s body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItemBatch {
    /// The items (at most 1,000).
    #[schema(max_items = 1000)]
    pub items: Vec<WorkItemBody>,
}

/// How one item of a batch went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkItemBatchResult {
    /// The item's id.
    pub id: u64,
    /// How it went.
    pub status: SubmitStatus,
    /// Why, for `conflict` and `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/work-items/batch`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkItemBatchAnswer {
    /// One result per item, in the order of the items.
    pub results: Vec<WorkItemBatchResult>,
}

/// Submits many work items; each succeeds or fails alone. Items with the same id are judged in
/// their order (the first is created, a later one exists or conflicts).
#[utoipa::path(
    post,
    path = "/v1/work-items/batch",
    tag = "work items",
    request_body = WorkItemBatch,
    responses(
        (status = 200, description = "One result per item, in order", body = WorkItemBatchAnswer),
        (status = 400, description = "A malformed body, or more than 1,000 items", body = ErrorBody)
    )
)]
async fn batch(
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    body: web::Json<WorkItemBatch>,
) -> Result<web::Json<WorkItemBatchAnswer>, ApiError> {
    let items = &body.items;
    if items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds at most {MAX_BATCH} items, not {}",
            items.len()
        )));
    }
    // Different ids concurrently (their journal writes share commits); one id in order.
    let mut groups: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(item.id).or_default().push(i);
    }
    let (supervisor, cluster) = (&supervisor, cluster.as_ref().map(|c| c.get_ref()));
    let done = join_all(groups.into_values().map(|indices| async move {
        let mut out = Vec::with_capacity(indices.len());
        for i in indices {
            let body = &items[i];
            let (status, message) = match submit(supervisor, cluster, body).await {
                Ok((status, _)) => (status, None),
                Err(e) if e.code == ErrorCode::Conflict => {
                    (SubmitStatus::Conflict, Some(e.message))
                }
                Err(e) => (SubmitStatus::Rejected, Some(e.message)),
            };
            out.push((
                i,
                WorkItemBatchResult {
                    id: body.id,
                    status,
                    message,
                },
            ));
        }
        out
    }))
    .await;
    let mut results: Vec<(usize, WorkItemBatchResult)> = done.into_iter().flatten().collect();
    results.sort_by_key(|(i, _)| *i);
    Ok(web::Json(WorkItemBatchAnswer {
        results: results.into_iter().map(|(_, r)| r).collect(),
    }))
}

/// The filters of `GET /v1/work-items`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkItemFilter {
    /// Only items in this place.
    pub place: Option<PlaceView>,
    /// Only items of this agent type.
    pub agent_type: Option<String>,
    /// At most this many (default and most: 10,000), the lowest ids first.
    #[param(minimum = 0, maximum = 10000)]
    pub limit: Option<usize>,
}

impl WorkItemFilter {
    /// The items of `all` (in id order) that pass, up to the limit.
    pub fn apply(&self, all: &[WorkItemInfo]) -> Result<Vec<WorkItemView>, ApiError> {
        self.apply_views(all.iter().map(WorkItemView::from).collect())
    }

    /// The views of `all` (in id order) that pass, up to the limit.
    pub fn apply_views(&self, all: Vec<WorkItemView>) -> Result<Vec<WorkItemView>, ApiError> {
        let limit = self.limit.unwrap_or(MAX_LIST);
        if limit > MAX_LIST {
            return Err(ApiError::bad_request(format!(
                "limit must be at most {MAX_LIST}, not {limit}"
            )));
        }
        Ok(all
            .into_iter()
            .filter(|v| self.place.is_none_or(|p| v.place == p))
            .filter(|v| self.agent_type.as_deref().is_none_or(|t| v.agent_type == t))
            .take(limit)
            .collect())
    }
}

/// `GET /v1/work-items`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkItemList {
    /// The items that pass the filters, by id.
    pub work_items: Vec<WorkItemView>,
}

/// Work items with their places, by id.
#[utoipa::path(
    get,
    path = "/v1/work-items",
    tag = "work items",
    params(WorkItemFilter),
    responses(
        (status = 200, description = "The items that pass the filters, by id", body = WorkItemList),
        (status = 400, description = "A bad filter", body = ErrorBody)
    )
)]
async fn list(
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    filter: web::Query<WorkItemFilter>,
) -> Result<web::Json<WorkItemList>, ApiError> {
    if let Some(cluster) = cluster {
        // The whole cluster's items, from the database (bounded: filters apply after).
        let rows = cluster.db.call(|c| pool::items(c, MAX_DB_LIST)).await?;
        let all: Vec<WorkItemView> = rows.iter().map(WorkItemView::from).collect();
        return Ok(web::Json(WorkItemList {
            work_items: filter.apply_views(all)?,
        }));
    }
    let all = supervisor.work_items().await;
    Ok(web::Json(WorkItemList {
        work_items: filter.apply(&all)?,
    }))
}

/// One work item and where it is.
#[utoipa::path(
    get,
    path = "/v1/work-items/{id}",
    tag = "work items",
    params(("id" = u64, Path, description = "The work item's id")),
    responses(
        (status = 200, description = "The work item", body = WorkItemView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No work item has this id", body = ErrorBody)
    )
)]
async fn get(
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    id: web::Path<u64>,
) -> Result<web::Json<WorkItemView>, ApiError> {
    let id = id.into_inner();
    if let Some(cluster) = cluster {
        let row = cluster
            .db
            .call(move |c| pool::item(c, WorkItemId(id)))
            .await?;
        return row
            .map(|row| web::Json(WorkItemView::from(&row)))
            .ok_or_else(|| ApiError::not_found(format!("no work item {id}")));
    }
    supervisor
        .work_item(WorkItemId(id))
        .await
        .map(|info| web::Json(WorkItemView::from(&info)))
        .ok_or_else(|| ApiError::not_found(format!("no work item {id}")))
}

/// Cancels a work item: a queued one leaves the queue, a live one's session is closed; it ends
/// `dead` with reason `cancelled`, durably. On a cluster node, an item another node owns is
/// cancelled by its owner (the request is forwarded), and one still in the shared pool is
/// cancelled in the database, so that no node claims it.
#[utoipa::path(
    post,
    path = "/v1/work-items/{id}/cancel",
    tag = "work items",
    params(("id" = u64, Path, description = "The work item's id")),
    responses(
        (status = 200, description = "Cancelled: the item, now dead", body = WorkItemView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No work item has this id", body = ErrorBody),
        (status = 409, description = "The item already ended (done or dead)", body = ErrorBody),
        (status = 503, description = "Shutting down, the journal failed, the request timed out, or (on a cluster) the item's owner could not be reached or has left the cluster", body = ErrorBody)
    )
)]
async fn cancel(
    req: HttpRequest,
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let id = WorkItemId(id.into_inner());
    match supervisor.cancel(id).await {
        Ok(place) => cancelled_here(&supervisor, id, place).await,
        // Not this node's: the cluster's, unless another node sent it here already.
        Err(SupervisorError::UnknownWorkItem(_)) if cluster.is_some() => {
            let cluster = cluster.expect("checked above");
            if is_forwarded(&req) {
                forwarded_cancel_of_unknown(&req, &cluster, id).await
            } else {
                cancel_in_cluster(&req, &supervisor, &cluster, id).await
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A cancel another node forwarded here for an item this node's supervisor does not hold: 503
/// when it was meant for another incarnation of this address, or when the database says this
/// node owns the item and it has not ended (claimed, and on its way to the supervisor: the
/// client tries again); else the item is unknown here (404), never forwarded again.
async fn forwarded_cancel_of_unknown(
    req: &HttpRequest,
    cluster: &ClusterApi,
    id: WorkItemId,
) -> Result<HttpResponse, ApiError> {
    meant_for_another(req, cluster.epoch.0)?;
    let found = cluster.db.call(move |c| pool::item_holder(c, id)).await?;
    match found {
        Some((row, Some(Owner::Node { epoch, .. })))
            if epoch == cluster.epoch && !matches!(row.place.as_str(), "done" | "dead") =>
        {
            Err(ApiError::unavailable(format!(
                "work item {id} is being handed to this node; try again"
            )))
        }
        _ => Err(ApiError::not_found(format!("no work item {id}"))),
    }
}

/// The answer to a cancel this node's supervisor carried out.
async fn cancelled_here(
    supervisor: &SupervisorHandle,
    id: WorkItemId,
    place: Place,
) -> Result<HttpResponse, ApiError> {
    let info = supervisor
        .work_item(id)
        .await
        .ok_or_else(|| ApiError::unavailable("the supervisor is shutting down"))?;
    Ok(HttpResponse::Ok().json(WorkItemView::from(&WorkItemInfo { place, ..info })))
}

/// Cancels `id`, which this node's supervisor does not hold, where the database says it is: in
/// the pool, in one fenced transaction here; on another node, by forwarding to it.
async fn cancel_in_cluster(
    req: &HttpRequest,
    supervisor: &SupervisorHandle,
    cluster: &ClusterApi,
    id: WorkItemId,
) -> Result<HttpResponse, ApiError> {
    // A second look when the item moved meanwhile (claimed from the pool, or handed to this
    // node's supervisor).
    for _ in 0..2 {
        let found = cluster.db.call(move |c| pool::item_holder(c, id)).await?;
        let Some((row, owner)) = found else {
            return Err(ApiError::not_found(format!("no work item {id}")));
        };
        if matches!(row.place.as_str(), "done" | "dead") {
            return Err(SupervisorError::AlreadyEnded(id).into());
        }
        match owner {
            None if row.place == "queued" => {
                let epoch = cluster.epoch;
                if cluster.db.call(move |c| pool::cancel(c, epoch, id)).await? {
                    tracing::info!(work_item = %id, "work item cancelled in the pool");
                    let view = WorkItemView {
                        place: PlaceView::Dead,
                        session: None,
                        reason: Some(CANCELLED.into()),
                        ..WorkItemView::from(&row)
                    };
                    return Ok(HttpResponse::Ok().json(view));
                }
            }
            // Written by a single host: nobody here runs it.
            None => return Err(ApiError::not_found(format!("no work item {id}"))),
            // Claimed by this node and on its way to its supervisor.
            Some(Owner::Node { epoch, .. }) if epoch == cluster.epoch => {
                match supervisor.cancel(id).await {
                    Ok(place) => return cancelled_here(supervisor, id, place).await,
                    Err(SupervisorError::UnknownWorkItem(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(owner) => {
                let Some(forwarder) = req.app_data::<web::Data<Forwarder>>() else {
                    return Err(ApiError::not_found(format!("no work item {id}")));
                };
                return Ok(forwarder
                    .forward_to(req, Subject::WorkItem(id.0), owner, None)
                    .await?);
            }
        }
    }
    Err(ApiError::unavailable(format!(
        "work item {id} is changing hands (claimed, or being handed to this node); try again"
    )))
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(create, batch, list, get, cancel),
    components(schemas(
        WorkItemView,
        PlaceView,
        WorkItemBody,
        WorkItemBatch,
        SubmitStatus,
        WorkItemBatchResult,
        WorkItemBatchAnswer,
        WorkItemList
    ))
)]
pub struct Api;

/// Registers `/v1/work-items`, `/v1/work-items/batch`, `/v1/work-items/{id}` and
/// `/v1/work-items/{id}/cancel`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/work-items")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(web::resource("/v1/work-items/batch").route(web::post().to(batch)))
    .service(web::resource("/v1/work-items/{id}").route(web::get().to(get)))
    .service(web::resource("/v1/work-items/{id}/cancel").route(web::post().to(cancel)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::SessionId;

    fn info(id: u64, agent_type: &str, place: Place) -> WorkItemInfo {
        WorkItemInfo {
            item: WorkItem {
                id: WorkItemId(id),
                agent_type: agent_type.into(),
                text: format!("item {id}"),
            },
            place,
        }
    }

    #[test]
    fn places_carry_their_session_or_reason() {
        let live = WorkItemView::from(&info(1, "a", Place::Live(SessionId(4))));
        assert_eq!((live.place, live.session), (PlaceView::Live, Some(4)));
        let dead = serde_json::to_value(WorkItemView::from(&info(
            2,
            "a",
            Place::Dead("cancelled".into()),
        )))
        .unwrap();
        assert_eq!(dead["place"], "dead");
        assert_eq!(dead["reason"], "cancelled");
        assert!(dead.get("session").is_none());
    }

    #[test]
    fn the_list_filters_by_place_and_agent_type_up_to_the_limit() {
        let all = [
            info(1, "a", Place::Queued),
            info(2, "b", Place::Queued),
            info(3, "a", Place::Done(SessionId(9))),
            info(4, "a", Place::Queued),
        ];
        let ids = |f: WorkItemFilter| -> Vec<u64> {
            f.apply(&all).unwrap().iter().map(|v| v.id).collect()
        };
        let queued_a = WorkItemFilter {
            place: Some(PlaceView::Queued),
            agent_type: Some("a".into()),
            limit: None,
        };
        assert_eq!(ids(queued_a.clone()), [1, 4]);
        assert_eq!(
            ids(WorkItemFilter {
                limit: Some(1),
                ..queued_a
            }),
            [1]
        );
        let too_many = WorkItemFilter {
            limit: Some(MAX_LIST + 1),
            ..WorkItemFilter::default()
        };
        assert!(too_many.apply(&all).is_err());
    }

    #[test]
    fn content_is_the_same_when_agent_type_and_text_are() {
        let item = info(1, "a", Place::Queued).item;
        let body = |agent_type: &str, text: &str| WorkItemBody {
            id: 1,
            agent_type: agent_type.into(),
            text: text.into(),
        };
        assert!(same_content(&item, &body("a", "item 1")));
        assert!(!same_content(&item, &body("b", "item 1")));
        assert!(!same_content(&item, &body("a", "item 2")));
    }
}

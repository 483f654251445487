//! `/v1/sessions`: the live sessions, with filters; one session with its recent readings;
//! closing one and rotating one by hand. Usage reports are in `readings.rs`.
//!
//! On a cluster node the list and a session come from the database (any node's sessions; this
//! node's own with their readings, from its supervisor), and a close or a rotate for a session
//! another node owns is forwarded to the owner (`forward.rs`).

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::cluster::ClusterApi;
use super::error::{ApiError, ErrorBody};
use super::forward::{Forwarder, is_forwarded, meant_for_another};
use crate::cluster::sessions::{self as db_sessions, SessionRow};
use crate::machine::Phase;
use crate::session::SessionInfo;
use crate::supervisor::{SessionHandle, SupervisorHandle};
use crate::usage::{Usage, UsageSource};
use crate::vocab::SessionId;

/// A session's phase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhaseView {
    /// Working.
    Normal,
    /// A compaction is under way.
    Compacting,
    /// A rotation is under way.
    Rotating,
    /// Ended (closed, handed over, or failed to rotate).
    Closed,
}

impl PhaseView {
    /// The phase a journal's `phase` column holds (`Phase`'s serde name: `Normal`,
    /// `Compacting`, ...); `None` for anything else.
    pub fn from_column(text: &str) -> Option<Self> {
        serde_json::from_value::<Phase>(serde_json::Value::String(text.to_owned()))
            .ok()
            .map(Self::from)
    }
}

impl From<Phase> for PhaseView {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Normal => Self::Normal,
            Phase::Compacting => Self::Compacting,
            Phase::Rotating => Self::Rotating,
            Phase::Closed => Self::Closed,
        }
    }
}

/// Where a usage figure came from, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceView {
    /// Reported by the model provider (the default).
    #[default]
    Reported,
    /// Counted or estimated by the client.
    Estimated,
    /// Derived by a model of what would have happened.
    Modelled,
}

impl From<SourceView> for UsageSource {
    fn from(s: SourceView) -> Self {
        match s {
            SourceView::Reported => Self::Reported,
            SourceView::Estimated => Self::Estimated,
            SourceView::Modelled => Self::Modelled,
        }
    }
}

impl From<UsageSource> for SourceView {
    fn from(s: UsageSource) -> Self {
        match s {
            UsageSource::Reported => Self::Reported,
            UsageSource::Estimated => Self::Estimated,
            UsageSource::Modelled => Self::Modelled,
        }
    }
}

/// One reading of a session's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// Tokens in use.
    pub used: u64,
    /// The window they are measured against.
    pub window: u64,
    /// `used / window`.
    pub ratio: f64,
    /// Who produced the figure.
    pub source: SourceView,
}

impl From<&Usage> for UsageView {
    fn from(u: &Usage) -> Self {
        Self {
            used: u.used(),
            window: u.window(),
            ratio: u.ratio(),
            source: u.source().into(),
        }
    }
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Its id.
    pub session: u64,
    /// Its agent type.
    pub agent_type: String,
    /// The work item it holds.
    pub work_item: u64,
    /// Its phase.
    pub phase: PhaseView,
    /// Its latest reading, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    /// Compactions it did.
    pub compactions: u32,
    /// Its recent readings, oldest first (only when one session is asked for, and on a cluster
    /// only from the node that owns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<UsageView>>,
    /// On a cluster: the epoch of the node that owns it (absent on a single host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<i64>,
}

impl SessionView {
    /// The wire form of `info`, with its history when `history` is set.
    pub fn new(info: &SessionInfo, history: bool) -> Self {
        Self {
            session: info.session.0,
            agent_type: info.agent_type.to_string(),
            work_item: info.work_item.0,
            phase: info.phase.into(),
            usage: info.usage.as_ref().map(UsageView::from),
            compactions: info.compactions,
            history: history.then(|| info.history.iter().map(UsageView::from).collect()),
            owner: None,
        }
    }

    /// The wire form of a session as the database holds it: without readings, which live in
    /// the owner's memory.
    pub fn from_row(row: &SessionRow) -> Self {
        Self {
            session: row.id,
            agent_type: row.agent_type.clone(),
            work_item: row.work_item,
            phase: PhaseView::from_column(&row.phase).unwrap_or(PhaseView::Normal),
            usage: None,
            compactions: row.compactions,
            history: None,
            owner: row.owner.map(|e| e.0),
        }
    }
}

/// `GET /v1/sessions`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// The sessions that pass the filters, by id.
    pub sessions: Vec<SessionView>,
}

/// The filters of `GET /v1/sessions`; each given one must hold.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionFilter {
    /// Only sessions of this agent type.
    pub agent_type: Option<String>,
    /// Only sessions in this phase.
    pub phase: Option<PhaseView>,
    /// Only sessions whose latest reading's ratio is at least this (sessions without a
    /// reading are left out).
    #[param(minimum = 0.0)]
    pub min_ratio: Option<f64>,
}

impl SessionFilter {
    /// Refuses a `min_ratio` that is negative, NaN or infinite.
    pub fn check(&self) -> Result<(), ApiError> {
        match self.min_ratio {
            Some(r) if !(r.is_finite() && r >= 0.0) => Err(ApiError::bad_request(format!(
                "min_ratio must be a finite number of at least 0, not {r}"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether `info` passes every filter.
    pub fn admits(&self, info: &SessionInfo) -> bool {
        self.agent_type
            .as_deref()
            .is_none_or(|t| *info.agent_type == *t)
            && self.phase.is_none_or(|p| PhaseView::from(info.phase) == p)
            && self
                .min_ratio
                .is_none_or(|r| info.usage.is_some_and(|u| u.ratio() >= r))
    }

    /// Whether `view` passes every filter (as [`admits`](Self::admits) judges a live session).
    pub fn admits_view(&self, view: &SessionView) -> bool {
        self.agent_type
            .as_deref()
            .is_none_or(|t| view.agent_type == t)
            && self.phase.is_none_or(|p| view.phase == p)
            && self
                .min_ratio
                .is_none_or(|r| view.usage.as_ref().is_some_and(|u| u.ratio >= r))
    }
}

/// The most sessions a cluster node reads from the database for one list, before filtering.
const MAX_DB_LIST: usize = 100_000;

/// The cluster's live sessions, by id: the database's rows, this node's own as its supervisor
/// has them (with their readings).
async fn cluster_sessions(
    supervisor: &SupervisorHandle,
    cluster: &ClusterApi,
) -> Result<Vec<SessionView>, ApiError> {
    let rows = cluster
        .db
        .call(|c| db_sessions::all_live(c, MAX_DB_LIST))
        .await?;
    let mut views: BTreeMap<u64, SessionView> = rows
        .iter()
        .map(|r| (r.id, SessionView::from_row(r)))
        .collect();
    for info in supervisor.sessions().await {
        let mut view = SessionView::new(&info, false);
        view.owner = Some(cluster.epoch.0);
        views.insert(view.session, view);
    }
    Ok(views.into_values().collect())
}

/// A live session's handle, or 404.
pub(super) async fn live(
    supervisor: &SupervisorHandle,
    id: u64,
) -> Result<SessionHandle, ApiError> {
    supervisor
        .session(SessionId(id))
        .await
        .ok_or_else(|| no_session(id))
}

fn no_session(id: u64) -> ApiError {
    ApiError::not_found(format!("no live session {id}"))
}

/// Where a write for a session is handled.
pub(super) enum Here {
    /// By this node's supervisor: the session's handle.
    Local(SessionHandle),
    /// By the node that owns it: its answer, to relay.
    Forwarded(HttpResponse),
}

/// The live session `id` of this node, or, on a cluster node, the answer of the node that owns
/// it to `req` (sent on with what `body` encodes, called only then). A request that was
/// forwarded already is answered here: no live session here is 404.
pub(super) async fn local_or_forward(
    req: &HttpRequest,
    supervisor: &SupervisorHandle,
    id: u64,
    body: impl FnOnce() -> Option<Vec<u8>>,
) -> Result<Here, ApiError> {
    if let Some(handle) = supervisor.session(SessionId(id)).await {
        return Ok(Here::Local(handle));
    }
    let cluster = req.app_data::<web::Data<ClusterApi>>();
    let forwarder = req.app_data::<web::Data<Forwarder>>();
    let (Some(cluster), Some(forwarder)) = (cluster, forwarder) else {
        return Err(no_session(id));
    };
    if is_forwarded(req) {
        meant_for_another(req, cluster.epoch.0)?;
        tracing::debug!(
            session = id,
            "a forwarded write for a session not live here: not forwarded again"
        );
        return Err(no_session(id));
    }
    Ok(Here::Forwarded(
        forwarder.forward(req, cluster, id, body()).await?,
    ))
}

/// The live sessions, by id, that pass the filters.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    params(SessionFilter),
    responses(
        (status = 200, description = "The sessions that pass the filters, by id", body = SessionList),
        (status = 400, description = "A bad filter", body = ErrorBody)
    )
)]
async fn list(
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    filter: web::Query<SessionFilter>,
) -> Result<web::Json<SessionList>, ApiError> {
    filter.check()?;
    if let Some(cluster) = cluster {
        let sessions = cluster_sessions(&supervisor, &cluster)
            .await?
            .into_iter()
            .filter(|v| filter.admits_view(v))
            .collect();
        return Ok(web::Json(SessionList { sessions }));
    }
    let sessions = supervisor
        .sessions()
        .await
        .iter()
        .filter(|i| filter.admits(i))
        .map(|i| SessionView::new(i, false))
        .collect();
    Ok(web::Json(SessionList { sessions }))
}

/// One live session, with its recent readings.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = u64, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session, with its recent readings in `history`", body = SessionView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No live session has this id", body = ErrorBody)
    )
)]
async fn get(
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    id: web::Path<u64>,
) -> Result<web::Json<SessionView>, ApiError> {
    let id = id.into_inner();
    if let Some(cluster) = cluster {
        // This node's own, with its readings; any other node's from the database.
        if let Some(info) = match supervisor.session(SessionId(id)).await {
            Some(handle) => handle.info().await,
            None => None,
        } {
            let mut view = SessionView::new(&info, true);
            view.owner = Some(cluster.epoch.0);
            return Ok(web::Json(view));
        }
        let row = cluster.db.call(move |c| db_sessions::live(c, id)).await?;
        return row
            .map(|r| web::Json(SessionView::from_row(&r)))
            .ok_or_else(|| no_session(id));
    }
    let info = live(&supervisor, id)
        .await?
        .info()
        .await
        .ok_or_else(|| no_session(id))?;
    Ok(web::Json(SessionView::new(&info, true)))
}

/// What to do to a session.
#[derive(Clone, Copy)]
enum Order {
    Close,
    Rotate,
}

async fn order(
    req: &HttpRequest,
    supervisor: &SupervisorHandle,
    id: u64,
    order: Order,
) -> Result<HttpResponse, ApiError> {
    let handle = match local_or_forward(req, supervisor, id, || None).await? {
        Here::Local(handle) => handle,
        Here::Forwarded(answer) => return Ok(answer),
    };
    let info = handle.info().await.ok_or_else(|| no_session(id))?;
    match order {
        Order::Close => handle.close(),
        Order::Rotate => handle.rotate(),
    }
    Ok(HttpResponse::Accepted().json(SessionView::new(&info, false)))
}

/// Closes a session: its work item is done. Answers the session as it was when asked.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/close",
    tag = "sessions",
    params(("id" = u64, Path, description = "The session's id")),
    responses(
        (status = 202, description = "The close is under way; the session as it was", body = SessionView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No live session has this id", body = ErrorBody),
        (status = 503, description = "On a cluster: the node that owns the session has left or could not be reached", body = ErrorBody)
    )
)]
async fn close(
    req: HttpRequest,
    supervisor: web::Data<SupervisorHandle>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    order(&req, &supervisor, id.into_inner(), Order::Close).await
}

/// Rotates a session now (reason `manual`). Answers the session as it was when asked.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/rotate",
    tag = "sessions",
    params(("id" = u64, Path, description = "The session's id")),
    responses(
        (status = 202, description = "The rotation is under way; the session as it was", body = SessionView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No live session has this id", body = ErrorBody),
        (status = 503, description = "On a cluster: the node that owns the session has left or could not be reached", body = ErrorBody)
    )
)]
async fn rotate(
    req: HttpRequest,
    supervisor: web::Data<SupervisorHandle>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    order(&req, &supervisor, id.into_inner(), Order::Rotate).await
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(list, get, close, rotate),
    components(schemas(SessionList, SessionView, UsageView, PhaseView, SourceView))
)]
pub struct Api;

/// Registers `/v1/sessions`, `/v1/sessions/{id}`, `/v1/sessions/{id}/close` and
/// `/v1/sessions/{id}/rotate`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/sessions").route(web::get().to(list)))
        .service(web::resource("/v1/sessions/{id}").route(web::get().to(get)))
        .service(web::resource("/v1/sessions/{id}/close").route(web::post().to(close)))
        .service(web::resource("/v1/sessions/{id}/rotate").route(web::post().to(rotate)));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::vocab::WorkItemId;

    fn info(agent_type: &str, phase: Phase, used: Option<u64>) -> SessionInfo {
        SessionInfo {
            session: SessionId(1),
            agent_type: Arc::from(agent_type),
            work_item: WorkItemId(7),
            phase,
            usage: used.map(|u| Usage::reported(u, 1000).unwrap()),
            compactions: 0,
            history: Vec::new(),
        }
    }

    #[test]
    fn every_given_filter_must_hold() {
        let f = SessionFilter {
            agent_type: Some("coder".into()),
            phase: Some(PhaseView::Normal),
            min_ratio: Some(0.5),
        };
        assert!(f.admits(&info("coder", Phase::Normal, Some(500))));
        assert!(!f.admits(&info("coder", Phase::Normal, Some(499))));
        assert!(!f.admits(&info("coder", Phase::Normal, None)));
        assert!(!f.admits(&info("writer", Phase::Normal, Some(900))));
        assert!(!f.admits(&info("coder", Phase::Compacting, Some(900))));
        assert!(SessionFilter::default().admits(&info("x", Phase::Closed, None)));
    }

    #[test]
    fn a_negative_or_non_finite_min_ratio_is_refused() {
        for r in [-0.1, f64::NAN, f64::INFINITY] {
            let f = SessionFilter {
                min_ratio: Some(r),
                ..SessionFilter::default()
            };
            assert!(f.check().is_err(), "{r}");
        }
        let above_one = SessionFilter {
            min_ratio: Some(1.5),
            ..SessionFilter::default()
        };
        assert!(above_one.check().is_ok());
    }

    #[test]
    fn a_journal_phase_column_reads_as_its_phase() {
        assert_eq!(PhaseView::from_column("Normal"), Some(PhaseView::Normal));
        assert_eq!(
            PhaseView::from_column("Compacting"),
            Some(PhaseView::Compacting)
        );
        assert_eq!(PhaseView::from_column("Closed"), Some(PhaseView::Closed));
        assert_eq!(PhaseView::from_column("normal"), None);
    }

    #[test]
    fn a_session_read_from_the_database_has_its_owner_and_never_passes_min_ratio() {
        let row = SessionRow {
            id: 5,
            agent_type: "coder".into(),
            work_item: 9,
            phase: "Rotating".into(),
            compactions: 2,
            owner: Some(crate::cluster::Epoch(3)),
        };
        let view = SessionView::from_row(&row);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["phase"], "rotating");
        assert_eq!(json["owner"], 3);
        assert!(json.get("usage").is_none() && json.get("history").is_none());
        let by_type = |t: &str| SessionFilter {
            agent_type: Some(t.into()),
            phase: Some(PhaseView::Rotating),
            ..SessionFilter::default()
        };
        assert!(by_type("coder").admits_view(&view));
        assert!(!by_type("writer").admits_view(&view));
        let min_ratio = SessionFilter {
            min_ratio: Some(0.0),
            ..SessionFilter::default()
        };
        assert!(!min_ratio.admits_view(&view));
        // A single host's view has no owner on the wire.
        let local =
            serde_json::to_value(SessionView::new(&info("coder", Phase::Normal, None), false))
                .unwrap();
        assert!(local.get("owner").is_none());
    }

    #[test]
    fn a_session_lists_without_its_history_and_shows_with_it() {
        let mut i = info("coder", Phase::Compacting, Some(850));
        i.history = vec![Usage::reported(850, 1000).unwrap()];
        let listed = serde_json::to_value(SessionView::new(&i, false)).unwrap();
        assert_eq!(listed["phase"], "compacting");
        assert_eq!(listed["usage"]["ratio"], 0.85);
        assert!(listed.get("history").is_none());
        let shown = serde_json::to_value(SessionView::new(&i, true)).unwrap();
        assert_eq!(shown["history"][0]["source"], "reported");
    }
}

//! `/v1/sessions`: the live sessions, with filters; one session with its recent readings;
//! closing one and rotating one by hand. Usage reports are in `readings.rs`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
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
    /// Its recent readings, oldest first (only when one session is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<UsageView>>,
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
    filter: web::Query<SessionFilter>,
) -> Result<web::Json<SessionList>, ApiError> {
    filter.check()?;
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
    id: web::Path<u64>,
) -> Result<web::Json<SessionView>, ApiError> {
    let id = id.into_inner();
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
    supervisor: &SupervisorHandle,
    id: u64,
    order: Order,
) -> Result<HttpResponse, ApiError> {
    let handle = live(supervisor, id).await?;
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
        (status = 404, description = "No live session has this id", body = ErrorBody)
    )
)]
async fn close(
    supervisor: web::Data<SupervisorHandle>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    order(&supervisor, id.into_inner(), Order::Close).await
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
        (status = 404, description = "No live session has this id", body = ErrorBody)
    )
)]
async fn rotate(
    supervisor: web::Data<SupervisorHandle>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    order(&supervisor, id.into_inner(), Order::Rotate).await
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

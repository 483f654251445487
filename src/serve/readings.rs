//! Usage reports: `POST /v1/sessions/{id}/usage` (one) and `POST /v1/usage` (a batch over
//! many sessions). Each answers what the session does right after the reading was handled.

use std::collections::HashMap;

use actix_web::web;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::sessions::{PhaseView, SourceView, live};
use crate::machine::Phase;
use crate::supervisor::{SessionHandle, SupervisorHandle};
use crate::usage::{Usage, UsageError};

/// The most reports one batch may hold.
pub const MAX_BATCH: usize = 10_000;

/// One reading for a session named by the path.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// Tokens the conversation occupies now.
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub used: u64,
    /// The window; absent: the session's agent type's.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub window: Option<u64>,
    /// Who produced the figure (default `reported`).
    pub source: Option<SourceView>,
}

/// One reading in a batch.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchReport {
    /// The session.
    pub session: u64,
    /// Tokens the conversation occupies now.
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub used: u64,
    /// The window; absent: the session's agent type's.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub window: Option<u64>,
    /// Who produced the figure (default `reported`).
    pub source: Option<SourceView>,
}

/// `POST /v1/usage`'s body.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// The readings, handled in order for each session (at most 10,000).
    #[schema(max_items = 10000)]
    pub reports: Vec<BatchReport>,
}

/// What a session does right after a reading was handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reading {
    /// The session.
    pub session: u64,
    /// Its phase after the reading: `compacting` and `rotating` mean the work has started (its
    /// outcome arrives as events); `closed` that the session has ended.
    pub phase: PhaseView,
    /// The session that took the work item over, when the session has already handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<u64>,
}

/// One result of a batch: a [`Reading`], or an error for that report alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageBatchResult {
    /// The session the report named.
    pub session: u64,
    /// Its phase after the reading (absent on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PhaseView>,
    /// The successor, when the session has already handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<u64>,
    /// Why this report was not handled: `not_found` (no live session) or `bad_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    /// What was wrong, for a person (with `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/usage`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageBatchAnswer {
    /// One result per report, in the order of the reports.
    pub results: Vec<UsageBatchResult>,
}

impl From<Result<Reading, ApiError>> for UsageBatchResult {
    fn from(r: Result<Reading, ApiError>) -> Self {
        match r {
            Ok(r) => Self {
                session: r.session,
                phase: Some(r.phase),
                successor: r.successor,
                error: None,
                message: None,
            },
            Err(e) => Self {
                session: 0,
                phase: None,
                successor: None,
                error: Some(e.code),
                message: Some(e.message),
            },
        }
    }
}

/// Checks a reading's figures as [`Usage::new`] does; an absent window stands for the agent
/// type's, which is valid by construction.
pub fn check(used: u64, window: Option<u64>) -> Result<(), UsageError> {
    Usage::new(used, window.unwrap_or(1), Default::default()).map(drop)
}

/// Reports one reading to a live session and waits until it handled it.
async fn report(
    handle: &SessionHandle,
    used: u64,
    window: Option<u64>,
    source: Option<SourceView>,
) -> Reading {
    let source = source.unwrap_or_default().into();
    let phase = handle
        .report_usage_and_wait(used, window, source)
        .await
        .unwrap_or(Phase::Closed);
    let successor = if phase == Phase::Closed {
        match handle.status().await {
            Ok(rx) => rx.borrow().successor.map(|s| s.0),
            Err(_) => None,
        }
    } else {
        None
    };
    Reading {
        session: handle.session.0,
        phase: phase.into(),
        successor,
    }
}

/// Reports a reading for one session.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/usage",
    tag = "usage",
    params(("id" = u64, Path, description = "The session's id")),
    request_body = UsageBody,
    responses(
        (status = 200, description = "What the session does right after the reading", body = Reading),
        (status = 400, description = "A malformed body or a figure out of range", body = ErrorBody),
        (status = 404, description = "No live session has this id", body = ErrorBody)
    )
)]
async fn one(
    supervisor: web::Data<SupervisorHandle>,
    id: web::Path<u64>,
    body: web::Json<UsageBody>,
) -> Result<web::Json<Reading>, ApiError> {
    let UsageBody {
        used,
        window,
        source,
    } = body.into_inner();
    check(used, window)?;
    let handle = live(&supervisor, id.into_inner()).await?;
    Ok(web::Json(report(&handle, used, window, source).await))
}

/// Reports readings for many sessions at once. Reports for one session are handled in their
/// order; a report that fails (an unknown session, a figure out of range) fails alone.
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    request_body = UsageBatch,
    responses(
        (status = 200, description = "One result per report, in order", body = UsageBatchAnswer),
        (status = 400, description = "A malformed body, or more than 10,000 reports", body = ErrorBody)
    )
)]
async fn batch(
    supervisor: web::Data<SupervisorHandle>,
    body: web::Json<UsageBatch>,
) -> Result<web::Json<UsageBatchAnswer>, ApiError> {
    let reports = body.into_inner().reports;
    if reports.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds at most {MAX_BATCH} reports, not {}",
            reports.len()
        )));
    }
    // Sessions are served concurrently; each session's reports in their order.
    let groups = by_session(&reports);
    let supervisor = &supervisor;
    let reports = &reports;
    let done = join_all(groups.into_iter().map(|(session, indices)| async move {
        let handle = live(supervisor, session).await;
        let mut out = Vec::with_capacity(indices.len());
        for i in indices {
            let r = &reports[i];
            let result = match (&handle, check(r.used, r.window)) {
                (_, Err(e)) => Err(e.into()),
                (Err(e), Ok(())) => Err(e.clone()),
                (Ok(h), Ok(())) => Ok(report(h, r.used, r.window, r.source).await),
            };
            let mut result = UsageBatchResult::from(result);
            result.session = session;
            out.push((i, result));
        }
        out
    }))
    .await;
    let mut results: Vec<Option<UsageBatchResult>> = vec![None; reports.len()];
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    Ok(web::Json(UsageBatchAnswer {
        results: results.into_iter().flatten().collect(),
    }))
}

/// The reports' indices grouped by session, each group in report order, groups in the order
/// of their first report.
pub fn by_session(reports: &[BatchReport]) -> Vec<(u64, Vec<usize>)> {
    let mut at: HashMap<u64, usize> = HashMap::new();
    let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let g = *at.entry(r.session).or_insert_with(|| {
            groups.push((r.session, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(one, batch),
    components(schemas(
        UsageBody,
        BatchReport,
        UsageBatch,
        Reading,
        UsageBatchResult,
        UsageBatchAnswer
    ))
)]
pub struct Api;

/// Registers `/v1/sessions/{id}/usage` and `/v1/usage`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/sessions/{id}/usage").route(web::post().to(one)))
        .service(web::resource("/v1/usage").route(web::post().to(batch)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(session: u64) -> BatchReport {
        BatchReport {
            session,
            used: 1,
            window: None,
            source: None,
        }
    }

    #[test]
    fn batch_reports_group_by_session_in_order() {
        let reports = [at(3), at(1), at(3), at(2), at(1)];
        assert_eq!(
            by_session(&reports),
            vec![(3, vec![0, 2]), (1, vec![1, 4]), (2, vec![3])]
        );
    }

    #[test]
    fn figures_are_checked_as_usage_checks_them() {
        assert!(check(0, None).is_ok());
        assert!(check(Usage::MAX_TOKENS, Some(Usage::MAX_TOKENS)).is_ok());
        assert_eq!(check(5, Some(0)), Err(UsageError::ZeroWindow));
        assert!(check(Usage::MAX_TOKENS + 1, None).is_err());
        assert!(check(1, Some(Usage::MAX_TOKENS + 1)).is_err());
    }

    #[test]
    fn a_report_body_with_unknown_keys_or_negative_figures_is_refused() {
        assert!(serde_json::from_str::<UsageBody>(r#"{"used": 5, "extra": 1}"#).is_err());
        assert!(serde_json::from_str::<UsageBody>(r#"{"used": -5}"#).is_err());
        assert!(serde_json::from_str::<UsageBody>(r#"{"used": 1.5}"#).is_err());
        let ok: UsageBody = serde_json::from_str(r#"{"used": 5, "source": "estimated"}"#).unwrap();
        assert_eq!(ok.source, Some(SourceView::Estimated));
    }
}

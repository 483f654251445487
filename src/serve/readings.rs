//! Usage reports: `POST /v1/sessions/{id}/usage` (one) and `POST /v1/usage` (a batch over
//! many sessions). Each answers what the session does right after the reading was handled.
//!
//! On a cluster node a report for a session another node owns is forwarded to the owner
//! (`forward.rs`); a batch sends such reports on as one batch per owner.

use std::collections::{BTreeMap, HashMap};

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::cluster::ClusterApi;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::forward::{
    EpochText, ForwardError, Forwarder, Subject, is_forwarded, meant_for_another,
};
use super::sessions::{Here, PhaseView, SourceView, live, local_or_forward};
use crate::cluster::Epoch;
use crate::cluster::sessions::{self as db_sessions, Owner};
use crate::machine::Phase;
use crate::supervisor::{SessionHandle, SupervisorHandle};
use crate::usage::{Usage, UsageError};

/// The most reports one batch may hold.
pub const MAX_BATCH: usize = 10_000;

/// One reading for a session named by the path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// Tokens the conversation occupies now.
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub used: u64,
    /// The window; absent: the session's agent type's.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// Who produced the figure (default `reported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceView>,
}

/// One reading in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchReport {
    /// The session.
    pub session: u64,
    /// Tokens the conversation occupies now.
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub used: u64,
    /// The window; absent: the session's agent type's.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// Who produced the figure (default `reported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceView>,
}

/// `POST /v1/usage`'s body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Why this report was not handled: `not_found` (no live session), `bad_request`, or on a
    /// cluster `unavailable` (the node that owns the session has left or could not be reached).
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
        (status = 404, description = "No live session has this id", body = ErrorBody),
        (status = 503, description = "On a cluster: the node that owns the session has left or could not be reached", body = ErrorBody)
    )
)]
async fn one(
    req: HttpRequest,
    supervisor: web::Data<SupervisorHandle>,
    id: web::Path<u64>,
    body: web::Json<UsageBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    check(body.used, body.window)?;
    // Encoded only when the session is another node's: a local report (the hot path) is not.
    let forwarded = || serde_json::to_vec(&body).ok();
    let handle = match local_or_forward(&req, &supervisor, id.into_inner(), forwarded).await? {
        Here::Local(handle) => handle,
        Here::Forwarded(answer) => return Ok(answer),
    };
    let UsageBody {
        used,
        window,
        source,
    } = body;
    Ok(HttpResponse::Ok().json(report(&handle, used, window, source).await))
}

/// Reports readings for many sessions at once. Reports for one session are handled in their
/// order; a report that fails (an unknown session, a figure out of range) fails alone.
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    request_body = UsageBatch,
    responses(
        (status = 200, description = "One result per report, in order (on a cluster, reports for sessions another node owns are answered by that node)", body = UsageBatchAnswer),
        (status = 400, description = "A malformed body, or more than 10,000 reports", body = ErrorBody)
    )
)]
async fn batch(
    req: HttpRequest,
    supervisor: web::Data<SupervisorHandle>,
    cluster: Option<web::Data<ClusterApi>>,
    forwarder: Option<web::Data<Forwarder>>,
    body: web::Json<UsageBatch>,
) -> Result<web::Json<UsageBatchAnswer>, ApiError> {
    let reports = body.into_inner().reports;
    if reports.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds at most {MAX_BATCH} reports, not {}",
            reports.len()
        )));
    }
    // A batch forwarded to another incarnation of this address is for its owner to answer.
    if let Some(c) = &cluster {
        meant_for_another(&req, c.epoch.0)?;
    }
    // On a cluster node, reports for sessions not live here go on to their owners (unless this
    // batch was forwarded already).
    let onward = match (cluster, forwarder) {
        (Some(c), Some(f)) if !is_forwarded(&req) => Some((c, f)),
        _ => None,
    };
    // Sessions are served concurrently; each session's reports in their order.
    let groups = by_session(&reports);
    let supervisor = &supervisor;
    let reports = &reports;
    let forwarding = onward.is_some();
    let done = join_all(groups.into_iter().map(|(session, indices)| async move {
        let handle = live(supervisor, session).await;
        if handle.is_err() && forwarding {
            // Not here: its owner answers for it.
            return Err((session, indices));
        }
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
        Ok(out)
    }))
    .await;
    let mut results: Vec<Option<UsageBatchResult>> = vec![None; reports.len()];
    let mut elsewhere = Vec::new();
    for group in done {
        match group {
            Ok(out) => {
                for (i, r) in out {
                    results[i] = Some(r);
                }
            }
            Err(group) => elsewhere.push(group),
        }
    }
    if let Some((cluster, forwarder)) = onward
        && !elsewhere.is_empty()
    {
        for (i, r) in onward_batches(&req, &cluster, &forwarder, reports, elsewhere).await {
            results[i] = Some(r);
        }
    }
    Ok(web::Json(UsageBatchAnswer {
        results: results.into_iter().flatten().collect(),
    }))
}

/// The result of a report about `session` that failed with `e`.
fn failed(session: u64, e: &ApiError) -> UsageBatchResult {
    UsageBatchResult {
        session,
        phase: None,
        successor: None,
        error: Some(e.code),
        message: Some(e.message.clone()),
    }
}

/// The results of the reports of `groups` (sessions not live here, each with its reports'
/// indices): each owner is sent its sessions' reports as one batch, marked forwarded, and its
/// results are taken as they are. A session live nowhere is `not_found`; an owner that has left
/// or does not answer makes each of its reports `unavailable`.
async fn onward_batches(
    req: &HttpRequest,
    cluster: &ClusterApi,
    forwarder: &Forwarder,
    reports: &[BatchReport],
    groups: Vec<(u64, Vec<usize>)>,
) -> Vec<(usize, UsageBatchResult)> {
    let mut out = Vec::new();
    let ids: Vec<u64> = groups.iter().map(|(s, _)| *s).collect();
    let owners = match cluster.db.call(move |c| db_sessions::owners(c, &ids)).await {
        Ok(owners) => owners,
        Err(e) => {
            let e = ApiError::from(ForwardError::Database(e));
            for (session, indices) in groups {
                out.extend(indices.into_iter().map(|i| (i, failed(session, &e))));
            }
            return out;
        }
    };
    // Each owner's reports, in report order.
    let mut by_owner: BTreeMap<i64, (String, Vec<usize>)> = BTreeMap::new();
    for (session, indices) in groups {
        let e = match owners.get(&session) {
            None => ForwardError::NoSession(session),
            Some(Owner::Node { epoch, .. }) if *epoch == cluster.epoch => {
                ForwardError::NoSession(session)
            }
            Some(Owner::Gone(epoch)) => ForwardError::OwnerGone {
                subject: Subject::Session(session),
                epoch: EpochText(*epoch),
            },
            Some(Owner::Node {
                epoch, addr: None, ..
            }) => ForwardError::NoAddress {
                subject: Subject::Session(session),
                epoch: *epoch,
            },
            Some(Owner::Node {
                epoch,
                addr: Some(addr),
                ..
            }) => {
                let entry = by_owner
                    .entry(epoch.0)
                    .or_insert_with(|| (addr.clone(), Vec::new()));
                entry.1.extend(indices);
                continue;
            }
        };
        let e = ApiError::from(e);
        out.extend(indices.into_iter().map(|i| (i, failed(session, &e))));
    }
    let sent = join_all(by_owner.into_iter().map(|(epoch, (addr, mut indices))| {
        indices.sort_unstable();
        async move {
            let batch = UsageBatch {
                reports: indices.iter().map(|&i| reports[i].clone()).collect(),
            };
            let answer = send_batch(req, forwarder, &addr, Epoch(epoch), &batch).await;
            let answer = answer.map_err(|e| {
                tracing::warn!(epoch, %addr, error = %e, "a usage batch could not be forwarded to its sessions' owner");
                ApiError::unavailable(format!(
                    "the session is owned by node {epoch} at {addr}, which could not be reached or answered: {e}"
                ))
            });
            match answer {
                Ok(results) => indices.into_iter().zip(results).collect::<Vec<_>>(),
                Err(e) => indices
                    .into_iter()
                    .map(|i| (i, failed(reports[i].session, &e)))
                    .collect(),
            }
        }
    }))
    .await;
    out.extend(sent.into_iter().flatten());
    out
}

/// Why an owner's answer to a forwarded batch could not be used.
#[derive(Debug, thiserror::Error)]
enum BatchForwardError {
    /// No answer.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// An answer other than one result per report.
    #[error("it answered {0}")]
    Answer(String),
}

/// Sends `batch` to the owner at `addr`: its results, one per report.
async fn send_batch(
    req: &HttpRequest,
    forwarder: &Forwarder,
    addr: &str,
    epoch: Epoch,
    batch: &UsageBatch,
) -> Result<Vec<UsageBatchResult>, BatchForwardError> {
    let body = serde_json::to_vec(batch).map_err(|e| BatchForwardError::Answer(e.to_string()))?;
    let answer = forwarder
        .post(req, addr, epoch, "/v1/usage", Some(body))
        .await?;
    if !answer.status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&answer.body)
            .map_or_else(|_| answer.status.to_string(), |b| b.message);
        return Err(BatchForwardError::Answer(format!(
            "{}: {message}",
            answer.status.as_u16()
        )));
    }
    let parsed: UsageBatchAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
        BatchForwardError::Answer(format!("a body that is not a batch answer: {e}"))
    })?;
    if parsed.results.len() != batch.reports.len() {
        return Err(BatchForwardError::Answer(format!(
            "{} results for {} reports",
            parsed.results.len(),
            batch.reports.len()
        )));
    }
    Ok(parsed.results)
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

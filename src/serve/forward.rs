//! Forwarding, on a node of a cluster: a write for a session another node owns (a usage report,
//! a close, a rotate), or a cancel of a work item another node owns, goes to the owner's address
//! (`baton_nodes.addr`) with the same bearer token and body, and the owner's answer is relayed as
//! it is (`docs/http.md`, "On a cluster").
//!
//! A forwarded request carries [`FORWARDED`]; a node never forwards such a request again, so
//! that two nodes that disagree about an owner cannot bounce a request between them.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use thiserror::Error;

use super::cluster::ClusterApi;
use super::error::ApiError;
use crate::cluster::sessions::{self, Owner};
use crate::cluster::{ClusterError, Epoch};

/// The header a forwarded request carries, its value the epoch of the node it is meant for: it
/// is never forwarded again, and a node of another epoch (the owner restarted on the same
/// address, or left) answers it 503 rather than as if the subject did not exist.
pub const FORWARDED: &str = "x-baton-forwarded";

/// How long a forwarded request may take at most (less when the server's request timeout is
/// shorter: see [`Forwarder::new`]).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to an owner may take at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a forwarded write is about, in messages: `session 7`, `work item 7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A session.
    Session(u64),
    /// A work item.
    WorkItem(u64),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(id) => write!(f, "session {id}"),
            Self::WorkItem(id) => write!(f, "work item {id}"),
        }
    }
}

/// Why a write could not be forwarded to the owner of its session or work item.
#[derive(Debug, Error)]
pub enum ForwardError {
    /// No live session has this id on any node.
    #[error("no live session {0}")]
    NoSession(u64),
    /// The owner's node row is gone: it has been fenced and its work is being adopted.
    #[error(
        "{subject} is owned by node {epoch}, which has left the cluster (its work is being adopted by another node); try again shortly"
    )]
    OwnerGone {
        /// What the write is about.
        subject: Subject,
        /// The owner's epoch, if the row names one.
        epoch: EpochText,
    },
    /// The owner advertises no address.
    #[error("{subject} is owned by node {epoch}, which advertises no address")]
    NoAddress {
        /// What the write is about.
        subject: Subject,
        /// The owner's epoch.
        epoch: Epoch,
    },
    /// The owner did not answer (refused, timed out, or cut the connection).
    #[error("{subject} is owned by node {epoch} at {addr}, which could not be reached: {source}")]
    Unreachable {
        /// What the write is about.
        subject: Subject,
        /// The owner's epoch.
        epoch: Epoch,
        /// Where it was asked.
        addr: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The database could not say who owns the session.
    #[error("the cluster's database: {0}")]
    Database(#[from] ClusterError),
}

/// An owner's epoch in a message: `unknown` when the row names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochText(pub Option<Epoch>);

impl std::fmt::Display for EpochText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => write!(f, "{e}"),
            None => f.write_str("unknown"),
        }
    }
}

impl From<ForwardError> for ApiError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NoSession(id) => ApiError::not_found(format!("no live session {id}")),
            e => {
                tracing::warn!(error = %e, "a write could not be forwarded to its session's owner");
                ApiError::unavailable(e.to_string())
            }
        }
    }
}

/// Whether `req` was forwarded by another node.
pub fn is_forwarded(req: &HttpRequest) -> bool {
    req.headers().contains_key(FORWARDED)
}

/// The epoch a forwarded request was meant for, when it names one (a number).
pub fn forwarded_to(req: &HttpRequest) -> Option<i64> {
    req.headers()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A forwarded request meant for another incarnation than `me` (its owner restarted on the same
/// address, or left): 503, so that the client tries again once the database says where its
/// subject is, never 404 for a subject that exists.
pub fn meant_for_another(req: &HttpRequest, me: i64) -> Result<(), ApiError> {
    match forwarded_to(req) {
        Some(epoch) if epoch != me => {
            tracing::info!(
                meant_for = epoch,
                epoch = me,
                "a forwarded request for another incarnation of this address"
            );
            Err(ApiError::unavailable(format!(
                "this request was forwarded to node epoch {epoch}, but this node is epoch {me} (the owner restarted or left); try again"
            )))
        }
        _ => Ok(()),
    }
}

/// What an owner answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its `Content-Type`, if any.
    pub content_type: Option<Vec<u8>>,
    /// Its `WWW-Authenticate`, if any (a 401).
    pub authenticate: Option<Vec<u8>>,
    /// Its body.
    pub body: web::Bytes,
}

impl Answer {
    /// The answer as this node's response: the owner's status, type and body.
    pub fn response(self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(t) = self.content_type {
            response.insert_header((header::CONTENT_TYPE, t));
        }
        if let Some(a) = self.authenticate {
            response.insert_header((header::WWW_AUTHENTICATE, a));
        }
        response.body(self.body)
    }
}

/// Sends requests on to other nodes. Cheap to clone: one connection pool for the server.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// The HTTP client (plain HTTP or rustls with the ring provider).
    http: reqwest::Client,
    /// How long one forwarded request may take.
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder whose requests take at most [`FORWARD_TIMEOUT`], and at most three quarters of
    /// `request_timeout` (the server's own deadline), so that a slow owner is answered with this
    /// node's clear 503 rather than a bare timeout.
    pub fn new(request_timeout: Duration) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default TLS provider: ring, as the chat client installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = FORWARD_TIMEOUT.min(request_timeout.mul_f64(0.75));
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, timeout })
    }

    /// How long one forwarded request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` (JSON, if any) to `path_and_query` at `addr`, marked [`FORWARDED`], with the
    /// `Authorization` of `req`.
    pub async fn post(
        &self,
        req: &HttpRequest,
        addr: &str,
        epoch: Epoch,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, reqwest::Error> {
        let url = format!("{}{path_and_query}", addr.trim_end_matches('/'));
        let mut out = self.http.post(url).header(FORWARDED, epoch.0.to_string());
        if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
            out = out.header(reqwest::header::AUTHORIZATION, auth.as_bytes());
        }
        if let Some(body) = body {
            out = out
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let res = out.send().await?;
        let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let bytes_of = |name| res.headers().get(name).map(|v| v.as_bytes().to_vec());
        let content_type = bytes_of(reqwest::header::CONTENT_TYPE);
        let authenticate = bytes_of(reqwest::header::WWW_AUTHENTICATE);
        let body = res.bytes().await?;
        Ok(Answer {
            status,
            content_type,
            authenticate,
            body: web::Bytes::from(body.to_vec()),
        })
    }

    /// Forwards `req` (with `body`, re-encoded JSON, if any) to the owner of `session` and
    /// relays its answer. The owner is found in the database; `cluster.epoch` owning it means
    /// it ended here meanwhile (404).
    pub async fn forward(
        &self,
        req: &HttpRequest,
        cluster: &ClusterApi,
        session: u64,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ForwardError> {
        let owner = cluster
            .db
            .call(move |c| sessions::owner(c, session))
            .await?;
        let owner = match owner {
            None => return Err(ForwardError::NoSession(session)),
            Some(Owner::Node { epoch, .. }) if epoch == cluster.epoch => {
                return Err(ForwardError::NoSession(session));
            }
            Some(owner) => owner,
        };
        self.forward_to(req, Subject::Session(session), owner, body)
            .await
    }

    /// Forwards `req` (with `body`, if any) about `subject` to its owner `owner` (another node)
    /// and relays its answer.
    pub async fn forward_to(
        &self,
        req: &HttpRequest,
        subject: Subject,
        owner: Owner,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ForwardError> {
        let (epoch, addr) = match owner {
            Owner::Gone(epoch) => {
                return Err(ForwardError::OwnerGone {
                    subject,
                    epoch: EpochText(epoch),
                });
            }
            Owner::Node {
                epoch, addr: None, ..
            } => return Err(ForwardError::NoAddress { subject, epoch }),
            Owner::Node {
                epoch,
                addr: Some(addr),
                ..
            } => (epoch, addr),
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
        tracing::debug!(%subject, %epoch, %addr, %path, "forwarding a write to its owner");
        match self.post(req, &addr, epoch, &path, body).await {
            Ok(answer) => Ok(answer.response()),
            Err(source) => Err(ForwardError::Unreachable {
                subject,
                epoch,
                addr,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_session_is_404_and_an_unreachable_owner_503() {
        let missing = ApiError::from(ForwardError::NoSession(7));
        assert_eq!(missing.code, super::super::error::ErrorCode::NotFound);
        assert_eq!(missing.message, "no live session 7");
        let gone = ApiError::from(ForwardError::OwnerGone {
            subject: Subject::Session(7),
            epoch: EpochText(Some(Epoch(3))),
        });
        assert_eq!(gone.code, super::super::error::ErrorCode::Unavailable);
        assert!(
            gone.message.starts_with("session 7 is owned by node 3"),
            "{}",
            gone.message
        );
        let unknown = ApiError::from(ForwardError::OwnerGone {
            subject: Subject::WorkItem(7),
            epoch: EpochText(None),
        });
        assert!(
            unknown
                .message
                .starts_with("work item 7 is owned by node unknown"),
            "{}",
            unknown.message
        );
    }

    #[test]
    fn the_forward_timeout_stays_inside_the_servers_own_deadline() {
        let short = Forwarder::new(Duration::from_secs(4)).unwrap();
        assert_eq!(short.timeout(), Duration::from_secs(3));
        let long = Forwarder::new(Duration::from_secs(60)).unwrap();
        assert_eq!(long.timeout(), FORWARD_TIMEOUT);
    }
}

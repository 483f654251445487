//! The one error type of the HTTP interface: a status and a typed JSON body.
//!
//! Every failure a client can see, from a handler, an extractor (a malformed body, a bad query)
//! or a guard (no token, a timeout), becomes an [`ApiError`], answered as
//! `{"error": CODE, "message": TEXT}`. Messages are written for the client; they never hold a
//! stack trace, a token or a secret.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, error::JsonPayloadError, web};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::supervisor::SupervisorError;

/// What went wrong, as a machine-readable code; each code has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a malformed body, a wrong type or a value out of range.
    BadRequest,
    /// 401: no bearer token, or a wrong one.
    Unauthorized,
    /// 404: an unknown id or path.
    NotFound,
    /// 405: a known path with another method.
    MethodNotAllowed,
    /// 409: the request conflicts with what exists (other content under the same id, an item
    /// that already ended, a journal that is off).
    Conflict,
    /// 413: a body over the size cap.
    PayloadTooLarge,
    /// 415: a body that is not JSON.
    UnsupportedMediaType,
    /// 503: shutting down, the journal failed, or the request timed out.
    Unavailable,
    /// 500: a defect of baton's; never expected, and logged.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code of an error status produced outside baton's handlers (by actix-web itself):
    /// its own code where it has one, otherwise 400 for a client error and 500 for the rest.
    pub fn of_status(status: StatusCode) -> Self {
        [
            Self::BadRequest,
            Self::Unauthorized,
            Self::NotFound,
            Self::MethodNotAllowed,
            Self::Conflict,
            Self::PayloadTooLarge,
            Self::UnsupportedMediaType,
            Self::Unavailable,
        ]
        .into_iter()
        .find(|c| c.status() == status)
        .unwrap_or(if status.is_client_error() {
            Self::BadRequest
        } else {
            Self::Internal
        })
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, as a code.
    pub error: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The code, which fixes the status.
    pub code: ErrorCode,
    /// The message for the client.
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// 401, answered with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if self.code == ErrorCode::Internal {
            tracing::error!(message = %self.message, "internal error answered 500");
        }
        let mut response = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.json(ErrorBody {
            error: self.code,
            message: self.message.clone(),
        })
    }
}

impl From<crate::usage::UsageError> for ApiError {
    fn from(e: crate::usage::UsageError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> Self {
        let code = match &e {
            SupervisorError::UnknownAgentType(_)
            | SupervisorError::UnknownSession(_)
            | SupervisorError::UnknownWorkItem(_) => ErrorCode::NotFound,
            SupervisorError::DuplicateWorkItem(_)
            | SupervisorError::AgentTypeConflict(_)
            | SupervisorError::AlreadyEnded(_) => ErrorCode::Conflict,
            SupervisorError::ShuttingDown | SupervisorError::Journal(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

/// The JSON body extractor's settings: bodies over `max_bytes` are 413, non-JSON bodies 415,
/// anything malformed 400, each as an [`ApiError`].
pub fn json_config(max_bytes: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(max_bytes)
        .error_handler(|e, _req: &HttpRequest| {
            let code = match &e {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => ErrorCode::PayloadTooLarge,
                JsonPayloadError::ContentType => ErrorCode::UnsupportedMediaType,
                _ => ErrorCode::BadRequest,
            };
            tracing::debug!(error = %e, "request body refused");
            ApiError::new(code, e.to_string()).into()
        })
}

/// The query-string extractor's settings: a malformed query is 400.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _req: &HttpRequest| ApiError::bad_request(e.to_string()).into())
}

/// The path extractor's settings: a path segment of the wrong type (`/v1/sessions/abc`) is 400.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e, _req: &HttpRequest| ApiError::bad_request(e.to_string()).into())
}

/// Makes every error response JSON: one that actix-web produced itself with another body (a
/// known path asked with another method is 405 with an empty body) is replaced by the
/// [`ErrorBody`] of its status.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !json {
        let code = ErrorCode::of_status(status);
        let message = match code {
            ErrorCode::MethodNotAllowed => "this path does not take this method".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
        };
        // 405 says which methods the path takes (`Allow`): kept.
        let allow = res.headers().get(header::ALLOW).cloned();
        let (req, _) = res.into_parts();
        let mut response = ApiError::new(code, message).error_response();
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return Ok(ServiceResponse::new(req, response));
    }
    Ok(res.map_into_boxed_body())
}

/// The answer for a path nothing serves: 404 as JSON.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_found_again_from_its_status() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::of_status(code.status()), code);
        }
        assert_eq!(
            ErrorCode::of_status(StatusCode::REQUEST_TIMEOUT),
            ErrorCode::BadRequest
        );
        assert_eq!(
            ErrorCode::of_status(StatusCode::BAD_GATEWAY),
            ErrorCode::Internal
        );
    }
}

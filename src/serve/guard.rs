//! What every request passes through before a handler: the bearer token and the deadline.
//!
//! The token is compared in constant time, and over SHA-256 digests so that its length does not
//! leak either. The one path without a token is `GET /`, the fleet page's static shell, which
//! holds no data (the page sends the token with each of its own requests).

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{Error, web};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::error::ApiError;

/// The bearer token every request must present. Its `Debug` form never shows it.
#[derive(Clone)]
pub struct Token {
    /// SHA-256 of the token: all that comparing needs, and the token itself is not kept.
    digest: Arc<[u8; 32]>,
}

/// Why a token was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Shorter than [`Token::MIN_LEN`] bytes.
    #[error("the token is too short: at least {min} characters are required", min = Token::MIN_LEN)]
    TooShort,
    /// Holds whitespace or control characters, which no `Authorization` header can carry intact.
    #[error("the token holds whitespace or control characters")]
    BadCharacters,
}

impl Token {
    /// The shortest token accepted: 16 characters.
    pub const MIN_LEN: usize = 16;

    /// A token from its text (surrounding whitespace already trimmed by the caller).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        if text.len() < Self::MIN_LEN {
            return Err(TokenError::TooShort);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::BadCharacters);
        }
        Ok(Self {
            digest: Arc::new(Sha256::digest(text.as_bytes()).into()),
        })
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&*self.digest).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// How long a request may take before it is answered 503 (the response's head: a stream's
/// body may go on).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Duration);

/// Refuses a request without the right bearer token (401), except `GET /`.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let open = req.method() == Method::GET && req.path() == "/";
    if !open {
        let token = req
            .app_data::<web::Data<Token>>()
            .ok_or_else(ApiError::unauthorized)?;
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        if !presented.is_some_and(|p| token.matches(p)) {
            tracing::debug!(path = %req.path().escape_debug(), "request refused: no valid token");
            return Err(ApiError::unauthorized().into());
        }
    }
    next.call(req).await
}

/// The credentials of an `Authorization` value in the `Bearer` scheme, whose name is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii_start())
}

/// Answers 503 when the handler has not produced a response within the [`Deadline`].
pub async fn deadline(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let limit = req
        .app_data::<web::Data<Deadline>>()
        .map_or(Duration::from_secs(30), |d| d.0);
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(response) => response,
        Err(_) => Err(ApiError::unavailable("the request timed out").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::test as served;
    use actix_web::{App, HttpResponse};

    /// A handler that never answers: only the deadline can end its request.
    async fn never() -> HttpResponse {
        std::future::pending().await
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_is_answered_503_as_json() {
        let app = served::init_service(
            App::new()
                .app_data(web::Data::new(Deadline(Duration::from_secs(5))))
                .route("/slow", web::get().to(never))
                .route("/fast", web::get().to(HttpResponse::NoContent))
                .wrap(from_fn(deadline)),
        )
        .await;
        let started = tokio::time::Instant::now();
        let slow = served::TestRequest::get().uri("/slow").to_request();
        let Err(refused) = served::try_call_service(&app, slow).await else {
            panic!("the deadline answers with an error");
        };
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let res = refused.error_response();
        assert_eq!(
            res.status(),
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE
        );
        let body = actix_web::body::to_bytes(res.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "unavailable");
        let res =
            served::call_service(&app, served::TestRequest::get().uri("/fast").to_request()).await;
        assert_eq!(res.status(), actix_web::http::StatusCode::NO_CONTENT);
    }

    #[test]
    fn a_token_matches_itself_only() {
        let t = Token::new("0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeg"));
        assert!(!t.matches(b"0123456789abcdef0"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_no_other_scheme_is() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_and_never_shown() {
        assert_eq!(Token::new("short").unwrap_err(), TokenError::TooShort);
        assert_eq!(
            Token::new("0123456789 abcdef").unwrap_err(),
            TokenError::BadCharacters
        );
        let t = Token::new("0123456789abcdef").unwrap();
        assert_eq!(format!("{t:?}"), "Token(redacted)");
    }
}

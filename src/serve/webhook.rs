//! The second way to carry out the runtime over HTTP: [`WebhookRuntime`] POSTs each command to
//! the orchestrator's URL, signed, and takes the answer's body as the command's result.
//!
//! Each delivery carries `X-Baton-Timestamp: UNIX_SECONDS` and
//! `X-Baton-Signature: sha256=HEX(HMAC-SHA256(secret, TIMESTAMP + "." + BODY))`, so the receiver
//! can check that baton sent it, and recently. A 2xx answer's body is a
//! [`CommandResult`], typed by the command's operation as the queue
//! types a posted one. A 5xx answer, a timeout or a refused connection is tried again (the same
//! command, the same id, a fresh timestamp and signature) with exponential backoff, for as long
//! as baton's own deadline for the call allows: past it, baton drops the call and it fails as a
//! runtime timeout. Any other answer (a 4xx, a redirect, a body too large or malformed) is a
//! permanent failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

use super::queue::{Command, CommandOp, CommandResult, Dispatch, Outcome, Proposals};
use crate::runtime::RuntimeError;
use crate::vocab::SessionId;

/// The header with the delivery's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "x-baton-timestamp";
/// The header with the delivery's signature, `sha256=HEX`.
pub const SIGNATURE_HEADER: &str = "x-baton-signature";

/// Where and how commands are delivered.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The URL every command is POSTed to (`http` or `https`).
    pub url: String,
    /// The HMAC key deliveries are signed with; never shown.
    pub secret: Vec<u8>,
    /// How long one delivery may take before it is tried again.
    pub attempt_timeout: Duration,
    /// The first wait before trying again.
    pub min_delay: Duration,
    /// The longest wait between tries.
    pub max_delay: Duration,
    /// An answer's body larger than this is a permanent failure.
    pub max_answer_bytes: usize,
}

impl WebhookConfig {
    /// Deliveries to `url` signed with `secret`: 30 s per attempt, retries from 100 ms up to
    /// 5 s apart, answers up to 1 MiB.
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            attempt_timeout: Duration::from_secs(30),
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_answer_bytes: 1 << 20,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact(&self.url))
            .field("secret", &"(redacted)")
            .field("attempt_timeout", &self.attempt_timeout)
            .field("min_delay", &self.min_delay)
            .field("max_delay", &self.max_delay)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .finish()
    }
}

/// Why a webhook runtime could not be made.
#[derive(Debug, Error)]
pub enum WebhookError {
    /// The URL is not an absolute `http` or `https` URL.
    #[error("the webhook URL is not an absolute http(s) URL")]
    BadUrl,
    /// The secret is empty.
    #[error("the webhook secret is empty")]
    EmptySecret,
    /// The HTTP client could not be built.
    #[error("cannot build the webhook's HTTP client: {0}")]
    Client(String),
}

/// The agent runtime that delivers every call as a signed webhook. Shared behind an `Arc`.
#[derive(Debug)]
pub struct WebhookRuntime {
    config: WebhookConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    /// The last command id handed out.
    last_id: AtomicU64,
    /// The session ids proposed to spawns.
    proposals: Proposals,
}

/// One failed delivery: whether to try again, and what to say.
#[derive(Debug)]
struct Failed {
    retryable: bool,
    message: String,
}

impl Failed {
    fn transient(message: String) -> Self {
        Self {
            retryable: true,
            message,
        }
    }
    fn permanent(message: String) -> Self {
        Self {
            retryable: false,
            message,
        }
    }
}

impl WebhookRuntime {
    /// A runtime delivering to `config.url`, proposing session ids from 1.
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(&config.url).map_err(|_| WebhookError::BadUrl)?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(WebhookError::BadUrl);
        }
        if config.secret.is_empty() {
            return Err(WebhookError::EmptySecret);
        }
        // reqwest is built without a TLS provider of its own; installing fails harmlessly if
        // one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
        Ok(Self {
            config,
            url,
            client,
            last_id: AtomicU64::new(0),
            proposals: Proposals::from(SessionId(1)),
        })
    }

    /// The same runtime, proposing session ids from `first`: give it
    /// [`Journal::next_session_id`](crate::Journal::next_session_id) when a journal is kept.
    pub fn numbering_from(mut self, first: SessionId) -> Self {
        self.proposals = Proposals::from(first);
        self
    }

    /// The same runtime, making each block of proposed ids durable through `reservation`
    /// first (see [`CommandQueue::reserving`](super::queue::CommandQueue::reserving)).
    pub fn reserving(
        mut self,
        reservation: std::sync::Arc<dyn super::queue::IdReservation>,
    ) -> Self {
        self.proposals = self.proposals.reserving(reservation);
        self
    }

    /// Delivers `body` once: the answer's body on a 2xx.
    async fn deliver(&self, id: u64, body: &[u8]) -> Result<Vec<u8>, Failed> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(
                SIGNATURE_HEADER,
                signature(&self.config.secret, &timestamp, body),
            )
            .timeout(self.config.attempt_timeout)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                if e.is_builder() {
                    Failed::permanent(format!("webhook request: {e}"))
                } else {
                    Failed::transient(format!("webhook delivery failed: {e}"))
                }
            })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Failed::transient(format!("webhook answered {status}")));
        }
        if !status.is_success() {
            return Err(Failed::permanent(format!("webhook answered {status}")));
        }
        let mut answer = Vec::new();
        let mut response = response;
        loop {
            let chunk = response.chunk().await.map_err(|e| {
                Failed::transient(format!("webhook answer cut: {}", e.without_url()))
            })?;
            let Some(chunk) = chunk else { break };
            if answer.len() + chunk.len() > self.config.max_answer_bytes {
                return Err(Failed::permanent(format!(
                    "webhook answer to command {id} is over {} bytes",
                    self.config.max_answer_bytes
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }
}

/// `sha256=HEX(HMAC-SHA256(secret, timestamp + "." + body))`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The URL's scheme and host only: its path or query may hold a secret.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "(not a URL)".into(),
    }
}

#[async_trait]
impl Dispatch for WebhookRuntime {
    fn proposals(&self) -> &Proposals {
        &self.proposals
    }

    async fn dispatch(&self, op: CommandOp) -> Outcome {
        let id = self.last_id.fetch_add(1, Ordering::SeqCst) + 1;
        let command = Command {
            id,
            op,
            lease: None,
            lease_expires_ms: None,
        };
        let body = serde_json::to_vec(&command)
            .map_err(|e| RuntimeError::permanent(format!("cannot encode command {id}: {e}")))?;
        let name = command.op.name();
        let policy = ExponentialBuilder::default()
            .with_min_delay(self.config.min_delay)
            .with_max_delay(self.config.max_delay)
            .with_jitter()
            .without_max_times();
        let answer = (|| self.deliver(id, &body))
            .retry(policy)
            .sleep(tokio::time::sleep)
            .when(|f: &Failed| f.retryable)
            .notify(|f, delay| {
                tracing::warn!(command = id, op = name, error = %f.message, ?delay, "webhook delivery failed; retrying");
            })
            .await
            .map_err(|f| {
                tracing::warn!(command = id, op = name, error = %f.message, "webhook delivery failed for good");
                RuntimeError::permanent(f.message)
            })?;
        let result: CommandResult = serde_json::from_slice(&answer).map_err(|e| {
            RuntimeError::permanent(format!(
                "the webhook's answer to command {id} is not a result: {e}"
            ))
        })?;
        result.outcome(&command.op).map_err(|e| {
            RuntimeError::permanent(format!("the webhook's answer to command {id}: {e}"))
        })?
    }
}

super::queue::runtime_over_dispatch!(WebhookRuntime);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body_in_hex() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"Jefe", b'1700000000.{"id":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"Jefe", "1700000000", br#"{"id":1}"#),
            "sha256=05b728475104591e6ba9301ccd86c0f18c79ea7330ef9b9869435607a745d2bf"
        );
    }

    #[test]
    fn bad_urls_and_empty_secrets_are_refused_and_the_secret_never_shown() {
        for url in ["not a url", "ftp://host/x", "file:///etc/passwd"] {
            assert!(matches!(
                WebhookRuntime::new(WebhookConfig::new(url, "s")),
                Err(WebhookError::BadUrl)
            ));
        }
        assert!(matches!(
            WebhookRuntime::new(WebhookConfig::new("http://127.0.0.1:9/", "")),
            Err(WebhookError::EmptySecret)
        ));
        let config = WebhookConfig::new("https://h.example/hook?key=topsecret", "hunter2-secret");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
    }
}

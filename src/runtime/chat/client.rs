//! [`ChatClient`]: sends Chat Completions requests to one OpenAI-compatible endpoint, with a
//! timeout on every request, retries of transient failures, typed errors, and the endpoint's
//! window.
//!
//! The base URL is the API root that OpenAI's own SDK takes, with the version:
//! `http://127.0.0.1:8080/v1`, `https://api.openai.com/v1`, `https://openrouter.ai/api/v1`.
//! Requests go to `{base}/chat/completions` and `{base}/models`; llama.cpp's `/props` lives at
//! the server root, so it is `{base without its /v1}/props`.

use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ChatError, printable, recognise_overflow};
use super::retry::{default_backoff, retry_after, wait_before_retry};
use super::secret::{ApiKey, UrlCredentials, redact_url};
use super::wire::{ChatRequest, ChatResponse, UsageReading};
use crate::provider::{
    Window, WindowSource, slots_from_props, window_from_models, window_from_props,
};

/// The default cap on one response body: 16 MiB, hundreds of times a long chat reply, and far
/// below what would strain a machine.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// How to reach an endpoint and how patient to be with it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API root with its version, e.g. `http://127.0.0.1:8080/v1` (see the module doc).
    /// Credentials in it (`http://user:pass@host/v1`) are taken out when the client is built
    /// and sent as basic authentication: the client's own copy never carries them. A query
    /// (`/v1?key=...`) is sent with every request; the client's own copy shows its values as
    /// `REDACTED`, as every URL the client logs or puts in an error does.
    pub base_url: String,
    /// The bearer token, when the endpoint needs one; redacted in `Debug`.
    pub api_key: Option<ApiKey>,
    /// The longest a request may take, from connecting to the last byte of the body. Generation
    /// is slow on small machines: a 200-token summary took 7-13 s on 2 shared cores.
    pub request_timeout: Duration,
    /// The longest a connection may take to open, so an unreachable host fails fast.
    pub connect_timeout: Duration,
    /// The waits between attempts of a chat request, and how many retries (backon's). Only
    /// HTTP 429, 5xx and failed connections are retried.
    pub retry: ExponentialBuilder,
    /// The longest wait a server may ask for (`Retry-After`) that is honoured; a longer one
    /// ends the retries at once, so that the caller decides.
    pub max_retry_after: Duration,
    /// The largest response body read, in bytes: a body that says or turns out to be larger is
    /// refused ([`ChatError::TooLarge`]) after reading at most this much, so an endpoint that
    /// streams without end cannot exhaust memory.
    pub max_body_bytes: u64,
}

impl ClientConfig {
    /// A configuration for `base_url` with no key, a 120 s request timeout, a 10 s connect
    /// timeout, the [`default_backoff`] (3 retries), server
    /// waits of up to 60 s honoured, and bodies of up to [`DEFAULT_MAX_BODY_BYTES`].
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retry: default_backoff(),
            max_retry_after: Duration::from_secs(60),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response as parsed.
    pub response: ChatResponse,
    /// The whole response body, for what [`ChatResponse`] does not type: the usage parsers
    /// ([`crate::provider::parse_usage`]) read llama.cpp's `timings` and Ollama's native counts
    /// from the top level.
    pub body: Value,
    /// Requests sent to get it, the first included.
    pub attempts: u32,
    /// Wall time from the first send to the parsed response, retries and waits included.
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent waiting on the endpoint: every attempt's HTTP exchange
    /// (sending, the server's work, reading the body) and the pauses between attempts. The rest
    /// is the client's own work, such as parsing the reply.
    pub waiting: Duration,
}

impl Completion {
    /// The response's usage, judged (see [`UsageReading`]).
    pub fn usage(&self) -> UsageReading {
        self.response.usage_reading()
    }
}

/// A client for one OpenAI-compatible endpoint. Cheap to clone: clones share the connection
/// pool.
#[derive(Debug, Clone)]
pub struct ChatClient {
    /// The HTTP client: pooled connections, HTTP/1.1 only, rustls with ring.
    http: Client,
    /// What the client was built from, its base URL without credentials (its key is redacted
    /// in `Debug`).
    config: ClientConfig,
    /// The base URL's credentials, sent as basic authentication when there is no key.
    credentials: Option<UrlCredentials>,
    /// `{base}/chat/completions{query}`.
    chat_url: RequestUrl,
    /// `{base}/models{query}`.
    models_url: RequestUrl,
    /// `{root}/props{query}` (llama.cpp).
    props_url: RequestUrl,
}

/// A URL requests are sent to, with the base URL's query, which may hold a key: shown through
/// `Debug` with the query's values redacted.
#[derive(Clone)]
struct RequestUrl(String);

impl std::fmt::Debug for RequestUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// rustls needs a process-wide crypto provider; reqwest is built without one so that ring, not
/// aws-lc-rs, is used. Installing fails harmlessly if the embedding program installed one.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One failed attempt of a chat request: the error, and the wait the server asked for.
struct Failed {
    error: ChatError,
    retry_after: Option<Duration>,
}

/// Why a body could not be read whole.
enum ReadError {
    /// The transport failed (or timed out).
    Http(reqwest::Error),
    /// It is larger than the limit.
    TooLarge,
}

/// Reads a response's body, refusing one that says (`Content-Length`) or turns out to be longer
/// than `limit` bytes: never more than `limit` bytes (plus one chunk) are held.
async fn read_capped(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl ChatClient {
    /// Builds a client. Fails on a base URL that is not http(s). Credentials in the base URL
    /// are taken out of it (see [`ClientConfig::base_url`]).
    pub fn new(mut config: ClientConfig) -> Result<Self, ChatError> {
        install_crypto_provider();
        let given = config.base_url.trim().trim_end_matches('/').to_owned();
        let mut url = reqwest::Url::parse(&given)
            .map_err(|e| ChatError::Config(format!("base URL {:?}: {e}", redact_url(&given))))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChatError::Config(format!(
                "base URL {:?} is not http or https",
                redact_url(&given)
            )));
        }
        let credentials = UrlCredentials::take(&mut url);
        // A query (an API key, for some services) goes after each endpoint's path.
        let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
        url.set_query(None);
        url.set_fragment(None);
        let base = if credentials.is_some() || given.contains(['?', '#']) {
            url.as_str().trim_end_matches('/').to_owned()
        } else {
            given
        };
        config.base_url = redact_url(&format!("{base}{query}"));
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let mut builder = Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        if loopback {
            // A local server is never behind a proxy, whatever HTTP_PROXY says.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| ChatError::Config(error_chain(&e)))?;
        let root = base.strip_suffix("/v1").unwrap_or(&base);
        Ok(Self {
            http,
            chat_url: RequestUrl(format!("{base}/chat/completions{query}")),
            models_url: RequestUrl(format!("{base}/models{query}")),
            props_url: RequestUrl(format!("{root}/props{query}")),
            credentials,
            config,
        })
    }

    /// The configuration the client was built from, its base URL without credentials.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends `request` with the configured timeout. See [`Self::chat_with_timeout`].
    pub async fn chat(&self, request: &ChatRequest) -> Result<Completion, ChatError> {
        self.chat_with_timeout(request, self.config.request_timeout)
            .await
    }

    /// Sends `request`, giving each attempt at most `timeout`. Retries 429, 5xx and failed
    /// connections as [`ClientConfig::retry`] says (a server's `Retry-After` replaces the
    /// computed wait); returns a context overflow at once, never retried; does not retry a
    /// timeout or a body over the size limit.
    pub async fn chat_with_timeout(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<Completion, ChatError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| ChatError::Config(format!("request does not serialise: {e}")))?;
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        let waiting_nanos = AtomicU64::new(0);
        let wait = |d: Duration| {
            waiting_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        };
        let attempt = || async {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(
                url = %redact_url(&self.chat_url.0),
                attempt,
                messages = request.messages.len(),
                bytes = body.len(),
                "chat request"
            );
            let sent = Instant::now();
            let outcome = self.attempt(&body, timeout, attempt).await;
            wait(sent.elapsed());
            outcome
        };
        let max_retry_after = self.config.max_retry_after;
        let (response, body) = attempt
            .retry(self.config.retry)
            .when(|f: &Failed| f.error.retry_may_help() && !matches!(f.error, ChatError::Timeout { .. }))
            .adjust(|f, computed| {
                let delay = wait_before_retry(computed, f.retry_after, max_retry_after);
                if delay.is_none() && computed.is_some() {
                    tracing::warn!(error = %f.error, "server asks to wait longer than the client allows");
                }
                delay
            })
            .notify(|f, delay| {
                tracing::warn!(error = %f.error, delay_ms = delay.as_millis() as u64, "retrying chat request");
                wait(delay);
            })
            .await
            .map_err(|f| f.error)?;
        let completion = Completion {
            response,
            body,
            attempts: attempts.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            waiting: Duration::from_nanos(waiting_nanos.load(Ordering::Relaxed)),
        };
        tracing::debug!(
            attempts = completion.attempts,
            elapsed_ms = completion.elapsed.as_millis() as u64,
            usage = ?completion.usage(),
            "chat reply"
        );
        Ok(completion)
    }

    /// One POST of the serialised request, its answer read (under the size limit) and parsed.
    async fn attempt(
        &self,
        body: &[u8],
        timeout: Duration,
        attempt: u32,
    ) -> Result<(ChatResponse, Value), Failed> {
        let fail = |error| Failed {
            error,
            retry_after: None,
        };
        let req = self
            .http
            .post(&self.chat_url.0)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        let (status, headers, text) = match self.send(req, &self.chat_url.0).await {
            Ok(answer) => answer,
            Err(ChatError::Timeout { .. }) => {
                tracing::warn!(attempt, ?timeout, "chat request timed out");
                return Err(fail(ChatError::Timeout {
                    timeout,
                    attempts: attempt,
                }));
            }
            Err(ChatError::Unreachable {
                endpoint, reason, ..
            }) => {
                return Err(fail(ChatError::Unreachable {
                    endpoint,
                    attempts: attempt,
                    reason,
                }));
            }
            Err(other) => return Err(fail(other)),
        };
        if status.is_success() {
            let malformed = |e: serde_json::Error| {
                fail(ChatError::Malformed {
                    endpoint: redact_url(&self.chat_url.0),
                    reason: format!("{e}; body starts {:?}", excerpt(&text)),
                })
            };
            let body: Value = serde_json::from_str(&text).map_err(malformed)?;
            let response = ChatResponse::deserialize(&body).map_err(malformed)?;
            return Ok((response, body));
        }
        let code = status.as_u16();
        if let Some(overflow) = recognise_overflow(code, &text) {
            tracing::warn!(%overflow, "context overflow");
            return Err(fail(ChatError::ContextOverflow(overflow)));
        }
        let (kind, message) = error_message(&text);
        let retry_after = retry_after(&headers);
        let error = if status == StatusCode::TOO_MANY_REQUESTS {
            ChatError::RateLimited {
                attempts: attempt,
                retry_after,
                message,
            }
        } else if status.is_server_error() {
            ChatError::Server {
                status: code,
                attempts: attempt,
                message,
            }
        } else {
            ChatError::Refused {
                status: code,
                kind,
                message,
            }
        };
        Err(Failed { error, retry_after })
    }

    /// Sends `req` (to `url`) with the client's authentication, and reads the answer under the
    /// size limit: its status, headers and body (as text, invalid UTF-8 replaced). Errors are
    /// [`ChatError::Timeout`], [`ChatError::Unreachable`] (one attempt) or
    /// [`ChatError::TooLarge`].
    async fn send(
        &self,
        mut req: RequestBuilder,
        url: &str,
    ) -> Result<(StatusCode, HeaderMap, String), ChatError> {
        if let Some(key) = &self.config.api_key {
            req = req.header(AUTHORIZATION, bearer(key));
        } else if let Some(credentials) = &self.credentials {
            let (user, password) = credentials.expose();
            req = req.basic_auth(user, password);
        }
        let url = redact_url(url);
        let url = url.as_str();
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                ChatError::Timeout {
                    timeout: self.config.request_timeout,
                    attempts: 1,
                }
            } else {
                ChatError::Unreachable {
                    endpoint: url.to_owned(),
                    attempts: 1,
                    reason: error_chain(&e.without_url()),
                }
            }
        };
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let limit = self.config.max_body_bytes;
        let bytes = read_capped(resp, limit).await.map_err(|e| match e {
            ReadError::Http(e) => fail(e),
            ReadError::TooLarge => {
                tracing::warn!(url, limit, "response body over the limit; refused");
                ChatError::TooLarge {
                    endpoint: url.to_owned(),
                    limit,
                }
            }
        })?;
        Ok((
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// `GET {base}/models`, as JSON. Sent once, with no retries (a failure falls back to the
    /// profile's window).
    pub async fn models(&self) -> Result<Value, ChatError> {
        let text = self.get_text(&self.models_url.0).await?;
        parse_json(&self.models_url.0, &text)
    }

    /// `GET {root}/props` (llama.cpp only), as JSON. Sent once, with no retries.
    pub async fn props(&self) -> Result<Value, ChatError> {
        let text = self.get_text(&self.props_url.0).await?;
        parse_json(&self.props_url.0, &text)
    }

    /// The window the endpoint states for `model`, read by the [`provider`](crate::provider)
    /// parsers: llama.cpp's `/props` first (the per-slot window it enforces), then `/v1/models`
    /// (vLLM's `max_model_len`, Anthropic's `max_input_tokens`, llama.cpp's `meta.n_ctx`, then its
    /// `meta.n_ctx_train`). `Ok(None)` when neither says; an error only when `/v1/models` itself
    /// cannot be fetched.
    pub async fn window(&self, model: Option<&str>) -> Result<Option<EndpointWindow>, ChatError> {
        if let Ok(props) = self.get_text(&self.props_url.0).await
            && let Ok(window) = window_from_props(&props)
        {
            return Ok(Some(EndpointWindow::new(window, slots_from_props(&props))));
        }
        let models = self.get_text(&self.models_url.0).await?;
        match window_from_models(&models, model) {
            Ok(window) => Ok(Some(EndpointWindow::new(window, None))),
            Err(e) => {
                tracing::debug!(error = %e, "the endpoint states no window");
                Ok(None)
            }
        }
    }

    /// `GET url` with the key, once; the body of a success status (under the size limit).
    async fn get_text(&self, url: &str) -> Result<String, ChatError> {
        let (status, _, text) = self.send(self.http.get(url), url).await?;
        if !status.is_success() {
            let (kind, message) = error_message(&text);
            return Err(ChatError::Refused {
                status: status.as_u16(),
                kind,
                message,
            });
        }
        Ok(text)
    }
}

/// A window read from an endpoint, with the slot count when llama.cpp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EndpointWindow {
    /// The window in tokens.
    pub tokens: u64,
    /// Where it was read, which says how far to trust it (see [`WindowSource`]).
    pub source: WindowSource,
    /// Slots serving requests concurrently (llama.cpp `total_slots`), when known: K concurrent
    /// sessions need K slots, or they share one cache and fail with HTTP 500.
    pub slots: Option<u64>,
}

impl EndpointWindow {
    fn new(window: Window, slots: Option<u64>) -> Self {
        Self {
            tokens: window.tokens,
            source: window.source,
            slots,
        }
    }

    /// The window with its source, as [`crate::provider::resolve_window`] ranks it.
    pub fn window(&self) -> Window {
        Window {
            tokens: self.tokens,
            source: self.source,
        }
    }
}

fn parse_json(url: &str, text: &str) -> Result<Value, ChatError> {
    serde_json::from_str(text).map_err(|e| ChatError::Malformed {
        endpoint: redact_url(url),
        reason: printable(&e.to_string()),
    })
}

/// The `Authorization` header, marked sensitive so that the HTTP stack never prints it.
fn bearer(key: &ApiKey) -> HeaderValue {
    // ApiKey::new admits only visible ASCII, which is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    value.set_sensitive(true);
    value
}

/// The error's kind (`type`, or a string `code`) and message from an error body; the body itself
/// (shortened) when it is not JSON.
fn error_message(body: &str) -> (Option<String>, String) {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = match json.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ => &json,
    };
    let kind = err
        .get("type")
        .or_else(|| err.get("code").filter(|c| c.is_string()))
        .and_then(Value::as_str)
        .map(printable);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| json.get("error").and_then(Value::as_str))
        .map(printable)
        .unwrap_or_else(|| printable(excerpt(body)));
    (kind, message)
}

/// At most the first 300 bytes of a body, cut at a character boundary.
fn excerpt(text: &str) -> &str {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An error and its causes, joined: reqwest's own message alone ("error sending request") hides
/// the reason (connection refused, DNS, TLS).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_sdk_convention_and_props_sit_at_the_root() {
        let c = ChatClient::new(ClientConfig::new("http://127.0.0.1:8080/v1/")).unwrap();
        assert_eq!(c.chat_url.0, "http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(c.models_url.0, "http://127.0.0.1:8080/v1/models");
        assert_eq!(c.props_url.0, "http://127.0.0.1:8080/props");
    }

    #[test]
    fn a_base_url_that_is_not_http_is_a_config_error() {
        for bad in ["127.0.0.1:8080", "ftp://x/v1", "not a url"] {
            assert!(
                matches!(
                    ChatClient::new(ClientConfig::new(bad)),
                    Err(ChatError::Config(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_client_debug_output_redacts_the_key() {
        let mut config = ClientConfig::new("https://api.example.invalid/v1");
        config.api_key = Some(ApiKey::new("sk-top-secret").unwrap());
        let c = ChatClient::new(config).unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains("top-secret"), "{shown}");
        assert!(bearer(c.config().api_key.as_ref().unwrap()).is_sensitive());
    }

    #[test]
    fn error_messages_come_from_either_error_shape() {
        assert_eq!(
            error_message(r#"{"error":{"message":"slow down","type":"rate_limit"}}"#),
            (Some("rate_limit".into()), "slow down".into())
        );
        assert_eq!(
            error_message(r#"{"object":"error","message":"bad","type":"BadRequestError"}"#),
            (Some("BadRequestError".into()), "bad".into())
        );
        assert_eq!(
            error_message("<html>502</html>"),
            (None, "<html>502</html>".into())
        );
    }
}

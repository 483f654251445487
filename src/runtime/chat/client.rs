//! [`ChatClient`]: sends Chat Completions requests to one OpenAI-compatible endpoint, with a
//! timeout on every request, retries of transient failures, typed errors, and the endpoint's
//! window.
//!
//! The base URL is the API root that OpenAI's own SDK takes, with the version:
//! `http://127.0.0.1:8080/v1`, `https://api.openai.com/v1`, `https://openrouter.ai/api/v1`.
//! Requests go to `{base}/chat/completions` and `{base}/models`; llama.cpp's `/props` lives at
//! the server root, so it is `{base without its /v1}/props`.

use std::sync::Once;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ChatError, recognise_overflow};
use super::retry::{RetryPolicy, retry_after};
use super::secret::ApiKey;
use super::wire::{ChatRequest, ChatResponse, UsageReading};
use crate::provider::{
    Window, WindowSource, slots_from_props, window_from_models, window_from_props,
};

/// How to reach an endpoint and how patient to be with it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API root with its version, e.g. `http://127.0.0.1:8080/v1` (see the module doc).
    pub base_url: String,
    /// The bearer token, when the endpoint needs one; redacted in `Debug`.
    pub api_key: Option<ApiKey>,
    /// The longest a request may take, from connecting to the last byte of the body. Generation
    /// is slow on small machines: a 200-token summary took 7-13 s on 2 shared cores.
    pub request_timeout: Duration,
    /// The longest a connection may take to open, so an unreachable host fails fast.
    pub connect_timeout: Duration,
    /// When to retry.
    pub retry: RetryPolicy,
}

impl ClientConfig {
    /// A configuration for `base_url` with no key, a 120 s request timeout, a 10 s connect
    /// timeout and the default [`RetryPolicy`].
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
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
    /// What the client was built from (its key is redacted in `Debug`).
    config: ClientConfig,
    /// `{base}/chat/completions`.
    chat_url: String,
    /// `{base}/models`.
    models_url: String,
    /// `{root}/props` (llama.cpp).
    props_url: String,
}

/// rustls needs a process-wide crypto provider; reqwest is built without one so that ring, not
/// aws-lc-rs, is used. Installing fails harmlessly if the embedding program installed one.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl ChatClient {
    /// Builds a client. Fails on a base URL that is not http(s).
    pub fn new(config: ClientConfig) -> Result<Self, ChatError> {
        install_crypto_provider();
        let base = config.base_url.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| ChatError::Config(format!("base URL {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChatError::Config(format!(
                "base URL {base:?} is not http or https"
            )));
        }
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
            chat_url: format!("{base}/chat/completions"),
            models_url: format!("{base}/models"),
            props_url: format!("{root}/props"),
            config,
        })
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends `request` with the configured timeout. See [`Self::chat_with_timeout`].
    pub async fn chat(&self, request: &ChatRequest) -> Result<Completion, ChatError> {
        self.chat_with_timeout(request, self.config.request_timeout)
            .await
    }

    /// Sends `request`, giving each attempt at most `timeout`. Retries 429, 5xx and failed
    /// connections as the [`RetryPolicy`] says; returns a context overflow at once, never
    /// retried; does not retry a timeout.
    pub async fn chat_with_timeout(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<Completion, ChatError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| ChatError::Config(format!("request does not serialise: {e}")))?;
        let started = Instant::now();
        let max = self.config.retry.max_attempts.max(1);
        let mut attempt = 0;
        let mut waiting = Duration::ZERO;
        loop {
            attempt += 1;
            tracing::debug!(
                url = %self.chat_url,
                attempt,
                messages = request.messages.len(),
                bytes = body.len(),
                "chat request"
            );
            let sent = Instant::now();
            let outcome = self.send(&body, timeout).await;
            waiting += sent.elapsed();
            let (error, retry_after) = match outcome {
                Ok((status, _, text)) if status.is_success() => {
                    let malformed = |e: serde_json::Error| ChatError::Malformed {
                        endpoint: self.chat_url.clone(),
                        reason: format!("{e}; body starts {:?}", excerpt(&text)),
                    };
                    let body: Value = serde_json::from_str(&text).map_err(malformed)?;
                    let response = ChatResponse::deserialize(&body).map_err(malformed)?;
                    let completion = Completion {
                        response,
                        body,
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        waiting,
                    };
                    tracing::debug!(
                        attempt,
                        elapsed_ms = completion.elapsed.as_millis() as u64,
                        usage = ?completion.usage(),
                        "chat reply"
                    );
                    return Ok(completion);
                }
                Ok((status, headers, text)) => {
                    let code = status.as_u16();
                    if let Some(overflow) = recognise_overflow(code, &text) {
                        tracing::warn!(%overflow, "context overflow");
                        return Err(ChatError::ContextOverflow(overflow));
                    }
                    let (kind, message) = error_message(&text);
                    let wait = retry_after(&headers);
                    let error = if status == StatusCode::TOO_MANY_REQUESTS {
                        ChatError::RateLimited {
                            attempts: attempt,
                            retry_after: wait,
                            message,
                        }
                    } else if status.is_server_error() {
                        ChatError::Server {
                            status: code,
                            attempts: attempt,
                            message,
                        }
                    } else {
                        return Err(ChatError::Refused {
                            status: code,
                            kind,
                            message,
                        });
                    };
                    (error, wait)
                }
                Err(e) if e.is_timeout() => {
                    tracing::warn!(attempt, ?timeout, "chat request timed out");
                    return Err(ChatError::Timeout {
                        timeout,
                        attempts: attempt,
                    });
                }
                Err(e) => (
                    ChatError::Unreachable {
                        endpoint: self.chat_url.clone(),
                        attempts: attempt,
                        reason: error_chain(&e),
                    },
                    None,
                ),
            };
            if attempt >= max {
                return Err(error);
            }
            let Some(delay) = self.config.retry.delay(attempt, retry_after) else {
                tracing::warn!(%error, "server asks to wait longer than the retry policy allows");
                return Err(error);
            };
            tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "retrying chat request");
            tokio::time::sleep(delay).await;
            waiting += delay;
        }
    }

    /// One POST of the serialised request; the status, headers and body text.
    async fn send(
        &self,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, String), reqwest::Error> {
        let mut req = self
            .http
            .post(&self.chat_url)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &self.config.api_key {
            req = req.header(AUTHORIZATION, bearer(key));
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok((status, headers, text))
    }

    /// `GET {base}/models`, as JSON. Sent once, with no retries (a failure falls back to the
    /// profile's window).
    pub async fn models(&self) -> Result<Value, ChatError> {
        let text = self.get_text(&self.models_url).await?;
        parse_json(&self.models_url, &text)
    }

    /// `GET {root}/props` (llama.cpp only), as JSON. Sent once, with no retries.
    pub async fn props(&self) -> Result<Value, ChatError> {
        let text = self.get_text(&self.props_url).await?;
        parse_json(&self.props_url, &text)
    }

    /// The window the endpoint states for `model`, read by the [`provider`](crate::provider)
    /// parsers: llama.cpp's `/props` first (the per-slot window it enforces), then `/v1/models`
    /// (vLLM's `max_model_len`, Anthropic's `max_input_tokens`, llama.cpp's `meta.n_ctx`, then its
    /// `meta.n_ctx_train`). `Ok(None)` when neither says; an error only when `/v1/models` itself
    /// cannot be fetched.
    pub async fn window(&self, model: Option<&str>) -> Result<Option<EndpointWindow>, ChatError> {
        if let Ok(props) = self.get_text(&self.props_url).await
            && let Ok(window) = window_from_props(&props)
        {
            return Ok(Some(EndpointWindow::new(window, slots_from_props(&props))));
        }
        let models = self.get_text(&self.models_url).await?;
        match window_from_models(&models, model) {
            Ok(window) => Ok(Some(EndpointWindow::new(window, None))),
            Err(e) => {
                tracing::debug!(error = %e, "the endpoint states no window");
                Ok(None)
            }
        }
    }

    /// `GET url` with the key, once; the body of a success status.
    async fn get_text(&self, url: &str) -> Result<String, ChatError> {
        let mut req = self.http.get(url);
        if let Some(key) = &self.config.api_key {
            req = req.header(AUTHORIZATION, bearer(key));
        }
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
                    reason: error_chain(&e),
                }
            }
        };
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        let text = resp.text().await.map_err(fail)?;
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
        endpoint: url.to_owned(),
        reason: e.to_string(),
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
        .map(str::to_owned);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| json.get("error").and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| excerpt(body).to_owned());
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
        assert_eq!(c.chat_url, "http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(c.models_url, "http://127.0.0.1:8080/v1/models");
        assert_eq!(c.props_url, "http://127.0.0.1:8080/props");
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

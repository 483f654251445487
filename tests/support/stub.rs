//! A loopback stub of an OpenAI-compatible server, for fast tests of the chat client.
//!
//! It binds 127.0.0.1 on a free port, speaks the real Chat Completions wire format (answers
//! shaped like llama-server's, `timings` included), replays a usage series, records every request
//! it receives (headers and JSON body) so that tests can assert on what was sent, and produces
//! each fault on request ([`Fault`]). It stops when dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the stub does with one chat request. Requests beyond the script get [`Fault::Reply`].
#[derive(Debug, Clone)]
pub enum Fault {
    /// A normal reply carrying the next figures of the usage series.
    Reply,
    /// A normal reply with no `usage` object and no `timings`: no figures at all.
    NoUsage,
    /// A normal reply whose only figures are llama.cpp's `timings` (no `usage` object).
    TimingsOnly,
    /// A normal reply with `prompt_tokens: 0` and no `timings` (the Ollama cache-hit
    /// misreport).
    ZeroPrompt,
    /// HTTP 400 in llama.cpp's `exceed_context_size_error` shape.
    OverflowLlamaCpp {
        /// `n_prompt_tokens` to report.
        prompt: u64,
        /// `n_ctx` to report.
        window: u64,
    },
    /// HTTP 400 in vLLM's flat `ErrorResponse` shape, "maximum context length" message.
    OverflowVllm {
        /// Tokens in the messages.
        prompt: u64,
        /// `max_model_len`.
        window: u64,
    },
    /// An error status with an OpenAI-style error body, and optionally these headers
    /// (`retry-after`, `retry-after-ms`).
    Status {
        /// The status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(&'static str, String)>,
    },
    /// A normal reply, sent only after this delay.
    Slow(Duration),
    /// A 200 whose body is not a chat completion.
    Garbage,
    /// A 200 whose body never ends (64 KiB chunks of spaces, as fast as the client reads).
    Endless,
    /// An error status whose OpenAI-style body carries this message (control characters
    /// included, for terminal-safety tests).
    Error {
        /// The status code.
        status: u16,
        /// The error's message.
        message: String,
    },
}

/// A body that never ends: 64 KiB chunks of spaces, forever.
fn endless() -> Response {
    let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
    let stream =
        futures_util::stream::repeat_with(move || Ok::<_, std::convert::Infallible>(chunk.clone()));
    (StatusCode::OK, axum::body::Body::from_stream(stream)).into_response()
}

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path (`/v1/chat/completions`, ...).
    pub path: String,
    /// The `Authorization` header, when sent.
    pub authorization: Option<String>,
    /// The JSON body (`Null` for GETs).
    pub body: Value,
}

/// The window endpoints' answers; `None` makes the endpoint answer 404.
#[derive(Debug, Clone, Default)]
pub struct StubWindow {
    /// `/props` `default_generation_settings.n_ctx` and `total_slots`.
    pub props: Option<(u64, u64)>,
    /// `/v1/models` `data[0].max_model_len` (vLLM).
    pub max_model_len: Option<u64>,
    /// Both endpoints answer 503, as a server still starting does.
    pub unavailable: bool,
    /// Both endpoints answer 200 with a body that never ends.
    pub endless: bool,
}

/// The stub's state, shared between the test and the handlers.
#[derive(Default)]
struct Inner {
    /// Faults for the next chat requests, in order.
    script: VecDeque<Fault>,
    /// The usage series normal replies replay.
    usage: Vec<(u64, u64)>,
    /// Normal replies sent so far: the position in the usage series.
    replies: usize,
    /// Every request received, for assertions.
    received: Vec<Received>,
    /// What the window endpoints answer.
    window: StubWindow,
    /// The assistant's text in normal replies, when set.
    reply_text: Option<String>,
    /// Chat requests received so far, for tests that wait for one.
    chats: Option<tokio::sync::watch::Sender<usize>>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running stub; stops when dropped.
pub struct Stub {
    /// Where it listens (127.0.0.1, a free port).
    addr: SocketAddr,
    /// Its state.
    inner: Shared,
    /// The server task, aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    /// Starts a stub on 127.0.0.1, on a free port, in the current tokio runtime.
    pub async fn start() -> Stub {
        let inner: Shared = Arc::default();
        inner.lock().unwrap().chats = Some(tokio::sync::watch::channel(0).0);
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/props", get(props))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Stub { addr, inner, task }
    }

    /// The base URL a `ClientConfig` takes: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues faults for the next requests, in order.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().script.extend(faults);
    }

    /// The `(prompt_tokens, completion_tokens)` series replies replay, in order (the last one
    /// repeats). Without one, prompt tokens are a quarter of the request's characters.
    pub fn usage_series(&self, series: Vec<(u64, u64)>) {
        self.inner.lock().unwrap().usage = series;
    }

    /// What `/props` and `/v1/models` answer.
    pub fn window(&self, window: StubWindow) {
        self.inner.lock().unwrap().window = window;
    }

    /// The assistant's text in normal replies (default: "stub reply N").
    pub fn reply_text(&self, text: &str) {
        self.inner.lock().unwrap().reply_text = Some(text.to_owned());
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` chat requests have arrived (their answers may still be under
    /// way).
    pub async fn wait_for_chat_requests(&self, n: usize) {
        let mut rx = self
            .inner
            .lock()
            .unwrap()
            .chats
            .as_ref()
            .unwrap()
            .subscribe();
        rx.wait_for(|count| *count >= n).await.unwrap();
    }

    /// The chat requests received so far.
    pub fn chat_requests(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .collect()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(inner: &Shared, path: &str, headers: &HeaderMap, body: Value) {
    inner.lock().unwrap().received.push(Received {
        path: path.to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    });
}

async fn chat(State(inner): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&inner, "/v1/chat/completions", &headers, body.clone());
    if let Some(chats) = &inner.lock().unwrap().chats {
        chats.send_modify(|n| *n += 1);
    }
    let fault = inner
        .lock()
        .unwrap()
        .script
        .pop_front()
        .unwrap_or(Fault::Reply);
    match fault {
        Fault::Reply => reply(&inner, &body, Usage::Series),
        Fault::NoUsage => reply(&inner, &body, Usage::None),
        Fault::TimingsOnly => reply(&inner, &body, Usage::TimingsOnly),
        Fault::ZeroPrompt => reply(&inner, &body, Usage::ZeroPrompt),
        Fault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            reply(&inner, &body, Usage::Series)
        }
        Fault::OverflowLlamaCpp { prompt, window } => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "code": 400,
                "message": format!("request ({prompt} tokens) exceeds the available context size ({window} tokens), try increasing it"),
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt,
                "n_ctx": window,
            }})),
        )
            .into_response(),
        Fault::OverflowVllm { prompt, window } => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "object": "error",
                "message": format!("This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt} in the messages, 100 in the completion). Please reduce the length of the messages or completion.", prompt + 100),
                "type": "BadRequestError",
                "param": null,
                "code": 400,
            })),
        )
            .into_response(),
        Fault::Status { status, headers } => {
            let status = StatusCode::from_u16(status).unwrap();
            let mut resp = (
                status,
                Json(json!({"error": {
                    "code": status.as_u16(),
                    "message": format!("stub fault {}", status.as_u16()),
                    "type": if status.as_u16() == 429 { "rate_limit_error" } else { "server_error" },
                }})),
            )
                .into_response();
            for (name, value) in headers {
                resp.headers_mut().insert(name, value.parse().unwrap());
            }
            resp
        }
        Fault::Garbage => (StatusCode::OK, "<html>not json</html>").into_response(),
        Fault::Endless => endless(),
        Fault::Error { status, message } => (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"code": status, "message": message, "type": "server_error"}})),
        )
            .into_response(),
    }
}

/// The usage a normal reply carries.
enum Usage {
    /// The next figures of the series.
    Series,
    /// No usage object and no timings.
    None,
    /// Timings, but no usage object.
    TimingsOnly,
    /// `prompt_tokens: 0`.
    ZeroPrompt,
}

fn reply(inner: &Shared, request: &Value, usage: Usage) -> Response {
    let mut inner = inner.lock().unwrap();
    let n = inner.replies;
    inner.replies += 1;
    let chars = request.to_string().len() as u64;
    let (prompt, completion) = inner
        .usage
        .get(n)
        .or(inner.usage.last())
        .copied()
        .unwrap_or((chars / 4, 5));
    let text = inner
        .reply_text
        .clone()
        .unwrap_or_else(|| format!("stub reply {n}"));
    let mut body = json!({
        "id": format!("chatcmpl-stub-{n}"),
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": request.get("model").cloned().unwrap_or(json!("stub")),
        "system_fingerprint": "stub",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "timings": {"cache_n": 0, "prompt_n": prompt, "prompt_ms": 1.0, "predicted_n": completion, "predicted_ms": 1.0},
    });
    match usage {
        Usage::Series => {
            body["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        }
        Usage::ZeroPrompt => {
            // Ollama's shape: no timings to read the real figure from.
            body.as_object_mut().unwrap().remove("timings");
            body["usage"] = json!({"prompt_tokens": 0, "completion_tokens": completion, "total_tokens": completion});
        }
        Usage::TimingsOnly => {}
        Usage::None => {
            body.as_object_mut().unwrap().remove("timings");
        }
    }
    (StatusCode::OK, Json(body)).into_response()
}

async fn models(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    record(&inner, "/v1/models", &headers, Value::Null);
    let window = inner.lock().unwrap().window.clone();
    if window.unavailable {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if window.endless {
        return endless();
    }
    match window.max_model_len {
        Some(len) => Json(json!({"object": "list", "data": [{"id": "stub-model", "object": "model", "max_model_len": len}]})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn props(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    record(&inner, "/props", &headers, Value::Null);
    let window = inner.lock().unwrap().window.clone();
    if window.unavailable {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if window.endless {
        return endless();
    }
    match window.props {
        Some((n_ctx, slots)) => {
            Json(json!({"default_generation_settings": {"n_ctx": n_ctx}, "total_slots": slots}))
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

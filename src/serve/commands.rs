//! The command queue's endpoints: an orchestrator takes the runtime's commands by long-poll and
//! posts each one's result back.
//!
//! - `POST /v1/runtime/commands/poll` takes up to `max` commands under a lease of `lease_ms`,
//!   waiting up to `wait_ms` for the first one.
//! - `POST /v1/runtime/commands/{id}/result` answers one: 204, or 404 (unknown, or its call
//!   ended), 409 (its lease went to another consumer), 400 (a result that does not fit the
//!   command's operation: the command stays pending).
//!
//! - `GET /v1/runtime/commands/stream?lease_ms=&max_outstanding=` sends the commands as
//!   server-sent events (`event: command`, `id:` the command's id, `data:` its JSON), each
//!   leased to the stream as it is sent, never more than `max_outstanding` unanswered at once,
//!   with a comment line every 15 s while none comes.
//!
//! A long-poll never outlives the server's request deadline: its wait is cut to one second
//! below the deadline (and to at most [`MAX_WAIT_MS`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::guard::Deadline;
use super::queue::{AnswerError, Command, CommandOp, CommandQueue, CommandResult, ErrorKind};
use super::sse;

/// The longest a long-poll waits, in milliseconds.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The most commands one poll takes.
pub const MAX_COMMANDS: usize = 256;
/// The shortest lease, in milliseconds: shorter ones would expire before a consumer could act.
pub const MIN_LEASE_MS: u64 = 100;
/// The longest lease, in milliseconds (one hour).
pub const MAX_LEASE_MS: u64 = 3_600_000;

/// A long-poll for commands.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The most commands to take (1 to 256; default 16).
    #[serde(default = "default_max")]
    #[schema(minimum = 1, maximum = 256, default = 16)]
    pub max: usize,
    /// How long to wait for the first command, in milliseconds (0 to 60,000; default 20,000),
    /// cut to one second below the server's request timeout.
    #[serde(default = "default_wait_ms")]
    #[schema(minimum = 0, maximum = 60000, default = 20000)]
    pub wait_ms: u64,
    /// How long the taken commands are leased to this consumer, in milliseconds (100 to
    /// 3,600,000; default 30,000): unanswered by then, a command is offered again.
    #[serde(default = "default_lease_ms")]
    #[schema(minimum = 100, maximum = 3600000, default = 30000)]
    pub lease_ms: u64,
}

fn default_max() -> usize {
    16
}
fn default_wait_ms() -> u64 {
    20_000
}
fn default_lease_ms() -> u64 {
    30_000
}

impl PollRequest {
    /// Checks the bounds; the message says which one is broken.
    fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_COMMANDS).contains(&self.max) {
            return Err(ApiError::bad_request(format!(
                "max must be between 1 and {MAX_COMMANDS}"
            )));
        }
        if self.wait_ms > MAX_WAIT_MS {
            return Err(ApiError::bad_request(format!(
                "wait_ms must be at most {MAX_WAIT_MS}"
            )));
        }
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&self.lease_ms) {
            return Err(ApiError::bad_request(format!(
                "lease_ms must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}"
            )));
        }
        Ok(())
    }
}

/// The commands a poll took (none when `wait_ms` passed first).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    /// Oldest first; each is leased to this consumer until its `lease_expires_ms`.
    pub commands: Vec<Command>,
}

/// Takes up to `max` commands under a lease, waiting up to `wait_ms` for the first.
#[utoipa::path(
    post,
    path = "/v1/runtime/commands/poll",
    tag = "runtime",
    request_body = PollRequest,
    responses(
        (status = 200, description = "The commands taken, oldest first; empty when none came in time", body = PollResponse),
        (status = 400, description = "A malformed body or a value out of range", body = ErrorBody),
        (status = 413, description = "A body too large", body = ErrorBody)
    )
)]
async fn poll(
    queue: web::Data<Arc<CommandQueue>>,
    deadline: Option<web::Data<Deadline>>,
    body: web::Json<PollRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    req.validate()?;
    let limit = deadline.map_or(Duration::from_secs(30), |d| d.0);
    let wait = Duration::from_millis(req.wait_ms).min(limit.saturating_sub(Duration::from_secs(1)));
    let commands = queue
        .poll(req.max, wait, Duration::from_millis(req.lease_ms))
        .await;
    Ok(HttpResponse::Ok().json(PollResponse { commands }))
}

/// Answers command `id` with its result.
#[utoipa::path(
    post,
    path = "/v1/runtime/commands/{id}/result",
    tag = "runtime",
    params(("id" = u64, Path, description = "The command's id")),
    request_body = CommandResult,
    responses(
        (status = 204, description = "Taken: the call it answers returns"),
        (status = 400, description = "A malformed body, or a result that does not fit the command's operation (the command stays pending)", body = ErrorBody),
        (status = 404, description = "No such command waits: unknown, already answered, or its call ended (timed out or cancelled)", body = ErrorBody),
        (status = 409, description = "The lease expired and the command went to another consumer", body = ErrorBody),
        (status = 413, description = "A body too large", body = ErrorBody)
    )
)]
async fn result(
    queue: web::Data<Arc<CommandQueue>>,
    id: web::Path<u64>,
    body: web::Json<CommandResult>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    match queue.answer(id, body.into_inner()) {
        Ok(()) => Ok(HttpResponse::NoContent().finish()),
        Err(e @ AnswerError::Unknown(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ AnswerError::LeaseMoved(_)) => Err(ApiError::conflict(e.to_string())),
        Err(e @ AnswerError::BadShape(_)) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// How often an idle command stream sends a comment line, so that proxies and clients see it
/// alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The lease of a command stream's commands.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// How long each command sent is leased to this stream, in milliseconds (100 to
    /// 3,600,000; default 30,000).
    #[serde(default = "default_lease_ms")]
    #[param(minimum = 100, maximum = 3600000, default = 30000)]
    pub lease_ms: u64,
    /// The most commands this stream holds at once, sent and neither answered nor expired (1 to
    /// 256; default 16): a reader that stalls holds at most these, and the rest go to other
    /// consumers.
    #[serde(default = "default_max_outstanding")]
    #[param(minimum = 1, maximum = 256, default = 16)]
    pub max_outstanding: usize,
}

fn default_max_outstanding() -> usize {
    16
}

/// What a command stream keeps between frames.
struct StreamState {
    /// Where the commands come from.
    queue: Arc<CommandQueue>,
    /// The commands this stream sent that are still leased to it: id and lease number.
    held: Vec<(u64, u64)>,
    /// Marked when a command leaves the queue, so that a full stream looks again.
    settled: tokio::sync::watch::Receiver<()>,
}

/// The next frame of a command stream: the next command once the stream holds fewer than
/// `max_outstanding`, or a keep-alive comment after [`KEEP_ALIVE`] without one.
async fn next_frame(s: &mut StreamState, lease: Duration, max_outstanding: usize) -> Bytes {
    let keep_alive_at = tokio::time::Instant::now() + KEEP_ALIVE;
    loop {
        let now = tokio::time::Instant::now();
        let earliest_end = s.queue.still_held(&mut s.held, now);
        if s.held.len() < max_outstanding {
            let wait = keep_alive_at.saturating_duration_since(now);
            let taken = s.queue.poll(1, wait, lease).await;
            return match taken.first() {
                Some(c) => {
                    s.held.push((c.id, c.lease.unwrap_or_default()));
                    let data = serde_json::to_string(c).expect("a command serialises");
                    sse::event(c.id, "command", &data)
                }
                None => sse::comment("keep-alive"),
            };
        }
        if now >= keep_alive_at {
            return sse::comment("keep-alive");
        }
        // Full: wait until a held command is answered or withdrawn, or its lease ends.
        let wake = earliest_end.map_or(keep_alive_at, |end| end.min(keep_alive_at));
        let _ = tokio::time::timeout_at(wake, s.settled.changed()).await;
    }
}

/// The commands as server-sent events, each leased to this stream as it is sent.
#[utoipa::path(
    get,
    path = "/v1/runtime/commands/stream",
    tag = "runtime",
    params(StreamQuery),
    responses(
        (status = 200, description = "`text/event-stream`: `event: command`, `id:` the command's id, `data:` the Command JSON; a comment line every 15 s while none comes", content_type = "text/event-stream", body = Command),
        (status = 400, description = "A lease out of range", body = ErrorBody)
    )
)]
async fn stream(
    queue: web::Data<Arc<CommandQueue>>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let lease_ms = query.lease_ms;
    if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(ApiError::bad_request(format!(
            "lease_ms must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}"
        )));
    }
    let max_outstanding = query.max_outstanding;
    if !(1..=MAX_COMMANDS).contains(&max_outstanding) {
        return Err(ApiError::bad_request(format!(
            "max_outstanding must be between 1 and {MAX_COMMANDS}"
        )));
    }
    // One command is taken each time the server is ready to write another frame (the stream is
    // polled for more), and only while the stream holds fewer than `max_outstanding`
    // unanswered: a stalled reader holds at most that many, whatever its buffers take.
    let queue = queue.get_ref().clone();
    let state = StreamState {
        settled: queue.settled(),
        queue,
        held: Vec::new(),
    };
    let lease = Duration::from_millis(lease_ms);
    let body = futures_util::stream::unfold(state, move |mut s| async move {
        let frame = next_frame(&mut s, lease, max_outstanding).await;
        Some((Ok::<_, Infallible>(frame), s))
    });
    Ok(HttpResponse::Ok()
        .content_type(sse::CONTENT_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The command queue's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(poll, stream, result),
    components(schemas(
        PollRequest,
        PollResponse,
        Command,
        CommandOp,
        CommandResult,
        super::queue::ResultError,
        ErrorKind
    ))
)]
pub struct CommandsApi;

/// Serves the command queue's endpoints over `queue`.
pub fn configure(cfg: &mut web::ServiceConfig, queue: Arc<CommandQueue>) {
    cfg.app_data(web::Data::new(queue))
        .route("/v1/runtime/commands/poll", web::post().to(poll))
        .route("/v1/runtime/commands/stream", web::get().to(stream))
        .route("/v1/runtime/commands/{id}/result", web::post().to(result));
}

//! `baton serve`: the supervisor over HTTP (actix-web), for orchestrators in any language.
//!
//! The contract is `docs/http.md`; the exact reference is the OpenAPI document that
//! [`openapi`] generates from the handlers.
//!
//! | file | what it is for |
//! | --- | --- |
//! | `mod.rs` | [`ServeConfig`], the app's parts, binding the server |
//! | `error.rs` | [`ApiError`](error::ApiError): every failure as a status and a typed JSON body |
//! | `guard.rs` | what every request passes: the bearer [`Token`], the deadline |
//! | `openapi.rs` | the OpenAPI 3 document, merged from each resource module's part |
//! | `fleet.rs` | starting the served supervisor: journal, stored agent types, recovery |
//! | `store.rs` | what a server keeps in the journal file across restarts: its agent types, the floor of the session ids it proposes |
//! | `agent_types.rs` | `/v1/agent-types` |
//! | `sessions.rs` | `/v1/sessions`: list, get, close, rotate |
//! | `readings.rs` | usage reports: `/v1/sessions/{id}/usage`, `/v1/usage` |
//! | `work_items.rs` | `/v1/work-items`: submit one or a batch, list, get, cancel |
//! | `queue.rs` | [`CommandQueue`](queue::CommandQueue): the runtime whose calls an orchestrator takes as commands |
//! | `commands.rs` | the command queue's endpoints: long-poll, the command stream, results |
//! | `webhook.rs` | [`WebhookRuntime`](webhook::WebhookRuntime): commands delivered as signed webhooks |
//! | `events.rs` | `GET /v1/events` (the journal's log, paged) and `GET /v1/events/stream` (SSE; on a cluster node, fed from the shared log) |
//! | `sse.rs` | server-sent events framing |
//! | `metrics.rs` | `GET /metrics` (Prometheus text) and [`MeteredRuntime`](metrics::MeteredRuntime) |
//! | `page.rs` | `GET /`: the live fleet page (`page/index.html`, embedded) |
//! | `cluster.rs` | `GET /v1/cluster/nodes`, and [`ClusterApi`](cluster::ClusterApi): what a cluster node's handlers share |
//! | `forward.rs` | [`Forwarder`](forward::Forwarder): a cluster node sends writes for sessions, and cancels of work items, that other nodes own to their owners |

pub mod agent_types;
pub mod cluster;
pub mod commands;
pub mod error;
pub mod events;
pub mod fleet;
pub mod forward;
pub mod guard;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod queue;
pub mod readings;
pub mod sessions;
pub mod sse;
pub mod store;
pub mod webhook;
pub mod work_items;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::supervisor::SupervisorHandle;
use guard::{Deadline, Token};

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (loopback by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The bearer token every request but `GET /` must carry.
    pub token: Token,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// A request whose response has not started by then is answered 503.
    pub request_timeout: Duration,
    /// HTTP worker threads (actix-web's); 0 means one per core.
    pub workers: usize,
}

impl ServeConfig {
    /// Loopback on port 7070, 1 MiB bodies, 30 s per request.
    pub fn new(token: Token) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            token,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            workers: 0,
        }
    }
}

/// What the handlers share: cloned into every worker's app.
#[derive(Clone)]
pub struct Parts {
    /// The fleet.
    pub supervisor: SupervisorHandle,
    /// Where agent types created over HTTP are kept (the journal file); `None` without one.
    pub store: Option<Arc<store::AgentTypeStore>>,
    /// The command queue the supervisor's runtime is, served under `/v1/runtime/commands`;
    /// `None` when commands go out by webhook.
    pub commands: Option<Arc<queue::CommandQueue>>,
    /// The fan-out of live events to the event streams: on a cluster node, one made with
    /// [`EventHub::cluster`](events::EventHub::cluster), so that they carry every node's events.
    pub events: events::EventHub,
    /// The fleet's metrics, served at `/metrics`.
    pub metrics: metrics::Metrics,
    /// On a node of a cluster (`baton serve --cluster`): submissions go to the shared pool, and
    /// `/v1/cluster/nodes` answers. `None` on a single host.
    pub cluster: Option<cluster::ClusterApi>,
}

/// Registers every route and the handlers' shared data.
fn configure(cfg: &mut web::ServiceConfig, parts: &Parts, services: Option<&cluster::Services>) {
    cfg.app_data(web::Data::new(parts.supervisor.clone()));
    openapi::configure(cfg);
    sessions::configure(cfg);
    readings::configure(cfg);
    agent_types::configure(cfg, parts.store.clone());
    work_items::configure(cfg);
    if let Some(queue) = &parts.commands {
        commands::configure(cfg, queue.clone());
    }
    events::configure(cfg, &parts.events);
    metrics::configure(cfg, &parts.metrics);
    page::configure(cfg);
    cluster::configure(cfg, parts.cluster.as_ref(), services);
}

/// Binds the server to `config.listen`: the returned [`actix_web::dev::Server`] runs when
/// awaited (or spawned) and is stopped through its handle. Returns the address actually bound.
pub fn bind(
    config: &ServeConfig,
    parts: Parts,
) -> std::io::Result<(SocketAddr, actix_web::dev::Server)> {
    serve(config, parts, Listen::Addr(config.listen))
}

/// Like [`bind`], on a listener already bound (`config.listen` is not used): a cluster node can
/// know its address, to advertise it, before it joins.
pub fn listen(
    config: &ServeConfig,
    parts: Parts,
    listener: std::net::TcpListener,
) -> std::io::Result<(SocketAddr, actix_web::dev::Server)> {
    serve(config, parts, Listen::Listener(listener))
}

/// Where the server listens.
enum Listen {
    /// Bind this address.
    Addr(SocketAddr),
    /// Take this bound listener.
    Listener(std::net::TcpListener),
}

fn serve(
    config: &ServeConfig,
    parts: Parts,
    listen: Listen,
) -> std::io::Result<(SocketAddr, actix_web::dev::Server)> {
    let services = parts
        .cluster
        .as_ref()
        .map(|c| cluster::Services::new(c, config.request_timeout))
        .transpose()?;
    let token = web::Data::new(config.token.clone());
    let deadline = web::Data::new(Deadline(config.request_timeout));
    let max_body = config.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(token.clone())
            .app_data(deadline.clone())
            .app_data(error::json_config(max_body))
            .app_data(error::query_config())
            .app_data(error::path_config())
            .app_data(web::PayloadConfig::new(max_body))
            .configure(|cfg| configure(cfg, &parts, services.as_ref()))
            .default_service(web::to(error::not_found))
            .wrap(from_fn(error::json_errors))
            .wrap(from_fn(guard::deadline))
            .wrap(from_fn(guard::require_token))
    })
    .disable_signals();
    let server = if config.workers > 0 {
        server.workers(config.workers)
    } else {
        server
    };
    let server = match listen {
        Listen::Addr(addr) => server.bind(addr)?,
        Listen::Listener(listener) => server.listen(listener)?,
    };
    let addr = server.addrs().first().copied().unwrap_or(config.listen);
    Ok((addr, server.run()))
}

//! A `baton serve` cluster node in the test's process: a supervisor over a memory runtime with
//! the agent types `coder` and `reviewer`, its fenced PostgreSQL journal, the node's loops, and
//! the HTTP API on a port of its own, advertised (before it joins) as its address.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use baton::cluster::{self, ClusterConfig, Epoch, Pool, Running};
use baton::journal::{JournalOptions, PgOptions};
use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::serve::cluster::ClusterApi;
use baton::serve::events::{EventHub, EventsConfig};
use baton::serve::guard::Token;
use baton::serve::metrics::Metrics;
use baton::serve::{Parts, ServeConfig};
use baton::{AgentType, FleetEvent, Journal, SessionId, Supervisor, SupervisorHandle};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::task::TaskTracker;

use super::{TestDb, off_runtime};

/// A node, served.
pub struct ServedNode {
    /// Its HTTP API (`http://127.0.0.1:PORT`), also its advertised address.
    pub base: String,
    /// Its fencing epoch.
    pub epoch: Epoch,
    /// Its supervisor.
    pub supervisor: SupervisorHandle,
    /// Its supervisor's events, subscribed before the start.
    pub events: UnboundedReceiver<FleetEvent>,
    /// Its loops; `None` once it left.
    pub running: Option<Running>,
    /// Its event streams' hub (closed when it leaves: its feed stops reading the database).
    pub hub: EventHub,
}

/// Starts a node named `name` on `db` whose sessions are numbered from `first_session`, with
/// room for `max_sessions`, its loops on `tracker`; every request needs `token`.
pub async fn serve_node(
    db: &TestDb,
    name: &str,
    first_session: u64,
    max_sessions: usize,
    token: &str,
    tracker: &TaskTracker,
) -> ServedNode {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = ClusterConfig {
        url: db.url.clone(),
        name: name.into(),
        advertise: Some(base.clone()),
        ttl: Duration::from_secs(30),
        sweep_every: Duration::from_millis(200),
        max_sessions,
    };
    let epoch = cluster::join(&config).await.unwrap();
    let url = db.pg_url();
    let journal = off_runtime(move || {
        Journal::open_postgres(
            &url,
            JournalOptions::default(),
            PgOptions { epoch: Some(epoch) },
        )
        .unwrap()
    });
    let runtime =
        MemoryRuntime::new(MemoryConfig::default()).numbering_from(SessionId(first_session));
    let builder = Supervisor::builder(Arc::new(runtime))
        .agent_type(AgentType::new("coder", 1000))
        .agent_type(AgentType::new("reviewer", 1000))
        .journal(journal.clone())
        .unwrap();
    let events = builder.subscribe();
    let supervisor = builder.start();
    let running = cluster::start(&config, epoch, journal, supervisor.clone(), tracker);
    let mut serve = ServeConfig::new(Token::new(token).unwrap());
    serve.workers = 1;
    let hub = EventHub::cluster(&supervisor, &db.url, EventsConfig::default()).unwrap();
    let parts = Parts {
        supervisor: supervisor.clone(),
        store: None,
        commands: None,
        events: hub.clone(),
        metrics: Metrics::new(),
        cluster: Some(ClusterApi {
            epoch,
            db: Pool::new(&db.url, 4, Duration::from_secs(5)),
        }),
    };
    let (_, server) = baton::serve::listen(&serve, parts, listener).unwrap();
    tokio::spawn(server);
    ServedNode {
        base,
        epoch,
        supervisor,
        events,
        running: Some(running),
        hub,
    }
}

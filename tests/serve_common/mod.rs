//! A served fleet for the `serve_*` tests: a supervisor over a `MemoryRuntime` (wrapped in a
//! `MeteredRuntime`), optionally journaled in a temporary directory, behind `serve::bind` on
//! 127.0.0.1:0; plus a reader of server-sent events over reqwest.
//!
//! Nothing here sleeps: tests wait for the events they expect, with time-outs as safety only.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton::journal::{EventRow, Filter};
use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::serve::events::{EventHub, EventsConfig};
use baton::serve::guard::Token;
use baton::serve::metrics::{MeteredRuntime, Metrics};
use baton::serve::{Parts, ServeConfig};
use baton::{
    AgentType, FleetEvent, Journal, JournalReader, Sequenced, SessionId, Settled, Supervisor,
    SupervisorHandle, UsageSource, WorkItem, WorkItemId,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// The bearer token of every served fleet here.
pub const TOKEN: &str = "serve-test-token-0123456789";

/// Rows of the log that are supervisor steps, not published events: never streamed.
pub const STEPS: [&str; 4] = [
    "work_item_submitted",
    "rotation_started",
    "rotation_handoff",
    "rotation_successor",
];

/// A running server over a running fleet.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The fleet.
    pub supervisor: SupervisorHandle,
    /// Its runtime (to grow sessions' contexts).
    pub runtime: Arc<MemoryRuntime>,
    /// A sequenced subscription made before the supervisor started, to wait on.
    pub events: UnboundedReceiver<Sequenced>,
    /// Everything received on `events` so far.
    pub seen: Vec<Sequenced>,
    /// The server's event hub.
    pub hub: EventHub,
    /// The journal's file, if journaled.
    pub journal: Option<std::path::PathBuf>,
    /// Stops the server.
    handle: actix_web::dev::ServerHandle,
    /// Keeps the journal's directory.
    _dir: Option<tempfile::TempDir>,
    /// An HTTP client.
    pub http: reqwest::Client,
}

/// A 1,000-token agent type (compact at 800, rotate at 950).
pub fn agent(name: &str) -> AgentType {
    AgentType::new(name, 1000)
}

/// Work item `id` of `agent_type`.
pub fn item(id: u64, agent_type: &str) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: agent_type.into(),
        text: format!("work item {id}"),
    }
}

impl Served {
    /// Serves a fleet of `agents`, journaled or not.
    pub async fn start(journaled: bool, agents: &[&str], events: EventsConfig) -> Self {
        let memory = MemoryConfig {
            base_tokens: 100,
            ..MemoryConfig::default()
        };
        Self::start_with(journaled, agents, events, memory).await
    }

    /// [`start`](Self::start) over a runtime with these settings.
    pub async fn start_with(
        journaled: bool,
        agents: &[&str],
        events: EventsConfig,
        memory: MemoryConfig,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = Arc::new(MemoryRuntime::new(memory));
        let dir = journaled.then(|| tempfile::tempdir().unwrap());
        let path = dir.as_ref().map(|d| d.path().join("baton.db"));
        let metrics = Metrics::new();
        let builder = Supervisor::builder(Arc::new(MeteredRuntime::new(runtime.clone(), &metrics)));
        // Metrics see every event: subscribed before the start.
        metrics.follow(builder.subscribe());
        let mut builder = agents
            .iter()
            .fold(builder, |b, name| b.agent_type(agent(name)));
        if let Some(p) = &path {
            let journal = Journal::open(p).unwrap();
            metrics.time_commits_of(&journal);
            builder = builder.journal(journal).unwrap();
        }
        let rx = builder.subscribe_sequenced();
        let supervisor = builder.start();
        metrics.spawn_feed();
        let hub = EventHub::with_config(&supervisor, events);
        let mut config = ServeConfig::new(Token::new(TOKEN).unwrap());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.workers = 2;
        let parts = Parts {
            supervisor: supervisor.clone(),
            store: None,
            commands: None,
            events: hub.clone(),
            metrics,
            cluster: None,
        };
        let (addr, server) = baton::serve::bind(&config, parts).unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base: format!("http://{addr}"),
            addr,
            supervisor,
            runtime,
            events: rx,
            seen: Vec::new(),
            hub,
            journal: path,
            handle,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    /// A GET with the token.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// Waits (up to 10 s) for an event matching `pred`; everything received meanwhile is kept
    /// in `seen`.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&FleetEvent) -> bool) -> FleetEvent {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("event stream closed waiting for {what}"));
            self.seen.push(e.clone());
            if pred(&e.event) {
                return e.event;
            }
        }
    }

    /// Takes every event delivered so far into `seen`, without waiting.
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }

    /// Waits for item `id`'s session to start.
    pub async fn started(&mut self, id: u64) -> SessionId {
        match self
            .wait(
                "a session start",
                |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == id),
            )
            .await
        {
            FleetEvent::SessionStarted { session, .. } => session,
            _ => unreachable!(),
        }
    }

    /// Grows `session` to `used` tokens, reports it, and waits until it settled.
    pub async fn report(&self, session: SessionId, used: u64) -> Settled {
        let now = self.runtime.session(session).expect("session exists").used;
        self.runtime
            .grow(session, used.saturating_sub(now))
            .unwrap();
        self.supervisor
            .session(session)
            .await
            .expect("live session")
            .report_and_settle(used, None, UsageSource::Reported)
            .await
            .unwrap()
    }

    /// Submits item `id` and drives it through one compaction and one rotation; returns the
    /// old and the new session (the successor stays live).
    pub async fn compact_and_rotate(
        &mut self,
        id: u64,
        agent_type: &str,
    ) -> (SessionId, SessionId) {
        self.supervisor.submit(item(id, agent_type)).await.unwrap();
        let s = self.started(id).await;
        assert_eq!(self.report(s, 850).await, Settled::Normal, "compacted");
        let Settled::Rotated { successor } = self.report(s, 990).await else {
            panic!("the session should have rotated");
        };
        (s, successor)
    }

    /// Closes `session` and waits for its item's `WorkItemDone`.
    pub async fn finish(&mut self, session: SessionId, id: u64) {
        self.supervisor.close(session).await.unwrap();
        self.wait(
            "the item done",
            |e| matches!(e, FleetEvent::WorkItemDone { work_item, .. } if work_item.0 == id),
        )
        .await;
    }

    /// Every row of the journal's log (after a flush).
    pub async fn log(&self) -> Vec<EventRow> {
        self.supervisor.journal().unwrap().flush().await.unwrap();
        let path = self.journal.clone().unwrap();
        JournalReader::open(path)
            .unwrap()
            .view()
            .events(&Filter::default())
            .unwrap()
    }

    /// Stops the server and the fleet.
    pub async fn stop(self) {
        self.hub.close();
        self.handle.stop(false).await;
        self.supervisor.shutdown(Duration::from_secs(5)).await;
    }
}

/// The published events of a log (no supervisor steps).
pub fn published(rows: Vec<EventRow>) -> Vec<EventRow> {
    rows.into_iter()
        .filter(|r| !STEPS.contains(&r.kind.as_str()))
        .collect()
}

/// One frame of an event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// An event: its `id`, `event` and `data`.
    Event {
        id: u64,
        kind: String,
        data: serde_json::Value,
    },
    /// A comment line.
    Comment(String),
}

/// Reads server-sent events from a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    /// Opens `GET /v1/events/stream` (with `Last-Event-ID` when given, and an optional query).
    pub async fn open(served: &Served, last_event_id: Option<u64>, query: &str) -> Self {
        let mut req = served.get(&format!("/v1/events/stream{query}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame (up to 10 s), `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&frame));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("timed out waiting for the stream")
                .expect("the stream failed")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until one matches `pred` (it included); comments are skipped.
    pub async fn until(
        &mut self,
        pred: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> Vec<(u64, String, serde_json::Value)> {
        let mut out = Vec::new();
        loop {
            match self.next().await.expect("the stream ended early") {
                Frame::Event { id, kind, data } => {
                    let done = pred(&kind, &data);
                    out.push((id, kind, data));
                    if done {
                        return out;
                    }
                }
                Frame::Comment(_) => {}
            }
        }
    }
}

fn parse(frame: &str) -> Frame {
    let (mut id, mut kind, mut data, mut comment) = (None, String::new(), Vec::new(), Vec::new());
    for line in frame.lines() {
        if let Some(c) = line.strip_prefix(": ") {
            comment.push(c.to_string());
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v);
        }
    }
    match id {
        Some(id) => Frame::Event {
            id,
            kind,
            data: serde_json::from_str(&data.join("\n")).unwrap(),
        },
        None => Frame::Comment(comment.join("\n")),
    }
}

/// Whether an event is item `id`'s `work_item_done`.
pub fn done(id: u64) -> impl Fn(&str, &serde_json::Value) -> bool {
    move |kind, data| kind == "work_item_done" && data["work_item"] == id
}

//! A fleet of chat agents for tests: a supervisor over a `ChatRuntime`, attached, with the
//! event stream collected.

use std::sync::Arc;
use std::time::Duration;

use baton::record::{CompactionRecord, RotationRecord};
use baton::run::take_turn;
use baton::runtime::chat::{ChatRuntime, ChatRuntimeConfig, ChatRuntimeError, ClientConfig, Turn};
use baton::{
    AgentType, FleetEvent, SessionHandle, SessionId, Supervisor, SupervisorConfig,
    SupervisorHandle, WorkItem, WorkItemId,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// A client configuration with quick retries, so that fault tests stay fast.
pub fn quick_client(base_url: String) -> ClientConfig {
    let mut c = ClientConfig::new(base_url);
    c.request_timeout = Duration::from_secs(5);
    c.retry = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(100))
        .with_max_times(3)
        .with_jitter();
    c.max_retry_after = Duration::from_secs(5);
    c
}

/// Runtime settings for tests: short replies, temperature 0, a fixed seed.
pub fn runtime_config() -> ChatRuntimeConfig {
    ChatRuntimeConfig {
        reply_tokens: Some(48),
        temperature: Some(0.0),
        seed: Some(7),
        ..ChatRuntimeConfig::default()
    }
}

/// A running fleet of chat agents and everything it published so far.
pub struct ChatFleet {
    /// The agents.
    pub runtime: Arc<ChatRuntime>,
    /// The fleet.
    pub supervisor: SupervisorHandle,
    /// Events not yet read.
    events: UnboundedReceiver<FleetEvent>,
    /// Events read so far.
    pub log: Vec<FleetEvent>,
}

impl ChatFleet {
    /// Starts a supervisor over `runtime` with one agent type.
    pub fn start(runtime: ChatRuntime, agent: AgentType) -> Self {
        let runtime = Arc::new(runtime);
        let builder = Supervisor::builder(runtime.clone())
            .config(SupervisorConfig {
                retry_min_delay: Duration::from_millis(5),
                retry_max_delay: Duration::from_millis(50),
                ..SupervisorConfig::default()
            })
            .agent_type(agent);
        let events = builder.subscribe();
        let supervisor = builder.start();
        Self {
            runtime,
            supervisor,
            events,
            log: Vec::new(),
        }
    }

    /// Takes a turn on `session` with `message` as the next user message, reported through the
    /// session's handle as `baton run` does ([`baton::run::take_turn`]).
    pub async fn chat(
        &self,
        session: SessionId,
        message: impl Into<String>,
    ) -> Result<Turn, ChatRuntimeError> {
        let handle = self.handle(session).await;
        take_turn(&self.runtime, &handle, Some(&message.into())).await
    }

    /// Takes a turn answering the history as it stands, reported as [`Self::chat`] does.
    pub async fn reply(&self, session: SessionId) -> Result<Turn, ChatRuntimeError> {
        let handle = self.handle(session).await;
        take_turn(&self.runtime, &handle, None).await
    }

    /// The registered session's handle (a session whose start was announced is registered).
    pub async fn handle(&self, session: SessionId) -> SessionHandle {
        self.supervisor
            .session(session)
            .await
            .unwrap_or_else(|| panic!("{session} is not registered"))
    }

    /// Submits work item `id` for `agent_type` and waits for its session.
    pub async fn start_item(&mut self, id: u64, agent_type: &str, text: &str) -> SessionId {
        self.supervisor
            .submit(WorkItem {
                id: WorkItemId(id),
                agent_type: agent_type.into(),
                text: text.into(),
            })
            .await
            .unwrap();
        match self
            .wait_for(
                "session start",
                Duration::from_secs(30),
                |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == id),
            )
            .await
        {
            FleetEvent::SessionStarted { session, .. } => session,
            _ => unreachable!(),
        }
    }

    /// Waits (up to `limit`) for an event matching `pred`; everything read is kept in `log`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&FleetEvent) -> bool,
    ) -> FleetEvent {
        if let Some(e) = self.log.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    self.log.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!("event stream closed waiting for {what}: {:#?}", self.log),
                Err(_) => panic!("timed out waiting for {what}: {:#?}", self.log),
            }
        }
    }

    /// Reads every event published so far into `log`.
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.log.push(e);
        }
    }

    /// The compaction records read so far.
    pub fn compactions(&mut self) -> Vec<CompactionRecord> {
        self.drain();
        self.log
            .iter()
            .filter_map(|e| match e {
                FleetEvent::Compaction(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// The rotation records read so far.
    pub fn rotations(&mut self) -> Vec<RotationRecord> {
        self.drain();
        self.log
            .iter()
            .filter_map(|e| match e {
                FleetEvent::Rotation(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Shuts the fleet down.
    pub async fn stop(mut self) -> Vec<FleetEvent> {
        self.supervisor.shutdown(Duration::from_secs(10)).await;
        self.drain();
        self.log
    }
}

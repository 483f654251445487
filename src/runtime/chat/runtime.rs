//! [`ChatRuntime`]: an [`AgentRuntime`] whose agents are conversations with an OpenAI-compatible
//! Chat Completions endpoint, held by baton.
//!
//! Servers keep no state between requests, so baton holds each session's message list. A
//! session of an agent type starts as a conversation with the type's system prompt and model
//! ([`AgentRuntime::spawn`]); a work item (and the handoff it continues from, after a rotation)
//! becomes a user message ([`AgentRuntime::assign`], [`assignment_text`]). The embedding program
//! then talks to the agent with [`ChatRuntime::chat`] (or [`ChatRuntime::reply`], to answer the
//! history as it stands): the history is sent, the reply appended, and the [`Turn`] carries the
//! reading to report (or the context overflow the endpoint answered).
//!
//! The runtime is an edge: it knows nothing of the supervisor or of sessions' actors. The
//! embedder reports each turn through its own handle on the session, and that is where baton
//! decides what the turn means: [`crate::run::take_turn`] takes a turn, reports its reading with
//! `SessionHandle::report_and_settle` (or passes an overflow on as the machine's overflow event)
//! and returns once the session has settled, compacted or rotated, with the successor named.
//!
//! Usage figures go through a per-session [`UsageTracker`]: a report that is missing, zero, or
//! falls while the conversation only grew is replaced by the calibrated local estimate and
//! marked [`UsageSource::Estimated`](crate::usage::UsageSource::Estimated). Compaction summaries are budgeted up front
//! ([`SummaryPlan`]) with a [`ScaledTiktoken`] counter that learns the server's tokens per local
//! token from the session's own reports, so a summary request never overflows. A context
//! overflow from a turn is never retried; the runtime learns the window and token count the
//! error states (so the handoff that follows is budgeted for them) and returns it in the
//! [`Turn`]: what it means (a rotation) is the machine's decision.
//!
//! An agent type's window is the user's and always wins, even over a smaller one the endpoint
//! states (with a warning); [`ChatRuntime::window_for`] and [`choose_window`] resolve a window
//! the user did not give (the endpoint's, else baton's table of well-known models).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use thiserror::Error;
use tracing::Instrument;

use super::client::{ChatClient, EndpointWindow};
use super::compaction::{CompactionError, SummaryBudget, SummaryPlan, summarise};
use super::error::{ChatError, ContextOverflow};
use super::history::{History, ScaledTiktoken, Split, TokenCounter};
use super::wire::{ChatMessage, ChatRequest, Role};
use crate::machine::Phase;
use crate::provider::{
    self, Encoding, Provider, Reading, UsageTracker, Window, WindowSource, known_window,
    resolve_window,
};
use crate::runtime::{AgentRuntime, RuntimeError};
use crate::usage::UsageError;
use crate::vocab::{
    AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, WorkItem, WorkItemId,
};

/// How a [`ChatRuntime`] talks to its endpoint and compacts its sessions.
#[derive(Debug, Clone)]
pub struct ChatRuntimeConfig {
    /// `max_tokens` of every turn's request; `None` lets the server decide (llama.cpp then
    /// generates until the window is full).
    pub reply_tokens: Option<u32>,
    /// Sampling temperature of every turn; `None` for the server's default.
    pub temperature: Option<f32>,
    /// Sampling seed of every turn, for servers that honour it.
    pub seed: Option<u64>,
    /// Recent tokens after the latest user message that a compaction keeps verbatim (whole
    /// segments only); 0 keeps none.
    pub keep_recent_tokens: usize,
    /// Ask the endpoint for its window (`/props`, then `/v1/models`) once per endpoint and
    /// model, to warn when an agent type's window exceeds it (the agent type's window is the
    /// user's, and wins: see [`choose_window`]).
    pub discover_window: bool,
    /// The usage shape to read replies as; `None` detects it (Ollama's `/v1` needs the hint).
    pub provider: Option<Provider>,
    /// Server tokens per local tiktoken token, assumed until a session's first trusted report
    /// measures it.
    pub initial_scale: f64,
    /// The first session id handed out; later ones count up from it. Session ids must be new
    /// across restarts when a journal is kept: start past the journal's highest.
    pub first_session_id: u64,
}

impl Default for ChatRuntimeConfig {
    /// Replies of at most 512 tokens, server sampling defaults, no verbatim tail, window
    /// discovery on, usage shape detected, scale 1.0, and session ids from 1.
    fn default() -> Self {
        Self {
            reply_tokens: Some(512),
            temperature: None,
            seed: None,
            keep_recent_tokens: 0,
            discover_window: true,
            provider: None,
            initial_scale: 1.0,
            first_session_id: 1,
        }
    }
}

/// Why a turn failed. A context overflow is not among them: it is an answer, returned in the
/// [`Turn`] for the machine to act on.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ChatRuntimeError {
    /// The runtime holds no open conversation for the session (closed, or never spawned).
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The request failed (already retried where retrying may help).
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The reply carried usage figures baton refuses.
    #[error("bad usage figures: {0}")]
    Usage(#[from] UsageError),
}

impl ChatRuntimeError {
    /// Whether taking the same turn again later may succeed.
    pub fn retry_may_help(&self) -> bool {
        match self {
            Self::Chat(e) => e.retry_may_help(),
            _ => false,
        }
    }
}

/// One turn of a conversation: what was sent, what came back, and what baton did about it.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    /// The session that took the turn.
    pub session: SessionId,
    /// The model's reply; `None` when the request overflowed the window.
    pub reply: Option<ChatMessage>,
    /// The usage as accounted (reported, or estimated when the report was not trusted) and what
    /// the server said; `None` after an overflow.
    pub reading: Option<Reading>,
    /// The overflow the request ran into: to pass on to the session's machine, which rotates
    /// it.
    pub overflow: Option<ContextOverflow>,
    /// The window the reading is measured against (the session's, or the smaller one an
    /// overflow stated): to report with it.
    pub window: u64,
    /// The session's state once the reading was reported and the session settled: `Normal`, or
    /// `Closed` after a rotation or a close. The runtime returns `Normal`; whoever reports the
    /// turn sets it ([`Turn::settled`], as [`crate::run::take_turn`] does).
    pub phase: Phase,
    /// The session now holding the work item, when it is another one (after a rotation); set
    /// with `phase`.
    pub successor: Option<SessionId>,
    /// Time spent waiting on the endpoint: the HTTP exchanges of every attempt and the pauses
    /// between them (for an overflow, the whole failed call).
    pub request_time: Duration,
    /// Time spent waiting for a compaction or rotation the turn triggered; set with `phase`.
    pub settle_time: Duration,
    /// The whole turn, from the call to the return.
    pub elapsed: Duration,
}

impl Turn {
    /// The turn as its report left the session: its `phase` then, the `successor` holding the
    /// work item after a rotation, and the time waited for it to settle.
    pub fn settled(
        mut self,
        phase: Phase,
        successor: Option<SessionId>,
        settle_time: Duration,
    ) -> Self {
        self.phase = phase;
        self.successor = successor;
        self.settle_time = settle_time;
        self.elapsed += settle_time;
        self
    }

    /// The session to take the next turn on: this one while it is live, else its successor.
    pub fn next_session(&self) -> Option<SessionId> {
        match self.phase {
            Phase::Normal | Phase::Compacting => Some(self.session),
            Phase::Rotating | Phase::Closed => self.successor,
        }
    }

    /// The reply's text, or `""`.
    pub fn text(&self) -> &str {
        self.reply.as_ref().map_or("", ChatMessage::text)
    }

    /// baton's own time in the turn: everything but waiting on the endpoint and waiting for a
    /// compaction or rotation (building and serialising the request, parsing the reply, the
    /// accounting, the report to the session's actor).
    pub fn overhead(&self) -> Duration {
        self.elapsed
            .saturating_sub(self.request_time)
            .saturating_sub(self.settle_time)
    }
}

/// The user message that gives a session its work item, with the handoff it continues from.
pub fn assignment_text(item: &WorkItem, handoff: Option<&Handoff>) -> String {
    match handoff {
        None => format!("Work item {}:\n{}", item.id, item.text),
        Some(h) => format!(
            "Work item {}:\n{}\n\nAn earlier session worked on this item until its context \
             window was full. Continue from its handoff:\n{}",
            item.id,
            item.text,
            h.text.trim()
        ),
    }
}

/// The window a session is measured against, from what is known, ranked by
/// [`resolve_window`]: the window the user gave (`user`) always wins, even above the
/// endpoint's ([`ChatRuntime`] warns about that); then the one the endpoint states; then
/// baton's table of well-known models ([`known_window`]). `None` when nothing is known.
pub fn choose_window(
    user: Option<u64>,
    endpoint: Option<&EndpointWindow>,
    model: &str,
) -> Option<Window> {
    let user = user.map(|tokens| Window {
        tokens,
        source: WindowSource::User,
    });
    resolve_window(
        user.into_iter()
            .chain(endpoint.map(EndpointWindow::window))
            .chain(known_window(model)),
    )
}

/// A compaction summary written but not yet applied: which messages it covers.
#[derive(Debug, Clone)]
struct Pending {
    /// Messages of the history when the summary was asked for; later ones are kept as they are.
    len: usize,
    /// What the summary replaces, among those.
    split: Split,
}

/// One session's conversation and accounting, behind the session's lock.
struct Transcript {
    /// The messages as sent to the model.
    history: History,
    /// The same messages as the tracker counts them, kept in step with `history`.
    counted: Vec<provider::Message>,
    /// The session's accounting.
    tracker: UsageTracker,
    /// Server tokens per local token, from the last trusted report.
    scale: f64,
    /// A compaction summary awaiting `replace_history`.
    pending: Option<Pending>,
    /// The work item it holds.
    item: Option<WorkItemId>,
    /// Where the message that gave it the work item is in `history`: compactions keep it.
    assignment: Option<usize>,
    /// Set by `close`: a turn in flight must not report for it.
    closed: bool,
}

impl Transcript {
    fn push(&mut self, message: ChatMessage) {
        self.counted.push(counted(&message));
        self.history.push(message);
    }

    fn set_history(&mut self, history: History) {
        self.counted = history.messages().iter().map(counted).collect();
        self.history = history;
    }

    fn counter(&self, encoding: Encoding) -> ScaledTiktoken {
        ScaledTiktoken {
            encoding,
            scale: self.scale,
        }
    }
}

/// One session as the runtime knows it.
struct Conversation {
    /// Its agent type's name, for logs.
    agent_type: Arc<str>,
    /// The model named in its requests.
    model: String,
    /// The window its readings are measured against; lowered when an overflow shows that the
    /// server's is smaller.
    window: AtomicU64,
    /// The vocabulary its local counts use.
    encoding: Encoding,
    /// The client for its agent type.
    client: ChatClient,
    /// The conversation; held across a request, so one turn or summary at a time.
    transcript: tokio::sync::Mutex<Transcript>,
}

impl Conversation {
    /// The window its readings are measured against now.
    fn window(&self) -> u64 {
        self.window.load(Ordering::SeqCst)
    }
}

/// The endpoint's window for one model, asked for by whichever session needs it first, and kept
/// once the endpoint answered (a failed lookup is tried again by the next session).
type WindowCell = Arc<tokio::sync::OnceCell<Option<EndpointWindow>>>;

/// An [`AgentRuntime`] over OpenAI-compatible chat endpoints. See the module documentation.
pub struct ChatRuntime {
    /// The client of every agent type without its own.
    client: ChatClient,
    /// Per agent type: its own endpoint and key (its profile).
    clients: HashMap<Arc<str>, ChatClient>,
    /// Settings.
    config: ChatRuntimeConfig,
    /// Open conversations.
    conversations: Mutex<HashMap<SessionId, Arc<Conversation>>>,
    /// Spawns by key, so a repeated key returns the same session.
    spawned: Mutex<HashMap<SpawnKey, SessionId>>,
    /// The open session each work item was last assigned to.
    holders: Mutex<HashMap<WorkItemId, SessionId>>,
    /// The endpoint's window per (base URL, model), kept once the endpoint answered.
    windows: Mutex<HashMap<(String, String), WindowCell>>,
    /// Agent types already warned about a window larger than the endpoint's (once each).
    oversized: Mutex<HashSet<Arc<str>>>,
    /// The next session id to hand out.
    next_id: AtomicU64,
}

impl std::fmt::Debug for ChatRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatRuntime")
            .field("client", &self.client)
            .field("clients", &self.clients)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A message as the tracker counts it.
fn counted(m: &ChatMessage) -> provider::Message {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    provider::Message {
        role: role.to_owned(),
        content: m.text().to_owned(),
        name: None,
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| provider::ToolCall {
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone(),
            })
            .collect(),
    }
}

/// Whether a failed window lookup may succeed later: the endpoint could not be reached, timed
/// out, or failed on its side. Any other answer (a 404 without `/v1/models`, a 401) is final.
fn transient(e: &ChatError) -> bool {
    e.retry_may_help()
        || matches!(e, ChatError::Refused { status, .. } if *status == 429 || *status >= 500)
}

/// A failed request as the trait reports it: an overflow stays an overflow, a timeout a
/// timeout, and the rest say whether a retry may help.
fn runtime_error(e: ChatError) -> RuntimeError {
    match e {
        ChatError::ContextOverflow(o) => RuntimeError::ContextOverflow {
            message: o.to_string(),
        },
        ChatError::Timeout { timeout, .. } => RuntimeError::Timeout(timeout),
        other => RuntimeError::Failed {
            retryable: other.retry_may_help(),
            message: other.to_string(),
        },
    }
}

impl ChatRuntime {
    /// A runtime whose agents talk to `client`'s endpoint, with the default settings.
    pub fn new(client: ChatClient) -> Self {
        Self::with_config(client, ChatRuntimeConfig::default())
    }

    /// A runtime with these settings.
    pub fn with_config(client: ChatClient, config: ChatRuntimeConfig) -> Self {
        Self {
            client,
            clients: HashMap::new(),
            conversations: Mutex::default(),
            spawned: Mutex::default(),
            holders: Mutex::default(),
            windows: Mutex::default(),
            oversized: Mutex::default(),
            next_id: AtomicU64::new(config.first_session_id),
            config,
        }
    }

    /// Gives the agent type `name` its own client (its profile: endpoint, key, timeouts).
    pub fn agent_client(mut self, name: &str, client: ChatClient) -> Self {
        self.clients.insert(name.into(), client);
        self
    }

    /// The settings.
    pub fn config(&self) -> &ChatRuntimeConfig {
        &self.config
    }

    /// The client the agent type `name` uses.
    pub fn client_for(&self, name: &str) -> &ChatClient {
        self.clients.get(name).unwrap_or(&self.client)
    }

    /// The model a session of `agent` names in its requests: its `model`, or its name when
    /// that is empty.
    fn model_of(agent: &AgentType) -> String {
        if agent.model.is_empty() {
            agent.name.to_string()
        } else {
            agent.model.clone()
        }
    }

    /// The window the endpoint states for `agent`'s model (see [`Self::endpoint_window_of`]).
    pub async fn endpoint_window(&self, agent: &AgentType) -> Option<EndpointWindow> {
        self.endpoint_window_of(&agent.name, &Self::model_of(agent))
            .await
    }

    /// The window the endpoint of agent type `agent_type` states for `model`: `None` when it
    /// states none, cannot be reached, or discovery is off. An answer (a window, or none) is
    /// kept per endpoint and model; a lookup that failed is tried again next time.
    pub async fn endpoint_window_of(
        &self,
        agent_type: &str,
        model: &str,
    ) -> Option<EndpointWindow> {
        if !self.config.discover_window {
            return None;
        }
        let client = self.client_for(agent_type);
        let cell = self
            .windows
            .lock()
            .expect("lock")
            .entry((client.config().base_url.clone(), model.to_owned()))
            .or_default()
            .clone();
        let answer = cell
            .get_or_try_init(|| async {
                match client.window(Some(model)).await {
                    // A refusal (404 on an endpoint without /v1/models, 401) is an answer.
                    Err(e) if !transient(&e) => {
                        tracing::debug!(%model, error = %e, "the endpoint states no window");
                        Ok(None)
                    }
                    other => other,
                }
            })
            .await;
        match answer {
            Ok(w) => *w,
            Err(e) => {
                tracing::warn!(%model, error = %e, "could not ask the endpoint for its window; will ask again");
                None
            }
        }
    }

    /// The window for agent type `agent_type` running `model`, when the user gave `user` (or
    /// none): see [`choose_window`]. Asks the endpoint (see [`Self::endpoint_window_of`]).
    pub async fn window_for(
        &self,
        agent_type: &str,
        model: &str,
        user: Option<u64>,
    ) -> Option<Window> {
        let endpoint = self.endpoint_window_of(agent_type, model).await;
        choose_window(user, endpoint.as_ref(), model)
    }

    /// The window a session of `agent` is measured against: the agent type's, which is the
    /// user's and always wins (see [`choose_window`]). When the endpoint states a smaller one,
    /// the first session of the type logs a warning: requests past the endpoint's window
    /// overflow, and an overflow rotates the session. To leave the window to the endpoint or
    /// to baton's table of well-known models, resolve it first with [`Self::window_for`] and no
    /// user window.
    pub async fn window(&self, agent: &AgentType) -> u64 {
        let model = Self::model_of(agent);
        if let Some(e) = self.endpoint_window_of(&agent.name, &model).await
            && agent.window > e.tokens
            && self
                .oversized
                .lock()
                .expect("lock")
                .insert(agent.name.clone())
        {
            tracing::warn!(
                agent_type = %agent.name,
                %model,
                given = agent.window,
                endpoint = e.tokens,
                source = ?e.source,
                "the agent type's window is larger than the endpoint's; it is kept, and requests past the endpoint's will overflow"
            );
        }
        agent.window
    }

    fn conversation(&self, session: SessionId) -> Option<Arc<Conversation>> {
        self.conversations
            .lock()
            .expect("lock")
            .get(&session)
            .cloned()
    }

    /// The open session the work item was last assigned to (its successor, after a rotation).
    pub fn holder(&self, item: WorkItemId) -> Option<SessionId> {
        self.holders.lock().expect("lock").get(&item).copied()
    }

    /// A copy of the session's messages, oldest first (`None` when it is not open).
    pub async fn history(&self, session: SessionId) -> Option<Vec<ChatMessage>> {
        let conv = self.conversation(session)?;
        let t = conv.transcript.lock().await;
        (!t.closed).then(|| t.history.messages().to_vec())
    }

    /// The window the session's readings are measured against.
    pub fn session_window(&self, session: SessionId) -> Option<u64> {
        self.conversation(session).map(|c| c.window())
    }

    /// Sends `message` as the next user message, appends the reply, and reports its usage to
    /// the session; returns once baton has acted on it (see [`Turn`]).
    pub async fn chat(
        &self,
        session: SessionId,
        message: impl Into<String>,
    ) -> Result<Turn, ChatRuntimeError> {
        self.turn(session, Some(ChatMessage::user(message))).await
    }

    /// Asks for the reply to the history as it stands (after [`AgentRuntime::assign`], the
    /// work item): a turn that adds no user message.
    pub async fn reply(&self, session: SessionId) -> Result<Turn, ChatRuntimeError> {
        self.turn(session, None).await
    }

    async fn turn(
        &self,
        session: SessionId,
        message: Option<ChatMessage>,
    ) -> Result<Turn, ChatRuntimeError> {
        let started = Instant::now();
        let conv = self
            .conversation(session)
            .ok_or(ChatRuntimeError::UnknownSession(session))?;
        let span = tracing::info_span!("turn", session = %session, agent_type = %conv.agent_type);
        async move {
            let mut t = conv.transcript.lock().await;
            if t.closed {
                return Err(ChatRuntimeError::UnknownSession(session));
            }
            let mut messages = t.history.messages().to_vec();
            messages.extend(message.iter().cloned());
            let request = ChatRequest {
                max_tokens: self.config.reply_tokens,
                temperature: self.config.temperature,
                seed: self.config.seed,
                ..ChatRequest::new(&conv.model, messages)
            };
            let sent = Instant::now();
            let result = conv.client.chat(&request).await;
            drop(request);
            let completion = match result {
                Ok(c) => c,
                Err(ChatError::ContextOverflow(overflow)) => {
                    // The message stays: the handoff summary must know what was asked.
                    if let Some(m) = message {
                        t.push(m);
                    }
                    learn_from_overflow(&conv, &mut t, &overflow);
                    drop(t);
                    tracing::warn!(%overflow, "context overflow; passed on to the session");
                    return Ok(Turn {
                        session,
                        reply: None,
                        reading: None,
                        window: conv.window(),
                        overflow: Some(overflow),
                        phase: Phase::Normal,
                        successor: None,
                        request_time: sent.elapsed(),
                        settle_time: Duration::ZERO,
                        elapsed: started.elapsed(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            let request_time = completion.waiting;
            let mut reply =
                completion
                    .response
                    .message()
                    .cloned()
                    .ok_or_else(|| ChatError::Malformed {
                        endpoint: conv.client.config().base_url.clone(),
                        reason: "the reply has no choices".into(),
                    })?;
            // Reasoning text is for records; providers ask clients not to send it back.
            reply.reasoning_content = None;
            // The whole body: llama.cpp's timings and Ollama's native counts are top-level.
            let reported = match provider::parse_usage(&completion.body, self.config.provider) {
                Ok(r) => Some(r),
                Err(provider::ProviderError::NoUsage) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable usage; estimating");
                    None
                }
            };
            // Accounted under the lock, which is released before the report: a compaction the
            // report starts needs it.
            let reading = {
                let t = &mut *t;
                // The prompt as sent is the history and the message; both join the history
                // only once the reading is made, so a refused figure leaves it as it was.
                if let Some(m) = &message {
                    t.counted.push(counted(m));
                }
                let reading = match t.tracker.observe(&t.counted, reported.as_ref()) {
                    Ok(reading) => reading,
                    Err(e) => {
                        t.counted.truncate(t.history.messages().len());
                        return Err(e.into());
                    }
                };
                if let Some(m) = message {
                    t.history.push(m);
                }
                if reading.distrust.is_none()
                    && let Some(r) = reported
                {
                    t.scale = scale(r.prompt_tokens, t.tracker.local_tokens());
                }
                t.push(reply.clone());
                reading
            };
            drop(t);
            tracing::debug!(
                used = reading.usage.used(),
                source = ?reading.usage.source(),
                distrust = ?reading.distrust,
                request_ms = request_time.as_millis() as u64,
                "turn"
            );
            Ok(Turn {
                session,
                reply: Some(reply),
                reading: Some(reading),
                window: conv.window(),
                overflow: None,
                phase: Phase::Normal,
                successor: None,
                request_time,
                settle_time: Duration::ZERO,
                elapsed: started.elapsed(),
            })
        }
        .instrument(span)
        .await
    }
}

/// Server tokens per local token, from the server's count (`prompt`) of a prompt counted
/// `local` locally; kept within [0.5, 4] so that one odd report cannot wreck a budget.
fn scale(prompt: u64, local: u64) -> f64 {
    if local == 0 {
        return 1.0;
    }
    (prompt as f64 / local as f64).clamp(0.5, 4.0)
}

/// What an overflow tells about the conversation, whose history now ends with the refused
/// prompt: the server's window, when it says one smaller than the conversation's, becomes the
/// conversation's; the server's count of the prompt sets the token scale. The handoff summary
/// that follows is then budgeted for the window the server really has.
fn learn_from_overflow(conv: &Conversation, t: &mut Transcript, overflow: &ContextOverflow) {
    if let Some(window) = overflow.window.filter(|w| *w > 0 && *w < conv.window()) {
        tracing::warn!(
            configured = conv.window(),
            server = window,
            "the server's window is smaller than the session's; budgeting the handoff for the server's"
        );
        conv.window.store(window, Ordering::SeqCst);
    }
    if let Some(prompt) = overflow.prompt_tokens {
        let local = conv.encoding.prompt_tokens(&t.counted);
        t.scale = scale(prompt, local);
        tracing::debug!(
            prompt,
            local,
            scale = t.scale,
            "token scale from the overflow"
        );
    }
}

#[async_trait]
impl AgentRuntime for ChatRuntime {
    async fn summarise(
        &self,
        session: SessionId,
        purpose: SummaryPurpose,
    ) -> Result<Summary, RuntimeError> {
        let conv = self
            .conversation(session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        let span = tracing::info_span!("summarise", session = %session, ?purpose);
        async move {
            let mut t = conv.transcript.lock().await;
            let counter = t.counter(conv.encoding);
            let split = match purpose {
                SummaryPurpose::Compaction => t
                    .history
                    .split(&counter, self.config.keep_recent_tokens)
                    .keeping_assignment(t.assignment),
                // The successor keeps nothing but its instructions: the handoff must carry
                // everything else, the work item's message included.
                SummaryPurpose::Handoff => {
                    let len = t.history.messages().len();
                    Split {
                        system: t.history.split(&counter, 0).system,
                        latest_user: None,
                        assignment: None,
                        tail: len..len,
                    }
                }
            };
            let budget = SummaryBudget::for_window(conv.window() as usize);
            let plan = SummaryPlan::build(&t.history, &split, &counter, budget)
                .map_err(|e: CompactionError| RuntimeError::permanent(e.to_string()))?;
            let summary = summarise(&conv.client, &conv.model, &plan, &counter)
                .await
                .map_err(runtime_error)?;
            let tokens = summary
                .calls
                .last()
                .and_then(|c| c.usage.trusted())
                .map(|u| u.completion_tokens)
                .filter(|n| *n > 0)
                .unwrap_or_else(|| counter.count(&summary.text) as u64);
            tracing::info!(
                parts = plan.parts(),
                tokens,
                stats = ?plan.stats(),
                "summary written"
            );
            if purpose == SummaryPurpose::Compaction {
                t.pending = Some(Pending {
                    len: t.history.messages().len(),
                    split,
                });
            }
            Ok(Summary {
                text: summary.text,
                tokens,
            })
        }
        .instrument(span)
        .await
    }

    async fn replace_history(
        &self,
        session: SessionId,
        summary: &Summary,
    ) -> Result<u64, RuntimeError> {
        let conv = self
            .conversation(session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        let span = tracing::info_span!("replace_history", session = %session);
        async move {
            let mut t = conv.transcript.lock().await;
            let counter = t.counter(conv.encoding);
            let pending = match t.pending.take() {
                Some(p) => p,
                None => Pending {
                    len: t.history.messages().len(),
                    split: t
                        .history
                        .split(&counter, self.config.keep_recent_tokens)
                        .keeping_assignment(t.assignment),
                },
            };
            let messages = t.history.messages();
            // The summary covers the history as it was when it was written; anything added
            // since is kept after the rewrite, in order.
            let covered = History::from_messages(messages[..pending.len].to_vec());
            let mut rewritten = covered.rewrite(&pending.split, &summary.text);
            for m in &messages[pending.len..] {
                rewritten.push(m.clone());
            }
            let before = messages.len();
            t.set_history(rewritten);
            t.assignment = pending.split.assignment_after_rewrite();
            let t = &mut *t;
            let after = t
                .tracker
                .estimate(&t.counted)
                .map_err(|e| RuntimeError::permanent(e.to_string()))?;
            tracing::info!(
                messages_before = before,
                messages_after = t.counted.len(),
                after = after.used(),
                "history replaced"
            );
            Ok(after.used())
        }
        .instrument(span)
        .await
    }

    async fn close(&self, session: SessionId) -> Result<(), RuntimeError> {
        let conv = self
            .conversations
            .lock()
            .expect("lock")
            .remove(&session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        let mut t = conv.transcript.lock().await;
        t.closed = true;
        if let Some(item) = t.item {
            let mut holders = self.holders.lock().expect("lock");
            if holders.get(&item) == Some(&session) {
                holders.remove(&item);
            }
        }
        tracing::debug!(session = %session, messages = t.history.messages().len(), "conversation dropped");
        Ok(())
    }

    async fn spawn(&self, agent: &AgentType, key: SpawnKey) -> Result<SessionId, RuntimeError> {
        if let Some(id) = self.spawned.lock().expect("lock").get(&key) {
            return Ok(*id);
        }
        let window = self.window(agent).await;
        let model = Self::model_of(agent);
        let encoding = Encoding::for_model(&model);
        let tracker = UsageTracker::new(window, encoding)
            .map_err(|e| RuntimeError::permanent(e.to_string()))?;
        let mut spawned = self.spawned.lock().expect("lock");
        if let Some(id) = spawned.get(&key) {
            return Ok(*id);
        }
        let id = SessionId(self.next_id.fetch_add(1, Ordering::SeqCst));
        spawned.insert(key, id);
        let history = if agent.system_prompt.is_empty() {
            History::default()
        } else {
            History::new(agent.system_prompt.clone())
        };
        let mut transcript = Transcript {
            history: History::default(),
            counted: Vec::new(),
            tracker,
            scale: self.config.initial_scale,
            pending: None,
            item: None,
            assignment: None,
            closed: false,
        };
        transcript.set_history(history);
        let conv = Conversation {
            agent_type: agent.name.clone(),
            model,
            window: AtomicU64::new(window),
            encoding,
            client: self.client_for(&agent.name).clone(),
            transcript: tokio::sync::Mutex::new(transcript),
        };
        self.conversations
            .lock()
            .expect("lock")
            .insert(id, Arc::new(conv));
        tracing::debug!(session = %id, agent_type = %agent.name, window, "conversation started");
        Ok(id)
    }

    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&Handoff>,
    ) -> Result<(), RuntimeError> {
        let conv = self
            .conversation(session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        let mut t = conv.transcript.lock().await;
        if t.item == Some(item.id) {
            // A retried assign: the item is already there.
            return Ok(());
        }
        t.assignment = Some(t.history.messages().len());
        t.push(ChatMessage::user(assignment_text(item, handoff)));
        t.item = Some(item.id);
        self.holders.lock().expect("lock").insert(item.id, session);
        Ok(())
    }
}

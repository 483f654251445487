//! The agent runtime: the one trait through which baton acts on real agents.
//!
//! baton decides *when* to compact or rotate; the runtime does it: it summarises a session,
//! replaces its history, closes it, spawns a fresh session of an agent type, and assigns a work
//! item to it. An orchestrator implements [`AgentRuntime`] over its own agents (or uses the
//! built-in ones) and hands it to the [`Supervisor`](crate::supervisor::Supervisor) behind an
//! `Arc`.
//!
//! [`memory::MemoryRuntime`] is a complete in-memory runtime for tests, examples and
//! simulation. [`chat`] talks to OpenAI-compatible Chat Completions endpoints: the client, its
//! errors, windows, and the history rewriting of a compaction.

pub mod chat;
pub mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::machine::SessionId;
use crate::policy::Policy;
use crate::usage::Usage;

/// splitmix64: one well-mixed number from `z`. Every seeded draw of baton (the simulated
/// workload, the injected faults, spawn keys) goes through it, so that each draw depends on its
/// own inputs only, never on a shared stream that thread timing could reorder.
pub(crate) fn mix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a successor must match: a name plus what the runtime needs to start one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentType {
    /// The type's name (`"sonnet"`, `"glm"`, `"local-qwen"`): a successor has the same one.
    pub name: Arc<str>,
    /// The model's context window in tokens, the denominator of every threshold.
    pub window: u64,
    /// The policy for sessions of this type; shared by all of them.
    pub policy: Arc<Policy>,
    /// The model the runtime should run (opaque to baton).
    #[serde(default)]
    pub model: String,
    /// The system prompt a new session starts with (opaque to baton).
    #[serde(default)]
    pub system_prompt: String,
}

impl AgentType {
    /// An agent type with the default policy and no model or prompt.
    pub fn new(name: &str, window: u64) -> Self {
        Self {
            name: name.into(),
            window,
            policy: Arc::new(Policy::default()),
            model: String::new(),
            system_prompt: String::new(),
        }
    }

    /// The same type with another policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }
}

/// Identifies a work item across sessions: it follows the item through rotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkItemId(pub u64);

impl fmt::Display for WorkItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// The unit of work a session holds (the seed called it an issue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// Stable across rotations.
    pub id: WorkItemId,
    /// The agent type that must work on it.
    pub agent_type: Arc<str>,
    /// What to do, as given to the agent.
    pub text: String,
}

/// A summary written by the agent: for compaction it replaces the history, for rotation it is
/// the handoff the successor starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The text.
    pub text: String,
    /// Its size in tokens, as the runtime counted it.
    pub tokens: u64,
}

/// The handoff a successor starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    /// The summary text given to the successor with the work item.
    pub text: String,
    /// Its size in tokens.
    pub tokens: u64,
    /// True when the agent could not summarise and baton built the handoff itself from what it
    /// knew (the work item, the usage history, the last compaction summary).
    pub fallback: bool,
}

/// Why a summary is asked for: the runtime may word the request differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SummaryPurpose {
    /// To replace the session's own history.
    Compaction,
    /// To hand the work over to a successor.
    Handoff,
}

/// An idempotency key for [`AgentRuntime::spawn`]: the same key names the same successor, so a
/// spawn repeated after a crash can be recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpawnKey(pub u64);

/// A failed runtime call. Each variant says whether trying again may help.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RuntimeError {
    /// The call did not finish within its deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The runtime does not know the session (closed, or never spawned).
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The runtime does not offer this operation (for example usage polling).
    #[error("operation not supported by this runtime: {0}")]
    Unsupported(&'static str),
    /// The request did not fit the model's context window: retrying the same request cannot
    /// help; the session must rotate.
    #[error("context overflow: {message}")]
    ContextOverflow {
        /// What the endpoint said.
        message: String,
    },
    /// Any other failure.
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// Whether the same call may succeed if tried again (a 429, a 5xx, a dropped
        /// connection) or not (a 4xx, a bad request).
        retryable: bool,
    },
}

impl RuntimeError {
    /// A failure that may pass if tried again.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will not pass by trying again.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether trying the same call again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Failed { retryable, .. } => *retryable,
            Self::UnknownSession(_) | Self::Unsupported(_) | Self::ContextOverflow { .. } => false,
        }
    }
}

/// The operations baton needs from the agents it manages. All are async, and may be called
/// concurrently for different sessions; an implementation is shared behind an `Arc`.
///
/// baton calls them under its own deadlines (the policy's timeouts); a call that overruns is
/// dropped, so implementations should be cancel-safe.
#[async_trait]
pub trait AgentRuntime: Send + Sync + 'static {
    /// Asks the session's agent for a summary of its work so far.
    async fn summarise(
        &self,
        session: SessionId,
        purpose: SummaryPurpose,
    ) -> Result<Summary, RuntimeError>;

    /// Replaces the session's history with `summary`; returns the tokens in use afterwards.
    async fn replace_history(
        &self,
        session: SessionId,
        summary: &Summary,
    ) -> Result<u64, RuntimeError>;

    /// Ends the session and releases its agent.
    async fn close(&self, session: SessionId) -> Result<(), RuntimeError>;

    /// Starts a fresh session of `agent`, keyed by `key` (the same key must not start two
    /// sessions); returns its id, which must be new (new across restarts of baton too, when
    /// a journal is kept). A key seen before returns the session it made, closed or not.
    async fn spawn(&self, agent: &AgentType, key: SpawnKey) -> Result<SessionId, RuntimeError>;

    /// Gives `item` to `session`, with the handoff it continues from, if any.
    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&Handoff>,
    ) -> Result<(), RuntimeError>;

    /// The session's current usage, for runtimes that can report it (polling). The default
    /// says the operation is unsupported.
    async fn usage(&self, session: SessionId) -> Result<Usage, RuntimeError> {
        let _ = session;
        Err(RuntimeError::Unsupported("usage"))
    }
}

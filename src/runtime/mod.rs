//! The agent runtime: the one trait through which baton acts on real agents.
//!
//! baton decides *when* to compact or rotate; the runtime does it: it summarises a session,
//! replaces its history, closes it, spawns a fresh session of an agent type, and assigns a work
//! item to it. An orchestrator implements [`AgentRuntime`] over its own agents (or uses the
//! built-in ones) and hands it to the [`Supervisor`](crate::Supervisor) behind an
//! `Arc`.
//!
//! [`memory::MemoryRuntime`] is a complete in-memory runtime for tests, examples and
//! simulation. [`chat`] talks to OpenAI-compatible Chat Completions endpoints: the client, its
//! errors, windows, and the history rewriting of a compaction.

pub mod chat;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::usage::Usage;
use crate::vocab::{AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, WorkItem};

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

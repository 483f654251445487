//! The vocabulary every part of baton shares: the ids of sessions and work items, work items,
//! agent types, summaries, handoffs and spawn keys.
//!
//! The machine, the records, the journal and the runtime all speak of these, so they live here,
//! apart from any of them: importing a work item's id does not pull in the HTTP client or the
//! actors. Everything here is plain data.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// Identifies one agent session for its whole life; a successor gets a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

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

/// An idempotency key for [`AgentRuntime::spawn`](crate::AgentRuntime::spawn): the same key names the same successor, so a
/// spawn repeated after a crash can be recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpawnKey(pub u64);

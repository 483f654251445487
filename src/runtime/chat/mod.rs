//! Talking to any OpenAI-compatible Chat Completions endpoint (llama.cpp `llama-server`, vLLM,
//! Ollama, OpenAI, DeepSeek, OpenRouter, ...), rewriting a session's history when it compacts,
//! and [`ChatRuntime`], which makes such conversations the agents of a fleet.
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`wire`] | request and response types; the usage a response reports, judged |
//! | [`client`] | [`ChatClient`]: timeouts, retries, bounded bodies, typed errors, the endpoint's window (parsed by [`crate::provider`]) |
//! | [`error`] | [`ChatError`]; recognising context-overflow errors of every server family |
//! | [`retry`] | backon's backoff for chat requests; a server's `Retry-After` |
//! | [`secret`] | [`ApiKey`] and [`UrlCredentials`]: secrets that never print; [`redact_url`] |
//! | [`history`] | [`History`], its segments (a tool call and its results), the compaction split and rewrite; pluggable [`TokenCounter`] |
//! | [`compaction`] | [`SummaryPlan`]: the summary requests, budgeted up front; [`summarise`] sends them |
//! | [`runtime`] | [`ChatRuntime`]: an [`AgentRuntime`](crate::runtime::AgentRuntime) whose agents are conversations held by baton; [`Turn`] |

pub mod client;
pub mod compaction;
pub mod error;
pub mod history;
pub mod retry;
pub mod runtime;
pub mod secret;
pub mod wire;

pub use client::{ChatClient, ClientConfig, Completion, DEFAULT_MAX_BODY_BYTES, EndpointWindow};
pub use compaction::{
    ChatSummary, CompactionError, PlanStats, SUMMARY_INSTRUCTIONS, SummaryBudget, SummaryCall,
    SummaryPlan, summarise, truncate_middle,
};
pub use error::{ChatError, ContextOverflow, OverflowShape, printable, recognise_overflow};
pub use history::{
    CharEstimate, History, MESSAGE_OVERHEAD, REPLY_PRIMING, SUMMARY_PREFIX, ScaledTiktoken, Split,
    TokenCounter, message_tokens, request_tokens,
};
pub use retry::default_backoff;
pub use runtime::{
    ChatRuntime, ChatRuntimeConfig, ChatRuntimeError, Turn, assignment_text, choose_window,
};
pub use secret::{ApiKey, UrlCredentials, redact_url};
pub use wire::{
    ChatMessage, ChatRequest, ChatResponse, ChatToolCall, Choice, FunctionCall, Role, Timings,
    TokenUsage, UsageReading,
};

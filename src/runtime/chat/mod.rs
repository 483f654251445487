//! Talking to any OpenAI-compatible Chat Completions endpoint (llama.cpp `llama-server`, vLLM,
//! Ollama, OpenAI, DeepSeek, OpenRouter, ...), and rewriting a session's history when it compacts.
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`wire`] | request and response types; the usage a response reports, judged |
//! | [`client`] | [`ChatClient`]: timeouts, retries, typed errors, the endpoint's window |
//! | [`error`] | [`ChatError`]; recognising context-overflow errors of every server family |
//! | [`retry`] | [`RetryPolicy`]: exponential backoff with jitter, `Retry-After` |
//! | [`secret`] | [`ApiKey`]: a key that never prints |
//! | [`window`] | the window from `/props` and `/v1/models` |
//! | [`history`] | [`History`], its segments (a tool call and its results), the compaction split and rewrite; pluggable [`TokenCounter`] |
//! | [`compaction`] | [`SummaryPlan`]: the summary requests, budgeted up front; [`summarise`] sends them |

pub mod client;
pub mod compaction;
pub mod error;
pub mod history;
pub mod retry;
pub mod secret;
pub mod window;
pub mod wire;

pub use client::{ChatClient, ClientConfig, Completion};
pub use compaction::{
    CompactionError, PlanStats, SUMMARY_INSTRUCTIONS, Summary, SummaryBudget, SummaryCall,
    SummaryPlan, summarise, truncate_middle,
};
pub use error::{ChatError, ContextOverflow, OverflowShape, recognise_overflow};
pub use history::{
    CharEstimate, History, MESSAGE_OVERHEAD, REPLY_PRIMING, SUMMARY_PREFIX, Split, TokenCounter,
    message_tokens, request_tokens,
};
pub use retry::RetryPolicy;
pub use secret::ApiKey;
pub use window::{EndpointWindow, WindowSource, window_from_models, window_from_props};
pub use wire::{
    ChatRequest, ChatResponse, Choice, FunctionCall, Message, Role, Timings, TokenUsage, ToolCall,
    UsageReading,
};

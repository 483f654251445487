//! Runtimes: how baton talks to real agents.
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`chat`] | OpenAI-compatible Chat Completions: the client, its errors, windows, and the history rewriting of a compaction |
//!
//! The `AgentRuntime` trait and the `ChatRuntime` that implements it over [`chat`] come with the
//! actor layer.

pub mod chat;

//! Claude Code session logs (`~/.claude/projects/<project>/<session>.jsonl`).
//!
//! Each line is one record `{type, uuid, parentUuid, sessionId, isSidechain, message, ...}`.
//! Assistant records carry the Anthropic response's `message.usage`
//! (`input_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`, `output_tokens`),
//! read with [`parse_usage`](crate::provider::parse_usage) as Anthropic's shape: the prompt is
//! input plus both cache fields (with caching on, `input_tokens` alone is a handful of tokens).
//!
//! One response with several content blocks is written as several records with the same
//! `message.id`: it is one call, whose completion is the largest `output_tokens` seen (early
//! records may hold a streaming placeholder). Sidechain records (sub-agents, with their own
//! context) and Claude Code's `<synthetic>` messages (local errors, not model calls) are left
//! out. No window is recorded; `message.model` names the model.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Call, Ctx, Format, Location, Trace, TraceError, line_error, note_model, usage_error};
use crate::provider::{Provider, parse_usage};

const FORMAT: Format = Format::ClaudeCode;

/// The part of every record needed to tell an assistant record apart.
#[derive(Deserialize)]
struct Head {
    /// `assistant` for the records that carry usage.
    #[serde(rename = "type")]
    kind: Option<Value>,
    /// A sub-agent's record: another context, left out.
    #[serde(rename = "isSidechain")]
    is_sidechain: Option<bool>,
}

#[derive(Deserialize)]
struct Assistant {
    /// The Anthropic response (one content block of it).
    message: Option<ApiMessage>,
}

#[derive(Deserialize)]
struct ApiMessage {
    /// The response id, shared by the records of one response: the dedupe key.
    id: Option<String>,
    /// `<synthetic>` marks Claude Code's own error messages, not model calls.
    model: Option<String>,
    /// Anthropic's usage object.
    usage: Option<Value>,
}

pub(super) fn read(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    let mut calls: Vec<Call> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut model = None;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let head: Head =
            serde_json::from_str(raw).map_err(|e| line_error(ctx, FORMAT, line_no, &e))?;
        if head.kind.as_ref().and_then(Value::as_str) != Some("assistant")
            || head.is_sidechain == Some(true)
        {
            continue;
        }
        let record: Assistant =
            serde_json::from_str(raw).map_err(|e| line_error(ctx, FORMAT, line_no, &e))?;
        let Some(message) = record.message else {
            continue;
        };
        if message.model.as_deref() == Some("<synthetic>") {
            continue;
        }
        note_model(&mut model, message.model.as_deref());
        let at = Location::Line(line_no, None);
        let Some(usage) = &message.usage else {
            return Err(ctx.broken(FORMAT, at, "assistant message without usage"));
        };
        let r = parse_usage(usage, Some(Provider::Anthropic))
            .map_err(|e| usage_error(ctx, FORMAT, at, e))?;
        let call = Call {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        };
        match message.id {
            Some(id) => match by_id.get(&id) {
                Some(&k) => {
                    let seen = &mut calls[k];
                    seen.completion_tokens = seen.completion_tokens.max(call.completion_tokens);
                }
                None => {
                    by_id.insert(id, calls.len());
                    calls.push(call);
                }
            },
            None => calls.push(call),
        }
    }
    let mut trace = ctx.trace(FORMAT, calls, None)?;
    trace.model = model;
    Ok(vec![trace])
}

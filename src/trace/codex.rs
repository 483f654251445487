//! Codex CLI rollouts (`~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl`).
//!
//! Each line is `{timestamp, type, payload}`. Usage arrives in `event_msg` lines whose payload
//! is a `token_count` event:
//!
//! ```text
//! {"type":"event_msg","payload":{"type":"token_count","info":{
//!   "total_token_usage":{...},"last_token_usage":{"input_tokens":N,"cached_input_tokens":N,
//!   "output_tokens":N,"reasoning_output_tokens":N,"total_tokens":N},"model_context_window":N}}}
//! ```
//!
//! `last_token_usage` is the latest response (`input_tokens` includes the cached part), the
//! call's context; `total_token_usage` is a running sum for billing and is only used to drop a
//! `token_count` event that repeats the previous one (Codex re-emits it, for example with rate
//! limit updates). An event without `total_token_usage` is compared by its `last_token_usage`
//! instead: two real calls never report the same figures back to back, since the context grows.
//! `info` is `null` before the first response. `model_context_window` is the trace's window;
//! `turn_context` lines name the model (`payload.model`).

use serde::Deserialize;

use super::{Call, Ctx, Format, Location, Trace, TraceError, count, line_error, note_model};

const FORMAT: Format = Format::CodexRollout;

#[derive(Deserialize)]
struct Line {
    /// `event_msg` for the lines that can carry usage.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The event.
    payload: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    /// `token_count` for usage events.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The usage; `null` before the first response.
    info: Option<Info>,
}

/// A `turn_context` line's payload: the settings of a turn.
#[derive(Deserialize)]
struct TurnContext {
    /// The model the turn's calls go to.
    model: Option<String>,
}

#[derive(Deserialize)]
struct Info {
    /// The running billing total: only used to spot a repeated event.
    total_token_usage: Option<TokenUsage>,
    /// The latest response: the call's context.
    last_token_usage: Option<TokenUsage>,
    /// The window Codex measures against.
    model_context_window: Option<f64>,
}

#[derive(Deserialize, PartialEq, Clone, Copy)]
struct TokenUsage {
    /// The prompt, cached part included.
    input_tokens: Option<f64>,
    /// The reply, reasoning included.
    output_tokens: Option<f64>,
    /// `input + output`; validated, and compared to spot repeats.
    total_tokens: Option<f64>,
}

pub(super) fn read(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    let mut calls = Vec::new();
    let mut window = None;
    // The previous usage event's identity: its running total, or its last usage without one.
    let mut previous: Option<TokenUsage> = None;
    let mut model = None;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        // Only event lines can hold usage; the rest (model output, tool calls) is skipped
        // without being parsed field by field.
        if !raw.contains("\"token_count\"") {
            if raw.contains("\"turn_context\"") {
                note_turn_model(ctx, raw, line_no, &mut model)?;
            } else {
                serde_json::from_str::<serde::de::IgnoredAny>(raw)
                    .map_err(|e| line_error(ctx, FORMAT, line_no, &e))?;
            }
            continue;
        }
        let line: Line =
            serde_json::from_str(raw).map_err(|e| line_error(ctx, FORMAT, line_no, &e))?;
        let Some(payload) = line.payload else {
            continue;
        };
        if line.kind.as_deref() != Some("event_msg")
            || payload.kind.as_deref() != Some("token_count")
        {
            continue;
        }
        let Some(info) = payload.info else { continue };
        let at = Location::Line(line_no, None);
        if let Some(w) = info.model_context_window {
            window = Some(count(ctx, FORMAT, at, "model_context_window", w)?).filter(|w| *w > 0);
        }
        let Some(last) = info.last_token_usage else {
            return Err(ctx.broken(FORMAT, at, "token_count info without last_token_usage"));
        };
        let key = info.total_token_usage.unwrap_or(last);
        if previous == Some(key) {
            continue;
        }
        previous = Some(key);
        let input = last
            .input_tokens
            .ok_or_else(|| ctx.broken(FORMAT, at, "last_token_usage without input_tokens"))?;
        calls.push(Call {
            prompt_tokens: count(ctx, FORMAT, at, "input_tokens", input)?,
            completion_tokens: count(
                ctx,
                FORMAT,
                at,
                "output_tokens",
                last.output_tokens.unwrap_or(0.0),
            )?,
        });
        if let Some(total) = last.total_tokens {
            count(ctx, FORMAT, at, "total_tokens", total)?;
        }
    }
    let mut trace = ctx.trace(FORMAT, calls, window)?;
    trace.model = model;
    Ok(vec![trace])
}

/// Reads a `turn_context` line and keeps the model it names.
fn note_turn_model(
    ctx: &Ctx,
    raw: &str,
    line_no: usize,
    model: &mut Option<String>,
) -> Result<(), TraceError> {
    #[derive(Deserialize)]
    struct TurnLine {
        #[serde(rename = "type")]
        kind: Option<String>,
        payload: Option<serde_json::Value>,
    }
    let line: TurnLine =
        serde_json::from_str(raw).map_err(|e| line_error(ctx, FORMAT, line_no, &e))?;
    if line.kind.as_deref() == Some("turn_context")
        && let Some(turn) = line
            .payload
            .and_then(|p| serde_json::from_value::<TurnContext>(p).ok())
    {
        note_model(model, turn.model.as_deref());
    }
    Ok(())
}

//! SWE-agent trajectories (`*.traj`), which record token totals only.
//!
//! One JSON object `{environment, trajectory[], history[], info}`. `info.model_stats` holds
//! `tokens_sent`, `tokens_received` and `api_calls` for the whole run; there are no per-call
//! figures. Every model call, though, sent the `history` up to its reply, so each call is rebuilt:
//! its prompt is the chat-formula count of the history before the assistant message
//! ([`Encoding::prompt_tokens`]), its completion the tokens of that message's content and tool
//! calls. The vocabulary is `cl100k_base`, GPT-4's, which the recorded SWE-agent runs used; for
//! those this reproduces `tokens_sent` and `tokens_received` exactly. The figures are baton's
//! count ([`Format::usage_source`] is `Estimated`). History entries of other agents than the
//! primary one (SWE-agent 1.x reviewers) are left out.

use serde::Deserialize;
use serde_json::Value;

use super::{Call, Ctx, Format, Location, Trace, TraceError};
use crate::provider::estimate::{Encoding, Message, PromptCounter, REPLY_PRIMING, ToolCall};

const FORMAT: Format = Format::SweAgent;

/// The vocabulary of the GPT-4 runs SWE-agent trajectories come from.
const ENCODING: Encoding = Encoding::Cl100kBase;

#[derive(Deserialize)]
struct Doc {
    /// Every message, in order; each assistant message is one model call.
    history: Vec<Value>,
    /// Where the recorded totals are.
    info: Option<Info>,
}

#[derive(Deserialize)]
struct Info {
    /// The run's totals.
    model_stats: Option<ModelStats>,
}

#[derive(Deserialize)]
struct ModelStats {
    /// Sum of every call's prompt, to check the rebuilt calls against.
    tokens_sent: Option<f64>,
    /// Sum of every call's completion, likewise.
    tokens_received: Option<f64>,
}

pub(super) fn read(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    let doc: Doc = serde_json::from_str(text).map_err(|e| {
        ctx.broken(
            FORMAT,
            Location::Line(e.line(), Some(e.column())),
            e.to_string(),
        )
    })?;
    let mut counter = PromptCounter::new(ENCODING);
    let mut calls = Vec::new();
    for (i, entry) in doc.history.iter().enumerate() {
        let at = Location::Entry("history", i + 1);
        let agent = entry.get("agent").and_then(Value::as_str);
        if agent.is_some_and(|a| a != "primary") {
            continue;
        }
        let m = Message::from_openai(entry).map_err(|e| ctx.broken(FORMAT, at, e.to_string()))?;
        if m.role == "assistant" {
            calls.push(Call {
                prompt_tokens: counter.message_tokens() + REPLY_PRIMING,
                completion_tokens: reply_tokens(&m),
            });
        }
        counter.push(&m);
    }
    let trace = ctx.trace(FORMAT, calls, None)?;
    check_totals(ctx, &trace, doc.info.and_then(|i| i.model_stats));
    Ok(vec![trace])
}

/// The tokens a reply cost: its content and tool calls, without the chat framing (which
/// belongs to the next prompt).
fn reply_tokens(m: &Message) -> u64 {
    ENCODING.count(&m.content)
        + m.tool_calls
            .iter()
            .map(|ToolCall { name, arguments }| ENCODING.count(name) + ENCODING.count(arguments))
            .sum::<u64>()
}

/// Logs when the rebuilt calls do not add up to the recorded totals (another model's
/// vocabulary, or a history that is not what was sent).
fn check_totals(ctx: &Ctx, trace: &Trace, stats: Option<ModelStats>) {
    let Some(stats) = stats else { return };
    let sent: u64 = trace.calls.iter().map(|c| c.prompt_tokens).sum();
    let received: u64 = trace.calls.iter().map(|c| c.completion_tokens).sum();
    let recorded = (
        stats.tokens_sent.unwrap_or(0.0),
        stats.tokens_received.unwrap_or(0.0),
    );
    if recorded.0 > 0.0 && (recorded.0 != sent as f64 || recorded.1 != received as f64) {
        tracing::info!(
            file = %ctx.path.display(),
            sent,
            received,
            recorded_sent = recorded.0,
            recorded_received = recorded.1,
            "SWE-agent calls rebuilt with cl100k_base differ from the recorded totals"
        );
    }
}

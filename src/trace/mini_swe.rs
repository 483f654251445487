//! mini-swe-agent trajectories (`*.traj.json`, format `mini-swe-agent-1.1`).
//!
//! One JSON object `{info, messages[]}`; every assistant message carries the provider's
//! response in `extra.response`, whose `usage` has `prompt_tokens` and `completion_tokens`.
//! The window is not recorded.

use serde::Deserialize;

use super::{Call, Ctx, Format, Location, Trace, TraceError, count};

const FORMAT: Format = Format::MiniSweAgent;

#[derive(Deserialize)]
struct Doc {
    messages: Option<Vec<Message>>,
    instance_id: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    extra: Option<Extra>,
}

#[derive(Deserialize)]
struct Extra {
    response: Option<Response>,
}

#[derive(Deserialize)]
struct Response {
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<f64>,
    completion_tokens: Option<f64>,
}

pub(super) fn read(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    let doc: Doc = match serde_json::from_str(text) {
        Ok(doc) => doc,
        Err(e) if e.is_data() => {
            // Valid JSON of another shape (a list, or a `messages` that is not a list).
            return Err(ctx.unknown(format!("a JSON document of another shape: {e}")));
        }
        Err(e) => {
            return Err(ctx.broken(
                FORMAT,
                Location::Line(e.line(), Some(e.column())),
                e.to_string(),
            ));
        }
    };
    let Some(messages) = doc.messages else {
        return Err(ctx.unknown("a JSON object without a messages list"));
    };
    let mut calls = Vec::new();
    for m in messages.iter().filter(|m| m.role == "assistant") {
        let at = Location::Call(calls.len() + 1);
        let usage = m
            .extra
            .as_ref()
            .and_then(|e| e.response.as_ref())
            .and_then(|r| r.usage.as_ref())
            .ok_or_else(|| {
                ctx.broken(FORMAT, at, "assistant message without extra.response.usage")
            })?;
        let prompt = usage
            .prompt_tokens
            .ok_or_else(|| ctx.broken(FORMAT, at, "usage without prompt_tokens"))?;
        calls.push(Call {
            prompt_tokens: count(ctx, FORMAT, at, "prompt_tokens", prompt)?,
            completion_tokens: count(
                ctx,
                FORMAT,
                at,
                "completion_tokens",
                usage.completion_tokens.unwrap_or(0.0),
            )?,
        });
    }
    let mut trace = ctx.trace(FORMAT, calls, None)?;
    if let Some(id) = doc.instance_id {
        trace.name = id;
    }
    Ok(vec![trace])
}

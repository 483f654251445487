//! mini-swe-agent trajectories (`*.traj.json`, format `mini-swe-agent-1.1`).
//!
//! One JSON object `{info, messages[]}`; every assistant message carries the provider's
//! response in `extra.response`, whose `usage` has `prompt_tokens` and `completion_tokens`.
//! Both figures are required: litellm always fills them, so a usage without one is broken, not
//! zero. The window is not recorded; `extra.response.model` names the model.

use serde::Deserialize;

use super::{Call, Ctx, Format, Location, Trace, TraceError, count, note_model};

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
    /// litellm's usage object.
    usage: Option<RawUsage>,
    /// The model that answered (`deepseek-chat`).
    model: Option<String>,
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
    let mut model = None;
    for m in messages.iter().filter(|m| m.role == "assistant") {
        let at = Location::Call(calls.len() + 1);
        let response = m.extra.as_ref().and_then(|e| e.response.as_ref());
        note_model(&mut model, response.and_then(|r| r.model.as_deref()));
        let usage = response.and_then(|r| r.usage.as_ref()).ok_or_else(|| {
            ctx.broken(FORMAT, at, "assistant message without extra.response.usage")
        })?;
        // litellm always fills both figures; a usage without one is not a real response's, and
        // reading it as 0 would understate the context.
        let figure = |value: Option<f64>, field: &'static str| {
            let value =
                value.ok_or_else(|| ctx.broken(FORMAT, at, format!("usage without {field}")))?;
            count(ctx, FORMAT, at, field, value)
        };
        calls.push(Call {
            prompt_tokens: figure(usage.prompt_tokens, "prompt_tokens")?,
            completion_tokens: figure(usage.completion_tokens, "completion_tokens")?,
        });
    }
    let mut trace = ctx.trace(FORMAT, calls, None)?;
    trace.model = model;
    if let Some(id) = doc.instance_id {
        trace.name = id;
    }
    Ok(vec![trace])
}

//! OpenHands event streams (the JSON list of events the runtime records, as in
//! `tests/runtime/trajs/*.json`).
//!
//! Each event is `{id, timestamp, source, action|observation, ...}`. An event the model caused
//! carries `tool_call_metadata.model_response`: litellm's ChatCompletion, with `usage`. The same
//! response is repeated on the observation that answers the action, so calls are counted once
//! per distinct `model_response.id`, in order of first appearance; a response without an id is
//! told apart by its whole content instead (a repeat is the same object, and two calls never
//! are). The usage is read with [`parse_usage`](crate::provider::parse_usage), so Anthropic cache
//! fields are accounted for. No window is recorded; `model_response.model` names the model.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use super::{Call, Ctx, Format, Location, Trace, TraceError, note_model, usage_error};
use crate::provider::parse_usage;

const FORMAT: Format = Format::OpenHandsEvents;

#[derive(Deserialize)]
struct Event {
    /// Present on events the model caused; holds its response.
    tool_call_metadata: Option<Metadata>,
    /// The event is an action (tells an event stream from another list).
    #[serde(default, deserialize_with = "present")]
    action: bool,
    /// The event is an observation (likewise).
    #[serde(default, deserialize_with = "present")]
    observation: bool,
}

#[derive(Deserialize)]
struct Metadata {
    /// litellm's ChatCompletion for the call, kept whole: without an id, its content is the
    /// dedupe key.
    model_response: Option<Value>,
}

/// What identifies one response among its repeats.
#[derive(PartialEq, Eq, Hash)]
enum ResponseKey<'a> {
    /// `model_response.id`.
    Id(&'a str),
    /// The whole response, as compact JSON, when it has no id.
    Content(String),
}

impl<'a> ResponseKey<'a> {
    fn of(response: &'a Value) -> Self {
        match response.get("id").and_then(Value::as_str) {
            Some(id) => Self::Id(id),
            None => Self::Content(response.to_string()),
        }
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

pub(super) fn read(ctx: &Ctx, text: &str) -> Result<Vec<Trace>, TraceError> {
    let events: Vec<Event> = match serde_json::from_str(text) {
        Ok(events) => events,
        Err(e) if e.is_data() && !first_element_is_object(text) => {
            return Err(ctx.unknown(format!("a JSON list that is not of events: {e}")));
        }
        Err(e) => {
            return Err(ctx.broken(
                FORMAT,
                Location::Line(e.line(), Some(e.column())),
                e.to_string(),
            ));
        }
    };
    if !events.iter().any(|e| e.action || e.observation) {
        return Err(ctx.unknown("a JSON list without OpenHands actions or observations"));
    }
    let mut seen = HashSet::new();
    let mut calls = Vec::new();
    let mut model = None;
    for (i, event) in events.iter().enumerate() {
        let Some(response) = event
            .tool_call_metadata
            .as_ref()
            .and_then(|m| m.model_response.as_ref())
        else {
            continue;
        };
        if !seen.insert(ResponseKey::of(response)) {
            continue;
        }
        note_model(&mut model, response.get("model").and_then(Value::as_str));
        let at = Location::Entry("event", i + 1);
        let Some(usage) = response.get("usage").filter(|u| !u.is_null()) else {
            tracing::debug!(event = i + 1, "model response without usage; skipped");
            continue;
        };
        let r = parse_usage(usage, None).map_err(|e| usage_error(ctx, FORMAT, at, e))?;
        calls.push(Call {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        });
    }
    let mut trace = ctx.trace(FORMAT, calls, None)?;
    trace.model = model;
    Ok(vec![trace])
}

/// True when the list's first element is an object (so a failure is a broken event stream, not
/// some other list).
fn first_element_is_object(text: &str) -> bool {
    text.trim_start()
        .strip_prefix('[')
        .is_some_and(|rest| rest.trim_start().starts_with('{'))
}

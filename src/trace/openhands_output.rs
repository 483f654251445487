//! OpenHands evaluation output (`output.jsonl`): one benchmark instance per line.
//!
//! Each line is `{instance_id, instruction, metadata, history[], metrics, error, ...}` and is
//! its own trace, named by `instance_id`. Per-call usage is in `metrics.token_usages[]`:
//! `prompt_tokens`, `completion_tokens`, `cache_read_tokens`, `cache_write_tokens` (and, in newer
//! versions, `context_window`, which becomes the trace's window; `metadata.llm_config.model`
//! names the model). `prompt_tokens` comes from
//! litellm, which already folds Anthropic's cache fields into it; a `prompt_tokens` smaller than
//! the cache fields cannot hold them, and they are added. An instance without usage (it failed
//! before its first call) is skipped with a warning.

use serde::Deserialize;
use serde_json::Value;

use super::{Call, Ctx, Format, Location, Trace, TraceError, count, line_error, note_model};

const FORMAT: Format = Format::OpenHandsOutput;

#[derive(Deserialize)]
struct Instance {
    /// The benchmark instance: the trace's name.
    instance_id: Option<Value>,
    /// Where the per-call usage is.
    metrics: Option<Metrics>,
    /// The run's settings: `llm_config.model` names the model.
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    /// The LLM settings of the run.
    llm_config: Option<LlmConfig>,
}

#[derive(Deserialize)]
struct LlmConfig {
    /// The model the instance's calls went to.
    model: Option<String>,
}

#[derive(Deserialize)]
struct Metrics {
    /// One entry per model call, in order.
    token_usages: Option<Vec<TokenUsage>>,
}

#[derive(Deserialize)]
struct TokenUsage {
    /// litellm's prompt tokens (normally with the cache folded in).
    prompt_tokens: Option<f64>,
    /// The reply.
    completion_tokens: Option<f64>,
    /// Tokens read from the prompt cache.
    cache_read_tokens: Option<f64>,
    /// Tokens written to the prompt cache.
    cache_write_tokens: Option<f64>,
    /// The model's window, in newer versions (0 when unknown).
    context_window: Option<f64>,
}

/// Reads the instances of `text`: one per line, or (`one_document`) a single pretty-printed
/// instance.
pub(super) fn read(ctx: &Ctx, text: &str, one_document: bool) -> Result<Vec<Trace>, TraceError> {
    let mut traces = Vec::new();
    let lines: Box<dyn Iterator<Item = (usize, &str)>> = if one_document {
        Box::new(std::iter::once((0, text)))
    } else {
        Box::new(text.lines().enumerate())
    };
    for (i, raw) in lines {
        if raw.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let instance: Instance = serde_json::from_str(raw).map_err(|e| {
            if one_document {
                ctx.broken(
                    FORMAT,
                    Location::Line(e.line(), Some(e.column())),
                    e.to_string(),
                )
            } else {
                line_error(ctx, FORMAT, line_no, &e)
            }
        })?;
        let name = match &instance.instance_id {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("{}:{line_no}", ctx.name),
        };
        let usages = instance
            .metrics
            .and_then(|m| m.token_usages)
            .unwrap_or_default();
        let at = Location::Line(line_no, None);
        let mut calls = Vec::with_capacity(usages.len());
        let mut window = None;
        for u in &usages {
            let Some(prompt) = u.prompt_tokens else {
                return Err(ctx.broken(FORMAT, at, "a token_usages entry without prompt_tokens"));
            };
            let mut prompt = count(ctx, FORMAT, at, "prompt_tokens", prompt)?;
            let cache = count(
                ctx,
                FORMAT,
                at,
                "cache_read_tokens",
                u.cache_read_tokens.unwrap_or(0.0),
            )? + count(
                ctx,
                FORMAT,
                at,
                "cache_write_tokens",
                u.cache_write_tokens.unwrap_or(0.0),
            )?;
            if prompt < cache {
                prompt += cache;
            }
            let completion = count(
                ctx,
                FORMAT,
                at,
                "completion_tokens",
                u.completion_tokens.unwrap_or(0.0),
            )?;
            if let Some(w) = u.context_window {
                let w = count(ctx, FORMAT, at, "context_window", w)?;
                if w > 0 {
                    window = Some(w);
                }
            }
            calls.push(Call {
                prompt_tokens: prompt,
                completion_tokens: completion,
            });
        }
        if calls.is_empty() {
            tracing::warn!(file = %ctx.path.display(), line = line_no, instance = %name, "instance without token usage; skipped");
            continue;
        }
        let mut model = None;
        note_model(
            &mut model,
            instance
                .metadata
                .as_ref()
                .and_then(|m| m.llm_config.as_ref())
                .and_then(|c| c.model.as_deref()),
        );
        traces.push(Trace {
            name,
            format: FORMAT,
            calls,
            window,
            model,
        });
    }
    if traces.is_empty() {
        return Err(TraceError::Empty {
            path: ctx.path.to_owned(),
            expected: FORMAT.describe().into(),
        });
    }
    Ok(traces)
}

//! Context windows: how many tokens a session may occupy, and where that figure came from.
//!
//! The window is the denominator of every threshold, so a wrong one moves every compaction and
//! rotation. It can come from several places, ranked by how close they are to what the server
//! will actually accept ([`WindowSource`] is ordered by that rank; [`resolve_window`] picks the
//! best):
//!
//! 1. the user (always wins: operators know their deployments);
//! 2. llama.cpp `GET /props`: `default_generation_settings.n_ctx`, the context of one slot. The
//!    server divides its `--ctx-size` among its `--parallel` slots (`total_slots`) and reports
//!    the per-slot figure here, so it is used as is. A body that only carries a server-wide
//!    top-level `n_ctx` is divided by `total_slots`;
//! 3. `GET /v1/models`: vLLM's `max_model_len` (the serving limit), or Anthropic's
//!    `max_input_tokens`;
//! 4. llama.cpp's `GET /v1/models` `meta.n_ctx`: the context the server runs with (`--ctx-size`),
//!    shared by all its slots, so one slot may have less;
//! 5. llama.cpp's `GET /v1/models` `meta.n_ctx_train`: the model's training context, an upper
//!    bound the server may be configured below;
//! 6. a trace that records its window;
//! 7. a built-in table of well-known models' *input* windows ([`known_window`]). GPT-5 accepts
//!    272,000 input tokens, not the 400,000 it is advertised with (the rest is reserved for
//!    output).
//!
//! Only bodies are parsed here; fetching them is the chat client's job
//! ([`ChatClient::window`](crate::runtime::chat::ChatClient::window)).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::provider::reported::kind;
use crate::usage::{Usage, UsageError, count_from_f64};

/// Where a window figure came from. The order is the precedence: earlier sources win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSource {
    /// Given by the user (configuration or `--window`): always wins.
    User,
    /// llama.cpp `/props`: the context one slot really has.
    ServerSlot,
    /// `/v1/models`: the serving limit (vLLM `max_model_len`, Anthropic `max_input_tokens`).
    ServerModel,
    /// llama.cpp `/v1/models` `meta.n_ctx`: the server's whole context, which its slots share
    /// (a slot has this divided by `--parallel`); an upper bound on one request's window.
    ServerContext,
    /// llama.cpp `/v1/models` `meta.n_ctx_train`: the model's training context, which the
    /// server may be configured below.
    TrainingContext,
    /// Recorded in a trace.
    Trace,
    /// baton's table of well-known models.
    KnownModel,
}

/// A context window and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    /// The window in tokens; at least 1 and at most [`Usage::MAX_TOKENS`].
    pub tokens: u64,
    /// Where the figure came from, so that a misconfiguration can be traced.
    pub source: WindowSource,
}

impl Window {
    /// Validates a window: zero, or above [`Usage::MAX_TOKENS`], is refused.
    pub fn new(tokens: u64, source: WindowSource) -> Result<Self, UsageError> {
        Usage::new(0, tokens, crate::usage::UsageSource::Reported)?;
        Ok(Self { tokens, source })
    }

    /// A window the user set.
    pub fn user(tokens: u64) -> Result<Self, UsageError> {
        Self::new(tokens, WindowSource::User)
    }
}

/// Why a window could not be read from a body.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WindowError {
    /// The body is not valid JSON.
    #[error("window body is not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line where the parser stopped.
        line: usize,
        /// 1-based column where the parser stopped.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The body parsed but has none of the fields that carry a window.
    #[error("no context window in the {endpoint} body (looked for {looked_for})")]
    NotFound {
        /// `/v1/models` or `/props`.
        endpoint: &'static str,
        /// The fields looked for.
        looked_for: &'static str,
    },
    /// `/v1/models` lists models, none with the requested id.
    #[error("/v1/models lists no model {model:?} (it lists: {listed})")]
    NoSuchModel {
        /// The id asked for.
        model: String,
        /// The ids present.
        listed: String,
    },
    /// A window field holds something other than a number.
    #[error("`{field}` is {found}, not a number")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it holds instead.
        found: &'static str,
    },
    /// A window field is negative, fractional, zero or absurd.
    #[error("`{field}`: {source}")]
    BadFigure {
        /// The field.
        field: &'static str,
        /// What is wrong.
        source: UsageError,
    },
}

fn parse_body(text: &str) -> Result<Value, WindowError> {
    serde_json::from_str(text).map_err(|e| WindowError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Reads `value[key]` as a window figure (absent or `null`: `None`).
fn figure(value: &Value, key: &str, field: &'static str) -> Result<Option<u64>, WindowError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let tokens = count_from_f64(field, n.as_f64().unwrap_or(f64::NAN))
                .map_err(|source| WindowError::BadFigure { field, source })?;
            if tokens == 0 {
                return Err(WindowError::BadFigure {
                    field,
                    source: UsageError::ZeroWindow,
                });
            }
            Ok(Some(tokens))
        }
        Some(other) => Err(WindowError::WrongType {
            field,
            found: kind(other),
        }),
    }
}

/// Reads the window from a `GET /v1/models` body (a list under `data`, or one model object as
/// Anthropic's `GET /v1/models/{id}` returns). `model` picks the entry by `id` or by one of its
/// llama.cpp `aliases`; without it the first entry is used. A llama.cpp server (an entry with
/// `meta`) that lists a single model serves it whatever a request names, so that entry is used
/// for any `model`; other servers route by name, and an unlisted model is
/// [`WindowError::NoSuchModel`].
///
/// Fields, by precedence: `max_model_len` (vLLM) and `max_input_tokens` (Anthropic) give a
/// [`WindowSource::ServerModel`] window; `meta.n_ctx` (llama.cpp) a
/// [`WindowSource::ServerContext`] one; `meta.n_ctx_train` (llama.cpp) a
/// [`WindowSource::TrainingContext`] one.
pub fn window_from_models(text: &str, model: Option<&str>) -> Result<Window, WindowError> {
    let body = parse_body(text)?;
    let entries: Vec<&Value> = match body.get("data") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(other) => {
            return Err(WindowError::WrongType {
                field: "data",
                found: kind(other),
            });
        }
        None => vec![&body],
    };
    let named = |e: &Value, id: &str| {
        e.get("id").and_then(Value::as_str) == Some(id)
            || e.get("aliases")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(id)))
    };
    let single_llama_cpp = match entries[..] {
        [only] if only.get("meta").is_some_and(Value::is_object) => Some(only),
        _ => None,
    };
    let entry = match model {
        Some(id) => entries
            .iter()
            .find(|e| named(e, id))
            .copied()
            .or(single_llama_cpp)
            .ok_or_else(|| WindowError::NoSuchModel {
                model: id.to_owned(),
                listed: entries
                    .iter()
                    .filter_map(|e| e.get("id").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        None => entries.first().copied().ok_or(WindowError::NotFound {
            endpoint: "/v1/models",
            looked_for: "a model in `data`",
        })?,
    };
    let meta = entry.get("meta").filter(|m| m.is_object());
    let fields = [
        (
            Some(entry),
            "max_model_len",
            "max_model_len",
            WindowSource::ServerModel,
        ),
        (
            Some(entry),
            "max_input_tokens",
            "max_input_tokens",
            WindowSource::ServerModel,
        ),
        (meta, "n_ctx", "meta.n_ctx", WindowSource::ServerContext),
        (
            meta,
            "n_ctx_train",
            "meta.n_ctx_train",
            WindowSource::TrainingContext,
        ),
    ];
    for (parent, key, field, source) in fields {
        if let Some(parent) = parent
            && let Some(tokens) = figure(parent, key, field)?
        {
            return Ok(Window { tokens, source });
        }
    }
    Err(WindowError::NotFound {
        endpoint: "/v1/models",
        looked_for: "max_model_len, max_input_tokens, meta.n_ctx, meta.n_ctx_train",
    })
}

/// Reads the window of one slot from a llama.cpp `GET /props` body.
///
/// `default_generation_settings.n_ctx` is already the per-slot context (the server divides
/// `--ctx-size` by `--parallel` before reporting it), so it is taken as is. A body with only a
/// top-level `n_ctx` (a server-wide figure) is divided by `total_slots` (1 when absent).
pub fn window_from_props(text: &str) -> Result<Window, WindowError> {
    let body = parse_body(text)?;
    if let Some(settings) = body
        .get("default_generation_settings")
        .filter(|s| s.is_object())
        && let Some(t) = figure(settings, "n_ctx", "default_generation_settings.n_ctx")?
    {
        return Ok(Window {
            tokens: t,
            source: WindowSource::ServerSlot,
        });
    }
    if let Some(total) = figure(&body, "n_ctx", "n_ctx")? {
        let slots = figure(&body, "total_slots", "total_slots")?.unwrap_or(1);
        let per_slot = total / slots;
        if per_slot == 0 {
            return Err(WindowError::BadFigure {
                field: "n_ctx",
                source: UsageError::ZeroWindow,
            });
        }
        return Ok(Window {
            tokens: per_slot,
            source: WindowSource::ServerSlot,
        });
    }
    Err(WindowError::NotFound {
        endpoint: "/props",
        looked_for: "default_generation_settings.n_ctx, n_ctx",
    })
}

/// The number of slots a llama.cpp server serves requests with (`total_slots` in its `/props`
/// body), when it says. K sessions sending requests at once need K slots: slots beyond the first
/// share the server's context, and without `--parallel` they share one cache and fail with HTTP
/// 500 when it runs out.
pub fn slots_from_props(text: &str) -> Option<u64> {
    let body: Value = serde_json::from_str(text).ok()?;
    body.get("total_slots")?.as_u64().filter(|n| *n > 0)
}

/// Input windows of well-known models: `(model id prefix, tokens)`. The longest matching prefix
/// wins, so `gpt-4o` is not read as `gpt-4`. Where a model has a larger window behind a beta
/// header or a usage tier (Claude's 1M), the default one is listed: a window set too small
/// compacts early, one set too large overflows.
const KNOWN: &[(&str, u64)] = &[
    // OpenAI. GPT-5: 400K advertised, of which 128K are reserved for output.
    ("gpt-5", 272_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4-32k", 32_768),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    // Anthropic: 200K for Claude 3 and 4 models without the 1M beta.
    ("claude-", 200_000),
    ("claude-2", 100_000),
    // DeepSeek V3.x API models.
    ("deepseek-chat", 128_000),
    ("deepseek-reasoner", 128_000),
    // Z.ai GLM.
    ("glm-4.5", 128_000),
    ("glm-4.6", 200_000),
];

/// The input window of a well-known model, from baton's table, or `None`. The id is matched
/// case-insensitively by prefix, after any routing prefix (`openai/`, `anthropic/`, ...) and a
/// Bedrock-style vendor prefix (`anthropic.`, `us.anthropic.`) are dropped.
pub fn known_window(model: &str) -> Option<Window> {
    let lower = model.trim().to_ascii_lowercase();
    let mut id = lower.rsplit('/').next().unwrap_or(&lower);
    if let Some(at) = id.find("claude-") {
        id = &id[at..];
    }
    KNOWN
        .iter()
        .filter(|(prefix, _)| id.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|&(_, tokens)| Window {
            tokens,
            source: WindowSource::KnownModel,
        })
}

/// The window to use among the candidates: the one whose source ranks first (the user's,
/// when given). `None` when there is no candidate.
pub fn resolve_window(candidates: impl IntoIterator<Item = Window>) -> Option<Window> {
    candidates.into_iter().min_by_key(|w| w.source)
}

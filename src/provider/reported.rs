//! Provider usage objects: what one response says about the context it occupied.
//!
//! Every provider reports usage differently, and the differences are where agents go wrong.
//! [`parse_usage`] reads the shape of each common provider into one [`ReportedUsage`]:
//!
//! | provider | prompt (the context before the reply) | completion |
//! | --- | --- | --- |
//! | OpenAI Chat Completions, vLLM, OpenRouter | `prompt_tokens` (cached tokens are a subset) | `completion_tokens` |
//! | OpenAI Responses API | `input_tokens` (cached tokens are a subset) | `output_tokens` |
//! | Anthropic Messages | `input_tokens + cache_creation_input_tokens + cache_read_input_tokens` | `output_tokens` |
//! | DeepSeek | `prompt_tokens` (`= prompt_cache_hit_tokens + prompt_cache_miss_tokens`) | `completion_tokens` |
//! | litellm-normalised | `prompt_tokens`, which already holds the Anthropic cache fields; when it is smaller than them it cannot, and they are added | `completion_tokens` |
//! | llama.cpp `llama-server` | `timings.prompt_n + timings.cache_n` | `timings.predicted_n` |
//! | Ollama (native API) | `prompt_eval_count`; absent on a KV-cache hit, read as 0 (and so distrusted) | `eval_count` |
//!
//! The occupancy after the call is prompt + completion ([`ReportedUsage::occupancy`]). Usage is
//! never summed across calls: each request resends the whole history, so a sum is a billing
//! total, not what the context holds.
//!
//! The shape is detected from the JSON ([`detect_provider`]) unless the caller passes a hint;
//! Ollama's OpenAI-compatible `/v1` answers look exactly like OpenAI's, so only a hint names
//! them. A body may be a whole response, a streaming event that carries one (`response.usage`
//! of a Responses `response.completed` event, `message.usage` of an Anthropic `message_start`),
//! or the usage object alone.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::usage::{Usage, UsageError, UsageSource, count_from_f64};

/// The usage shapes baton reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// OpenAI Chat Completions, and every server that copies its `usage` (vLLM, OpenRouter,
    /// Ollama's `/v1`, llama.cpp's `usage`): `prompt_tokens`, `completion_tokens`.
    OpenAiChat,
    /// The OpenAI Responses API: `input_tokens`, `output_tokens`, `input_tokens_details`.
    OpenAiResponses,
    /// Anthropic Messages: `input_tokens` excludes the cache, which has its own two fields.
    Anthropic,
    /// DeepSeek: OpenAI's fields plus `prompt_cache_hit_tokens` and `prompt_cache_miss_tokens`.
    DeepSeek,
    /// A litellm-normalised response: OpenAI's fields, with Anthropic's cache fields alongside.
    Litellm,
    /// llama.cpp `llama-server`, whose `timings` state the context exactly.
    LlamaCpp,
    /// Ollama's native API: `prompt_eval_count` and `eval_count` at the top of the response.
    Ollama,
}

impl Provider {
    /// Every provider, in the order [`Provider::as_str`] lists them in help texts.
    pub const ALL: [Provider; 7] = [
        Provider::OpenAiChat,
        Provider::OpenAiResponses,
        Provider::Anthropic,
        Provider::DeepSeek,
        Provider::Litellm,
        Provider::LlamaCpp,
        Provider::Ollama,
    ];

    /// The provider's short name, as accepted by [`Provider::from_str`].
    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::OpenAiChat => "openai-chat",
            Provider::OpenAiResponses => "openai-responses",
            Provider::Anthropic => "anthropic",
            Provider::DeepSeek => "deepseek",
            Provider::Litellm => "litellm",
            Provider::LlamaCpp => "llama.cpp",
            Provider::Ollama => "ollama",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = ProviderError;

    /// Reads a provider hint (a configuration value): the names of [`Provider::as_str`], plus
    /// `openai`, `vllm` and `openrouter` for the Chat Completions shape, `responses`,
    /// `llamacpp` and `llama-cpp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p = match s.trim().to_ascii_lowercase().as_str() {
            "openai-chat" | "openai" | "vllm" | "openrouter" => Provider::OpenAiChat,
            "openai-responses" | "responses" => Provider::OpenAiResponses,
            "anthropic" => Provider::Anthropic,
            "deepseek" => Provider::DeepSeek,
            "litellm" => Provider::Litellm,
            "llama.cpp" | "llamacpp" | "llama-cpp" => Provider::LlamaCpp,
            "ollama" => Provider::Ollama,
            _ => {
                return Err(ProviderError::UnknownProvider { name: s.to_owned() });
            }
        };
        Ok(p)
    }
}

/// One response's usage, normalised: the context it occupied, and who said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReportedUsage {
    /// The shape the figures were read from, so that a decision can be traced to its evidence.
    pub provider: Provider,
    /// The prompt as the model saw it, cached or not: the context before the reply.
    pub prompt_tokens: u64,
    /// The reply, which joins the context for the next call.
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those served from a prompt cache, where the provider says. Already
    /// included in `prompt_tokens`; kept for reports (a cache hit is not a smaller context).
    pub cached_tokens: Option<u64>,
}

impl ReportedUsage {
    /// Tokens the conversation occupies once the reply has arrived: prompt plus completion.
    pub fn occupancy(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The occupancy as a reported [`Usage`] of `window`.
    pub fn to_usage(&self, window: u64) -> Result<Usage, UsageError> {
        Usage::new(self.occupancy(), window, UsageSource::Reported)
    }
}

/// Why a usage body could not be read. Every variant is bad input; none panics.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ProviderError {
    /// The text is not JSON (truncated, or not JSON at all).
    #[error("usage body is not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line where the parser stopped.
        line: usize,
        /// 1-based column where the parser stopped.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A part of the body that must be a JSON object is something else.
    #[error("`{field}` is {found}, not a JSON object")]
    NotAnObject {
        /// Which part (`body`, `usage`, `timings`).
        field: &'static str,
        /// What it is instead (`a string`, `an array`, ...).
        found: &'static str,
    },
    /// The body carries no usage: a streamed response cut before its final chunk, a stream
    /// without `include_usage`, or a server that does not report usage. Fall back to the
    /// estimate.
    #[error(
        "the response carries no usage (a stream cut before its last chunk, or a server that does not report it)"
    )]
    NoUsage,
    /// A usage object of no shape baton knows.
    #[error("unrecognised usage shape (keys: {keys}); pass a provider hint")]
    Unrecognised {
        /// The keys found, for the message.
        keys: String,
    },
    /// A field the provider's shape requires is absent (or `null`).
    #[error("{provider} usage has no `{field}`")]
    Missing {
        /// The shape read.
        provider: Provider,
        /// The field, with its parent for nested fields (`timings.cache_n`).
        field: &'static str,
    },
    /// A token field holds a string, a boolean, an object or an array.
    #[error("{provider} usage field `{field}` is {found}, not a number")]
    WrongType {
        /// The shape read.
        provider: Provider,
        /// The field.
        field: &'static str,
        /// What it holds instead.
        found: &'static str,
    },
    /// A token field is negative, fractional or absurdly large.
    #[error("{provider} usage field `{field}`: {source}")]
    BadFigure {
        /// The shape read.
        provider: Provider,
        /// The field.
        field: &'static str,
        /// What is wrong with the figure.
        source: UsageError,
    },
    /// A provider hint that names no provider.
    #[error(
        "unknown provider {name:?} (expected one of: openai-chat, openai-responses, anthropic, deepseek, litellm, llama.cpp, ollama)"
    )]
    UnknownProvider {
        /// The hint as given.
        name: String,
    },
}

/// Parses the usage in a response body given as text. See [`parse_usage`].
pub fn parse_usage_json(
    text: &str,
    hint: Option<Provider>,
) -> Result<ReportedUsage, ProviderError> {
    let body: Value = serde_json::from_str(text).map_err(|e| ProviderError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    parse_usage(&body, hint)
}

/// Reads the usage in `body` (a response, a streaming event that carries one, or the usage
/// object alone) as `hint`'s shape, or as the shape detected from its keys when there is no
/// hint.
pub fn parse_usage(body: &Value, hint: Option<Provider>) -> Result<ReportedUsage, ProviderError> {
    let top = body.as_object().ok_or(ProviderError::NotAnObject {
        field: "body",
        found: kind(body),
    })?;
    let usage = locate(top)?;
    let provider = match hint {
        Some(p) => p,
        None => detect(top, usage).ok_or_else(|| match usage {
            None => ProviderError::NoUsage,
            Some(u) => ProviderError::Unrecognised {
                keys: u.keys().cloned().collect::<Vec<_>>().join(", "),
            },
        })?,
    };
    read_as(provider, top, usage)
}

/// The provider whose shape `body` has, when its keys say so. Ollama's `/v1` answers look like
/// OpenAI's and are detected as [`Provider::OpenAiChat`], which reads them correctly.
pub fn detect_provider(body: &Value) -> Option<Provider> {
    let top = body.as_object()?;
    detect(top, locate(top).ok().flatten())
}

/// Finds the usage object: `usage`, `response.usage`, `message.usage`, or the body itself when
/// it holds token fields. `Ok(None)` when there is none (`usage: null` included).
fn locate(top: &Map<String, Value>) -> Result<Option<&Map<String, Value>>, ProviderError> {
    match top.get("usage") {
        Some(Value::Object(u)) => return Ok(Some(u)),
        Some(Value::Null) => return Ok(None),
        Some(other) => {
            return Err(ProviderError::NotAnObject {
                field: "usage",
                found: kind(other),
            });
        }
        None => {}
    }
    for parent in ["response", "message"] {
        if let Some(Value::Object(u)) = top
            .get(parent)
            .and_then(Value::as_object)
            .and_then(|p| p.get("usage"))
        {
            return Ok(Some(u));
        }
    }
    if ["prompt_tokens", "input_tokens", "prompt_cache_hit_tokens"]
        .iter()
        .any(|k| top.contains_key(*k))
    {
        return Ok(Some(top));
    }
    Ok(None)
}

fn detect(top: &Map<String, Value>, usage: Option<&Map<String, Value>>) -> Option<Provider> {
    if top.get("timings").is_some_and(Value::is_object) {
        return Some(Provider::LlamaCpp);
    }
    if top.contains_key("prompt_eval_count") || top.contains_key("eval_count") {
        return Some(Provider::Ollama);
    }
    let u = usage?;
    let has = |k: &str| u.contains_key(k);
    if has("prompt_cache_hit_tokens") || has("prompt_cache_miss_tokens") {
        Some(Provider::DeepSeek)
    } else if has("prompt_tokens") {
        if has("cache_creation_input_tokens") || has("cache_read_input_tokens") {
            Some(Provider::Litellm)
        } else {
            Some(Provider::OpenAiChat)
        }
    } else if has("input_tokens") {
        let anthropic_cache = has("cache_creation_input_tokens")
            || has("cache_read_input_tokens")
            || has("cache_creation");
        let responses =
            has("input_tokens_details") || has("output_tokens_details") || has("total_tokens");
        if responses && !anthropic_cache {
            Some(Provider::OpenAiResponses)
        } else {
            Some(Provider::Anthropic)
        }
    } else {
        None
    }
}

fn read_as(
    p: Provider,
    top: &Map<String, Value>,
    usage: Option<&Map<String, Value>>,
) -> Result<ReportedUsage, ProviderError> {
    let need = || usage.ok_or(ProviderError::NoUsage);
    match p {
        Provider::OpenAiChat => chat(p, need()?),
        Provider::Litellm => litellm(need()?),
        Provider::DeepSeek => deepseek(need()?),
        Provider::OpenAiResponses => responses(need()?),
        Provider::Anthropic => anthropic(need()?),
        Provider::LlamaCpp => llama_cpp(top, usage),
        Provider::Ollama => ollama(top, usage),
    }
}

fn chat(p: Provider, u: &Map<String, Value>) -> Result<ReportedUsage, ProviderError> {
    Ok(ReportedUsage {
        provider: p,
        prompt_tokens: required(p, u, "prompt_tokens")?,
        completion_tokens: required(p, u, "completion_tokens")?,
        cached_tokens: nested(
            p,
            u,
            "prompt_tokens_details",
            "cached_tokens",
            "prompt_tokens_details.cached_tokens",
        )?,
    })
}

fn litellm(u: &Map<String, Value>) -> Result<ReportedUsage, ProviderError> {
    let p = Provider::Litellm;
    let mut r = chat(p, u)?;
    let creation = figure(p, u, "cache_creation_input_tokens")?.unwrap_or(0);
    let read = figure(p, u, "cache_read_input_tokens")?;
    // litellm folds Anthropic's cache fields into prompt_tokens (the shared OpenHands trace
    // shows 3601 = 6 + 160 + 3435). A prompt_tokens smaller than the cache fields cannot hold
    // them: it is the raw input_tokens, and the cache is added. Limitation: a raw input_tokens
    // at least as large as the cache fields looks folded and is left alone, understating the
    // prompt by the cache (documented in docs/semantics.md).
    let cache = creation + read.unwrap_or(0);
    if r.prompt_tokens < cache {
        r.prompt_tokens += cache;
    }
    r.cached_tokens = read.or(r.cached_tokens);
    Ok(r)
}

fn deepseek(u: &Map<String, Value>) -> Result<ReportedUsage, ProviderError> {
    let p = Provider::DeepSeek;
    let hit = figure(p, u, "prompt_cache_hit_tokens")?;
    let miss = figure(p, u, "prompt_cache_miss_tokens")?;
    let parts = match (hit, miss) {
        (Some(h), Some(m)) => Some(h + m),
        _ => None,
    };
    let prompt = match (figure(p, u, "prompt_tokens")?, parts) {
        (Some(prompt), Some(parts)) if prompt != parts => {
            tracing::debug!(
                prompt,
                parts,
                "DeepSeek prompt_tokens differs from hit + miss"
            );
            prompt
        }
        (Some(prompt), _) => prompt,
        (None, Some(parts)) => parts,
        (None, None) => {
            return Err(ProviderError::Missing {
                provider: p,
                field: "prompt_tokens",
            });
        }
    };
    Ok(ReportedUsage {
        provider: p,
        prompt_tokens: prompt,
        completion_tokens: required(p, u, "completion_tokens")?,
        cached_tokens: hit,
    })
}

fn responses(u: &Map<String, Value>) -> Result<ReportedUsage, ProviderError> {
    let p = Provider::OpenAiResponses;
    Ok(ReportedUsage {
        provider: p,
        prompt_tokens: required(p, u, "input_tokens")?,
        completion_tokens: required(p, u, "output_tokens")?,
        cached_tokens: nested(
            p,
            u,
            "input_tokens_details",
            "cached_tokens",
            "input_tokens_details.cached_tokens",
        )?,
    })
}

fn anthropic(u: &Map<String, Value>) -> Result<ReportedUsage, ProviderError> {
    let p = Provider::Anthropic;
    let input = required(p, u, "input_tokens")?;
    let creation = match figure(p, u, "cache_creation_input_tokens")? {
        Some(c) => c,
        // Only the per-lifetime breakdown: its parts add up to the same figure.
        None => {
            nested(
                p,
                u,
                "cache_creation",
                "ephemeral_5m_input_tokens",
                "cache_creation.ephemeral_5m_input_tokens",
            )?
            .unwrap_or(0)
                + nested(
                    p,
                    u,
                    "cache_creation",
                    "ephemeral_1h_input_tokens",
                    "cache_creation.ephemeral_1h_input_tokens",
                )?
                .unwrap_or(0)
        }
    };
    let read = figure(p, u, "cache_read_input_tokens")?;
    Ok(ReportedUsage {
        provider: p,
        prompt_tokens: input + creation + read.unwrap_or(0),
        completion_tokens: required(p, u, "output_tokens")?,
        cached_tokens: read,
    })
}

fn llama_cpp(
    top: &Map<String, Value>,
    usage: Option<&Map<String, Value>>,
) -> Result<ReportedUsage, ProviderError> {
    let p = Provider::LlamaCpp;
    let timings = match top.get("timings") {
        Some(Value::Object(t)) => Some(t),
        None | Some(Value::Null) => None,
        Some(other) => {
            return Err(ProviderError::NotAnObject {
                field: "timings",
                found: kind(other),
            });
        }
    };
    let Some(t) = timings else {
        return chat(p, usage.ok_or(ProviderError::NoUsage)?);
    };
    // The server's README: "the total number of tokens in context is equal to
    // prompt_n + cache_n + predicted_n". Versions without cache_n report only the evaluated
    // part of the prompt in prompt_n, so their `usage` is used instead.
    let Some(cache) = figure_labelled(p, t, "cache_n", "timings.cache_n")? else {
        return match usage {
            Some(u) => chat(p, u),
            None => Err(ProviderError::Missing {
                provider: p,
                field: "timings.cache_n",
            }),
        };
    };
    let prompt =
        figure_labelled(p, t, "prompt_n", "timings.prompt_n")?.ok_or(ProviderError::Missing {
            provider: p,
            field: "timings.prompt_n",
        })?;
    let predicted = figure_labelled(p, t, "predicted_n", "timings.predicted_n")?.ok_or(
        ProviderError::Missing {
            provider: p,
            field: "timings.predicted_n",
        },
    )?;
    Ok(ReportedUsage {
        provider: p,
        prompt_tokens: prompt + cache,
        completion_tokens: predicted,
        cached_tokens: Some(cache),
    })
}

fn ollama(
    top: &Map<String, Value>,
    usage: Option<&Map<String, Value>>,
) -> Result<ReportedUsage, ProviderError> {
    let p = Provider::Ollama;
    if !top.contains_key("prompt_eval_count") && !top.contains_key("eval_count") {
        // The OpenAI-compatible `/v1` shape, or a streaming chunk that is not the last.
        return chat(p, usage.ok_or(ProviderError::NoUsage)?);
    }
    Ok(ReportedUsage {
        provider: p,
        // Ollama leaves prompt_eval_count out when the whole prompt came from its KV cache: read
        // as 0, which the tracker distrusts.
        prompt_tokens: figure(p, top, "prompt_eval_count")?.unwrap_or(0),
        completion_tokens: required(p, top, "eval_count")?,
        cached_tokens: None,
    })
}

fn figure(
    p: Provider,
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, ProviderError> {
    figure_labelled(p, obj, field, field)
}

/// Reads `obj[key]` as a token count: absent or `null` is `None`; anything but a whole,
/// non-negative number of sane size is a typed error naming `label`.
fn figure_labelled(
    p: Provider,
    obj: &Map<String, Value>,
    key: &str,
    label: &'static str,
) -> Result<Option<u64>, ProviderError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let value = n.as_f64().unwrap_or(f64::NAN);
            count_from_f64(label, value)
                .map(Some)
                .map_err(|source| ProviderError::BadFigure {
                    provider: p,
                    field: label,
                    source,
                })
        }
        Some(other) => Err(ProviderError::WrongType {
            provider: p,
            field: label,
            found: kind(other),
        }),
    }
}

fn required(
    p: Provider,
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<u64, ProviderError> {
    figure(p, obj, field)?.ok_or(ProviderError::Missing { provider: p, field })
}

/// `obj[parent][key]`, where a missing or `null` parent is `None` too.
fn nested(
    p: Provider,
    obj: &Map<String, Value>,
    parent: &str,
    key: &str,
    label: &'static str,
) -> Result<Option<u64>, ProviderError> {
    match obj.get(parent) {
        Some(Value::Object(inner)) => figure_labelled(p, inner, key, label),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(ProviderError::WrongType {
            provider: p,
            field: label,
            found: kind(other),
        }),
    }
}

/// What a JSON value is, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

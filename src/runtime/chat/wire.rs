//! The Chat Completions wire format (`POST /v1/chat/completions`), as OpenAI defines it and
//! llama.cpp `llama-server`, vLLM, Ollama, DeepSeek and OpenRouter speak it.
//!
//! Requests are typed completely, because baton writes them. Responses are typed where baton
//! reads them (choices, messages, tool calls, llama.cpp `timings`) and lenient elsewhere: a field
//! a server leaves out, or one that only some servers send, never fails the parse. The `usage`
//! object is kept as raw JSON, because providers disagree about its shape (cache fields,
//! reasoning tokens, Anthropic-style counts behind litellm); [`ChatResponse::usage_reading`] reads
//! the two figures every OpenAI-compatible server sends and says when they cannot be trusted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::usage::count_from_f64;

/// Who wrote a message. The wire spells these in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The instructions that frame the conversation; kept verbatim by every history rewrite.
    System,
    /// The user (or the orchestrator speaking for one): tasks, work items, handoffs.
    User,
    /// The model's replies, including its tool calls.
    Assistant,
    /// The result of one tool call, bound to it by `tool_call_id`.
    Tool,
}

/// One message of a conversation, in the shape the wire carries it both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text. `None` (sent as `null`) for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<String>,
    /// The tool calls of an assistant message; never sent when empty, because some servers reject
    /// an empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
    /// For a `tool` message: the id of the call it answers. The pair must never be separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The model's separate reasoning text (`reasoning_content` in llama.cpp, DeepSeek and vLLM),
    /// when a reasoning parser is on. Read from replies for records, never sent back: providers
    /// ask clients to drop it from later requests.
    #[serde(default, skip_serializing)]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning_content: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// An assistant message that calls tools (its content is `null` on the wire).
    pub fn tool_calls(calls: Vec<ChatToolCall>) -> Self {
        Self {
            role: Role::Assistant,
            content: None,
            tool_calls: calls,
            tool_call_id: None,
            reasoning_content: None,
        }
    }

    /// The result of the tool call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }

    /// The text, or `""` when there is none.
    pub fn text(&self) -> &str {
        self.content.as_deref().unwrap_or("")
    }
}

/// One tool call made by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatToolCall {
    /// The call's id, which its result quotes as `tool_call_id`.
    pub id: String,
    /// Always `"function"` today; kept so that a future kind round-trips unchanged.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Which function, with which arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

impl ChatToolCall {
    /// A function call with JSON `arguments` already encoded as a string, as the wire wants.
    pub fn function(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            kind: function_kind(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }
}

/// The function half of a [`ChatToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name, as declared in the request's `tools`.
    pub name: String,
    /// The arguments, a JSON document encoded as a string (the wire's choice, not ours).
    #[serde(default)]
    pub arguments: String,
}

/// A Chat Completions request. Always non-streaming: baton needs the whole reply and its usage,
/// and streamed usage is lost when a stream is cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model to use. llama.cpp serves its one model whatever this says; others route by it.
    pub model: String,
    /// The whole conversation: servers keep no state between requests.
    pub messages: Vec<ChatMessage>,
    /// The longest reply wanted, in tokens. Also what a summary request reserves in its budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; `Some(0.0)` for the most repeatable output a server offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// A sampling seed, for servers that honour it (llama.cpp, vLLM, OpenAI on a best-effort
    /// basis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Tool declarations, passed through as JSON (their schema is the caller's business).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Always `false`; sent explicitly because some servers default to streaming.
    #[serde(default)]
    pub stream: bool,
}

impl ChatRequest {
    /// A request for `model` with these messages and no other options.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            max_tokens: None,
            temperature: None,
            seed: None,
            tools: Vec::new(),
            stream: false,
        }
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets `temperature`.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets `seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// A Chat Completions response. Only `choices` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The server's id for the completion (`chatcmpl-…`), for records and deduplication.
    #[serde(default)]
    pub id: Option<String>,
    /// `"chat.completion"`; not checked, because some proxies rewrite it.
    #[serde(default)]
    pub object: Option<String>,
    /// Unix seconds, as the server's clock says.
    #[serde(default)]
    pub created: Option<i64>,
    /// The model that answered, as the server names it.
    #[serde(default)]
    pub model: Option<String>,
    /// The replies; baton asks for one and reads the first.
    pub choices: Vec<Choice>,
    /// The provider's usage object, unparsed: see [`ChatResponse::usage_reading`].
    #[serde(default)]
    pub usage: Option<Value>,
    /// llama.cpp's timings, the only place its prompt-cache hits are broken down.
    #[serde(default)]
    pub timings: Option<Timings>,
    /// The server build (`b1-7e4c0a9` for llama.cpp), for records.
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

/// One reply of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its position among the choices.
    #[serde(default)]
    pub index: u32,
    /// The assistant's message.
    pub message: ChatMessage,
    /// `stop`, `length` (cut at `max_tokens` or at the window), `tool_calls`, ...
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// llama.cpp's per-request timings. Its README: "The total number of tokens in context is equal
/// to `prompt_n + cache_n + predicted_n`". Counts are signed because llama.cpp's own types are.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Prompt tokens served from the slot's cache (not evaluated again).
    pub cache_n: i64,
    /// Prompt tokens evaluated for this request.
    pub prompt_n: i64,
    /// Time spent evaluating them, in milliseconds.
    pub prompt_ms: f64,
    /// Tokens generated.
    pub predicted_n: i64,
    /// Time spent generating, in milliseconds.
    pub predicted_ms: f64,
}

impl Timings {
    /// Tokens in the slot's context after this request: `prompt_n + cache_n + predicted_n`.
    pub fn context_tokens(&self) -> i64 {
        self.prompt_n + self.cache_n + self.predicted_n
    }
}

/// The two figures every OpenAI-compatible `usage` carries, read from the raw object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the prompt, cached ones included: the conversation's size before the reply.
    pub prompt_tokens: u64,
    /// Tokens of the reply.
    pub completion_tokens: u64,
    /// `prompt_details.cached_tokens`, when the server reports cache hits.
    pub cached_tokens: Option<u64>,
}

impl TokenUsage {
    /// The context the conversation occupies after the reply: prompt plus completion. This, not
    /// a sum over calls, is a session's usage.
    pub fn context_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What a response says about its usage, and whether it can be believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UsageReading {
    /// A usable report.
    Reported {
        /// The figures.
        tokens: TokenUsage,
    },
    /// `prompt_tokens` is 0 although a prompt was sent: the Ollama cache-hit bug. The figures
    /// are kept for records, but the caller must estimate instead.
    ZeroPrompt {
        /// The figures as reported.
        tokens: TokenUsage,
    },
    /// The response has no `usage` (a server that omits it, or a cut stream).
    Missing,
    /// A `usage` object that is not a usage: negative, fractional or absent counts.
    Malformed {
        /// What was wrong, for the log.
        reason: String,
    },
}

impl UsageReading {
    /// The figures when they can be trusted.
    pub fn trusted(&self) -> Option<TokenUsage> {
        match self {
            Self::Reported { tokens } => Some(*tokens),
            _ => None,
        }
    }
}

impl ChatResponse {
    /// The first choice's message, which is the reply.
    pub fn message(&self) -> Option<&ChatMessage> {
        self.choices.first().map(|c| &c.message)
    }

    /// The reply's text, or `""`.
    pub fn text(&self) -> &str {
        self.message().map(ChatMessage::text).unwrap_or("")
    }

    /// Reads `usage` (see [`UsageReading`]).
    pub fn usage_reading(&self) -> UsageReading {
        match &self.usage {
            None | Some(Value::Null) => UsageReading::Missing,
            Some(raw) => match read_usage(raw) {
                Ok(tokens) if tokens.prompt_tokens == 0 => UsageReading::ZeroPrompt { tokens },
                Ok(tokens) => UsageReading::Reported { tokens },
                Err(reason) => UsageReading::Malformed { reason },
            },
        }
    }
}

/// Reads `prompt_tokens`, `completion_tokens` and `prompt_tokens_details.cached_tokens`.
fn read_usage(raw: &Value) -> Result<TokenUsage, String> {
    let count = |field: &'static str, value: Option<&Value>| -> Result<Option<u64>, String> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v
                    .as_f64()
                    .ok_or_else(|| format!("{field} is not a number: {v}"))?;
                count_from_f64(field, n)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        }
    };
    let prompt =
        count("prompt_tokens", raw.get("prompt_tokens"))?.ok_or("usage has no prompt_tokens")?;
    let completion = count("completion_tokens", raw.get("completion_tokens"))?.unwrap_or(0);
    let cached = count(
        "cached_tokens",
        raw.pointer("/prompt_tokens_details/cached_tokens"),
    )?;
    Ok(TokenUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The reply llama-server gave to a 3-message request (local-llm.md), trimmed.
    const LLAMA_REPLY: &str = r#"{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"The capital of France is Paris."}}],
 "created":1795571285,"model":"smollm2","system_fingerprint":"b1-7e4c0a9","object":"chat.completion",
 "usage":{"completion_tokens":8,"prompt_tokens":57,"total_tokens":65,"prompt_tokens_details":{"cached_tokens":0}},
 "id":"chatcmpl-x","timings":{"cache_n":0,"prompt_n":57,"prompt_ms":325.6,"prompt_per_token_ms":5.71,"prompt_per_second":175.1,
 "predicted_n":8,"predicted_ms":141.7,"predicted_per_token_ms":20.24,"predicted_per_second":49.4}}"#;

    #[test]
    fn a_llama_cpp_reply_parses_with_usage_and_timings() {
        let r: ChatResponse = serde_json::from_str(LLAMA_REPLY).unwrap();
        assert_eq!(r.text(), "The capital of France is Paris.");
        let tokens = r.usage_reading().trusted().unwrap();
        assert_eq!(tokens.context_tokens(), 65);
        assert_eq!(tokens.cached_tokens, Some(0));
        assert_eq!(r.timings.unwrap().context_tokens(), 65);
    }

    #[test]
    fn a_minimal_reply_with_only_choices_parses() {
        let r: ChatResponse = serde_json::from_str(
            r#"{"choices":[{"message":{"role":"assistant","content":"ok"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.text(), "ok");
        assert_eq!(r.usage_reading(), UsageReading::Missing);
    }

    #[test]
    fn zero_prompt_tokens_are_not_trusted() {
        let mut r: ChatResponse = serde_json::from_str(LLAMA_REPLY).unwrap();
        r.usage = Some(json!({"prompt_tokens": 0, "completion_tokens": 5}));
        assert!(matches!(r.usage_reading(), UsageReading::ZeroPrompt { .. }));
        assert_eq!(r.usage_reading().trusted(), None);
    }

    #[test]
    fn negative_or_fractional_usage_is_malformed() {
        let mut r: ChatResponse = serde_json::from_str(LLAMA_REPLY).unwrap();
        r.usage = Some(json!({"prompt_tokens": -3, "completion_tokens": 5}));
        assert!(matches!(r.usage_reading(), UsageReading::Malformed { .. }));
        r.usage = Some(json!({"prompt_tokens": 3.5}));
        assert!(matches!(r.usage_reading(), UsageReading::Malformed { .. }));
        r.usage = Some(json!({"completion_tokens": 5}));
        assert!(matches!(r.usage_reading(), UsageReading::Malformed { .. }));
    }

    #[test]
    fn tool_calls_round_trip_and_content_null_is_sent() {
        let m = ChatMessage::tool_calls(vec![ChatToolCall::function(
            "call_1",
            "bash",
            r#"{"command":"ls"}"#,
        )]);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["content"], Value::Null);
        assert_eq!(v["tool_calls"][0]["type"], "function");
        assert_eq!(serde_json::from_value::<ChatMessage>(v).unwrap(), m);
        let t = serde_json::to_value(ChatMessage::tool_result("call_1", "a b")).unwrap();
        assert_eq!(
            t,
            json!({"role":"tool","content":"a b","tool_call_id":"call_1"})
        );
    }

    #[test]
    fn reasoning_content_is_read_but_never_sent() {
        let m: ChatMessage = serde_json::from_value(
            json!({"role":"assistant","content":"4","reasoning_content":"2+2"}),
        )
        .unwrap();
        assert_eq!(m.reasoning_content.as_deref(), Some("2+2"));
        assert!(
            serde_json::to_value(&m)
                .unwrap()
                .get("reasoning_content")
                .is_none()
        );
    }

    #[test]
    fn requests_leave_out_unset_options_and_never_stream() {
        let r = ChatRequest::new("m", vec![ChatMessage::user("hi")]).max_tokens(16);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":false})
        );
    }
}

//! What can go wrong talking to a chat endpoint, typed so that the caller knows what to do:
//! rotate ([`ChatError::ContextOverflow`]), wait and try again ([`ChatError::retry_may_help`]), or
//! give up and report.
//!
//! A context overflow is recognised from the error body, whichever server sent it
//! ([`recognise_overflow`]): llama.cpp's `exceed_context_size_error`, vLLM's and OpenAI's
//! "maximum context length" messages, OpenAI's `context_length_exceeded` code and Anthropic's
//! "prompt is too long". It is never retried: the same request would overflow again.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

/// Why a chat request failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ChatError {
    /// The conversation does not fit the model's window. Never retried; the session must rotate
    /// (or compact) instead.
    #[error("context overflow: {0}")]
    ContextOverflow(ContextOverflow),
    /// HTTP 429, still after the retries the policy allows (or with a `Retry-After` longer than
    /// it is willing to wait).
    #[error("rate limited (HTTP 429) after {attempts} attempt(s): {message}")]
    RateLimited {
        /// Requests sent, the first included.
        attempts: u32,
        /// How long the server asked to wait, when it said.
        retry_after: Option<Duration>,
        /// The server's error message.
        message: String,
    },
    /// HTTP 5xx, still after the retries the policy allows.
    #[error("server error (HTTP {status}) after {attempts} attempt(s): {message}")]
    Server {
        /// The status code.
        status: u16,
        /// Requests sent, the first included.
        attempts: u32,
        /// The server's error message.
        message: String,
    },
    /// Any other refusal (400, 401, 404, ...): the request or the configuration is wrong, so
    /// sending it again would fail again.
    #[error("request refused (HTTP {status}{}): {message}", kind.as_deref().map(|k| format!(", {k}")).unwrap_or_default())]
    Refused {
        /// The status code.
        status: u16,
        /// The error's `type` (or `code`) field, when the body has one.
        kind: Option<String>,
        /// The server's error message.
        message: String,
    },
    /// No complete response within the request's timeout. Not retried by the client (a model
    /// that is slow now is likely slow again, and the caller's own deadline is at stake), but a
    /// later retry may help.
    #[error("no response within {timeout:?} (attempt {attempts})")]
    Timeout {
        /// The timeout that fired.
        timeout: Duration,
        /// Requests sent, the one that timed out included.
        attempts: u32,
    },
    /// The endpoint could not be reached (connection refused or reset, DNS, TLS), still after
    /// the retries the policy allows.
    #[error("could not reach {endpoint} after {attempts} attempt(s): {reason}")]
    Unreachable {
        /// The URL that was tried (it never carries the API key).
        endpoint: String,
        /// Requests tried, the first included.
        attempts: u32,
        /// The transport's explanation, causes included.
        reason: String,
    },
    /// The response body is larger than the client accepts ([`ClientConfig::max_body_bytes`]);
    /// refused, never retried, and read no further than the limit.
    ///
    /// [`ClientConfig::max_body_bytes`]: super::ClientConfig::max_body_bytes
    #[error("the response from {endpoint} is larger than {limit} bytes; refused")]
    TooLarge {
        /// The URL that answered.
        endpoint: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A success status with a body that is not what the wire format says.
    #[error("malformed response from {endpoint}: {reason}")]
    Malformed {
        /// The URL that answered.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// The client itself could not be set up (a base URL that is not a URL, a key that cannot
    /// go in a header).
    #[error("invalid chat client configuration: {0}")]
    Config(String),
}

impl ChatError {
    /// Whether sending the same request again later may succeed. True for rate limits, server
    /// errors, timeouts and unreachable endpoints; false for overflows (rotate instead),
    /// refusals, malformed responses and configuration errors.
    pub fn retry_may_help(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Unreachable { .. }
        )
    }

    /// The overflow, when this is one.
    pub fn overflow(&self) -> Option<&ContextOverflow> {
        match self {
            Self::ContextOverflow(o) => Some(o),
            _ => None,
        }
    }
}

/// `text` from a server with its control characters (and the bidirectional overrides that
/// reorder what a terminal shows) escaped as `\u{..}`, so that an error message cannot move the
/// cursor, clear a screen or retitle a window when it is printed or logged.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Which server family's error shape an overflow was recognised from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowShape {
    /// llama.cpp: `{"error":{"type":"exceed_context_size_error","n_prompt_tokens":N,"n_ctx":N,…}}`.
    LlamaCpp,
    /// vLLM (flat `{"object":"error","message":…}` or nested under `error`): "This model's
    /// maximum context length is N tokens. However, you requested M tokens (P in the messages, …)".
    Vllm,
    /// OpenAI: `"code":"context_length_exceeded"`.
    OpenAi,
    /// Anthropic, or a proxy passing its message on: "prompt is too long: N tokens > M maximum".
    Anthropic,
}

/// A recognised context overflow, with the numbers the server gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextOverflow {
    /// Which shape it was recognised from.
    pub shape: OverflowShape,
    /// The HTTP status (400 from every server seen so far).
    pub status: u16,
    /// Tokens the server counted in the request's prompt (llama.cpp `n_prompt_tokens`; vLLM's
    /// "P in the messages", or the requested total when it gives no split; OpenAI's "your
    /// messages resulted in N tokens"), when it said.
    pub prompt_tokens: Option<u64>,
    /// The window the server enforces (llama.cpp `n_ctx`, the slot's share; vLLM's "maximum
    /// context length"), when it said.
    pub window: Option<u64>,
    /// The server's message, its control characters escaped ([`printable`]).
    pub message: String,
}

impl fmt::Display for ContextOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        write!(
            f,
            "{} tokens requested, window {} ({:?}, HTTP {}): {}",
            show(self.prompt_tokens),
            show(self.window),
            self.shape,
            self.status,
            self.message
        )
    }
}

/// Recognises a context-overflow error in an error response's body (JSON or not). Returns
/// `None` for any other error. Pure, so the recognisers are tested on recorded samples.
pub fn recognise_overflow(status: u16, body: &str) -> Option<ContextOverflow> {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    // OpenAI, llama.cpp and newer vLLM nest the fields under "error"; older vLLM is flat; some
    // proxies send {"error": "message"}.
    let err = match json.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ => &json,
    };
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| json.get("error").and_then(Value::as_str))
        .unwrap_or(if json.is_null() { body } else { "" })
        .to_owned();
    let kind = err.get("type").and_then(Value::as_str).unwrap_or("");
    let code = err.get("code").and_then(Value::as_str).unwrap_or("");
    let lower = message.to_lowercase();
    let overflow = |shape, prompt_tokens, window| {
        Some(ContextOverflow {
            shape,
            status,
            prompt_tokens,
            window,
            message: printable(&message),
        })
    };

    if kind == "exceed_context_size_error" || lower.contains("exceeds the available context size") {
        let field = |name| err.get(name).and_then(Value::as_u64);
        return overflow(
            OverflowShape::LlamaCpp,
            field("n_prompt_tokens").or_else(|| int_after(&lower, "request (")),
            field("n_ctx").or_else(|| int_after(&lower, "context size (")),
        );
    }
    if lower.contains("maximum context length") {
        let window = int_after(&lower, "maximum context length is");
        let prompt = int_before(&lower, " in the messages")
            .or_else(|| int_after(&lower, "resulted in"))
            .or_else(|| int_after(&lower, "however,"));
        let shape = if code == "context_length_exceeded" {
            OverflowShape::OpenAi
        } else {
            OverflowShape::Vllm
        };
        return overflow(shape, prompt, window);
    }
    if code == "context_length_exceeded" {
        // GPT-5: "Input tokens exceed the configured limit of 272,000 tokens."
        return overflow(OverflowShape::OpenAi, None, int_after(&lower, "limit of"));
    }
    if lower.contains("prompt is too long") {
        return overflow(
            OverflowShape::Anthropic,
            int_after(&lower, "prompt is too long:"),
            int_after(&lower, "tokens >"),
        );
    }
    None
}

/// The first integer (digits, with optional thousands commas) within a short distance after
/// `marker` in `text`.
fn int_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    // A number far from its marker belongs to another phrase.
    if start > 24 {
        return None;
    }
    parse_int(&rest[start..])
}

/// The integer that ends right before `marker` (spaces allowed between).
fn int_before(text: &str, marker: &str) -> Option<u64> {
    let head = text[..text.find(marker)?].trim_end();
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || c == ','))
        .map_or(0, |i| i + 1);
    parse_int(&head[start..])
}

fn parse_int(s: &str) -> Option<u64> {
    let digits: String = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_overflow_carries_its_numbers() {
        // Measured: llama-server -c 2048, prompt of 5,554 tokens (local-llm.md).
        let body = r#"{"error":{"code":400,"message":"request (5554 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5554,"n_ctx":2048}}"#;
        let o = recognise_overflow(400, body).unwrap();
        assert_eq!(o.shape, OverflowShape::LlamaCpp);
        assert_eq!((o.prompt_tokens, o.window), (Some(5554), Some(2048)));
    }

    #[test]
    fn llama_cpp_overflow_message_alone_is_recognised() {
        let body = r#"{"error":{"message":"request (9412 tokens) exceeds the available context size (8192 tokens), try increasing it"}}"#;
        let o = recognise_overflow(400, body).unwrap();
        assert_eq!((o.prompt_tokens, o.window), (Some(9412), Some(8192)));
    }

    #[test]
    fn flat_vllm_overflow_is_recognised_with_the_message_split() {
        let body = r#"{"object":"error","message":"This model's maximum context length is 16384 tokens. However, you requested 17000 tokens (16000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#;
        let o = recognise_overflow(400, body).unwrap();
        assert_eq!(o.shape, OverflowShape::Vllm);
        assert_eq!((o.prompt_tokens, o.window), (Some(16000), Some(16384)));
    }

    #[test]
    fn nested_vllm_overflow_without_a_split_takes_the_requested_total() {
        let body = r#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, your request has 5000 input tokens. Please reduce the length of the input messages.","type":"BadRequestError","param":null,"code":400}}"#;
        let o = recognise_overflow(400, body).unwrap();
        assert_eq!(o.shape, OverflowShape::Vllm);
        assert_eq!((o.prompt_tokens, o.window), (Some(5000), Some(4096)));
    }

    #[test]
    fn openai_overflow_is_recognised_by_its_code() {
        let body = r#"{"error":{"message":"This model's maximum context length is 8,192 tokens. However, your messages resulted in 9,013 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let o = recognise_overflow(400, body).unwrap();
        assert_eq!(o.shape, OverflowShape::OpenAi);
        assert_eq!((o.prompt_tokens, o.window), (Some(9013), Some(8192)));
        let bare = r#"{"error":{"message":"Input tokens exceed the configured limit of 272,000 tokens.","code":"context_length_exceeded"}}"#;
        let o = recognise_overflow(400, bare).unwrap();
        assert_eq!((o.shape, o.window), (OverflowShape::OpenAi, Some(272_000)));
    }

    #[test]
    fn anthropic_prompt_too_long_is_recognised() {
        let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        let o = recognise_overflow(400, body).unwrap();
        assert_eq!(o.shape, OverflowShape::Anthropic);
        assert_eq!((o.prompt_tokens, o.window), (Some(210000), Some(200000)));
    }

    #[test]
    fn control_characters_from_a_server_are_escaped() {
        assert_eq!(
            printable("bad\u{1b}]0;pwned\u{7}\u{1b}[2J\nnext \u{202e}x"),
            "bad\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{a}next \\u{202e}x"
        );
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn other_errors_are_not_overflows() {
        for body in [
            r#"{"error":{"code":400,"message":"Expected 'messages' to be an array","type":"invalid_request_error"}}"#,
            r#"{"error":{"code":500,"message":"Context size has been exceeded.","type":"server_error"}}"#,
            r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#,
            "upstream connect error",
            "",
        ] {
            assert_eq!(recognise_overflow(400, body), None, "{body}");
        }
    }

    #[test]
    fn only_transient_errors_say_a_retry_may_help() {
        let overflow = recognise_overflow(
            400,
            r#"{"error":{"type":"exceed_context_size_error","message":"x"}}"#,
        )
        .unwrap();
        assert!(!ChatError::ContextOverflow(overflow).retry_may_help());
        assert!(
            ChatError::Server {
                status: 503,
                attempts: 3,
                message: String::new()
            }
            .retry_may_help()
        );
        assert!(
            !ChatError::Refused {
                status: 401,
                kind: None,
                message: String::new()
            }
            .retry_may_help()
        );
    }
}

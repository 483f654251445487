//! Local token counts: tiktoken vocabularies and OpenAI's chat formula, counted incrementally.
//!
//! A prompt of messages costs, by OpenAI's published formula, 3 tokens per message plus the
//! tokens of its role and content (plus the name and 1 when the message has one, plus each tool
//! call's name and arguments and 1), plus 3 that prime the reply. This reproduces GPT-4's
//! `tokens_sent` exactly with `cl100k_base` (the golden test on the shared SWE-agent trace).
//! Other models tokenize differently and wrap messages in their own templates; the difference
//! is absorbed by [`Calibration`](super::Calibration).
//!
//! The vocabularies are embedded in `tiktoken-rs` (no network) and each is loaded once per
//! process, on first use (about 0.1 s for `o200k_base`).
//!
//! [`PromptCounter`] keeps each message's count, so that a conversation that grows by one
//! message costs only that message.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tiktoken_rs::CoreBPE;

use crate::provider::reported::kind;

/// Tokens of framing around every message (`<|start|>{role}<|message|>...<|end|>`).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens added once per prompt to prime the reply (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMING: u64 = 3;
/// Extra token for a message that carries a `name`.
pub const TOKENS_PER_NAME: u64 = 1;
/// Extra token per tool call (tiktoken-rs's heuristic for the call's envelope).
pub const TOKENS_PER_TOOL_CALL: u64 = 1;

/// The vocabularies baton counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5 and the o-series; the default for every other model too, being
    /// the most recent general-purpose vocabulary.
    #[default]
    O200kBase,
    /// GPT-4 and GPT-3.5 Turbo.
    Cl100kBase,
}

impl Encoding {
    /// The encoding of `model`: `cl100k_base` for GPT-4-era models (`gpt-4`, `gpt-4-turbo`,
    /// `gpt-4-32k`, `gpt-3.5-turbo`, `text-embedding-ada-002`, `text-embedding-3-*`);
    /// `o200k_base` for everything else.
    pub fn for_model(model: &str) -> Self {
        let lower = model.trim().to_ascii_lowercase();
        let id = lower.rsplit('/').next().unwrap_or(&lower);
        let id = id.strip_prefix("ft:").unwrap_or(id);
        let gpt4_era = (id.starts_with("gpt-4")
            && !id.starts_with("gpt-4o")
            && !id.starts_with("gpt-4.1")
            && !id.starts_with("gpt-4.5"))
            || id.starts_with("gpt-3.5")
            || id.starts_with("text-embedding-");
        if gpt4_era {
            Encoding::Cl100kBase
        } else {
            Encoding::O200kBase
        }
    }

    /// The vocabulary, loaded once per process.
    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens of `text`. Special-token text (`<|endoftext|>`) is counted as ordinary text, as
    /// servers treat it in user content.
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len() as u64
    }

    /// Tokens of one message by the chat formula (framing, role, content, name, tool calls),
    /// without the reply priming.
    pub fn message_tokens(self, m: &Message) -> u64 {
        let mut n = TOKENS_PER_MESSAGE + self.count(&m.role) + self.count(&m.content);
        if let Some(name) = &m.name {
            n += self.count(name) + TOKENS_PER_NAME;
        }
        for call in &m.tool_calls {
            n += self.count(&call.name) + self.count(&call.arguments) + TOKENS_PER_TOOL_CALL;
        }
        n
    }

    /// Tokens of a whole prompt by the chat formula: every message, plus the reply priming.
    pub fn prompt_tokens(self, messages: &[Message]) -> u64 {
        messages.iter().map(|m| self.message_tokens(m)).sum::<u64>() + REPLY_PRIMING
    }
}

/// One chat message, as far as counting needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...: its tokens are part of the framing.
    pub role: String,
    /// The text, with multi-part content joined (images and other non-text parts are not
    /// counted: their cost is provider-specific).
    pub content: String,
    /// The optional participant name, which costs its tokens plus one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls the assistant made in this message: their names and arguments are context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// One tool call of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// Why a JSON value could not be read as a chat message.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MessageError {
    /// The message is not a JSON object.
    #[error("a chat message must be a JSON object, not {found}")]
    NotAnObject {
        /// What it is instead.
        found: &'static str,
    },
    /// The message has no string `role`.
    #[error("a chat message needs a string `role`")]
    NoRole,
    /// A field holds the wrong kind of value.
    #[error("chat message field `{field}` is {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it holds.
        found: &'static str,
    },
}

impl Message {
    /// A message with a role and text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
        }
    }

    /// Reads an OpenAI-style chat message: `role`; `content` as a string, `null`, or a list of
    /// parts whose `text` is joined; optional `name`; `tool_calls[].function.{name, arguments}`
    /// (arguments as a string, or as a JSON value that is serialised).
    pub fn from_openai(value: &Value) -> Result<Self, MessageError> {
        let obj = value
            .as_object()
            .ok_or(MessageError::NotAnObject { found: kind(value) })?;
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .ok_or(MessageError::NoRole)?;
        let content = match obj.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    _ => p.get("text").and_then(Value::as_str),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Some(other) => {
                return Err(MessageError::WrongType {
                    field: "content",
                    found: kind(other),
                });
            }
        };
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(MessageError::WrongType {
                    field: "name",
                    found: kind(other),
                });
            }
        };
        let tool_calls = match obj.get("tool_calls") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(calls)) => calls.iter().map(tool_call).collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(MessageError::WrongType {
                    field: "tool_calls",
                    found: kind(other),
                });
            }
        };
        Ok(Self {
            role: role.to_owned(),
            content,
            name,
            tool_calls,
        })
    }

    /// A fingerprint of everything that is counted, to notice a changed message cheaply.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

fn tool_call(v: &Value) -> Result<ToolCall, MessageError> {
    if !v.is_object() {
        return Err(MessageError::WrongType {
            field: "tool_calls[]",
            found: kind(v),
        });
    }
    let f = v.get("function").unwrap_or(v);
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let arguments = match f.get("arguments") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Ok(ToolCall { name, arguments })
}

/// What [`PromptCounter::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Messages at the start of the list that were already counted and unchanged.
    pub kept: usize,
    /// Messages counted now (new, or changed since the last sync).
    pub counted: usize,
}

/// A conversation's running count: the tokens of every message so far, kept so that each
/// message is tokenized once.
#[derive(Debug, Clone)]
pub struct PromptCounter {
    /// The vocabulary counted with.
    encoding: Encoding,
    /// Per message: its fingerprint (to notice changes) and the running total up to and
    /// including it (so that any prefix's count is one lookup).
    entries: Vec<(u64, u64)>,
}

impl PromptCounter {
    /// An empty conversation counted with `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            entries: Vec::new(),
        }
    }

    /// The vocabulary counted with.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Appends one message; costs that message only. Returns its tokens.
    pub fn push(&mut self, m: &Message) -> u64 {
        let tokens = self.encoding.message_tokens(m);
        let total = self.message_tokens() + tokens;
        self.entries.push((m.fingerprint(), total));
        tokens
    }

    /// Makes the counter hold exactly `messages`: the longest unchanged prefix is kept, the
    /// rest is counted. Fingerprinting every message is far cheaper than tokenizing it, so a
    /// caller may pass the whole history on every call.
    pub fn sync(&mut self, messages: &[Message]) -> Synced {
        let kept = self
            .entries
            .iter()
            .zip(messages)
            .take_while(|((fp, _), m)| *fp == m.fingerprint())
            .count();
        self.entries.truncate(kept);
        for m in &messages[kept..] {
            self.push(m);
        }
        Synced {
            kept,
            counted: messages.len() - kept,
        }
    }

    /// Drops every message after the first `len` (a history rewritten from there).
    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no message is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tokens of the first `n` messages (all of them when `n` is larger), without the reply
    /// priming.
    pub fn prefix_tokens(&self, n: usize) -> u64 {
        match n.min(self.entries.len()) {
            0 => 0,
            k => self.entries[k - 1].1,
        }
    }

    /// Tokens of every message held, without the reply priming.
    pub fn message_tokens(&self) -> u64 {
        self.prefix_tokens(self.entries.len())
    }

    /// The estimate of a prompt made of the messages held: their tokens plus the priming.
    pub fn prompt_tokens(&self) -> u64 {
        self.message_tokens() + REPLY_PRIMING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt4_era_models_use_cl100k_and_the_rest_o200k() {
        for m in [
            "gpt-4",
            "gpt-4-0613",
            "openai/gpt-4-turbo",
            "gpt-3.5-turbo",
            "ft:gpt-4:org::x",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::Cl100kBase, "{m}");
        }
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-5",
            "o3",
            "deepseek-chat",
            "claude-sonnet-4-5",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::O200kBase, "{m}");
        }
    }

    #[test]
    fn the_chat_formula_adds_framing_name_and_priming() {
        let e = Encoding::O200kBase;
        let plain = Message::new("user", "hello there");
        let base = 3 + e.count("user") + e.count("hello there");
        assert_eq!(e.message_tokens(&plain), base);
        let named = Message {
            name: Some("bob".into()),
            ..plain.clone()
        };
        assert_eq!(e.message_tokens(&named), base + e.count("bob") + 1);
        assert_eq!(e.prompt_tokens(&[plain.clone(), plain]), 2 * base + 3);
        assert_eq!(e.prompt_tokens(&[]), 3);
    }

    #[test]
    fn the_counter_tokenizes_only_new_or_changed_messages() {
        let msgs: Vec<Message> = (0..5)
            .map(|i| Message::new("user", format!("message number {i}")))
            .collect();
        let mut c = PromptCounter::new(Encoding::O200kBase);
        assert_eq!(
            c.sync(&msgs[..3]),
            Synced {
                kept: 0,
                counted: 3
            }
        );
        assert_eq!(
            c.sync(&msgs),
            Synced {
                kept: 3,
                counted: 2
            }
        );
        assert_eq!(c.prompt_tokens(), Encoding::O200kBase.prompt_tokens(&msgs));
        // A rewritten history (a compaction) keeps only the unchanged prefix.
        let mut rewritten = msgs[..2].to_vec();
        rewritten.push(Message::new("user", "a summary"));
        assert_eq!(
            c.sync(&rewritten),
            Synced {
                kept: 2,
                counted: 1
            }
        );
        assert_eq!(
            c.prompt_tokens(),
            Encoding::O200kBase.prompt_tokens(&rewritten)
        );
        assert_eq!(
            c.prefix_tokens(2),
            Encoding::O200kBase.prompt_tokens(&msgs[..2]) - 3
        );
    }

    #[test]
    fn openai_messages_are_read_with_parts_and_tool_calls() {
        let v: Value = serde_json::json!({
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
            "tool_calls": [{"type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}]
        });
        let m = Message::from_openai(&v).unwrap();
        assert_eq!(m.content, "a\nb");
        assert_eq!(m.tool_calls[0].name, "bash");
        assert_eq!(
            Message::from_openai(&serde_json::json!({"content": "x"})),
            Err(MessageError::NoRole)
        );
        assert!(matches!(
            Message::from_openai(&serde_json::json!({"role": "user", "content": 5})),
            Err(MessageError::WrongType {
                field: "content",
                ..
            })
        ));
        assert!(matches!(
            Message::from_openai(&serde_json::json!([1])),
            Err(MessageError::NotAnObject { .. })
        ));
    }
}

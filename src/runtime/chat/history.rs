//! A session's message list, and how it is cut for compaction.
//!
//! baton holds each chat session's history (servers keep none). Compaction replaces most of it
//! with a summary; this module decides what stays verbatim and builds the rewritten list:
//!
//! * the system prompt (the first message, when it is one);
//! * the session's assignment, when the caller names it ([`Split::assignment`]): the message
//!   that gave it its work item, whose goal a summary might lose;
//! * the summary, as a user message that says what it is;
//! * the latest user message (the task in hand);
//! * optionally, the most recent exchanges after it, up to a token allowance.
//!
//! The unit of every cut is a **segment**: a message and the tool results that follow it. An
//! assistant message that calls tools and the results of those calls are one segment, so no
//! rewrite, chunk or tail ever separates a tool call from its result (servers reject a result
//! whose call is missing, and a call without its result confuses the model).
//!
//! Token counts come from a [`TokenCounter`], so that the real tokenizer can be plugged in:
//! [`CharEstimate`] is a deliberately pessimistic characters-per-token estimate;
//! [`ScaledTiktoken`] counts with tiktoken and scales by what the server's own counts showed.

use std::ops::Range;

use super::wire::{ChatMessage, Role};
use crate::provider::Encoding;

/// Counts the tokens of a text. Implemented for any `Fn(&str) -> usize`.
pub trait TokenCounter: Send + Sync {
    /// Tokens in `text`.
    fn count(&self, text: &str) -> usize;
}

impl<F: Fn(&str) -> usize + Send + Sync> TokenCounter for F {
    fn count(&self, text: &str) -> usize {
        self(text)
    }
}

/// Counts `ceil(chars / chars_per_token)`. With 3 characters per token it overestimates English
/// and code for the BPE tokenizers of current models (about 4 characters per token), which is the
/// safe side for a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharEstimate {
    /// Characters counted as one token; at least 1.
    pub chars_per_token: usize,
}

impl Default for CharEstimate {
    fn default() -> Self {
        Self { chars_per_token: 3 }
    }
}

impl TokenCounter for CharEstimate {
    fn count(&self, text: &str) -> usize {
        text.chars().count().div_ceil(self.chars_per_token.max(1))
    }
}

/// Counts with a tiktoken vocabulary, times `scale`: the server's tokens per local token, as
/// the session's trusted reports showed (a model's own vocabulary is rarely o200k's; SmolLM2's
/// counts English text about a tenth higher). Rounds up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaledTiktoken {
    /// The vocabulary counted with.
    pub encoding: Encoding,
    /// Server tokens per local token; 1.0 until a report says otherwise.
    pub scale: f64,
}

impl TokenCounter for ScaledTiktoken {
    fn count(&self, text: &str) -> usize {
        let local = self.encoding.count(text) as f64;
        (local * self.scale).ceil() as usize
    }
}

/// Tokens a chat template adds around each message (ChatML: `<|im_start|>role\n … <|im_end|>\n`;
/// OpenAI's published formula uses 3-4).
pub const MESSAGE_OVERHEAD: usize = 4;

/// Tokens a template adds after the last message to start the reply.
pub const REPLY_PRIMING: usize = 3;

/// What a summary message starts with in a rewritten history, so that the model (and a reader)
/// knows the messages before it were replaced.
pub const SUMMARY_PREFIX: &str = "Summary of the conversation so far. It replaces the earlier \
messages, which are gone; continue the work from it:";

/// Estimated tokens of one message: its text, its tool calls and ids, and the template overhead.
pub fn message_tokens(counter: &dyn TokenCounter, message: &ChatMessage) -> usize {
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|c| {
            MESSAGE_OVERHEAD
                + counter.count(&c.id)
                + counter.count(&c.function.name)
                + counter.count(&c.function.arguments)
        })
        .sum();
    let id = message
        .tool_call_id
        .as_deref()
        .map_or(0, |id| counter.count(id));
    MESSAGE_OVERHEAD + counter.count(message.text()) + calls + id
}

/// Estimated prompt tokens of a request carrying `messages`.
pub fn request_tokens(counter: &dyn TokenCounter, messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| message_tokens(counter, m))
        .sum::<usize>()
        + REPLY_PRIMING
}

/// One session's conversation, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// The messages as sent to the model, oldest first.
    messages: Vec<ChatMessage>,
}

/// Which messages a compaction keeps verbatim; everything else is summarised. Indices refer to
/// the history the split was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The system prompt, when the history starts with one.
    pub system: Option<usize>,
    /// The latest user message, when there is one after the system prompt.
    pub latest_user: Option<usize>,
    /// The message that gave the session its work item, kept verbatim before the summary: after
    /// the first turn the latest user message is often just "continue", and the goal must not
    /// depend on a summary keeping it. [`History::split`] cannot know it and leaves it `None`;
    /// the session's owner sets it ([`Split::keeping_assignment`]).
    pub assignment: Option<usize>,
    /// The recent segments kept verbatim after the latest user message (empty when none): whole
    /// segments only, ending at the end of the history.
    pub tail: Range<usize>,
}

impl Split {
    /// Whether message `index` goes into the summary rather than the rewritten history.
    pub fn is_summarised(&self, index: usize) -> bool {
        ![self.system, self.assignment, self.latest_user].contains(&Some(index))
            && !self.tail.contains(&index)
    }

    /// The same split, keeping message `assignment` (see [`Split::assignment`]) as well.
    pub fn keeping_assignment(mut self, assignment: Option<usize>) -> Self {
        self.assignment = assignment;
        self
    }

    /// Where the assignment is in the history [`History::rewrite`] makes: right after the
    /// system prompt, or after the summary when it is also the latest user message.
    pub fn assignment_after_rewrite(&self) -> Option<usize> {
        let first = usize::from(self.system.is_some());
        self.assignment.map(|a| {
            if Some(a) == self.latest_user {
                first + 1
            } else {
                first
            }
        })
    }
}

impl History {
    /// A history that starts with a system prompt.
    pub fn new(system: impl Into<String>) -> Self {
        Self {
            messages: vec![ChatMessage::system(system)],
        }
    }

    /// A history made of these messages, as they are.
    pub fn from_messages(messages: Vec<ChatMessage>) -> Self {
        Self { messages }
    }

    /// Appends a message.
    pub fn push(&mut self, message: ChatMessage) {
        self.messages.push(message);
    }

    /// The messages, oldest first.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Estimated prompt tokens of a request carrying the whole history.
    pub fn tokens(&self, counter: &dyn TokenCounter) -> usize {
        request_tokens(counter, &self.messages)
    }

    /// The segments: each starts at a message that is not a tool result and takes every tool
    /// result that directly follows it. Together they cover the history, in order.
    pub fn segments(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            match out.last_mut() {
                Some(last) if m.role == Role::Tool => last.end = i + 1,
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// Decides what a compaction keeps: the system prompt, the latest user message, and the most
    /// recent whole segments after it whose estimated tokens fit `keep_recent_tokens` (0 keeps
    /// none).
    pub fn split(&self, counter: &dyn TokenCounter, keep_recent_tokens: usize) -> Split {
        let system = (self.messages.first().map(|m| m.role) == Some(Role::System)).then_some(0);
        let latest_user = self
            .messages
            .iter()
            .rposition(|m| m.role == Role::User)
            .filter(|&i| Some(i) != system);
        // The tail may not reach back into the latest user message's segment (or the system
        // prompt's): it holds whole segments after both.
        let floor = latest_user.or(system).map_or(0, |i| i + 1);
        let mut start = self.messages.len();
        let mut used = 0;
        for seg in self.segments().into_iter().rev() {
            if seg.start < floor {
                break;
            }
            let cost: usize = self.messages[seg.clone()]
                .iter()
                .map(|m| message_tokens(counter, m))
                .sum();
            if used + cost > keep_recent_tokens {
                break;
            }
            used += cost;
            start = seg.start;
        }
        Split {
            system,
            latest_user,
            assignment: None,
            tail: start..self.messages.len(),
        }
    }

    /// The history after compaction: system prompt, assignment, summary, latest user message,
    /// kept tail (the assignment once, when it is the latest user message).
    pub fn rewrite(&self, split: &Split, summary: &str) -> History {
        let mut messages = Vec::with_capacity(4 + split.tail.len());
        if let Some(i) = split.system {
            messages.push(self.messages[i].clone());
        }
        if let Some(i) = split.assignment.filter(|&i| Some(i) != split.latest_user) {
            messages.push(self.messages[i].clone());
        }
        messages.push(ChatMessage::user(format!(
            "{SUMMARY_PREFIX}\n\n{}",
            summary.trim()
        )));
        if let Some(i) = split.latest_user {
            messages.push(self.messages[i].clone());
        }
        messages.extend(self.messages[split.tail.clone()].iter().cloned());
        History { messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::chat::wire::ChatToolCall;

    fn agent_history() -> History {
        let mut h = History::new("You are a coding agent.");
        h.push(ChatMessage::user("Fix the failing test in src/lib.rs"));
        h.push(ChatMessage::tool_calls(vec![
            ChatToolCall::function("c1", "bash", r#"{"cmd":"cargo test"}"#),
            ChatToolCall::function("c2", "bash", r#"{"cmd":"cat src/lib.rs"}"#),
        ]));
        h.push(ChatMessage::tool_result(
            "c1",
            "test result: FAILED. 1 failed",
        ));
        h.push(ChatMessage::tool_result(
            "c2",
            "pub fn add(a: i32, b: i32) -> i32 { a - b }",
        ));
        h.push(ChatMessage::assistant("The add function subtracts."));
        h.push(ChatMessage::tool_calls(vec![ChatToolCall::function(
            "c3",
            "edit",
            r#"{"file":"src/lib.rs"}"#,
        )]));
        h.push(ChatMessage::tool_result("c3", "ok"));
        h
    }

    #[test]
    fn a_tool_call_and_its_results_are_one_segment() {
        let segs = agent_history().segments();
        assert_eq!(segs, vec![0..1, 1..2, 2..5, 5..6, 6..8]);
    }

    #[test]
    fn char_estimate_rounds_up() {
        let c = CharEstimate::default();
        assert_eq!(c.count(""), 0);
        assert_eq!(c.count("abcd"), 2);
        assert_eq!(c.count("ééé"), 1);
    }

    #[test]
    fn scaled_tiktoken_scales_and_rounds_up() {
        let plain = ScaledTiktoken {
            encoding: Encoding::O200kBase,
            scale: 1.0,
        };
        let text = "The quick brown fox jumps over the lazy dog.";
        let n = plain.count(text);
        assert_eq!(n as u64, Encoding::O200kBase.count(text));
        let scaled = ScaledTiktoken {
            scale: 1.25,
            ..plain
        };
        assert_eq!(scaled.count(text), (n as f64 * 1.25).ceil() as usize);
        assert_eq!(scaled.count(""), 0);
    }

    #[test]
    fn a_closure_is_a_token_counter() {
        let words = |t: &str| t.split_whitespace().count();
        assert_eq!(
            message_tokens(&words, &ChatMessage::user("a b c")),
            3 + MESSAGE_OVERHEAD
        );
    }

    #[test]
    fn the_rewrite_keeps_system_summary_latest_user_and_whole_recent_segments() {
        let h = agent_history();
        let counter = CharEstimate::default();
        // The last segment (edit call + result) is 24 tokens, the assistant message before it 13:
        // an allowance of 30 keeps exactly the last segment.
        let split = h.split(&counter, 30);
        assert_eq!(split.tail, 6..8);
        let out = h.rewrite(&split, "did things");
        let roles: Vec<Role> = out.messages().iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::User,
                Role::Assistant,
                Role::Tool
            ]
        );
        assert!(out.messages()[1].text().starts_with(SUMMARY_PREFIX));
        assert_eq!(
            out.messages()[2].text(),
            "Fix the failing test in src/lib.rs"
        );
        assert!(split.is_summarised(3) && !split.is_summarised(1));
    }

    #[test]
    fn the_assignment_is_kept_before_the_summary_and_only_once() {
        let mut h = agent_history();
        h.push(ChatMessage::user("Continue."));
        let split = h
            .split(&CharEstimate::default(), 0)
            .keeping_assignment(Some(1));
        assert!(!split.is_summarised(1) && split.is_summarised(2));
        let out = h.rewrite(&split, "did things");
        let texts: Vec<&str> = out.messages().iter().map(ChatMessage::text).collect();
        assert_eq!(texts[1], "Fix the failing test in src/lib.rs");
        assert!(texts[2].starts_with(SUMMARY_PREFIX));
        assert_eq!((texts[3], texts.len()), ("Continue.", 4));
        assert_eq!(split.assignment_after_rewrite(), Some(1));

        // The assignment is also the latest user message: kept once, after the summary.
        let first = agent_history();
        let split = first
            .split(&CharEstimate::default(), 0)
            .keeping_assignment(Some(1));
        let out = first.rewrite(&split, "did things");
        assert_eq!(out.messages().len(), 3);
        assert_eq!(
            out.messages()[2].text(),
            "Fix the failing test in src/lib.rs"
        );
        assert_eq!(split.assignment_after_rewrite(), Some(2));
    }

    #[test]
    fn no_allowance_keeps_no_tail() {
        let h = agent_history();
        let split = h.split(&CharEstimate::default(), 0);
        assert!(split.tail.is_empty());
        assert_eq!(h.rewrite(&split, "s").messages().len(), 3);
    }
}

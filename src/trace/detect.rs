//! Format detection from the content: the first line of JSON Lines, or the top-level keys of a
//! single document. A JSON Lines file whose first line is corrupt is still recognised by its
//! next few lines, so that its error names the right format and line.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::Format;

/// What the content looks like.
pub(super) enum Shape {
    /// JSON Lines of a known format: the first line is a complete object with its keys.
    Lines(Format),
    /// JSON Lines of objects no format recognises; the hint describes the first one.
    UnknownLines(String),
    /// One JSON document (or a single line that is not a line format).
    Document,
}

/// The keys that tell formats apart. Everything else is skipped without being stored.
#[derive(Deserialize, Default)]
pub(super) struct Keys {
    /// `type`: a Codex rollout line or a Claude Code record (a string in both).
    #[serde(rename = "type")]
    kind: Option<Value>,
    /// `payload`: with `type`, a Codex rollout line.
    payload: Option<IgnoredAny>,
    /// `sessionId`: with `type`, a Claude Code record.
    #[serde(rename = "sessionId")]
    session_id: Option<IgnoredAny>,
    /// `uuid`: with `type`, a Claude Code record.
    uuid: Option<IgnoredAny>,
    /// `leafUuid`: with `type`, Claude Code's summary record (often the first line).
    #[serde(rename = "leafUuid")]
    leaf_uuid: Option<IgnoredAny>,
    /// `message`: with `type`, a Claude Code record.
    message: Option<IgnoredAny>,
    /// `messageId`: with `type`, Claude Code's file-history snapshot record.
    #[serde(rename = "messageId")]
    message_id: Option<IgnoredAny>,
    /// `prompt_tokens`: a plain series line.
    prompt_tokens: Option<IgnoredAny>,
    /// `instance_id`: with `metrics` or `history`, an OpenHands evaluation instance.
    #[serde(default, deserialize_with = "present")]
    pub(super) instance_id: bool,
    /// `metrics`: see `instance_id`.
    #[serde(default, deserialize_with = "present")]
    pub(super) metrics: bool,
    /// `history`: SWE-agent's message list (or an OpenHands instance's events).
    #[serde(default, deserialize_with = "present")]
    pub(super) history: bool,
    /// `messages`: a mini-swe-agent trajectory.
    #[serde(default, deserialize_with = "present")]
    pub(super) messages: bool,
    /// `trajectory`: with `history`, a SWE-agent trajectory.
    #[serde(default, deserialize_with = "present")]
    pub(super) trajectory: bool,
    /// `info`: with `history`, a SWE-agent trajectory.
    #[serde(default, deserialize_with = "present")]
    pub(super) info: bool,
}

/// A key that is present (with any value) reads as `true`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

impl Keys {
    /// The line format these keys belong to, if any.
    fn line_format(&self) -> Option<Format> {
        let kind = self.kind.as_ref().and_then(Value::as_str);
        if self.prompt_tokens.is_some() {
            Some(Format::SeriesJsonl)
        } else if kind.is_some() && self.payload.is_some() {
            Some(Format::CodexRollout)
        } else if kind.is_some()
            && (self.session_id.is_some()
                || self.uuid.is_some()
                || self.leaf_uuid.is_some()
                || self.message_id.is_some()
                || self.message.is_some())
        {
            Some(Format::ClaudeCode)
        } else if self.instance_id && (self.metrics || self.history) {
            Some(Format::OpenHandsOutput)
        } else {
            None
        }
    }
}

/// Lines looked at to recognise a JSON Lines format: some logs open with records that do not
/// name their format (Claude Code's file-history snapshots).
const SNIFF_LINES: usize = 8;

/// Classifies `body` (non-empty, starting like JSON): JSON Lines when its first non-blank line
/// is a complete object, by the first of its first few lines whose keys name a format.
pub(super) fn detect(body: &str) -> Shape {
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let Some(first) = lines.next() else {
        return Shape::Document;
    };
    let first = first.trim();
    if !first.starts_with('{') {
        return Shape::Document;
    }
    let mut more = lines.take(SNIFF_LINES - 1).peekable();
    let Ok(keys) = serde_json::from_str::<Keys>(first) else {
        // Not a complete object on its own line: a pretty-printed document, a broken one, or
        // JSON Lines whose first line is corrupt. Only the last has later lines that are
        // objects of a line format (a pretty document's inner lines are not objects).
        return match sniff(more) {
            Some(f) => Shape::Lines(f),
            None => Shape::Document,
        };
    };
    if let Some(f) = keys.line_format() {
        return Shape::Lines(f);
    }
    if more.peek().is_none() {
        return Shape::Document;
    }
    match sniff(more) {
        Some(f) => Shape::Lines(f),
        None => Shape::UnknownLines(format!(
            "JSON Lines whose first object has the keys [{}]",
            object_keys(first)
        )),
    }
}

/// The line format the first recognisable line among `lines` belongs to.
fn sniff<'a>(mut lines: impl Iterator<Item = &'a str>) -> Option<Format> {
    lines.find_map(|line| {
        serde_json::from_str::<Keys>(line.trim())
            .ok()
            .and_then(|k| k.line_format())
    })
}

/// The top-level keys of a document, read in one pass that stores nothing else.
pub(super) fn document_keys(text: &str) -> Result<Keys, serde_json::Error> {
    serde_json::from_str(text)
}

/// The format a document that does not parse was most likely meant to be, judged from the
/// keys its first few kilobytes mention (mini-swe-agent when none is mentioned). Only a guess:
/// errors built from it say so.
pub(super) fn guess_broken(text: &str) -> Format {
    let head = match text.char_indices().nth(4096) {
        Some((i, _)) => &text[..i],
        None => text,
    };
    let has = |k: &str| head.contains(k);
    // SWE-agent's `trajectory` comes first; its `history` may be far down the file.
    if has("\"trajectory\"") {
        Format::SweAgent
    } else if has("\"messages\"") {
        Format::MiniSweAgent
    } else if has("\"instance_id\"") {
        Format::OpenHandsOutput
    } else if has("\"history\"") {
        Format::SweAgent
    } else {
        Format::MiniSweAgent
    }
}

fn object_keys(line: &str) -> String {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => map.keys().cloned().collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}

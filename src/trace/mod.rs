//! Readers of recorded agent traces: each returns the token usage of every model call.
//!
//! A trace is the history of one agent session as some tool recorded it. baton only needs, per
//! model call, the prompt and completion token counts (and the window, where the trace carries
//! it). The format is detected from the content, not the file name.
//!
//! Formats read:
//!
//! | format | what it looks like | where the usage is |
//! | --- | --- | --- |
//! | [`Format::MiniSweAgent`] | one JSON object `{info, messages[]}` (`*.traj.json`) | `messages[].extra.response.usage` of assistant messages |
//! | [`Format::SweAgent`] | one JSON object `{environment, trajectory[], history[], info}` (`*.traj`) | none per call: each call's prompt is rebuilt from `history` and counted with `cl100k_base` (GPT-4's vocabulary) |
//! | [`Format::OpenHandsEvents`] | a JSON list of events `{id, source, action\|observation, ...}` | `tool_call_metadata.model_response.usage`, once per distinct `model_response.id` (each response is repeated on its observation) |
//! | [`Format::OpenHandsOutput`] | evaluation `output.jsonl`: one instance per line, each its own trace named by `instance_id` | `metrics.token_usages[]` (`prompt_tokens`, `completion_tokens`, cache fields, `context_window` where recorded) |
//! | [`Format::CodexRollout`] | Codex CLI `rollout-*.jsonl`: `{timestamp, type, payload}` per line | `token_count` events: `info.last_token_usage`, window `info.model_context_window` |
//! | [`Format::ClaudeCode`] | Claude Code session `*.jsonl`: `{type, message, sessionId, uuid, ...}` per line | assistant `message.usage`, Anthropic's shape with the cache fields, once per `message.id` |
//! | [`Format::SeriesJsonl`] | JSON Lines, one object per call | `prompt_tokens`, `completion_tokens` on each line |
//! | [`Format::SeriesCsv`] | CSV with a header row | columns `prompt_tokens`, `completion_tokens` |
//!
//! Each call's `prompt_tokens` is the whole context the call sent (for Anthropic-shaped usage,
//! input plus both cache fields), never a sum over calls. [`Format::usage_source`] says whether
//! a format's figures were reported by the provider or counted by baton.
//!
//! A missing, unreadable, empty, broken or unknown file is a [`TraceError`] that names the file,
//! where it broke, and what was expected (for an unknown file, and for a broken one whose format
//! could only be guessed: every format tried). Where a format records the model, the trace
//! keeps it ([`Trace::model`]).

mod claude_code;
mod codex;
mod detect;
mod mini_swe;
mod openhands_events;
mod openhands_output;
mod series;
mod swe_agent;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::provider::ProviderError;
use crate::usage::{UsageError, UsageSource};

/// Token usage of one model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Tokens sent: the whole context at the time of the call.
    pub prompt_tokens: u64,
    /// Tokens of the reply, which join the context for the next call.
    pub completion_tokens: u64,
}

impl Call {
    /// The context occupied once the reply has arrived: prompt plus completion.
    pub fn context(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// One session's recorded calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// A name for reports: the file name, or an id the trace carries.
    pub name: String,
    /// The format it was read from.
    pub format: Format,
    /// The calls, in the order they were made.
    pub calls: Vec<Call>,
    /// The context window, when the trace records it.
    pub window: Option<u64>,
    /// The model the calls went to, when the trace records it (the latest one named): lets a
    /// replay without `--window` fall back to [`known_window`](crate::provider::known_window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The trace formats baton reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// mini-swe-agent trajectory (`*.traj.json`).
    MiniSweAgent,
    /// A plain series as JSON Lines.
    SeriesJsonl,
    /// A plain series as CSV.
    SeriesCsv,
    /// SWE-agent trajectory (`*.traj`): totals only, calls rebuilt from `history`.
    SweAgent,
    /// OpenHands event stream (a JSON list of events).
    OpenHandsEvents,
    /// OpenHands evaluation output (`output.jsonl`, one instance per line).
    OpenHandsOutput,
    /// Codex CLI rollout (`rollout-*.jsonl`).
    CodexRollout,
    /// Claude Code session log (`~/.claude/projects/*/*.jsonl`).
    ClaudeCode,
}

impl Format {
    /// Every format, in the order detection tries them.
    pub const ALL: [Format; 8] = [
        Format::MiniSweAgent,
        Format::SweAgent,
        Format::OpenHandsEvents,
        Format::OpenHandsOutput,
        Format::CodexRollout,
        Format::ClaudeCode,
        Format::SeriesJsonl,
        Format::SeriesCsv,
    ];

    /// Whether the format's figures are the provider's ([`UsageSource::Reported`]) or counted
    /// by baton ([`UsageSource::Estimated`]: SWE-agent records totals only).
    pub fn usage_source(&self) -> UsageSource {
        match self {
            Format::SweAgent => UsageSource::Estimated,
            _ => UsageSource::Reported,
        }
    }

    /// Whether the agent that writes this format only ever appends to the history it sends, so
    /// that a recorded prompt below an earlier one cannot be true (mini-swe-agent keeps every
    /// message). Agents that prune or condense their own context (Codex, Claude Code, OpenHands)
    /// and sources of unknown origin (plain series) are `false`; SWE-agent's figures are baton's
    /// own count of its history, so there is nothing to distrust.
    pub fn appends_only(&self) -> bool {
        matches!(self, Format::MiniSweAgent)
    }

    /// What the format looks like, for error messages and `--help`.
    pub fn describe(&self) -> &'static str {
        match self {
            Format::MiniSweAgent => {
                "mini-swe-agent trajectory (JSON object with messages[].extra.response.usage)"
            }
            Format::SeriesJsonl => {
                "usage series as JSON Lines ({\"prompt_tokens\":N,\"completion_tokens\":N} per line)"
            }
            Format::SeriesCsv => {
                "usage series as CSV (header with prompt_tokens,completion_tokens)"
            }
            Format::SweAgent => {
                "SWE-agent trajectory (JSON object with history[] and info.model_stats)"
            }
            Format::OpenHandsEvents => {
                "OpenHands event stream (JSON list of events with tool_call_metadata.model_response.usage)"
            }
            Format::OpenHandsOutput => {
                "OpenHands evaluation output (JSON Lines with instance_id and metrics.token_usages[])"
            }
            Format::CodexRollout => {
                "Codex rollout (JSON Lines of {type, payload} with token_count events)"
            }
            Format::ClaudeCode => "Claude Code session (JSON Lines with assistant message.usage)",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::MiniSweAgent => "mini-swe-agent",
            Format::SeriesJsonl => "series-jsonl",
            Format::SeriesCsv => "series-csv",
            Format::SweAgent => "swe-agent",
            Format::OpenHandsEvents => "openhands-events",
            Format::OpenHandsOutput => "openhands-output",
            Format::CodexRollout => "codex-rollout",
            Format::ClaudeCode => "claude-code",
        })
    }
}

/// Where in a file something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A line (1-based) and, where known, a column.
    Line(usize, Option<usize>),
    /// The n-th model call (1-based) of a single-document format.
    Call(usize),
    /// The n-th entry (1-based) of a list in a single-document format: `("history", 3)`.
    Entry(&'static str, usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(l, Some(c)) => write!(f, "line {l}, column {c}"),
            Location::Line(l, None) => write!(f, "line {l}"),
            Location::Call(n) => write!(f, "call {n}"),
            Location::Entry(list, n) => write!(f, "{list} entry {n}"),
        }
    }
}

/// Why a trace could not be read. Every variant names the file.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_TRACE_BYTES`]; it was not read further.
    #[error("{path}: larger than the {max}-byte limit for a trace")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The file is empty or holds no model calls.
    #[error("{path}: no model calls found (expected {expected})")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What a trace of the detected format holds.
        expected: String,
    },
    /// The content is broken. Normally its format was recognised first; when it broke before
    /// anything named its format, `format` is a guess and `tried` lists every format considered.
    #[error("{path}: {format} trace broken at {at}: {message}{}", guessed_note(*format, tried))]
    Broken {
        /// The file.
        path: PathBuf,
        /// The format it was read as (or guessed to be, when `tried` is not empty).
        format: Format,
        /// Where.
        at: Location,
        /// What is wrong.
        message: String,
        /// Empty when the format was recognised from the content; otherwise the formats tried
        /// before `format` was guessed, so that the user is not misled by the guess.
        tried: Vec<Format>,
    },
    /// A token figure is negative, fractional or absurd.
    #[error("{path}: {format} trace has a bad token figure at {at}: {source}")]
    BadFigure {
        /// The file.
        path: PathBuf,
        /// The format it was read as.
        format: Format,
        /// Where.
        at: Location,
        /// What is wrong with the figure.
        source: UsageError,
    },
    /// No known format matched.
    #[error(
        "{path}: unknown trace format ({hint}); formats tried: {}",
        list_formats()
    )]
    Unknown {
        /// The file.
        path: PathBuf,
        /// What the content looked like.
        hint: String,
    },
}

/// The tail of a broken-file message whose format is only a guess.
fn guessed_note(format: Format, tried: &[Format]) -> String {
    if tried.is_empty() {
        return String::new();
    }
    let names = tried
        .iter()
        .map(Format::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        " (the file broke before it showed its format, so {format} is a guess; formats tried: \
         {names})"
    )
}

fn list_formats() -> String {
    Format::ALL
        .iter()
        .map(|f| f.describe())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The largest trace [`read_path`] reads, 256 MiB: far above real traces (a 200,000-call Codex
/// rollout is tens of MB), and a bound on what an endless file (`/dev/zero`) costs.
pub const MAX_TRACE_BYTES: u64 = 256 << 20;

/// Reads every trace in the file at `path` (most formats hold one), refusing a file larger than
/// [`MAX_TRACE_BYTES`] after reading no more than one byte past it.
pub fn read_path(path: &Path) -> Result<Vec<Trace>, TraceError> {
    use std::io::Read;
    let io = |source| TraceError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_TRACE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_TRACE_BYTES {
        return Err(TraceError::TooLarge {
            path: path.to_owned(),
            max: MAX_TRACE_BYTES,
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    parse(path, &name, &bytes)
}

/// Detects the format of `bytes` and reads it. `path` is used in errors, `name` names the
/// traces. A leading byte-order mark is skipped (editors on Windows write one; it must not hide
/// the first line's JSON).
pub fn parse(path: &Path, name: &str, bytes: &[u8]) -> Result<Vec<Trace>, TraceError> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| TraceError::Unknown {
        path: path.to_owned(),
        hint: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    let body = text.trim_start();
    let ctx = Ctx { path, name };
    if body.is_empty() {
        return Err(TraceError::Empty {
            path: path.to_owned(),
            expected: "one of the formats below".into(),
        });
    }
    if !looks_like_json(body) {
        return series::read_csv(&ctx, text);
    }
    match detect::detect(body) {
        detect::Shape::Lines(Format::SeriesJsonl) => series::read_jsonl(&ctx, text),
        detect::Shape::Lines(Format::OpenHandsOutput) => openhands_output::read(&ctx, text, false),
        detect::Shape::Lines(Format::CodexRollout) => codex::read(&ctx, text),
        detect::Shape::Lines(Format::ClaudeCode) => claude_code::read(&ctx, text),
        detect::Shape::Lines(_) | detect::Shape::Document => document(&ctx, text, body),
        detect::Shape::UnknownLines(hint) => Err(ctx.unknown(hint)),
    }
}

/// Reads a single JSON document: an OpenHands event list, or an object whose keys name the
/// format.
fn document(ctx: &Ctx, text: &str, body: &str) -> Result<Vec<Trace>, TraceError> {
    if body.starts_with('[') {
        return openhands_events::read(ctx, text);
    }
    match detect::document_keys(text) {
        Ok(keys) if keys.messages => mini_swe::read(ctx, text),
        Ok(keys) if keys.history && (keys.trajectory || keys.info) => swe_agent::read(ctx, text),
        Ok(keys) if keys.instance_id && (keys.metrics || keys.history) => {
            openhands_output::read(ctx, text, true)
        }
        Ok(_) => Err(ctx.unknown(
            "a JSON object without a messages list (mini-swe-agent) or a history (SWE-agent)",
        )),
        Err(e) if e.is_data() => Err(ctx.unknown(format!("a JSON document of another shape: {e}"))),
        Err(e) => Err(ctx.broken_guess(
            text,
            Location::Line(e.line(), Some(e.column())),
            e.to_string(),
        )),
    }
}

/// An object, or an array whose first element starts like a JSON value (so that an INI or TOML
/// `[section]` header is not taken for broken JSON).
fn looks_like_json(body: &str) -> bool {
    let mut bytes = body.bytes().filter(|b| !b.is_ascii_whitespace());
    match bytes.next() {
        Some(b'{') => true,
        Some(b'[') => bytes
            .next()
            .is_some_and(|b| b"{[\"-0123456789tfn]".contains(&b)),
        _ => false,
    }
}

/// What every reader needs to name its traces and errors.
pub(crate) struct Ctx<'a> {
    /// The file, for errors.
    path: &'a Path,
    /// The trace name.
    name: &'a str,
}

/// Keeps the latest model a trace names, skipping empty names.
fn note_model(slot: &mut Option<String>, model: Option<&str>) {
    if let Some(m) = model.map(str::trim).filter(|m| !m.is_empty()) {
        *slot = Some(m.to_owned());
    }
}

impl Ctx<'_> {
    fn broken(&self, format: Format, at: Location, message: impl Into<String>) -> TraceError {
        TraceError::Broken {
            path: self.path.to_owned(),
            format,
            at,
            message: message.into(),
            tried: Vec::new(),
        }
    }

    /// A broken file whose format could only be guessed: every format was considered.
    fn broken_guess(&self, text: &str, at: Location, message: impl Into<String>) -> TraceError {
        TraceError::Broken {
            path: self.path.to_owned(),
            format: detect::guess_broken(text),
            at,
            message: message.into(),
            tried: Format::ALL.to_vec(),
        }
    }

    fn bad_figure(&self, format: Format, at: Location, source: UsageError) -> TraceError {
        TraceError::BadFigure {
            path: self.path.to_owned(),
            format,
            at,
            source,
        }
    }

    fn unknown(&self, hint: impl Into<String>) -> TraceError {
        TraceError::Unknown {
            path: self.path.to_owned(),
            hint: hint.into(),
        }
    }

    fn trace(
        &self,
        format: Format,
        calls: Vec<Call>,
        window: Option<u64>,
    ) -> Result<Trace, TraceError> {
        if calls.is_empty() {
            return Err(TraceError::Empty {
                path: self.path.to_owned(),
                expected: format.describe().into(),
            });
        }
        Ok(Trace {
            name: self.name.to_owned(),
            format,
            calls,
            window,
            model: None,
        })
    }
}

/// Turns a JSON number read as `f64` into a token count, or a located error.
fn count(
    ctx: &Ctx,
    format: Format,
    at: Location,
    field: &'static str,
    value: f64,
) -> Result<u64, TraceError> {
    crate::usage::count_from_f64(field, value).map_err(|e| ctx.bad_figure(format, at, e))
}

/// Turns a provider usage error at `at` into a located trace error (bad figures keep their
/// typed cause).
fn usage_error(ctx: &Ctx, format: Format, at: Location, e: ProviderError) -> TraceError {
    match e {
        ProviderError::BadFigure { source, .. } => ctx.bad_figure(format, at, source),
        other => ctx.broken(format, at, other.to_string()),
    }
}

/// A located error for a JSON line that did not parse (`line_no` is 1-based).
fn line_error(ctx: &Ctx, format: Format, line_no: usize, e: &serde_json::Error) -> TraceError {
    ctx.broken(
        format,
        Location::Line(line_no, Some(e.column())),
        e.to_string(),
    )
}

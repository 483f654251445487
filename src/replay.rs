//! The policy replayed over a recorded trace: when would baton have compacted and rotated?
//!
//! The replay drives the real [`SessionMachine`], not a second implementation. Its model of what
//! compaction and rotation would have done is part of baton's interface:
//!
//! * call *i*'s context is `used_i = prompt_tokens_i + completion_tokens_i`; `base` is the first
//!   call's `prompt_tokens` (the system prompt and the task);
//! * when the machine asks to compact at call *k*, the replay answers `Compacted` with
//!   `after = base + S` (S is [`ReplayOptions::summary_tokens`]); when it asks to rotate at call
//!   *k*, the successor starts at `after = base + S` (the handoff) and the session number goes up
//!   by one (sessions are numbered from 1);
//! * after the last compaction or rotation, at call *k* with result `after`, every later call *i*
//!   is modelled as `used_i - used_k + after` (never below zero); before any, as `used_i`;
//! * each modelled figure is fed to the machine as a usage message, in call order, so an
//!   insufficient compaction yields a compaction event and a rotation event at the same call.
//!
//! The window is the user's ([`ReplayOptions::window`]), else the trace's own, else the one
//! baton's table gives for the model the trace names ([`known_window`]), picked by
//! [`resolve_window`]; the report says which ([`ReplayReport::window_source`]).
//!
//! Figures before the first compaction or rotation carry the format's source
//! ([`Format::usage_source`](crate::trace::Format::usage_source): reported by the provider, or
//! estimated by baton for SWE-agent); later ones are modelled. Each call's recorded figures are
//! also judged, per format, for what cannot be true ([`Distrust::judge_recorded`]): a zero
//! prompt, a context larger than the window the trace recorded (a smaller window of the user's
//! is a question asked of the trace, not a flaw in it), or running totals passed off as per-call
//! figures (a whole trace whose every prompt grew by at least the first one, each step no
//! smaller than the last: [`Distrust::Cumulative`]). A prompt that falls is flagged only for
//! formats whose agent never prunes its own history ([`Format::appends_only`](crate::trace::Format::appends_only), mini-swe-agent),
//! by the rule [`UsageTracker`](crate::provider::UsageTracker) applies to live reports
//! ([`Distrust::judge`]): Codex, Claude Code and OpenHands prune or condense their context, so a
//! falling prompt there is the truth. Flagged calls are listed in [`ReplayReport::untrusted`]
//! and counted in [`Totals::untrusted_figures`], with one warning per trace. The replay still
//! uses the figures as recorded: the flag says the result rests on them.
//!
//! The [`SessionMachine`]'s own per-event warnings (a usage over the window, at every call of
//! every session) are muted during a replay unless debug logging is on. The replay counts the
//! modelled figures over the window instead ([`Totals::over_window`]) and says so in one
//! warning per trace, instead of once per call (46 MB of stderr for a 200,000-call trace
//! against a small window).
//!
//! [`replay_with_series`] also returns the modelled context of every call ([`ModelledCall`]),
//! which `baton replay --chart` draws; [`replay`] returns the report alone (the `--json` shape).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::machine::{Effect, Event, MachineError, SessionMachine};
use crate::policy::{Policy, RotationReason};
use crate::provider::{Distrust, Window, WindowSource, known_window, resolve_window};
use crate::trace::{Call, Trace};
use crate::usage::{Usage, UsageError, UsageSource};
use crate::vocab::SessionId;

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The policy under test.
    pub policy: Arc<Policy>,
    /// The window; overrides the trace's own, and is required when the trace has none and
    /// names no model baton's table knows.
    pub window: Option<u64>,
    /// S: the size of a compaction summary or rotation handoff, in tokens.
    pub summary_tokens: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            policy: Arc::new(Policy::default()),
            window: None,
            summary_tokens: Self::DEFAULT_SUMMARY_TOKENS,
        }
    }
}

impl ReplayOptions {
    /// The default S, 2,000 tokens.
    pub const DEFAULT_SUMMARY_TOKENS: u64 = 2000;
}

/// Why a replay could not run.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// Neither the options, the trace, nor baton's table for the trace's model give a window.
    #[error(
        "trace {trace} does not record its context window{}: pass one (--window N)",
        model.as_ref().map(|m| format!(" and its model {m:?} is not in baton's table")).unwrap_or_default()
    )]
    NoWindow {
        /// The trace.
        trace: String,
        /// The model the trace names, if any (not in the table).
        model: Option<String>,
    },
    /// The window is not one a usage can be measured against (above [`Usage::MAX_TOKENS`]).
    #[error("trace {trace}: window of {window} tokens: {source}")]
    BadWindow {
        /// The trace.
        trace: String,
        /// The window asked for.
        window: u64,
        /// What is wrong with it.
        source: UsageError,
    },
    /// S is not below the window: a summary or handoff would fill the window on its own.
    #[error(
        "trace {trace}: the summary size ({summary_tokens} tokens, --summary-tokens) must be \
         below the window ({window} tokens)"
    )]
    SummaryTooLarge {
        /// The trace.
        trace: String,
        /// S.
        summary_tokens: u64,
        /// The window in use.
        window: u64,
    },
    /// A modelled figure is not a valid usage (zero window, absurd size).
    #[error("trace {trace}, call {call}: {source}")]
    Usage {
        /// The trace.
        trace: String,
        /// The 1-based call.
        call: usize,
        /// What is wrong.
        source: UsageError,
    },
    /// The machine refused an event (a bug in the replay if it happens).
    #[error("trace {trace}, call {call}: {source}")]
    Machine {
        /// The trace.
        trace: String,
        /// The 1-based call.
        call: usize,
        /// What the machine said.
        source: MachineError,
    },
}

/// What happened at one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayEventKind {
    /// The session compacted.
    Compaction,
    /// The session rotated into a successor.
    Rotation,
}

/// One compaction or rotation the policy would have made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayEvent {
    /// The 1-based call at which it happened.
    pub call: usize,
    /// Compaction or rotation.
    pub kind: ReplayEventKind,
    /// The session (numbered from 1) that compacted or rotated.
    pub session: u32,
    /// Tokens in use before.
    pub before: u64,
    /// Tokens in use after (the summary or the handoff, plus the base).
    pub after: u64,
    /// For a compaction: `1 - after/before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reduction: Option<f64>,
    /// For a rotation: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RotationReason>,
    /// For a rotation: the successor's session number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successor: Option<u32>,
}

/// Sums over a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Sessions used (1 plus the rotations).
    pub sessions: u32,
    /// Compactions made.
    pub compactions: usize,
    /// Compactions whose reduction fell in the policy's target band.
    pub compactions_in_target: usize,
    /// Mean reduction of the compactions (absent when there were none).
    pub mean_reduction: Option<f64>,
    /// Rotations made.
    pub rotations: usize,
    /// Rotations by reason.
    pub rotations_by_reason: BTreeMap<RotationReason, usize>,
    /// The largest modelled context fed to a machine.
    pub peak_used: u64,
    /// `peak_used` as a percent of the window.
    pub peak_percent: f64,
    /// Calls whose recorded prompt figure is not trustworthy (see [`ReplayReport::untrusted`]).
    #[serde(default)]
    pub untrusted_figures: usize,
    /// Calls whose modelled context exceeded the window in use (a window too small for the
    /// trace: every such call rotates).
    #[serde(default)]
    pub over_window: usize,
}

/// A call whose recorded figure cannot be true (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntrustedFigure {
    /// The 1-based call.
    pub call: usize,
    /// Why the figure is not trusted.
    pub why: Distrust,
}

/// The result of replaying one trace; also the `--json` output, one object per trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The trace's name.
    pub trace: String,
    /// Calls in the trace.
    pub calls: usize,
    /// The window used.
    pub window: u64,
    /// Where the window came from: the user, the trace, or baton's table of known models.
    #[serde(default = "trace_window")]
    pub window_source: WindowSource,
    /// The model the trace names, when it does (`null` otherwise).
    #[serde(default)]
    pub model: Option<String>,
    /// Who produced the trace's figures: the provider (`reported`) or baton's own count
    /// (`estimated`, SWE-agent). Figures after a compaction or rotation are modelled from them.
    #[serde(default)]
    pub source: UsageSource,
    /// Calls whose recorded figure is not trustworthy, in call order (a zero prompt, a context
    /// over the window, running totals, or, for formats that only append, a prompt that fell).
    #[serde(default)]
    pub untrusted: Vec<UntrustedFigure>,
    /// Compactions and rotations, in call order.
    pub events: Vec<ReplayEvent>,
    /// Sums.
    pub totals: Totals,
}

/// The serde default of [`ReplayReport::window_source`] for reports written before it existed.
fn trace_window() -> WindowSource {
    WindowSource::Trace
}

/// The window for `trace`: the user's, else the trace's, else the table's for its model.
fn window_for(trace: &Trace, opts: &ReplayOptions) -> Result<Window, ReplayError> {
    let user = opts.window.map(|tokens| Window {
        tokens,
        source: WindowSource::User,
    });
    let recorded = trace.window.map(|tokens| Window {
        tokens,
        source: WindowSource::Trace,
    });
    let known = trace.model.as_deref().and_then(known_window);
    resolve_window(user.into_iter().chain(recorded).chain(known)).ok_or_else(|| {
        ReplayError::NoWindow {
            trace: trace.name.clone(),
            model: trace.model.clone(),
        }
    })
}

/// The modelled context at one call, for charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelledCall {
    /// The 1-based call.
    pub call: usize,
    /// The modelled context fed to the machine at this call (before any compaction or
    /// rotation it triggered).
    pub used: u64,
    /// The context left when the call compacted or rotated (base + S), so that a chart can
    /// draw the drop at the call where it happened.
    pub after: Option<u64>,
    /// The session (numbered from 1) that made the call.
    pub session: u32,
}

/// Replays `trace` under `opts`.
pub fn replay(trace: &Trace, opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    replay_with_series(trace, opts).map(|(report, _)| report)
}

/// Replays `trace` under `opts`, and also returns the modelled context of every call, in call
/// order (one entry per call).
pub fn replay_with_series(
    trace: &Trace,
    opts: &ReplayOptions,
) -> Result<(ReplayReport, Vec<ModelledCall>), ReplayError> {
    let window = window_for(trace, opts)?;
    Usage::new(0, window.tokens, UsageSource::Modelled).map_err(|source| {
        ReplayError::BadWindow {
            trace: trace.name.clone(),
            window: window.tokens,
            source,
        }
    })?;
    if opts.summary_tokens >= window.tokens {
        return Err(ReplayError::SummaryTooLarge {
            trace: trace.name.clone(),
            summary_tokens: opts.summary_tokens,
            window: window.tokens,
        });
    }
    if window.source == WindowSource::KnownModel {
        tracing::info!(
            trace = %trace.name,
            model = trace.model.as_deref().unwrap_or_default(),
            window = window.tokens,
            "no window given or recorded; using baton's table for the model"
        );
    }
    let mut run = Run {
        trace,
        opts,
        window: window.tokens,
        window_source: window.source,
        last_trusted: None,
        untrusted: Vec::new(),
        session_no: 1,
        machine: SessionMachine::new(SessionId(1), opts.policy.clone()),
        anchor: None,
        events: Vec::new(),
        peak: 0,
        reductions: Vec::new(),
        in_target: 0,
        series: Vec::with_capacity(trace.calls.len()),
        over_window: 0,
        first_over_window: None,
        mute: (!tracing::enabled!(tracing::Level::DEBUG))
            .then(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())),
    };
    let cumulative = looks_cumulative(&trace.calls);
    for (i, call) in trace.calls.iter().enumerate() {
        run.judge(i + 1, call, cumulative);
        run.call(i + 1, call.context())?;
    }
    if let Some(first) = run.untrusted.first() {
        tracing::warn!(
            trace = %trace.name,
            count = run.untrusted.len(),
            first_call = first.call,
            why = ?first.why,
            "trace has untrustworthy usage figures; the replay rests on them as recorded"
        );
    }
    if let Some(first_call) = run.first_over_window {
        tracing::warn!(
            trace = %trace.name,
            count = run.over_window,
            first_call,
            window = run.window,
            "modelled usage exceeds the window; the window is probably too small for this trace"
        );
    }
    let series = std::mem::take(&mut run.series);
    Ok((run.report(), series))
}

/// The state of one replay.
struct Run<'a> {
    /// The trace replayed.
    trace: &'a Trace,
    /// The policy, window override and S.
    opts: &'a ReplayOptions,
    /// The window in use.
    window: u64,
    /// Where it came from.
    window_source: WindowSource,
    /// The last recorded prompt that passed the trust rule.
    last_trusted: Option<u64>,
    /// Calls whose recorded figure failed it.
    untrusted: Vec<UntrustedFigure>,
    /// The live session's number.
    session_no: u32,
    /// The live session's machine.
    machine: SessionMachine,
    /// `(used_k, after)` of the last compaction or rotation.
    anchor: Option<(u64, u64)>,
    /// Compactions and rotations so far, in call order.
    events: Vec<ReplayEvent>,
    /// The largest modelled context fed to a machine so far.
    peak: u64,
    /// The reduction of every compaction so far.
    reductions: Vec<f64>,
    /// Compactions so far whose reduction fell in the target band.
    in_target: usize,
    /// The modelled context of every call so far.
    series: Vec<ModelledCall>,
    /// Calls whose modelled context exceeded the window.
    over_window: usize,
    /// The first of them.
    first_over_window: Option<usize>,
    /// A dispatcher that drops every log, under which the machine runs (its per-event
    /// warnings repeat at every call); `None` when debug logging is on.
    mute: Option<tracing::Dispatch>,
}

/// Whether `calls` are running totals rather than per-call figures: at least three calls, and
/// from the second on every prompt grew by at least the first call's prompt, each step no
/// smaller than the one before. Summed per-call prompts do exactly that (each step is the next
/// call's own prompt, which starts from the first's and grows); a real conversation's steps are
/// its new messages, mostly far smaller than its system prompt and task, and uneven.
fn looks_cumulative(calls: &[Call]) -> bool {
    let Some(first) = calls.first().map(|c| c.prompt_tokens).filter(|p| *p > 0) else {
        return false;
    };
    calls.len() >= 3
        && calls
            .windows(2)
            .map(|w| w[1].prompt_tokens.checked_sub(w[0].prompt_tokens))
            .try_fold(first, |last_step, step| step.filter(|s| *s >= last_step))
            .is_some()
}

impl Run<'_> {
    fn base(&self) -> u64 {
        self.trace.calls.first().map_or(0, |c| c.prompt_tokens)
    }

    /// Judges call `call`'s recorded figures (see the module documentation); `cumulative`
    /// says the whole trace holds running totals.
    fn judge(&mut self, call: usize, recorded: &Call, cumulative: bool) {
        let prompt = recorded.prompt_tokens;
        let previous = self.trace.calls.get(call.wrapping_sub(2));
        let why = match previous {
            Some(p) if cumulative => Some(Distrust::Cumulative {
                previous: p.prompt_tokens,
                reported: prompt,
            }),
            _ => Distrust::judge_recorded(prompt, recorded.context(), self.trace.window),
        }
        .or_else(|| {
            self.trace.format.appends_only().then(|| {
                let grew = self.last_trusted.is_some();
                Distrust::judge(Some(prompt), self.last_trusted, grew)
            })?
        });
        match why {
            None => self.last_trusted = Some(prompt),
            Some(why) => {
                tracing::debug!(trace = %self.trace.name, call, ?why, "untrustworthy figure");
                self.untrusted.push(UntrustedFigure { call, why });
            }
        }
    }

    fn call(&mut self, call: usize, used: u64) -> Result<(), ReplayError> {
        let (modelled, source) = match self.anchor {
            None => (used, self.trace.format.usage_source()),
            Some((used_k, after)) => (
                (used as i128 - used_k as i128 + after as i128).max(0) as u64,
                UsageSource::Modelled,
            ),
        };
        let usage =
            Usage::new(modelled, self.window, source).map_err(|source| ReplayError::Usage {
                trace: self.trace.name.clone(),
                call,
                source,
            })?;
        self.peak = self.peak.max(modelled);
        if modelled > self.window {
            self.over_window += 1;
            self.first_over_window.get_or_insert(call);
        }
        let session = self.session_no;
        let events_before = self.events.len();
        let mut queue = VecDeque::new();
        self.feed(call, Event::Usage(usage), &mut queue)?;
        let after = self.base() + self.opts.summary_tokens;
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Compact { before } => {
                    let step = self.feed(
                        call,
                        Event::Compacted {
                            after,
                            summary_tokens: self.opts.summary_tokens,
                        },
                        &mut queue,
                    )?;
                    let measure = step.expect("a compaction request is answered in Compacting");
                    self.reductions.push(measure.reduction);
                    self.in_target += usize::from(measure.within_target);
                    self.events.push(ReplayEvent {
                        call,
                        kind: ReplayEventKind::Compaction,
                        session: self.session_no,
                        before: before.used(),
                        after,
                        reduction: Some(measure.reduction),
                        reason: None,
                        successor: None,
                    });
                    self.anchor = Some((used, after));
                }
                Effect::RequestRotation { reason, before } => {
                    let successor = self.session_no + 1;
                    self.feed(
                        call,
                        Event::HandedOver {
                            successor: SessionId(successor.into()),
                        },
                        &mut queue,
                    )?;
                    self.events.push(ReplayEvent {
                        call,
                        kind: ReplayEventKind::Rotation,
                        session: self.session_no,
                        before: before.map_or(modelled, |u| u.used()),
                        after,
                        reduction: None,
                        reason: Some(reason),
                        successor: Some(successor),
                    });
                    self.session_no = successor;
                    self.machine =
                        SessionMachine::new(SessionId(successor.into()), self.opts.policy.clone());
                    self.anchor = Some((used, after));
                }
                Effect::Stop => {}
            }
        }
        self.series.push(ModelledCall {
            call,
            used: modelled,
            after: (self.events.len() > events_before).then_some(after),
            session,
        });
        Ok(())
    }

    /// Feeds one event, queues its effects, and returns the compaction it measured, if any.
    fn feed(
        &mut self,
        call: usize,
        event: Event,
        queue: &mut VecDeque<Effect>,
    ) -> Result<Option<crate::machine::CompactionMeasure>, ReplayError> {
        let machine = &mut self.machine;
        let step = match &self.mute {
            Some(mute) => tracing::dispatcher::with_default(mute, || machine.handle(&event)),
            None => machine.handle(&event),
        }
        .map_err(|source| ReplayError::Machine {
            trace: self.trace.name.clone(),
            call,
            source,
        })?;
        queue.extend(step.effects);
        Ok(step.compaction)
    }

    fn report(self) -> ReplayReport {
        let mut by_reason = BTreeMap::new();
        for e in &self.events {
            if let Some(r) = e.reason {
                *by_reason.entry(r).or_insert(0) += 1;
            }
        }
        let compactions = self.reductions.len();
        ReplayReport {
            trace: self.trace.name.clone(),
            calls: self.trace.calls.len(),
            window: self.window,
            window_source: self.window_source,
            model: self.trace.model.clone(),
            source: self.trace.format.usage_source(),
            totals: Totals {
                sessions: self.session_no,
                compactions,
                compactions_in_target: self.in_target,
                mean_reduction: (compactions > 0)
                    .then(|| self.reductions.iter().sum::<f64>() / compactions as f64),
                rotations: by_reason.values().sum(),
                rotations_by_reason: by_reason,
                peak_used: self.peak,
                peak_percent: self.peak as f64 * 100.0 / self.window as f64,
                untrusted_figures: self.untrusted.len(),
                over_window: self.over_window,
            },
            untrusted: self.untrusted,
            events: self.events,
        }
    }
}

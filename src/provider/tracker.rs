//! One session's token accounting: provider reports when they can be trusted, the calibrated
//! estimate when they cannot, and between reports.
//!
//! The chat runtime feeds a [`UsageTracker`] every response: the messages it sent and the usage
//! the provider reported (if any). The tracker
//!
//! * counts the prompt locally (only messages it has not seen cost anything);
//! * **distrusts** a report whose prompt is zero (Ollama on a KV-cache hit), or whose prompt
//!   fell below the last trusted one while the conversation only grew (its earlier messages
//!   unchanged and new ones appended): a context cannot shrink by growing. A missing report (a
//!   stream cut before its usage chunk) is treated the same way;
//! * for a trusted report, returns it as a [`UsageSource::Reported`] reading, refits the
//!   [`Calibration`] and remembers it as the **anchor**;
//! * otherwise returns a [`UsageSource::Estimated`] reading: the anchor plus the calibrated
//!   cost of the messages added since (as Codex does), or, with no anchor that still applies
//!   (no report yet, or a history rewritten by a compaction), the calibrated estimate of the
//!   whole prompt.
//!
//! [`UsageTracker::estimate`] gives the same estimate between reports, for example before a
//! call, to decide whether to compact first.

use serde::{Deserialize, Serialize};

use super::calibration::Calibration;
use super::estimate::{Encoding, Message, PromptCounter};
use super::reported::ReportedUsage;
use crate::usage::{Usage, UsageError, UsageSource};

/// Why a report was not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Distrust {
    /// The response carried no usage.
    NoReport,
    /// The reported prompt is zero tokens, which no real prompt is.
    ZeroPrompt,
    /// The reported prompt fell while the conversation only grew.
    Fell {
        /// The last trusted prompt figure.
        previous: u64,
        /// The figure reported now.
        reported: u64,
    },
    /// The recorded context (prompt + completion) is larger than the window: no model holds
    /// more than its window, so the figure or the window is wrong.
    OverWindow {
        /// The window the figure was judged against.
        window: u64,
        /// The recorded context.
        reported: u64,
    },
    /// The figures are running totals passed off as per-call ones: from the second call on,
    /// every prompt grew by at least the whole first prompt, each step by no less than the one
    /// before (what summing per-call prompts gives, and what a conversation does not).
    Cumulative {
        /// The previous call's recorded prompt.
        previous: u64,
        /// The recorded prompt now.
        reported: u64,
    },
}

impl Distrust {
    /// The rule, on its own, for every reader of reported figures (the tracker, `baton
    /// replay`): a missing report, a zero prompt, or a prompt below `last_trusted` (the last
    /// prompt that passed this rule) while the conversation only `grew` since, is not trusted.
    pub fn judge(prompt: Option<u64>, last_trusted: Option<u64>, grew: bool) -> Option<Self> {
        match (prompt, last_trusted) {
            (None, _) => Some(Self::NoReport),
            (Some(0), _) => Some(Self::ZeroPrompt),
            (Some(reported), Some(previous)) if grew && reported < previous => {
                Some(Self::Fell { previous, reported })
            }
            _ => None,
        }
    }

    /// The rule for figures an agent recorded about a history baton does not hold (a replayed
    /// trace): only what cannot be true is distrusted, a zero prompt or a context larger than
    /// `window` (the window the agent recorded it ran with, when it did). A prompt that falls is not judged here: agents prune their own context (Codex
    /// drops earlier reasoning and truncates tool outputs, Claude Code and OpenHands condense),
    /// so a smaller prompt is the truth there. Running totals are judged over a whole trace
    /// ([`Distrust::Cumulative`]), not one figure.
    pub fn judge_recorded(prompt: u64, context: u64, window: Option<u64>) -> Option<Self> {
        match window {
            _ if prompt == 0 => Some(Self::ZeroPrompt),
            Some(window) if context > window => Some(Self::OverWindow {
                window,
                reported: context,
            }),
            _ => None,
        }
    }
}

/// What the tracker made of one response.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    /// The occupancy to act on: reported when trusted, estimated otherwise.
    pub usage: Usage,
    /// Why the report was set aside, when it was.
    pub distrust: Option<Distrust>,
    /// The report as parsed, trusted or not, for records.
    pub reported: Option<ReportedUsage>,
    /// The calibrated local estimate of the prompt, for comparison.
    pub estimate: u64,
}

/// The last trusted report, from which estimates between reports grow.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// Messages in the prompt it covered.
    messages: usize,
    /// The local (uncalibrated) estimate of that prompt.
    estimate: u64,
    /// The reported prompt tokens.
    reported: u64,
}

/// One session's accounting. See the module documentation.
#[derive(Debug, Clone)]
pub struct UsageTracker {
    /// The window every reading is measured against.
    window: u64,
    /// The running count of the conversation's messages.
    counter: PromptCounter,
    /// The fit of reports against the local count.
    calibration: Calibration,
    /// The last trusted report, while the history it covered is unchanged.
    anchor: Option<Anchor>,
}

impl UsageTracker {
    /// A tracker for a session with `window` tokens, counting with `encoding`. Fails on a zero
    /// or absurd window.
    pub fn new(window: u64, encoding: Encoding) -> Result<Self, UsageError> {
        Usage::new(0, window, UsageSource::Estimated)?;
        Ok(Self {
            window,
            counter: PromptCounter::new(encoding),
            calibration: Calibration::default(),
            anchor: None,
        })
    }

    /// Starts from a saved calibration instead of none.
    pub fn with_calibration(mut self, calibration: Calibration) -> Self {
        self.calibration = calibration;
        self
    }

    /// The window readings are measured against.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The local, uncalibrated count of the prompt last observed or estimated (the tiktoken
    /// chat-formula count of its messages). Against a trusted report of the same prompt it gives
    /// the server's tokens per local token, which text budgets need (the calibration is additive).
    pub fn local_tokens(&self) -> u64 {
        self.counter.prompt_tokens()
    }

    /// The current calibration (to save it for the next session of the same model).
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Accounts for one response. `prompt` is the list of messages sent (the whole history, as
    /// sent: unchanged messages cost nothing to recount); `reported` is the parsed usage, or
    /// `None` when the response had none.
    pub fn observe(
        &mut self,
        prompt: &[Message],
        reported: Option<&ReportedUsage>,
    ) -> Result<Reading, UsageError> {
        let grew = self.sync(prompt);
        let estimate = self.counter.prompt_tokens();
        let distrust = Distrust::judge(
            reported.map(|r| r.prompt_tokens),
            self.anchor.map(|a| a.reported),
            grew,
        );
        let usage = match (distrust, reported) {
            (None, Some(r)) => {
                self.calibration
                    .observe(estimate, prompt.len(), r.prompt_tokens);
                self.anchor = Some(Anchor {
                    messages: prompt.len(),
                    estimate,
                    reported: r.prompt_tokens,
                });
                r.to_usage(self.window)?
            }
            (why, r) => {
                tracing::warn!(
                    ?why,
                    reported = r.map(|r| r.prompt_tokens),
                    "usage report not trusted; using the estimate"
                );
                let completion = r.map_or(0, |r| r.completion_tokens);
                Usage::new(
                    self.predict() + completion,
                    self.window,
                    UsageSource::Estimated,
                )?
            }
        };
        Ok(Reading {
            usage,
            distrust,
            reported: reported.copied(),
            estimate: self.calibration.predict(estimate, prompt.len()),
        })
    }

    /// The estimated occupancy of a prompt made of `messages`, between reports (before a
    /// call, or after a compaction rewrote the history).
    pub fn estimate(&mut self, messages: &[Message]) -> Result<Usage, UsageError> {
        self.sync(messages);
        Usage::new(self.predict(), self.window, UsageSource::Estimated)
    }

    /// Brings the counter to `messages`; drops the anchor if the history it covered changed.
    /// Returns true when the conversation only grew since the anchor.
    fn sync(&mut self, messages: &[Message]) -> bool {
        let synced = self.counter.sync(messages);
        match self.anchor {
            Some(a) if synced.kept < a.messages => {
                tracing::debug!(
                    kept = synced.kept,
                    anchored = a.messages,
                    "history rewritten; estimating from scratch until the next report"
                );
                self.anchor = None;
                false
            }
            Some(a) => messages.len() > a.messages,
            None => false,
        }
    }

    /// The calibrated prompt size of the messages the counter holds: grown from the anchor when
    /// it applies, else from scratch.
    fn predict(&self) -> u64 {
        let n = self.counter.len();
        let estimate = self.counter.prompt_tokens();
        match self.anchor {
            Some(a) => {
                let now = self.calibration.predict(estimate, n) as i128;
                let then = self.calibration.predict(a.estimate, a.messages) as i128;
                (a.reported as i128 + now - then).max(0) as u64
            }
            None => self.calibration.predict(estimate, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::reported::Provider;

    fn conversation(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                Message::new(
                    if i % 2 == 0 { "user" } else { "assistant" },
                    format!("turn {i}: some words to count here"),
                )
            })
            .collect()
    }

    fn report(prompt: u64, completion: u64) -> ReportedUsage {
        ReportedUsage {
            provider: Provider::OpenAiChat,
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: None,
        }
    }

    #[test]
    fn a_trusted_report_is_the_reading() {
        let mut t = UsageTracker::new(10_000, Encoding::O200kBase).unwrap();
        let r = t.observe(&conversation(3), Some(&report(500, 20))).unwrap();
        assert_eq!(r.distrust, None);
        assert_eq!(r.usage.used(), 520);
        assert_eq!(r.usage.source(), UsageSource::Reported);
    }

    #[test]
    fn a_zero_prompt_falls_back_to_the_anchored_estimate() {
        let mut t = UsageTracker::new(10_000, Encoding::O200kBase).unwrap();
        let msgs = conversation(5);
        t.observe(&msgs[..3], Some(&report(500, 20))).unwrap();
        let r = t.observe(&msgs, Some(&report(0, 30))).unwrap();
        assert_eq!(r.distrust, Some(Distrust::ZeroPrompt));
        assert_eq!(r.usage.source(), UsageSource::Estimated);
        // The anchor (500) plus the two new messages as counted, plus the reply.
        let added = t.counter.prefix_tokens(5) - t.counter.prefix_tokens(3);
        assert_eq!(r.usage.used(), 500 + added + 30);
    }

    #[test]
    fn a_prompt_that_falls_while_the_conversation_grew_is_distrusted() {
        let mut t = UsageTracker::new(10_000, Encoding::O200kBase).unwrap();
        let msgs = conversation(5);
        t.observe(&msgs[..3], Some(&report(500, 20))).unwrap();
        let r = t.observe(&msgs, Some(&report(120, 20))).unwrap();
        assert_eq!(
            r.distrust,
            Some(Distrust::Fell {
                previous: 500,
                reported: 120
            })
        );
        assert!(r.usage.used() > 500);
    }

    #[test]
    fn a_prompt_that_falls_after_a_rewrite_is_trusted() {
        let mut t = UsageTracker::new(10_000, Encoding::O200kBase).unwrap();
        let msgs = conversation(5);
        t.observe(&msgs, Some(&report(900, 20))).unwrap();
        // A compaction replaced the history with a summary: a smaller prompt is expected.
        let compacted = vec![msgs[0].clone(), Message::new("user", "summary so far")];
        let r = t.observe(&compacted, Some(&report(200, 20))).unwrap();
        assert_eq!(r.distrust, None);
        assert_eq!(r.usage.used(), 220);
    }

    #[test]
    fn no_report_is_estimated_from_the_calibration_without_an_anchor() {
        let mut t = UsageTracker::new(10_000, Encoding::O200kBase)
            .unwrap()
            .with_calibration(Calibration::with_prior(100.0, 0.0));
        let msgs = conversation(2);
        let r = t.observe(&msgs, None).unwrap();
        assert_eq!(r.distrust, Some(Distrust::NoReport));
        assert_eq!(
            r.usage.used(),
            Encoding::O200kBase.prompt_tokens(&msgs) + 100
        );
        assert_eq!(t.estimate(&msgs).unwrap().used(), r.usage.used());
    }

    #[test]
    fn a_zero_window_is_refused() {
        assert!(UsageTracker::new(0, Encoding::O200kBase).is_err());
    }
}

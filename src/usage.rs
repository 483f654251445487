//! Usage readings: how full one session's context window is, and who said so.
//!
//! A [`Usage`] is the only way a token figure enters baton. It is validated when it is made
//! (and when it is deserialised), so every `Usage` the state machine sees is sane: the window is
//! positive, both figures fit the bound below, and the ratio is finite.
//!
//! `used > window` is *not* rejected: a session that has run past its window must rotate, and
//! rejecting the figure would leave it stuck. [`Usage::is_over_window`] lets callers warn that the
//! window is probably misconfigured.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a usage figure was refused. Every variant is bad input: nothing downstream of a refused
/// figure changes state.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum UsageError {
    /// A window of zero tokens has no ratio; it is always a configuration or parsing mistake.
    #[error("context window is zero tokens")]
    ZeroWindow,
    /// A figure larger than any real context window: almost certainly a parsing bug or garbage.
    #[error("{field} = {value} tokens is larger than the {max} tokens baton accepts")]
    Oversized {
        /// Which figure was too large (`used`, `window`, ...).
        field: &'static str,
        /// The figure as given.
        value: u64,
        /// The bound, [`Usage::MAX_TOKENS`].
        max: u64,
    },
    /// A figure parsed from outside (JSON, CSV) above [`Usage::MAX_TOKENS`], shown as it was
    /// written (`1e300`), not as the `u64` it would have been cast to.
    #[error("{field} = {value:e} tokens is larger than the {max} tokens baton accepts")]
    OversizedFigure {
        /// Which figure was too large.
        field: &'static str,
        /// The figure as parsed.
        value: f64,
        /// The bound, [`Usage::MAX_TOKENS`].
        max: u64,
    },
    /// A figure parsed from outside (JSON, CSV) that is negative, fractional, NaN or infinite.
    #[error("{field} = {value} is not a whole, non-negative token count")]
    NotACount {
        /// Which figure was malformed.
        field: &'static str,
        /// The figure as parsed.
        value: f64,
    },
}

/// Where a usage figure came from, so that a decision can be traced back to its evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported by the model provider in a response's `usage` object (the ground truth).
    #[default]
    Reported,
    /// Counted or estimated locally, between provider reports or where none exist.
    Estimated,
    /// Derived by a model of what would have happened, as `baton replay` does after a
    /// compaction or rotation it simulates.
    Modelled,
}

/// One reading of a session's context: `used` tokens of a `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawUsage")]
pub struct Usage {
    /// Tokens the conversation occupies now (prompt plus the latest reply).
    used: u64,
    /// Tokens the session may occupy at most; the denominator of every threshold.
    window: u64,
    /// Who produced the figure.
    source: UsageSource,
}

/// The unvalidated wire form of [`Usage`]; deserialisation goes through [`Usage::new`].
#[derive(Deserialize)]
struct RawUsage {
    used: u64,
    window: u64,
    #[serde(default)]
    source: UsageSource,
}

impl TryFrom<RawUsage> for Usage {
    type Error = UsageError;
    fn try_from(raw: RawUsage) -> Result<Self, Self::Error> {
        Usage::new(raw.used, raw.window, raw.source)
    }
}

impl Usage {
    /// The largest token figure baton accepts (about 4.3 billion). Real windows are at most a
    /// few million tokens; anything above this is a parsing error, and the bound lets a session
    /// keep its usage history in 32-bit cells.
    pub const MAX_TOKENS: u64 = u32::MAX as u64;

    /// Validates and builds a reading. Fails on a zero window or a figure above
    /// [`Self::MAX_TOKENS`].
    pub fn new(used: u64, window: u64, source: UsageSource) -> Result<Self, UsageError> {
        if window == 0 {
            return Err(UsageError::ZeroWindow);
        }
        check_bound("window", window)?;
        check_bound("used", used)?;
        Ok(Self {
            used,
            window,
            source,
        })
    }

    /// A reported reading; shorthand for `Usage::new(used, window, UsageSource::Reported)`.
    pub fn reported(used: u64, window: u64) -> Result<Self, UsageError> {
        Self::new(used, window, UsageSource::Reported)
    }

    /// Tokens in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The window the figure is measured against.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Who produced the figure.
    pub fn source(&self) -> UsageSource {
        self.source
    }

    /// `used / window`; finite and non-negative by construction, above 1 when over the window.
    pub fn ratio(&self) -> f64 {
        self.used as f64 / self.window as f64
    }

    /// `ratio * 100`, for people and records.
    pub fn percent(&self) -> f64 {
        self.ratio() * 100.0
    }

    /// True when the session occupies more than its window, which a correct window makes
    /// impossible: callers log a warning that the window is probably misconfigured.
    pub fn is_over_window(&self) -> bool {
        self.used > self.window
    }

    /// The same window and source with another `used` figure (for example the size after a
    /// compaction). Fails only if `used` is over [`Self::MAX_TOKENS`].
    pub fn with_used(&self, used: u64, source: UsageSource) -> Result<Self, UsageError> {
        Self::new(used, self.window, source)
    }
}

fn check_bound(field: &'static str, value: u64) -> Result<(), UsageError> {
    if value > Usage::MAX_TOKENS {
        return Err(UsageError::Oversized {
            field,
            value,
            max: Usage::MAX_TOKENS,
        });
    }
    Ok(())
}

/// Converts a token figure parsed as a JSON number (which may be negative, fractional or huge)
/// into a count, with a typed error instead of a silent cast.
pub fn count_from_f64(field: &'static str, value: f64) -> Result<u64, UsageError> {
    if !value.is_finite() || value < 0.0 || value.fract() != 0.0 {
        return Err(UsageError::NotACount { field, value });
    }
    if value > Usage::MAX_TOKENS as f64 {
        return Err(UsageError::OversizedFigure {
            field,
            value,
            max: Usage::MAX_TOKENS,
        });
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_window_is_rejected() {
        assert_eq!(Usage::reported(10, 0), Err(UsageError::ZeroWindow));
    }

    #[test]
    fn oversized_figures_are_rejected() {
        let err = Usage::reported(Usage::MAX_TOKENS + 1, 1000).unwrap_err();
        assert!(matches!(err, UsageError::Oversized { field: "used", .. }));
        let err = Usage::reported(1, u64::MAX).unwrap_err();
        assert!(matches!(
            err,
            UsageError::Oversized {
                field: "window",
                ..
            }
        ));
    }

    #[test]
    fn used_over_window_is_accepted_and_flagged() {
        let u = Usage::reported(1200, 1000).unwrap();
        assert!(u.is_over_window());
        assert!(u.ratio() > 1.0);
    }

    #[test]
    fn deserialisation_validates() {
        let bad: Result<Usage, _> = serde_json::from_str(r#"{"used":5,"window":0}"#);
        assert!(bad.unwrap_err().to_string().contains("zero"));
        let neg: Result<Usage, _> = serde_json::from_str(r#"{"used":-5,"window":10}"#);
        assert!(neg.is_err());
        let ok: Usage = serde_json::from_str(r#"{"used":5,"window":10}"#).unwrap();
        assert_eq!(ok.source(), UsageSource::Reported);
        assert_eq!(ok.percent(), 50.0);
    }

    #[test]
    fn json_numbers_must_be_whole_and_non_negative() {
        assert_eq!(count_from_f64("x", 12.0), Ok(12));
        assert!(count_from_f64("x", -1.0).is_err());
        assert!(count_from_f64("x", 1.5).is_err());
        assert!(count_from_f64("x", f64::NAN).is_err());
        assert!(count_from_f64("x", f64::INFINITY).is_err());
        assert!(matches!(
            count_from_f64("x", 1e12),
            Err(UsageError::OversizedFigure { .. })
        ));
        let e = count_from_f64("x", 1e300).unwrap_err().to_string();
        assert!(
            e.contains("x = 1e300 tokens") && !e.contains("18446744073709551615"),
            "{e}"
        );
    }
}

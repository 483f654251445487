//! The policy: when a session compacts, when it rotates, and what counts as a good compaction.
//!
//! A [`Policy`] is validated when it is built, so the state machine never meets thresholds in the
//! wrong order or a NaN. [`Policy::decide`] is the pure decision, usable on its own by an
//! orchestrator that only wants to know what to do with a reading.
//!
//! Boundaries are inclusive: with the defaults 79.9% continues, 80.0% compacts, 94.9% compacts
//! and 95.0% rotates.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::usage::Usage;

/// Why a policy could not be built. Each variant names the knob at fault.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PolicyError {
    /// A ratio knob outside its range, or not a finite number.
    #[error("{knob} = {value} is out of range: it must be a finite number in {range}")]
    OutOfRange {
        /// The knob, as named in configuration (`compact_at`, ...).
        knob: &'static str,
        /// The rejected value.
        value: f64,
        /// The accepted range, for the message.
        range: &'static str,
    },
    /// `compact_at` must be strictly below `rotate_at`, or compaction could never happen.
    #[error("compact_at ({compact_at}) must be below rotate_at ({rotate_at})")]
    ThresholdOrder {
        /// The compaction threshold given.
        compact_at: f64,
        /// The rotation threshold given.
        rotate_at: f64,
    },
    /// The target reduction band is upside down.
    #[error("target reduction band {low}..={high} is empty: low must not exceed high")]
    EmptyTargetBand {
        /// Lower bound given.
        low: f64,
        /// Upper bound given.
        high: f64,
    },
    /// A zero timeout would fail every runtime call at once.
    #[error("{knob} must be longer than zero")]
    ZeroTimeout {
        /// Which timeout.
        knob: &'static str,
    },
    /// A session must remember at least its latest reading.
    #[error("history_len must be at least 1")]
    ZeroHistory,
}

/// Why a session rotates. Recorded in every rotation, and the vocabulary of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationReason {
    /// Usage reached `rotate_at`.
    Threshold,
    /// A compaction freed less than `min_reduction`, or left the session at or above
    /// `compact_at`.
    InsufficientCompaction,
    /// The compaction call failed or timed out.
    CompactionFailed,
    /// The session reached `compact_at` after using all its `max_compactions`.
    CompactionBudget,
    /// Someone asked for it (an operator, the orchestrator).
    Manual,
    /// A request did not fit the model's context window, as the endpoint said
    /// ([`Event::Overflow`](crate::Event::Overflow)); the rotation's reading is the server's
    /// figures when it gave them.
    Overflow,
}

impl RotationReason {
    /// The snake_case name used in records and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::InsufficientCompaction => "insufficient_compaction",
            Self::CompactionFailed => "compaction_failed",
            Self::CompactionBudget => "compaction_budget",
            Self::Manual => "manual",
            Self::Overflow => "overflow",
        }
    }
}

impl std::fmt::Display for RotationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Policy::decide`] says to do with one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Below `compact_at`: carry on.
    Continue,
    /// At or above `compact_at`, below `rotate_at`, with compactions left: compact.
    Compact,
    /// Rotate, for the reason given.
    Rotate(RotationReason),
}

/// Thresholds and limits for one agent type. Built with [`Policy::builder`] (validated) or
/// [`Policy::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PolicyBuilder", into = "PolicyBuilder")]
pub struct Policy {
    /// Ratio at which a Normal session starts compacting.
    compact_at: f64,
    /// Ratio at which a live session rotates, whatever it is doing.
    rotate_at: f64,
    /// A compaction that frees less than this share of its `before` is insufficient.
    min_reduction: f64,
    /// Compactions one session may do; past them, reaching `compact_at` rotates.
    max_compactions: u32,
    /// The band of reductions the seed aimed for (40-50%): measured and reported, not enforced.
    target_reduction: (f64, f64),
    /// A compaction call that takes longer has failed.
    compaction_timeout: Duration,
    /// A rotation (summary, spawn, assign) that takes longer has failed.
    rotation_timeout: Duration,
    /// How many recent readings a session keeps: bounded, because a million sessions must fit
    /// in about a gigabyte.
    history_len: usize,
    /// The largest share of the successor's window a handoff may take, the fallback included:
    /// a handoff near the window would rotate the successor again almost at once.
    handoff_share: f64,
}

impl Default for Policy {
    fn default() -> Self {
        PolicyBuilder::default()
            .build()
            .expect("the default policy is valid")
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// A builder starting from this policy, to change a few knobs.
    pub fn to_builder(&self) -> PolicyBuilder {
        PolicyBuilder::from(self.clone())
    }

    /// Ratio at which a Normal session compacts.
    pub fn compact_at(&self) -> f64 {
        self.compact_at
    }
    /// Ratio at which a live session rotates.
    pub fn rotate_at(&self) -> f64 {
        self.rotate_at
    }
    /// Smallest share of `before` a sufficient compaction frees.
    pub fn min_reduction(&self) -> f64 {
        self.min_reduction
    }
    /// Compactions allowed per session.
    pub fn max_compactions(&self) -> u32 {
        self.max_compactions
    }
    /// The reduction band aimed for, `(low, high)`, inclusive.
    pub fn target_reduction(&self) -> (f64, f64) {
        self.target_reduction
    }
    /// Deadline for one compaction.
    pub fn compaction_timeout(&self) -> Duration {
        self.compaction_timeout
    }
    /// Deadline for one rotation.
    pub fn rotation_timeout(&self) -> Duration {
        self.rotation_timeout
    }
    /// Readings kept per session.
    pub fn history_len(&self) -> usize {
        self.history_len
    }
    /// The largest share of the successor's window a handoff may take.
    pub fn handoff_share(&self) -> f64 {
        self.handoff_share
    }

    /// The most tokens a handoff to a successor with a `window`-token context may take:
    /// `handoff_share` of it, rounded down.
    pub fn handoff_cap(&self, window: u64) -> u64 {
        (self.handoff_share * window as f64).floor() as u64
    }

    /// The decision for one reading, given how many compactions the session has done.
    ///
    /// Rotation wins over compaction; a session out of compactions rotates at `compact_at`
    /// with [`RotationReason::CompactionBudget`].
    pub fn decide(&self, usage: &Usage, compactions_done: u32) -> Action {
        let ratio = usage.ratio();
        if ratio >= self.rotate_at {
            Action::Rotate(RotationReason::Threshold)
        } else if ratio >= self.compact_at {
            if compactions_done >= self.max_compactions {
                Action::Rotate(RotationReason::CompactionBudget)
            } else {
                Action::Compact
            }
        } else {
            Action::Continue
        }
    }

    /// Whether a compaction from `before` to `after` tokens (of `window`) is enough to keep the
    /// session: it must free at least `min_reduction` of `before` and end below `compact_at`.
    pub fn is_sufficient(&self, before: u64, after: u64, window: u64) -> bool {
        reduction(before, after) >= self.min_reduction
            && (after as f64 / window as f64) < self.compact_at
    }

    /// Whether a reduction falls in the target band.
    pub fn within_target(&self, reduction: f64) -> bool {
        let (low, high) = self.target_reduction;
        (low..=high).contains(&reduction)
    }
}

/// `1 - after / before`: the share of the context a compaction freed. Negative when the context
/// grew; 0 when `before` is 0 (nothing to free).
pub fn reduction(before: u64, after: u64) -> f64 {
    if before == 0 {
        0.0
    } else {
        1.0 - after as f64 / before as f64
    }
}

/// Builds a [`Policy`], checking every knob in [`PolicyBuilder::build`]. Also the serde form of a
/// policy: missing keys take their defaults, and deserialising validates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyBuilder {
    /// See [`Policy::compact_at`].
    pub compact_at: f64,
    /// See [`Policy::rotate_at`].
    pub rotate_at: f64,
    /// See [`Policy::min_reduction`].
    pub min_reduction: f64,
    /// See [`Policy::max_compactions`].
    pub max_compactions: u32,
    /// See [`Policy::target_reduction`].
    pub target_reduction: (f64, f64),
    /// See [`Policy::compaction_timeout`].
    pub compaction_timeout: Duration,
    /// See [`Policy::rotation_timeout`].
    pub rotation_timeout: Duration,
    /// See [`Policy::history_len`].
    pub history_len: usize,
    /// See [`Policy::handoff_share`].
    pub handoff_share: f64,
}

impl Default for PolicyBuilder {
    fn default() -> Self {
        Self {
            compact_at: 0.80,
            rotate_at: 0.95,
            min_reduction: 0.20,
            max_compactions: 3,
            target_reduction: (0.40, 0.50),
            compaction_timeout: Duration::from_secs(120),
            rotation_timeout: Duration::from_secs(300),
            history_len: 16,
            handoff_share: 0.25,
        }
    }
}

impl From<Policy> for PolicyBuilder {
    fn from(p: Policy) -> Self {
        Self {
            compact_at: p.compact_at,
            rotate_at: p.rotate_at,
            min_reduction: p.min_reduction,
            max_compactions: p.max_compactions,
            target_reduction: p.target_reduction,
            compaction_timeout: p.compaction_timeout,
            rotation_timeout: p.rotation_timeout,
            history_len: p.history_len,
            handoff_share: p.handoff_share,
        }
    }
}

impl TryFrom<PolicyBuilder> for Policy {
    type Error = PolicyError;
    fn try_from(b: PolicyBuilder) -> Result<Self, Self::Error> {
        b.build()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl PolicyBuilder {
    setter!(/// Sets the compaction threshold (ratio in (0, 1)).
        compact_at: f64);
    setter!(/// Sets the rotation threshold (ratio in (0, 1]).
        rotate_at: f64);
    setter!(/// Sets the smallest sufficient reduction (in [0, 1)).
        min_reduction: f64);
    setter!(/// Sets how many compactions a session may do.
        max_compactions: u32);
    setter!(/// Sets the target reduction band `(low, high)`.
        target_reduction: (f64, f64));
    setter!(/// Sets the compaction deadline.
        compaction_timeout: Duration);
    setter!(/// Sets the rotation deadline.
        rotation_timeout: Duration);
    setter!(/// Sets how many readings a session keeps.
        history_len: usize);
    setter!(/// Sets the largest share of the successor's window a handoff may take (in (0, 1)).
        handoff_share: f64);

    /// Checks every knob and returns the policy, or the first violation found.
    pub fn build(self) -> Result<Policy, PolicyError> {
        ratio("compact_at", self.compact_at, false, "(0, 1)")?;
        ratio("rotate_at", self.rotate_at, true, "(0, 1]")?;
        if self.compact_at >= self.rotate_at {
            return Err(PolicyError::ThresholdOrder {
                compact_at: self.compact_at,
                rotate_at: self.rotate_at,
            });
        }
        unit("min_reduction", self.min_reduction, "[0, 1)")?;
        let (low, high) = self.target_reduction;
        unit("target_reduction.low", low, "[0, 1)")?;
        unit("target_reduction.high", high, "[0, 1)")?;
        if low > high {
            return Err(PolicyError::EmptyTargetBand { low, high });
        }
        if self.compaction_timeout.is_zero() {
            return Err(PolicyError::ZeroTimeout {
                knob: "compaction_timeout",
            });
        }
        if self.rotation_timeout.is_zero() {
            return Err(PolicyError::ZeroTimeout {
                knob: "rotation_timeout",
            });
        }
        if self.history_len == 0 {
            return Err(PolicyError::ZeroHistory);
        }
        ratio("handoff_share", self.handoff_share, false, "(0, 1)")?;
        Ok(Policy {
            compact_at: self.compact_at,
            rotate_at: self.rotate_at,
            min_reduction: self.min_reduction,
            max_compactions: self.max_compactions,
            target_reduction: self.target_reduction,
            compaction_timeout: self.compaction_timeout,
            rotation_timeout: self.rotation_timeout,
            history_len: self.history_len,
            handoff_share: self.handoff_share,
        })
    }
}

/// A threshold ratio: finite, above 0, below 1 (or up to 1 when `one_ok`).
fn ratio(
    knob: &'static str,
    value: f64,
    one_ok: bool,
    range: &'static str,
) -> Result<(), PolicyError> {
    let ok = value.is_finite() && value > 0.0 && (value < 1.0 || (one_ok && value == 1.0));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::OutOfRange { knob, value, range })
    }
}

/// A share: finite, in [0, 1).
fn unit(knob: &'static str, value: f64, range: &'static str) -> Result<(), PolicyError> {
    if value.is_finite() && (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(PolicyError::OutOfRange { knob, value, range })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(used: u64) -> Usage {
        Usage::reported(used, 1000).unwrap()
    }

    /// The seed's boundaries, inclusive, with and without compactions left.
    #[test]
    fn decide_at_the_seed_boundaries() {
        let p = Policy::default();
        let table = [
            (0, 0, Action::Continue),
            (799, 0, Action::Continue),
            (800, 0, Action::Compact),
            (949, 0, Action::Compact),
            (950, 0, Action::Rotate(RotationReason::Threshold)),
            (1000, 0, Action::Rotate(RotationReason::Threshold)),
            (1500, 0, Action::Rotate(RotationReason::Threshold)),
            (799, 3, Action::Continue),
            (800, 2, Action::Compact),
            (800, 3, Action::Rotate(RotationReason::CompactionBudget)),
            (949, 9, Action::Rotate(RotationReason::CompactionBudget)),
            (950, 3, Action::Rotate(RotationReason::Threshold)),
        ];
        for (used, done, want) in table {
            assert_eq!(p.decide(&at(used), done), want, "used={used} done={done}");
        }
    }

    #[test]
    fn decide_uses_percent_boundaries_on_odd_windows() {
        let p = Policy::default();
        // 80% of 200_000 is 160_000 exactly; one token less continues.
        let w = 200_000;
        assert_eq!(
            p.decide(&Usage::reported(159_999, w).unwrap(), 0),
            Action::Continue
        );
        assert_eq!(
            p.decide(&Usage::reported(160_000, w).unwrap(), 0),
            Action::Compact
        );
        assert_eq!(
            p.decide(&Usage::reported(189_999, w).unwrap(), 0),
            Action::Compact
        );
        assert_eq!(
            p.decide(&Usage::reported(190_000, w).unwrap(), 0),
            Action::Rotate(RotationReason::Threshold)
        );
    }

    #[test]
    fn each_bad_knob_has_its_own_error() {
        let b = Policy::builder;
        assert!(matches!(
            b().compact_at(f64::NAN).build(),
            Err(PolicyError::OutOfRange {
                knob: "compact_at",
                ..
            })
        ));
        assert!(matches!(
            b().compact_at(0.0).build(),
            Err(PolicyError::OutOfRange {
                knob: "compact_at",
                ..
            })
        ));
        assert!(matches!(
            b().rotate_at(1.01).build(),
            Err(PolicyError::OutOfRange {
                knob: "rotate_at",
                ..
            })
        ));
        assert!(b().rotate_at(1.0).build().is_ok());
        assert!(matches!(
            b().compact_at(0.95).rotate_at(0.95).build(),
            Err(PolicyError::ThresholdOrder { .. })
        ));
        assert!(matches!(
            b().min_reduction(-0.1).build(),
            Err(PolicyError::OutOfRange {
                knob: "min_reduction",
                ..
            })
        ));
        assert!(matches!(
            b().target_reduction((0.5, 0.4)).build(),
            Err(PolicyError::EmptyTargetBand { .. })
        ));
        assert!(matches!(
            b().compaction_timeout(Duration::ZERO).build(),
            Err(PolicyError::ZeroTimeout {
                knob: "compaction_timeout"
            })
        ));
        assert!(matches!(
            b().rotation_timeout(Duration::ZERO).build(),
            Err(PolicyError::ZeroTimeout {
                knob: "rotation_timeout"
            })
        ));
        assert_eq!(b().history_len(0).build(), Err(PolicyError::ZeroHistory));
        for bad in [0.0, f64::NAN] {
            assert!(matches!(
                b().rotate_at(bad).build(),
                Err(PolicyError::OutOfRange {
                    knob: "rotate_at",
                    ..
                })
            ));
        }
        assert!(matches!(
            b().min_reduction(1.0).build(),
            Err(PolicyError::OutOfRange {
                knob: "min_reduction",
                ..
            })
        ));
        assert!(b().min_reduction(0.0).build().is_ok());
        assert!(matches!(
            b().target_reduction((-0.1, 0.5)).build(),
            Err(PolicyError::OutOfRange {
                knob: "target_reduction.low",
                ..
            })
        ));
        assert!(matches!(
            b().target_reduction((0.4, 1.0)).build(),
            Err(PolicyError::OutOfRange {
                knob: "target_reduction.high",
                ..
            })
        ));
    }

    #[test]
    fn handoff_share_outside_zero_to_one_is_refused_by_name() {
        let b = Policy::builder;
        for bad in [0.0, -0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    b().handoff_share(bad).build(),
                    Err(PolicyError::OutOfRange {
                        knob: "handoff_share",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            b().handoff_share(1.0).build().unwrap_err().to_string(),
            "handoff_share = 1 is out of range: it must be a finite number in (0, 1)"
        );
        assert!(b().handoff_share(0.01).build().is_ok());
        assert!(b().handoff_share(0.99).build().is_ok());
    }

    #[test]
    fn handoff_cap_is_the_share_of_the_successors_window_rounded_down() {
        let p = Policy::default();
        // The issue's case: a 24,012-token fallback in a 32k window is far above the cap.
        assert_eq!(p.handoff_cap(32_768), 8_192);
        assert_eq!(p.handoff_cap(1_001), 250);
        assert_eq!(p.handoff_cap(0), 0);
        let tight = Policy::builder().handoff_share(0.1).build().unwrap();
        assert_eq!(tight.handoff_cap(200_000), 20_000);
    }

    #[test]
    fn handoff_share_round_trips_through_serde_and_defaults_when_absent() {
        let p: Policy = serde_json::from_str(r#"{"handoff_share":0.3}"#).unwrap();
        assert_eq!(p.handoff_share(), 0.3);
        let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let old: Policy = serde_json::from_str(r#"{"compact_at":0.7}"#).unwrap();
        assert_eq!(old.handoff_share(), 0.25);
        let bad = serde_json::from_str::<Policy>(r#"{"handoff_share":0}"#).unwrap_err();
        assert!(bad.to_string().contains("handoff_share"), "{bad}");
    }

    /// The defaults are the design's numbers (design.md, "Policy").
    #[test]
    fn defaults_match_the_design() {
        let p = Policy::default();
        assert_eq!(p.compact_at(), 0.80);
        assert_eq!(p.rotate_at(), 0.95);
        assert_eq!(p.min_reduction(), 0.20);
        assert_eq!(p.max_compactions(), 3);
        assert_eq!(p.target_reduction(), (0.40, 0.50));
        assert_eq!(p.compaction_timeout(), Duration::from_secs(120));
        assert_eq!(p.rotation_timeout(), Duration::from_secs(300));
        assert_eq!(p.history_len(), 16);
        assert_eq!(p.handoff_share(), 0.25);
        assert_eq!(PolicyBuilder::default().build().unwrap(), p);
    }

    #[test]
    fn deserialising_fills_defaults_and_validates() {
        let p: Policy = serde_json::from_str(r#"{"compact_at":0.7}"#).unwrap();
        assert_eq!(p.compact_at(), 0.7);
        assert_eq!(p.rotate_at(), 0.95);
        let bad = serde_json::from_str::<Policy>(r#"{"compact_at":0.99}"#).unwrap_err();
        assert!(bad.to_string().contains("must be below rotate_at"), "{bad}");
        let unknown = serde_json::from_str::<Policy>(r#"{"compact_now":0.5}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
    }

    #[test]
    fn sufficiency_needs_both_reduction_and_room() {
        let p = Policy::default();
        assert!(p.is_sufficient(850, 400, 1000));
        // Freed only 10%.
        assert!(!p.is_sufficient(850, 765, 1000));
        // Freed 25% of a context already over the window, but still above compact_at.
        assert!(!p.is_sufficient(1200, 900, 1000));
        assert!(p.within_target(0.45));
        assert!(!p.within_target(0.39));
        assert_eq!(reduction(0, 0), 0.0);
        assert!(reduction(100, 150) < 0.0);
    }
}

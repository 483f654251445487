//! Calibration of the local estimate against what the provider reports.
//!
//! A tiktoken count of the messages misses what the provider adds: a fixed part (the tool schema,
//! the template's preamble) and a part per message (the template's framing, tool-call
//! envelopes), and the model's own vocabulary differs from o200k. On real DeepSeek traces o200k
//! alone undercounts by 12-31%, and the residual is close to linear:
//!
//! ```text
//! reported ~ estimate + a + b * messages
//! ```
//!
//! [`Calibration`] fits `a` and `b` by ordinary least squares on every trusted report, with
//! running sums (each report costs O(1), whatever the history). With fewer than two distinct
//! message counts the slope cannot be fitted: `b` keeps its prior and `a` is the mean residual.

use serde::{Deserialize, Serialize};

/// The running least-squares fit of `reported - estimate` against the number of messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `a` used before any report (and the intercept's starting point).
    prior_a: f64,
    /// `b` used until two reports with different message counts allow fitting it.
    prior_b: f64,
    /// Reports observed.
    n: u64,
    /// Running mean of the message counts.
    mean_x: f64,
    /// Running mean of the residuals `reported - estimate`.
    mean_y: f64,
    /// Running sum of squared deviations of the message counts (Welford), the slope's
    /// denominator.
    c_xx: f64,
    /// Running sum of co-deviations of message counts and residuals, the slope's numerator.
    c_xy: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self::with_prior(0.0, 0.0)
    }
}

impl Calibration {
    /// A calibration that starts from `a` and `b` (for example a fit saved from an earlier
    /// session of the same model) until reports refine them.
    pub fn with_prior(a: f64, b: f64) -> Self {
        Self {
            prior_a: finite_or_zero(a),
            prior_b: finite_or_zero(b),
            n: 0,
            mean_x: 0.0,
            mean_y: 0.0,
            c_xx: 0.0,
            c_xy: 0.0,
        }
    }

    /// Adds one report: the local `estimate` of a prompt of `messages` messages, and the
    /// `reported` prompt tokens. O(1).
    pub fn observe(&mut self, estimate: u64, messages: usize, reported: u64) {
        let x = messages as f64;
        let y = reported as f64 - estimate as f64;
        self.n += 1;
        let n = self.n as f64;
        let dx = x - self.mean_x;
        self.mean_x += dx / n;
        self.mean_y += (y - self.mean_y) / n;
        self.c_xx += dx * (x - self.mean_x);
        self.c_xy += dx * (y - self.mean_y);
    }

    /// Reports observed so far.
    pub fn observations(&self) -> u64 {
        self.n
    }

    /// The current `(a, b)`.
    pub fn coefficients(&self) -> (f64, f64) {
        if self.n == 0 {
            return (self.prior_a, self.prior_b);
        }
        // A slope needs spread in the message counts; 1e-9 guards against rounding noise.
        let b = if self.c_xx > 1e-9 {
            self.c_xy / self.c_xx
        } else {
            self.prior_b
        };
        (self.mean_y - b * self.mean_x, b)
    }

    /// The calibrated prompt size: `estimate + a + b * messages`, rounded, never below zero.
    pub fn predict(&self, estimate: u64, messages: usize) -> u64 {
        let (a, b) = self.coefficients();
        let v = estimate as f64 + a + b * messages as f64;
        if v.is_finite() && v > 0.0 {
            v.round() as u64
        } else {
            0
        }
    }
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_linear_residual_is_recovered() {
        let mut c = Calibration::default();
        for m in [2usize, 10, 25, 40] {
            let est = 1000 + 50 * m as u64;
            c.observe(est, m, est + 255 + 29 * m as u64);
        }
        let (a, b) = c.coefficients();
        assert!(
            (a - 255.0).abs() < 1e-6 && (b - 29.0).abs() < 1e-9,
            "{a} {b}"
        );
        assert_eq!(c.predict(10_000, 100), 10_000 + 255 + 2900);
    }

    #[test]
    fn without_spread_in_messages_the_slope_keeps_its_prior() {
        let mut c = Calibration::with_prior(0.0, 10.0);
        assert_eq!(c.predict(100, 4), 140);
        c.observe(100, 4, 200);
        c.observe(100, 4, 210);
        let (a, b) = c.coefficients();
        assert_eq!(b, 10.0);
        assert!((a - 65.0).abs() < 1e-9, "mean residual 105 minus 4 * 10");
    }

    #[test]
    fn predictions_never_go_below_zero() {
        let mut c = Calibration::default();
        c.observe(1000, 1, 10);
        assert_eq!(c.predict(5, 1), 0);
        assert_eq!(
            Calibration::with_prior(f64::NAN, f64::INFINITY).predict(7, 3),
            7
        );
    }
}

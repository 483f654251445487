//! The policy flags shared by the subcommands, and the checks of flags clap cannot express.

use anyhow::{Context, Result};
use baton::Policy;

/// The first name given twice, if any.
pub fn first_duplicate<T: PartialEq>(names: &[T]) -> Option<&T> {
    names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
        .map(|(_, n)| n)
}

/// Policy knobs (defaults as in the README).
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Usage ratio at which a session compacts.
    #[arg(long, default_value_t = 0.80, value_name = "RATIO")]
    pub compact_at: f64,
    /// Usage ratio at which a session rotates.
    #[arg(long, default_value_t = 0.95, value_name = "RATIO")]
    pub rotate_at: f64,
    /// Smallest share of the context a compaction must free to be sufficient.
    #[arg(long, default_value_t = 0.20, value_name = "RATIO")]
    pub min_reduction: f64,
    /// Compactions a session may do before it rotates instead.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_compactions: u32,
}

impl PolicyArgs {
    /// The validated policy.
    pub fn policy(&self) -> Result<Policy> {
        Policy::builder()
            .compact_at(self.compact_at)
            .rotate_at(self.rotate_at)
            .min_reduction(self.min_reduction)
            .max_compactions(self.max_compactions)
            .build()
            .context("invalid policy")
    }

    /// The validated policy; an invalid one is a usage error (exit status 2).
    pub fn checked(&self) -> Result<Policy> {
        self.policy().map_err(|e| crate::usage(format!("{e:#}")))
    }
}

//! Starting the supervisor that `baton serve` serves: its journal, the agent types it keeps
//! there ([`AgentTypeStore`]) merged with the ones given at start, then recovery, as the library
//! does it.

use std::sync::Arc;

use thiserror::Error;

use super::metrics::{MeteredRuntime, Metrics};
use super::store::{AgentTypeStore, StoreError};
use crate::journal::{Journal, JournalError};
use crate::runtime::AgentRuntime;
use crate::supervisor::{Supervisor, SupervisorConfig, SupervisorHandle};
use crate::vocab::AgentType;

/// Why the fleet could not start.
#[derive(Debug, Error)]
pub enum FleetError {
    /// The journal could not be read for recovery.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The stored agent types could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An agent type given at start differs from the stored one in more than its policy.
    #[error("agent type {name:?}: {change}")]
    Conflict {
        /// The type.
        name: String,
        /// What differs.
        change: Change,
    },
}

/// How a new definition of an agent type relates to the existing one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Change {
    /// Identical.
    #[error("unchanged")]
    Unchanged,
    /// Only the policy differs: an allowed update.
    #[error("the policy changes")]
    Policy,
    /// Another field differs (`window`, `model` or `system_prompt`): sessions of the type
    /// already run with the old one, so it cannot change.
    #[error("its {0} differs from the existing one (only the policy may change)")]
    Conflict(&'static str),
}

/// Compares `new` with `existing` (same name): only a policy may change.
pub fn change(existing: &AgentType, new: &AgentType) -> Change {
    if existing.window != new.window {
        Change::Conflict("window")
    } else if existing.model != new.model {
        Change::Conflict("model")
    } else if existing.system_prompt != new.system_prompt {
        Change::Conflict("system_prompt")
    } else if existing.policy != new.policy {
        Change::Policy
    } else {
        Change::Unchanged
    }
}

/// `stored` with `given` applied over it by name, as a PUT of each would: a new name is added, a
/// policy replaced, any other difference refused. Returns the merged list (by name) and the
/// types of `given` that differ from what was stored (to store).
pub fn merge(
    stored: Vec<AgentType>,
    given: Vec<AgentType>,
) -> Result<(Vec<AgentType>, Vec<AgentType>), FleetError> {
    let mut merged = stored;
    let mut changed = Vec::new();
    for new in given {
        match merged.iter_mut().find(|t| t.name == new.name) {
            Some(old) => match change(old, &new) {
                Change::Unchanged => {}
                Change::Policy => {
                    *old = new.clone();
                    changed.push(new);
                }
                conflict @ Change::Conflict(_) => {
                    return Err(FleetError::Conflict {
                        name: new.name.to_string(),
                        change: conflict,
                    });
                }
            },
            None => {
                merged.push(new.clone());
                changed.push(new);
            }
        }
    }
    merged.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((merged, changed))
}

/// A started fleet and where its agent types are kept.
pub struct Fleet {
    /// The supervisor.
    pub supervisor: SupervisorHandle,
    /// The agent-type table in the journal's store (file or PostgreSQL); `None` without one.
    pub store: Option<Arc<AgentTypeStore>>,
    /// The fleet's metrics: every runtime call is timed and every event counted (call
    /// [`Metrics::spawn_feed`] on a tokio runtime to count events as they come).
    pub metrics: Metrics,
}

/// Starts the supervisor over `runtime`: the agent types stored in the journal, with
/// `given` (from `--agent-types`) merged over them ([`merge`]) and stored, are passed to the
/// builder before recovery, so that recovered work items find their types. With `journal`,
/// the supervisor writes through it and recovers from it (`docs/semantics.md`, "Journal").
pub fn start(
    runtime: Arc<dyn AgentRuntime>,
    journal: Option<Journal>,
    given: Vec<AgentType>,
    config: SupervisorConfig,
) -> Result<Fleet, FleetError> {
    // In the journal's store, file or database: a cluster's nodes share the types stored.
    let store = match journal.as_ref().and_then(Journal::target) {
        Some(target) => Some(Arc::new(AgentTypeStore::open_target(target)?)),
        None => None,
    };
    let stored = match &store {
        Some(s) => s.load()?,
        None => Vec::new(),
    };
    let (types, changed) = merge(stored, given)?;
    if let Some(s) = &store {
        for t in &changed {
            s.put(t)?;
        }
    }
    let metrics = Metrics::new();
    let runtime = Arc::new(MeteredRuntime::new(runtime, &metrics));
    let mut builder = Supervisor::builder(runtime).config(config);
    // Subscribed before the start, so that metrics count every event, recovery's included.
    metrics.follow(builder.subscribe());
    for t in types {
        builder = builder.agent_type(t);
    }
    if let Some(j) = journal {
        metrics.time_commits_of(&j);
        builder = builder.journal(j)?;
    }
    Ok(Fleet {
        supervisor: builder.start(),
        store,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn stricter(t: AgentType) -> AgentType {
        t.with_policy(Policy::builder().compact_at(0.7).build().unwrap())
    }

    #[test]
    fn only_a_policy_may_change_under_the_same_name() {
        let a = AgentType::new("a", 1000);
        assert_eq!(change(&a, &a.clone()), Change::Unchanged);
        assert_eq!(change(&a, &stricter(a.clone())), Change::Policy);
        assert_eq!(
            change(&a, &AgentType::new("a", 2000)),
            Change::Conflict("window")
        );
        let prompted = AgentType {
            system_prompt: "be brief".into(),
            ..a.clone()
        };
        assert_eq!(change(&a, &prompted), Change::Conflict("system_prompt"));
    }

    #[test]
    fn given_types_merge_over_stored_ones_and_only_differences_are_stored_again() {
        let stored = vec![AgentType::new("b", 1000), AgentType::new("c", 1000)];
        let given = vec![
            AgentType::new("c", 1000),
            stricter(AgentType::new("b", 1000)),
            AgentType::new("a", 500),
        ];
        let (merged, changed) = merge(stored, given).unwrap();
        let names: Vec<_> = merged.iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(merged[1], stricter(AgentType::new("b", 1000)));
        let changed: Vec<_> = changed.iter().map(|t| &*t.name).collect();
        assert_eq!(changed, ["b", "a"]);
    }

    #[test]
    fn a_given_type_with_another_window_is_refused() {
        let e = merge(
            vec![AgentType::new("a", 1000)],
            vec![AgentType::new("a", 9)],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "agent type \"a\": its window differs from the existing one (only the policy may change)"
        );
    }
}

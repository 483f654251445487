//! baton keeps fleets of LLM agent sessions inside their context windows.
//!
//! Each session's usage (`used / window`) is watched. At 80% the session **compacts**: its
//! history is replaced by a summary and the reduction is measured. At 95%, or when a compaction
//! did not free enough, it **rotates**: a successor of the same agent type takes over the work
//! item with a handoff summary, and the rotation is recorded.
//!
//! # Crate map
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`vocab`] | the shared vocabulary: [`SessionId`], [`WorkItemId`], [`WorkItem`], [`AgentType`], [`Summary`], [`Handoff`], [`SpawnKey`] |
//! | [`usage`] | [`Usage`]: one validated reading of a session's context, and where it came from |
//! | [`policy`] | [`Policy`]: thresholds and limits, validated; [`Policy::decide`], the pure decision |
//! | [`machine`] | the statig state machine (Normal, Compacting, Rotating, Closed) and its records |
//! | [`provider`] | honest token accounting: provider usage objects, windows, tiktoken estimates, calibration, a per-session tracker |
//! | [`trace`] | readers of recorded agent traces: per-call token usage |
//! | [`replay`] | the policy replayed over a trace, driving the real machine |
//! | [`runtime`] | [`AgentRuntime`]: the trait through which baton acts on agents; [`MemoryRuntime`]; [`ChatRuntime`] over OpenAI-compatible endpoints |
//! | [`session`] | [`SessionActor`]: one session as an actix actor that owns its machine |
//! | [`supervisor`] | [`Supervisor`]: the registry, the work-item queue, rotations, budgets |
//! | [`record`] | compaction and rotation records, and the [`FleetEvent`] stream |
//! | [`report`] | [`FleetReport`](report::FleetReport): what a fleet did, counted from its events (the results table) |
//! | [`run`] | a fleet of chat agents driven through work items, turn by turn (`baton run`) |
//! | [`simulate`] | a fleet simulation on the real actors, growing like recorded agents |
//! | [`serve`] | `baton serve`: the fleet over HTTP (actix-web), with OpenAPI, metrics and a fleet page |
//! | [`journal`] | [`Journal`]: the durable record in SQLite, recovery's source; [`JournalReader`] |
//! | [`cluster`] | several `baton serve` nodes on one PostgreSQL: leases, epochs, the shared pool, the sweeper |
//!
//! The guarantees are stated precisely in `docs/semantics.md`.

#![warn(missing_docs)]

pub mod cluster;
pub mod journal;
pub mod machine;
pub mod policy;
pub mod provider;
pub mod record;
pub mod replay;
pub mod report;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod session;
pub mod simulate;
pub mod supervisor;
pub mod trace;
pub mod usage;
pub mod vocab;

/// The attribute that implementing [`AgentRuntime`] needs (`#[baton::async_trait]`), so that an
/// embedding crate needs no direct dependency on `async-trait`.
pub use async_trait::async_trait;
pub use journal::{Journal, JournalError, JournalOptions, JournalReader};
pub use machine::{
    CompactionMeasure, Effect, Event, EventKind, MachineError, Phase, Session, SessionMachine,
    Step, TransitionRecord,
};
pub use policy::{Action, Policy, PolicyBuilder, PolicyError, RotationReason};
pub use record::{
    CompactionRecord, CrashOutcome, EventBus, FleetEvent, RecoveryOutcome, RotationId,
    RotationRecord, RotationStep, Sequenced,
};
pub use runtime::chat::{ChatRuntime, Turn};
pub use runtime::memory::MemoryRuntime;
pub use runtime::{AgentRuntime, RuntimeError};
pub use session::{SessionActor, SessionInfo, SessionStatus};
pub use supervisor::{
    CANCELLED, Inventory, Place, PutOutcome, SessionHandle, Settled, ShutdownReport, Supervisor,
    SupervisorConfig, SupervisorError, SupervisorHandle, WorkItemInfo,
};
pub use usage::{Usage, UsageError, UsageSource};
pub use vocab::{
    AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, WorkItem, WorkItemId,
};

/// The README's Rust examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! A fleet simulation on the real supervisor and session actors, with agents simulated by
//! [`MemoryRuntime`] whose context grows the way recorded real agents grew.
//!
//! Each work item is worked on for a number of turns; each turn adds the tokens one call added
//! in a recorded trace (see [`PROFILES`]), scaled to the agent type's window. The driver reports
//! every turn's usage to the item's session and waits for the answer, and an item's agent pauses
//! while its session compacts or rotates (as a real agent does while its history is replaced),
//! so a seeded run makes the same decisions however the threads interleave: the same seed gives
//! the same totals.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use thiserror::Error;
use tokio::time::Instant;

use crate::journal::{Filter, Journal};
use crate::machine::Phase;
use crate::policy::Policy;
use crate::record::FleetEvent;
use crate::report::{FleetReport, Tally};
use crate::runtime::memory::{MemoryConfig, MemoryRuntime, SummaryModel};
use crate::supervisor::{Inventory, SessionHandle, Supervisor, SupervisorConfig, SupervisorError};
use crate::usage::{Usage, UsageSource};
use crate::vocab::{AgentType, SessionId, WorkItem, WorkItemId, mix64 as mix};

/// How a recorded agent's context grew, call by call (derived numbers only).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// The trace it comes from.
    pub name: &'static str,
    /// The first call's prompt: system prompt and task.
    pub base: u32,
    /// How many tokens each later call added to the context (prompt plus completion).
    pub deltas: &'static [u32],
}

/// Profiles derived from the recorded traces baton was developed against.
pub const PROFILES: [Profile; 2] = [
    // mini-swe-agent with deepseek-chat on a pydicom issue: 61 calls, 1,560 to 23,955 tokens.
    Profile {
        name: "deepseek-mini-swe-agent",
        base: 1560,
        deltas: &[
            95, 682, 1226, 457, 530, 496, 740, 503, 372, 574, 131, 221, 312, 117, 368, 98, 448,
            164, 790, 440, 170, 576, 199, 427, 442, 359, 120, 141, 235, 121, 219, 579, 168, 336,
            1103, 114, 1138, 92, 263, 369, 320, 172, 95, 153, 539, 369, 131, 479, 175, 286, 328,
            317, 1238, 95, 478, 311, 173, 96, 81, 530,
        ],
    },
    // OpenHands with claude-3.5-sonnet driving a browser: 4 calls, 3,439 to 5,573 tokens.
    Profile {
        name: "claude-openhands",
        base: 3439,
        deltas: &[1200, 719, 111],
    },
];

/// The window the recorded runs are scaled from: an agent type with a window of this size
/// grows exactly as recorded; one with twice the window grows twice as fast per call (bigger
/// models are given bigger files and outputs), which keeps turns-per-window comparable.
const REFERENCE_WINDOW: f64 = 32_000.0;

/// Tokens every session starts with (system prompt and tool schema), before its work item.
const BASE_TOKENS: u64 = 1_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// Live sessions at most (the supervisor's `max_sessions`).
    pub sessions: usize,
    /// Work items to get done.
    pub work_items: u64,
    /// Agent types; work items are spread over them in turn.
    pub agent_types: Vec<(String, u64)>,
    /// The policy for every agent type.
    pub policy: Policy,
    /// Share of runtime calls that fail (transiently) at random.
    pub failure_rate: f64,
    /// Seeds the workload and the failures.
    pub seed: u64,
    /// Stop after this long even if work remains: the whole run, from submitting the work items
    /// to the end of the shutdown, takes about this long at most.
    pub duration: Option<Duration>,
    /// Turns per work item: each item draws a number in this range.
    pub turns: (u32, u32),
    /// Share of a session's own conversation a summary keeps.
    pub summary_ratio: f64,
    /// Threads to run sessions on (0: the caller's).
    pub shards: usize,
    /// A journal to write everything through (`baton log` reads it). It must hold no work
    /// items: a simulation numbers its items from 0 and cannot continue another.
    pub journal: Option<Journal>,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        Self {
            sessions: 1000,
            work_items: 2000,
            agent_types: vec![
                ("sonnet".into(), 200_000),
                ("haiku".into(), 32_000),
                ("local-qwen".into(), 8_192),
            ],
            policy: Policy::default(),
            failure_rate: 0.01,
            seed: 42,
            duration: None,
            turns: (60, 240),
            summary_ratio: 0.5,
            shards: 0,
            journal: None,
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, Error)]
pub enum SimulationError {
    /// The configuration is unusable.
    #[error("invalid simulation: {0}")]
    Invalid(String),
    /// The supervisor refused something.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The journal could not be read, or already holds work items.
    #[error("journal: {0}")]
    Journal(String),
    /// Nothing happened for [`STALL_LIMIT`]: no agent could take a turn and the fleet
    /// published no event, so the run could never finish.
    #[error(
        "the simulation stalled: no event for {waited:?} with {finished} of {total} work items finished"
    )]
    Stalled {
        /// How long nothing happened.
        waited: Duration,
        /// Items done or given up on by then.
        finished: u64,
        /// Items in all.
        total: u64,
    },
}

/// How long the driver waits for the fleet's next event, when no agent can take a turn, before
/// it calls the run stalled (a fleet that is working publishes something well within it).
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Progress, reported after each round.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    /// Items done or given up on.
    pub finished: u64,
    /// Items in all.
    pub total: u64,
    /// Usage messages sent so far.
    pub messages: u64,
}

/// What a simulation did: the fleet report, with the simulation's seed in `seed`.
pub type SimulationReport = FleetReport;

/// Where one work item's simulated agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    /// No session yet (queued, starting, or between sessions).
    Waiting,
    /// Its session is Normal: it may take a turn.
    Ready,
    /// A turn's usage report is out.
    InFlight,
    /// Its session is compacting or rotating: it pauses.
    Paused,
    /// Done or dead.
    Finished,
}

/// One work item's simulated agent and its progress.
struct ItemRun {
    /// The recorded run its context grows like.
    profile: &'static Profile,
    /// Tokens per recorded token, for this item's window.
    scale: f64,
    /// Where in the profile's deltas its first turn starts (drawn from the seed).
    offset: usize,
    /// Turns its work takes; after the last, its session is closed (the item is done).
    turns: u32,
    /// Turns taken so far, across all its sessions.
    done_turns: u32,
    /// A direct handle on the session holding the item now, if any.
    session: Option<SessionHandle>,
    /// What the agent may do next.
    agent: Agent,
}

/// Everything a simulation leaves behind, for checking it.
pub struct Recorded {
    /// The report.
    pub report: SimulationReport,
    /// Every event the fleet published, in order.
    pub events: Vec<FleetEvent>,
    /// The simulated agents, as the run left them.
    pub runtime: Arc<MemoryRuntime>,
    /// Where every work item was when the run stopped (before shutdown); `None` when the
    /// duration was up before the supervisor could answer.
    pub inventory: Option<Inventory>,
}

/// Runs a simulation, inside an actix system or any tokio runtime. `progress` is called after
/// every round of turns. Inside an actix system the fleet shares the caller's thread, so a
/// flooded supervisor delays the caller's timers and with them the end of a `duration`; in a
/// plain tokio runtime the supervisor runs on a thread of its own (see
/// [`SupervisorBuilder::start`](crate::supervisor::SupervisorBuilder::start)) and the run ends
/// within its duration plus [`SHUTDOWN_ALLOWANCE`].
pub async fn run(
    config: &SimulationConfig,
    progress: impl FnMut(Progress),
) -> Result<SimulationReport, SimulationError> {
    run_until(config, progress, std::future::pending()).await
}

/// [`run`], stopping early (as when the duration is up) once `stop` completes: no new turn is
/// taken, the fleet shuts down, and the report counts what was left as unfinished.
pub async fn run_until(
    config: &SimulationConfig,
    progress: impl FnMut(Progress),
    stop: impl std::future::Future<Output = ()>,
) -> Result<SimulationReport, SimulationError> {
    Ok(run_inner(config, progress, false, stop).await?.report)
}

/// Runs a simulation and keeps every event, the runtime and the final inventory, so that a
/// test can check the invariants.
pub async fn run_recorded(
    config: &SimulationConfig,
    progress: impl FnMut(Progress),
) -> Result<Recorded, SimulationError> {
    run_inner(config, progress, true, std::future::pending()).await
}

/// The shortest shutdown a run ending on its duration or a stop allows, so that sessions are
/// closed in order even when the time is up.
const MIN_SHUTDOWN: Duration = Duration::from_millis(100);

/// How long past its duration a run may take to shut its fleet down and count what happened:
/// the duration plus this bounds the run's whole wall time (given a driver whose clock the
/// fleet does not hold up, see [`run`]). A fleet not closed by then is left as it is, its work
/// items unfinished.
pub const SHUTDOWN_ALLOWANCE: Duration = Duration::from_secs(1);

async fn run_inner(
    config: &SimulationConfig,
    mut progress: impl FnMut(Progress),
    record: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Recorded, SimulationError> {
    let begun = Instant::now();
    let deadline = config.duration.map(|d| begun + d);
    let hard_deadline = deadline.map(|d| d + SHUTDOWN_ALLOWANCE);
    let mut stop = std::pin::pin!(stop);
    let mut stopped = false;
    if config.agent_types.is_empty() || config.work_items == 0 || config.sessions == 0 {
        return Err(SimulationError::Invalid(
            "need at least one agent type, work item and session".into(),
        ));
    }
    if !(0.0..1.0).contains(&config.failure_rate) {
        return Err(SimulationError::Invalid(format!(
            "failure rate {} is not in [0, 1)",
            config.failure_rate
        )));
    }
    if let Some((name, window)) = config
        .agent_types
        .iter()
        .find(|(_, w)| *w == 0 || *w > Usage::MAX_TOKENS)
    {
        return Err(SimulationError::Invalid(format!(
            "agent type {name:?}: window {window} is not in 1..={} tokens",
            Usage::MAX_TOKENS
        )));
    }
    if config.turns.0 == 0 || config.turns.0 > config.turns.1 {
        return Err(SimulationError::Invalid(format!(
            "turns {:?} is not a range of at least 1",
            config.turns
        )));
    }
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: BASE_TOKENS,
        summary: SummaryModel {
            ratio: config.summary_ratio,
            min_tokens: 200,
            max_tokens: 20_000,
        },
        random_failures: (config.failure_rate > 0.0).then_some((config.failure_rate, config.seed)),
        ..MemoryConfig::default()
    }));
    let mut builder = Supervisor::builder(runtime.clone()).config(SupervisorConfig {
        max_sessions: config.sessions,
        shards: config.shards,
        max_attempts: 10,
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(20),
        ..SupervisorConfig::default()
    });
    for (name, window) in &config.agent_types {
        builder =
            builder.agent_type(AgentType::new(name, *window).with_policy(config.policy.clone()));
    }
    if let Some(journal) = &config.journal {
        let held = journal
            .read(|v| {
                v.work_items(&Filter {
                    limit: Some(1),
                    ..Filter::default()
                })
            })
            .await
            .map_err(|e| SimulationError::Journal(e.to_string()))?;
        if !held.is_empty() {
            return Err(SimulationError::Journal(
                "it already holds work items; a simulation needs a new journal".into(),
            ));
        }
        builder = builder
            .journal(journal.clone())
            .map_err(|e| SimulationError::Journal(e.to_string()))?;
    }
    let supervisor = builder.start();
    let mut events = supervisor.subscribe();

    // The workload: each item's profile, turns and starting point come from (seed, item).
    let mut items: HashMap<WorkItemId, ItemRun> = HashMap::new();
    for i in 0..config.work_items {
        if i % 1024 == 0
            && (deadline.is_some_and(|d| Instant::now() >= d)
                || futures_util::FutureExt::now_or_never(stop.as_mut()).is_some())
        {
            // Out of time while submitting: the rest stays unsubmitted (and unfinished).
            stopped = true;
            break;
        }
        let r = mix(config.seed ^ mix(i));
        let (name, window) = &config.agent_types[(i % config.agent_types.len() as u64) as usize];
        let profile = &PROFILES[(r % PROFILES.len() as u64) as usize];
        let span = u64::from(config.turns.1 - config.turns.0) + 1;
        items.insert(
            WorkItemId(i),
            ItemRun {
                profile,
                scale: *window as f64 / REFERENCE_WINDOW,
                offset: ((r >> 16) % profile.deltas.len() as u64) as usize,
                turns: config.turns.0 + ((r >> 32) % span) as u32,
                done_turns: 0,
                session: None,
                agent: Agent::Waiting,
            },
        );
        let text = format!(
            "simulated work item {i} ({}, profile {})",
            name, profile.name
        );
        let submit = supervisor.submit(WorkItem {
            id: WorkItemId(i),
            agent_type: name.as_str().into(),
            text,
        });
        match deadline {
            None => submit.await?,
            // A supervisor busy starting sessions answers late: not past the duration.
            Some(d) => match tokio::time::timeout_at(d, submit).await {
                Ok(submitted) => submitted?,
                Err(_) => {
                    stopped = true;
                    break;
                }
            },
        }
    }

    tracing::debug!(elapsed = ?begun.elapsed(), stopped, "work items submitted");
    let mut tally = Tally::default();
    let mut owner: HashMap<SessionId, WorkItemId> = HashMap::new();
    let mut backlog: VecDeque<FleetEvent> = VecDeque::new();
    let mut messages = 0u64;
    let mut finished = 0u64;
    let mut kept = Vec::new();
    loop {
        // Apply everything that happened, in order.
        while let Some(event) = backlog.pop_front().or_else(|| events.try_recv().ok()) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Out of time: what is still unread is counted at the end.
                backlog.push_front(event);
                break;
            }
            tally.count(&event);
            if record {
                kept.push(event.clone());
            }
            match &event {
                FleetEvent::SessionStarted {
                    session, work_item, ..
                } => {
                    owner.insert(*session, *work_item);
                    let handle = match deadline {
                        None => supervisor.session(*session).await,
                        // Past the duration the answer no longer matters.
                        Some(d) => tokio::time::timeout_at(d, supervisor.session(*session))
                            .await
                            .unwrap_or(None),
                    };
                    if let Some(item) = items
                        .get_mut(work_item)
                        .filter(|i| i.agent != Agent::Finished)
                    {
                        item.agent = if handle.is_some() {
                            Agent::Ready
                        } else {
                            Agent::Waiting
                        };
                        item.session = handle;
                    }
                }
                FleetEvent::Transition(t) => {
                    let Some(item) = owner.get(&t.session).and_then(|id| items.get_mut(id)) else {
                        continue;
                    };
                    let current = item
                        .session
                        .as_ref()
                        .is_some_and(|h| h.session == t.session);
                    if current && !matches!(item.agent, Agent::Finished | Agent::InFlight) {
                        item.agent = match t.to {
                            Phase::Normal => Agent::Ready,
                            Phase::Compacting | Phase::Rotating => Agent::Paused,
                            Phase::Closed => Agent::Waiting,
                        };
                    }
                }
                FleetEvent::WorkItemDone { work_item, .. }
                | FleetEvent::DeadLetter { work_item, .. } => {
                    if let Some(item) = items
                        .get_mut(work_item)
                        .filter(|i| i.agent != Agent::Finished)
                    {
                        item.agent = Agent::Finished;
                        finished += 1;
                    }
                }
                _ => {}
            }
        }
        progress(Progress {
            finished,
            total: config.work_items,
            messages,
        });
        if !stopped && futures_util::FutureExt::now_or_never(stop.as_mut()).is_some() {
            stopped = true;
        }
        if stopped || finished == config.work_items || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        // One turn for every ready agent; all reports in flight at once.
        let mut turns = Vec::new();
        for (id, item) in items.iter_mut().filter(|(_, i)| i.agent == Agent::Ready) {
            let Some(handle) = item.session.clone() else {
                continue;
            };
            item.agent = Agent::InFlight;
            if item.done_turns >= item.turns {
                // The agent finished its work.
                turns.push((*id, handle, None));
                continue;
            }
            let step = item.profile.deltas
                [(item.offset + item.done_turns as usize) % item.profile.deltas.len()];
            let tokens = (f64::from(step) * item.scale).round() as u64;
            item.done_turns += 1;
            match runtime.grow(handle.session, tokens) {
                Ok(usage) => turns.push((*id, handle, Some(usage.used()))),
                Err(_) => item.agent = Agent::Waiting,
            }
        }
        if turns.is_empty() {
            // Nothing to do until something happens, the duration is up, or a stop comes.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let wait = left.map_or(STALL_LIMIT, |l| l.min(STALL_LIMIT));
            let next = tokio::select! {
                next = tokio::time::timeout(wait, events.recv()) => next,
                () = stop.as_mut() => {
                    stopped = true;
                    continue;
                }
            };
            match next {
                Ok(Some(event)) => backlog.push_back(event),
                Err(_) if left.is_some_and(|l| l <= STALL_LIMIT) => {} // the duration is up
                Ok(None) => {
                    // The bus closed: the supervisor is gone.
                    tracing::error!("the fleet's event stream ended before the run did");
                    return Err(SupervisorError::ShuttingDown.into());
                }
                Err(_) => {
                    tracing::error!(
                        finished,
                        total = config.work_items,
                        "the simulation stalled"
                    );
                    supervisor.shutdown(Duration::from_secs(5)).await;
                    return Err(SimulationError::Stalled {
                        waited: wait,
                        finished,
                        total: config.work_items,
                    });
                }
            }
            continue;
        }
        messages += turns.iter().filter(|t| t.2.is_some()).count() as u64;
        let answers = join_all(turns.iter().map(|(_, handle, used)| {
            let (handle, supervisor, used) = (handle.clone(), supervisor.clone(), *used);
            async move {
                match used {
                    Some(used) => {
                        handle
                            .report_usage_and_wait(used, None, UsageSource::Reported)
                            .await
                    }
                    None => {
                        let _ = supervisor.close(handle.session).await;
                        None
                    }
                }
            }
        }));
        let answers = match deadline {
            None => answers.await,
            // A supervisor flooded with reports answers late: not past the duration.
            Some(d) => match tokio::time::timeout_at(d, answers).await {
                Ok(answers) => answers,
                Err(_) => break,
            },
        };
        for ((id, _, used), phase) in turns.iter().zip(answers) {
            let item = items.get_mut(id).expect("known item");
            if item.agent == Agent::InFlight {
                item.agent = match (used, phase) {
                    (Some(_), Some(Phase::Normal)) => Agent::Ready,
                    (Some(_), Some(Phase::Compacting | Phase::Rotating)) => Agent::Paused,
                    _ => Agent::Waiting,
                };
            }
        }
    }
    tracing::debug!(elapsed = ?begun.elapsed(), "turns over");
    // With a duration, each step of the shutdown ends at the duration (but takes at least
    // MIN_SHUTDOWN), and never past the hard deadline.
    let step_end = |d: Instant, hard: Instant| d.max(Instant::now() + MIN_SHUTDOWN).min(hard);
    // A fleet still starting has a long mailbox: with a duration, its answer is not waited
    // for past the time.
    let inventory = match deadline.zip(hard_deadline) {
        None => Some(supervisor.inventory().await?),
        Some((d, hard)) => {
            match tokio::time::timeout_at(step_end(d, hard), supervisor.inventory()).await {
                Ok(inventory) => Some(inventory?),
                Err(_) => None,
            }
        }
    };
    tracing::debug!(elapsed = ?begun.elapsed(), "inventory taken");
    match deadline.zip(hard_deadline) {
        None => {
            supervisor.shutdown(Duration::from_secs(30)).await;
        }
        Some((d, hard)) => {
            // The duration bounds the shutdown too: closing a large fleet one session at a time
            // takes seconds, and whatever is left when the time is up is dropped with the
            // process (a journal keeps what it committed, consistent).
            let end = step_end(d, hard);
            let left = end.saturating_duration_since(Instant::now());
            if tokio::time::timeout_at(end, supervisor.shutdown(left))
                .await
                .is_err()
            {
                tracing::warn!(
                    ?left,
                    "the duration is up: the fleet's shutdown is cut short"
                );
            }
        }
    }
    tracing::debug!(elapsed = ?begun.elapsed(), "fleet shut down");
    // Events the loop had no time to apply (and the shutdown's own) are counted all the same,
    // until the hard deadline: a fleet still closing sessions may publish more all along.
    let mut counted = 0u64;
    while let Some(event) = backlog.pop_front().or_else(|| events.try_recv().ok()) {
        counted += 1;
        if counted.is_multiple_of(1024) && hard_deadline.is_some_and(|h| Instant::now() >= h) {
            tracing::warn!("the shutdown allowance is up: the fleet's last events are not counted");
            break;
        }
        tally.count(&event);
        if record {
            kept.push(event);
        }
    }
    if let Some(inventory) = &inventory {
        tally.start_retries(inventory.start_retries);
    }
    // The whole run: submitting, the turns, and the shutdown.
    let seconds = begun.elapsed().as_secs_f64();
    tracing::debug!(seconds, "events counted");
    let mut report = tally.report(config.seed, config.work_items, seconds, messages);
    report.unfinished = config
        .work_items
        .saturating_sub(report.done + report.dead_letters);
    Ok(Recorded {
        report,
        events: kept,
        runtime,
        inventory,
    })
}

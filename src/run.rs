//! A fleet of chat agents driven through work items, turn by turn: the engine of `baton run`.
//!
//! Every work item is submitted to a [`Supervisor`] over a [`ChatRuntime`]. When a session
//! starts for an item (the first one, or a successor after a rotation), its agent first answers
//! the history as it stands (its instructions and the work item, with the handoff after a
//! rotation), then keeps working: each reply is followed by the continue prompt, until a reply
//! says the work is done (a line that is the done marker, see [`is_done`]) or the item has had
//! `max_turns` turns across all its sessions. Then its session is closed and the item is done.
//!
//! Compaction and rotation are not the driver's business: each turn reports its usage by
//! itself and returns once baton has acted on it (see [`ChatRuntime::chat`]). A turn that fails
//! in a way a retry may fix (a timeout, a server still failing after the client's own retries)
//! is taken again after a pause, a few times; past that, or on any other error, the item ends
//! as failed and its session is closed.

mod ledger;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::time::Instant;

use crate::journal::JournalError;
use crate::machine::Phase;
use crate::provider::{self, Encoding};
use crate::record::{FleetEvent, RecoveryOutcome};
use crate::report::{FleetReport, Tally};
use crate::runtime::chat::{ChatRuntime, ChatRuntimeError, Turn, assignment_text};
use crate::supervisor::{
    SessionHandle, Settled, Supervisor, SupervisorConfig, SupervisorError, SupervisorHandle,
};
use crate::vocab::{AgentType, SessionId, WorkItem, WorkItemId};

/// The done marker `baton run` asks agents to write, on a line of its own, when a work item is
/// finished.
pub const DONE_MARKER: &str = "DONE";

/// The system prompt of agent types that bring none: what a work item is, and the done marker.
pub const SYSTEM_PROMPT: &str = "You are an autonomous agent working on one work item. Work \
through it step by step; every reply should make concrete progress. When the work item is \
completely finished, write DONE on a line of its own.";

/// What an agent is told after each reply until it is done.
pub const CONTINUE_PROMPT: &str = "Continue with the work item. When it is completely finished, \
write DONE on a line of its own.";

/// How to drive the fleet.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Turns a work item may take, across all its sessions; then it is closed.
    pub max_turns: u32,
    /// Sent after every reply that is not done.
    pub continue_prompt: String,
    /// A reply with a line that is this marker finishes its work item (see [`is_done`]).
    pub done_marker: String,
    /// The supervisor's configuration (`max_sessions`: agents working at once).
    pub supervisor: SupervisorConfig,
    /// Times a failed turn is taken again, when a retry may help, before its item fails.
    pub turn_retries: u32,
    /// The run stops, leaving items unfinished, when nothing happens for this long.
    pub idle_timeout: Duration,
    /// The sampling seed sent with the requests, for the report (0 when none).
    pub seed: u64,
    /// After a stop is asked for, how long turns under way may take to finish (and the fleet
    /// to shut down) before they are cut short.
    pub grace: Duration,
}

impl Default for RunConfig {
    /// 20 turns, [`CONTINUE_PROMPT`], [`DONE_MARKER`], the default supervisor, 3 retries, a
    /// 15-minute idle timeout (longer than a rotation's deadline) and a 30-second grace.
    fn default() -> Self {
        Self {
            max_turns: 20,
            continue_prompt: CONTINUE_PROMPT.into(),
            done_marker: DONE_MARKER.into(),
            supervisor: SupervisorConfig::default(),
            turn_retries: 3,
            idle_timeout: Duration::from_secs(900),
            seed: 0,
            grace: Duration::from_secs(30),
        }
    }
}

pub use ledger::RunJournal;

/// How a work item's run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ItemEnd {
    /// Its agent said it was done.
    Done,
    /// It used all its turns.
    TurnLimit,
    /// A turn failed for good.
    Failed {
        /// The error.
        error: String,
    },
    /// The supervisor gave up on it (rotation budget spent, too many crashes).
    Dead {
        /// Why.
        reason: String,
    },
    /// The run stopped first.
    Unfinished,
}

impl ItemEnd {
    /// A short name for tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::TurnLimit => "turn limit",
            Self::Failed { .. } => "failed",
            Self::Dead { .. } => "dead letter",
            Self::Unfinished => "unfinished",
        }
    }
}

/// How many work items ended each way: what the exit status of `baton run` follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Items whose agent said they were done.
    pub done: u64,
    /// Items that used all their turns (`max_turns`, the user's bound) without saying so.
    pub turn_limit: u64,
    /// Items a turn failed for good.
    pub failed: u64,
    /// Items the supervisor gave up on.
    pub dead_lettered: u64,
    /// Items neither finished nor given up on when the run stopped.
    pub unfinished: u64,
}

impl Outcomes {
    /// The counts of `items`' ends.
    pub fn of<'a>(items: impl IntoIterator<Item = &'a ItemEnd>) -> Self {
        let mut o = Self::default();
        for end in items {
            match end {
                ItemEnd::Done => o.done += 1,
                ItemEnd::TurnLimit => o.turn_limit += 1,
                ItemEnd::Failed { .. } => o.failed += 1,
                ItemEnd::Dead { .. } => o.dead_lettered += 1,
                ItemEnd::Unfinished => o.unfinished += 1,
            }
        }
        o
    }

    /// Items in all.
    pub fn total(&self) -> u64 {
        self.done + self.turn_limit + self.failed + self.dead_lettered + self.unfinished
    }

    /// Items that did not finish: failed, dead-lettered or unfinished. A run succeeds when
    /// there are none (an item at its turn limit ran the turns it was given, and counts as
    /// finished).
    pub fn not_finished(&self) -> u64 {
        self.failed + self.dead_lettered + self.unfinished
    }
}

/// One work item's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemReport {
    /// The work item.
    pub id: WorkItemId,
    /// Its agent type.
    pub agent_type: Arc<str>,
    /// Turns taken, across its sessions.
    pub turns: u32,
    /// Sessions that held it (1 plus its rotations and restarts).
    pub sessions: u32,
    /// How it ended.
    pub end: ItemEnd,
}

/// What a run on a journal an earlier run left took over from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resumed {
    /// Items an earlier run ended (done, at the turn limit, failed or dead-lettered): not taken
    /// again; their ends are in the report as the earlier run left them.
    pub already_ended: u64,
    /// Items whose session died with the earlier run: started again in a fresh session, from
    /// the work item and its last handoff.
    pub requeued: u64,
    /// Rotations the earlier run left half done, resumed from their last durable step.
    pub rotations_resumed: u64,
    /// Items that were waiting for a session, and wait again.
    pub queued: u64,
    /// Items the earlier run never submitted (it stopped while submitting): submitted now.
    pub submitted: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The run was asked to stop before every item ended (see [`drive`]'s `stop`).
    pub interrupted: bool,
    /// What was taken over from an earlier run on the same journal; `None` without a journal,
    /// or when the journal was new.
    pub resumed: Option<Resumed>,
    /// How the work items ended, counted from `items`.
    pub outcomes: Outcomes,
    /// The fleet's figures: the same table as `baton simulate`. Its `done`, `dead_letters` and
    /// `unfinished` agree with `outcomes` (`done` counts the items at their turn limit too;
    /// failed items are in none of them).
    pub fleet: FleetReport,
    /// Every work item, by id.
    pub items: Vec<ItemReport>,
    /// Seconds spent in chat requests, over all turns.
    pub request_seconds: f64,
    /// Seconds baton spent in turns outside the requests and the compactions and rotations
    /// they triggered (see [`Turn::overhead`]).
    pub overhead_seconds: f64,
}

/// Progress, reported after everything that happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunProgress {
    /// Work items finished or given up on.
    pub finished: u64,
    /// Work items in all.
    pub total: u64,
    /// Turns taken so far.
    pub turns: u64,
    /// Compactions so far.
    pub compactions: u64,
    /// Rotations so far.
    pub rotations: u64,
}

/// Why a run could not start.
#[derive(Debug, Error)]
pub enum RunError {
    /// The input is unusable.
    #[error("invalid run: {0}")]
    Invalid(String),
    /// A work item's first prompt (its agent type's instructions and the item) does not fit
    /// the share of the window at which a session rotates: every session would rotate at
    /// once. Refused before any request.
    #[error(
        "work item {item} is too large: its first prompt is about {tokens} tokens, and agent type \
         {agent_type:?} rotates at {limit} of its {window}-token window"
    )]
    ItemTooLarge {
        /// The work item.
        item: WorkItemId,
        /// Its agent type.
        agent_type: Arc<str>,
        /// Its first prompt's tokens (counted locally; estimated when it is far too big).
        tokens: u64,
        /// The agent type's window.
        window: u64,
        /// The tokens at which a session of the type rotates.
        limit: u64,
    },
    /// The supervisor refused something.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The journal could not be opened or read.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The run's own tables in the journal could not be read or written.
    #[error("journal: the run's records: {0}")]
    Ledger(String),
    /// The journal belongs to another run: its work items differ from these.
    #[error(
        "{} was written by a run of other work items ({difference}); resume with the same \
         work items, or give a new journal file",
        path.display()
    )]
    OtherJournal {
        /// The journal.
        path: PathBuf,
        /// The first difference.
        difference: String,
    },
}

/// Refuses the first work item whose first prompt (its agent type's system prompt and the
/// assignment message) reaches the share of its window at which a session rotates. Counted
/// locally with the model's encoding; a text far beyond the window (over 256 bytes per token
/// of it) is refused without being counted, its tokens estimated at 4 bytes each.
pub fn check_items_fit(agent_types: &[AgentType], items: &[WorkItem]) -> Result<(), RunError> {
    for item in items {
        let Some(agent) = agent_types.iter().find(|a| a.name == item.agent_type) else {
            return Err(RunError::Invalid(format!(
                "work item {} names agent type {:?}, which is not given",
                item.id, item.agent_type
            )));
        };
        let limit = (agent.policy.rotate_at() * agent.window as f64).floor() as u64;
        let text = assignment_text(item, None);
        let bytes = (agent.system_prompt.len() + text.len()) as u64;
        let tokens = if bytes > agent.window.saturating_mul(256) {
            bytes / 4
        } else {
            let encoding = Encoding::for_model(&agent.model);
            let message = |role: &str, content: &str| provider::Message {
                role: role.into(),
                content: content.into(),
                ..provider::Message::default()
            };
            encoding.prompt_tokens(&[
                message("system", &agent.system_prompt),
                message("user", &text),
            ])
        };
        if tokens >= limit {
            return Err(RunError::ItemTooLarge {
                item: item.id,
                agent_type: item.agent_type.clone(),
                tokens,
                window: agent.window,
                limit,
            });
        }
    }
    Ok(())
}

/// Whether `reply` says its work is done: one of its lines, trimmed and stripped of markdown
/// emphasis (`*`, `_`, `` ` ``, `#`) and of a final `.` or `!`, is `marker` (ASCII case
/// ignored).
pub fn is_done(reply: &str, marker: &str) -> bool {
    let marker = marker.trim();
    !marker.is_empty()
        && reply.lines().any(|line| {
            let bare = line
                .trim()
                .trim_matches(|c| matches!(c, '*' | '_' | '`' | '#'))
                .trim()
                .trim_end_matches(['.', '!'])
                .trim();
            bare.eq_ignore_ascii_case(marker)
        })
}

/// One work item, as the driver follows it.
struct ItemRun {
    /// Its agent type.
    agent_type: Arc<str>,
    /// Turns taken.
    turns: u32,
    /// Sessions started for it.
    sessions: u32,
    /// The session holding it now, as last announced.
    current: Option<SessionId>,
    /// Set when the driver decided it is over (its session is then closed).
    end: Option<ItemEnd>,
    /// Failed turns in a row.
    failures: u32,
    /// `WorkItemDone` or `DeadLetter` arrived.
    finished: bool,
}

/// A turn under way: the item, the session, the message sent (`None`: a reply to the history
/// as it stands), and what came of it.
type TurnResult = (
    WorkItemId,
    SessionHandle,
    Option<String>,
    Result<Turn, ChatRuntimeError>,
);

/// Takes one turn of `handle`'s session on `runtime` (`message` as the next user message, or
/// `None` to answer the history as it stands) and reports it through the handle: the reading
/// with [`SessionHandle::report_and_settle`], a context overflow as the machine's overflow
/// event ([`SessionHandle::overflow_and_settle`]: the machine decides, and rotates). Returns once the session has settled (compacted, rotated, or closed), the turn's
/// `phase` and `successor` saying which. This is how a [`ChatRuntime`]'s usage reaches its
/// session: the runtime itself knows nothing of the supervisor.
pub async fn take_turn(
    runtime: &ChatRuntime,
    handle: &SessionHandle,
    message: Option<&str>,
) -> Result<Turn, ChatRuntimeError> {
    let session = handle.session;
    let turn = match message {
        Some(m) => runtime.chat(session, m).await?,
        None => runtime.reply(session).await?,
    };
    let waited = Instant::now();
    let settled = match (&turn.overflow, &turn.reading) {
        (Some(overflow), _) => {
            handle
                .overflow_and_settle(overflow.prompt_tokens, overflow.window)
                .await
        }
        (None, Some(reading)) => {
            handle
                .report_and_settle(
                    reading.usage.used(),
                    Some(turn.window),
                    reading.usage.source(),
                )
                .await
        }
        (None, None) => handle.settled().await,
    };
    let (phase, successor) = match settled {
        Ok(Settled::Normal) => (Phase::Normal, None),
        Ok(Settled::Rotated { successor }) => (Phase::Closed, Some(successor)),
        // Closed, or stopped before the report reached it.
        Ok(Settled::Closed) | Err(_) => (Phase::Closed, None),
    };
    Ok(turn.settled(phase, successor, waited.elapsed()))
}

fn schedule_turn(
    runtime: Arc<ChatRuntime>,
    item: WorkItemId,
    handle: SessionHandle,
    message: Option<String>,
    delay: Duration,
) -> BoxFuture<'static, TurnResult> {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = take_turn(&runtime, &handle, message.as_deref()).await;
        (item, handle, message, result)
    })
}

/// Runs `items` through a fleet of `agent_types` over `runtime`, each turn reported through the
/// session's handle ([`take_turn`]). `progress` is called after every event and turn.
///
/// With a `journal` ([`RunJournal::open`], for the same items), the supervisor writes through
/// it and recovers from it, and the run continues what an earlier run on it left: items it
/// ended are not taken again (see [`Resumed`]). The runtime's session ids must start at
/// [`RunJournal::next_session_id`].
///
/// When `stop` completes (a signal, say), no new turn is started; the turns under way may
/// finish within [`RunConfig::grace`] (an item whose agent then says it is done is done); then
/// the fleet shuts down, leaving the other items unfinished (with a journal, queued for a
/// resumed run), and the report is returned with `interrupted` set.
pub async fn drive(
    runtime: Arc<ChatRuntime>,
    agent_types: Vec<AgentType>,
    items: Vec<WorkItem>,
    config: &RunConfig,
    journal: Option<Arc<RunJournal>>,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(RunProgress),
) -> Result<RunReport, RunError> {
    if items.is_empty() || agent_types.is_empty() {
        return Err(RunError::Invalid(
            "need at least one agent type and one work item".into(),
        ));
    }
    if config.max_turns == 0 {
        return Err(RunError::Invalid("max_turns must be at least 1".into()));
    }
    check_items_fit(&agent_types, &items)?;
    let mut builder = Supervisor::builder(runtime.clone()).config(config.supervisor.clone());
    for agent in agent_types {
        builder = builder.agent_type(agent);
    }
    if let Some(j) = &journal {
        builder = builder.journal(j.journal().clone())?;
    }
    // Subscribed before the start: recovery's events cannot be missed.
    let mut events = builder.subscribe();
    let supervisor = builder.start();
    let total = items.len() as u64;
    let mut runs: BTreeMap<WorkItemId, ItemRun> = BTreeMap::new();
    let mut resumed = journal
        .as_ref()
        .filter(|j| j.is_resumed())
        .map(|_| Resumed::default());
    let mut finished = 0;
    for item in items {
        let prior = journal.as_ref().and_then(|j| j.ends.get(&item.id)).cloned();
        let known = journal.as_ref().is_some_and(|j| j.known.contains(&item.id));
        if prior.is_some() {
            finished += 1;
        }
        if let Some(r) = &mut resumed {
            if prior.is_some() {
                r.already_ended += 1;
            } else if !known {
                r.submitted += 1;
            }
        }
        runs.insert(
            item.id,
            ItemRun {
                agent_type: item.agent_type.clone(),
                turns: prior.as_ref().map_or(0, |p| p.turns),
                sessions: prior.as_ref().map_or(0, |p| p.sessions),
                current: None,
                finished: prior.is_some(),
                end: prior.map(|p| p.end),
                failures: 0,
            },
        );
        if known {
            // The supervisor recovered it from the journal.
            continue;
        }
        if let Err(e) = supervisor.submit(item).await {
            supervisor.shutdown(Duration::from_secs(5)).await;
            return Err(e.into());
        }
    }

    let started = Instant::now();
    let mut driver = Driver {
        runtime,
        supervisor: supervisor.clone(),
        config,
        runs,
        turns: FuturesUnordered::new(),
        tally: Tally::default(),
        total_turns: 0,
        finished,
        journal,
        resumed,
        request: Duration::ZERO,
        overhead: Duration::ZERO,
        stopping: false,
    };
    let mut stop = std::pin::pin!(stop);
    let mut grace_ends: Option<Instant> = None;
    while driver.finished < total {
        if grace_ends.is_some() && driver.turns.is_empty() {
            break;
        }
        tokio::select! {
            () = &mut stop, if grace_ends.is_none() => {
                tracing::warn!(
                    turns = driver.turns.len(),
                    grace = ?config.grace,
                    "stopping: no new turns; the turns under way may finish"
                );
                grace_ends = Some(Instant::now() + config.grace);
                driver.stopping = true;
            }
            () = tokio::time::sleep_until(grace_ends.unwrap_or_else(Instant::now)), if grace_ends.is_some() => {
                tracing::warn!(turns = driver.turns.len(), "the grace period is over; the turns under way are cut short");
                break;
            }
            event = events.recv() => match event {
                Some(event) => driver.event(event).await,
                None => break,
            },
            Some(result) = driver.turns.next(), if !driver.turns.is_empty() => {
                driver.turn_done(result).await;
            }
            () = tokio::time::sleep(config.idle_timeout) => {
                tracing::warn!(idle = ?config.idle_timeout, "nothing happened for too long; stopping");
                break;
            }
        }
        progress(RunProgress {
            finished: driver.finished,
            total,
            turns: driver.total_turns,
            compactions: driver.tally.compactions(),
            rotations: driver.tally.rotations(),
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(driver.turns);
    // Start retries are counted by the supervisor, not carried by an event: ask before it stops.
    match supervisor.inventory().await {
        Ok(inventory) => driver.tally.start_retries(inventory.start_retries),
        Err(error) => tracing::warn!(%error, "could not read the start retries; not counted"),
    }
    let deadline = grace_ends.map_or(Duration::from_secs(30), |end| {
        end.saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1))
    });
    supervisor.shutdown(deadline).await;
    while let Ok(event) = events.try_recv() {
        driver.tally.count(&event);
    }
    let mut fleet = driver
        .tally
        .report(config.seed, total, seconds, driver.total_turns);
    let items: Vec<ItemReport> = driver
        .runs
        .into_iter()
        .map(|(id, r)| ItemReport {
            id,
            agent_type: r.agent_type,
            turns: r.turns,
            sessions: r.sessions,
            end: r.end.unwrap_or(ItemEnd::Unfinished),
        })
        .collect();
    // The fleet counts a session closed after a failed turn as done: the items' own ends are
    // the truth.
    let outcomes = Outcomes::of(items.iter().map(|i| &i.end));
    fleet.done = outcomes.done + outcomes.turn_limit;
    fleet.dead_letters = outcomes.dead_lettered;
    fleet.unfinished = outcomes.unfinished;
    Ok(RunReport {
        interrupted: grace_ends.is_some(),
        resumed: driver.resumed,
        outcomes,
        fleet,
        items,
        request_seconds: driver.request.as_secs_f64(),
        overhead_seconds: driver.overhead.as_secs_f64(),
    })
}

/// The driver's state between events.
struct Driver<'a> {
    /// The agents.
    runtime: Arc<ChatRuntime>,
    /// The fleet.
    supervisor: SupervisorHandle,
    /// How to drive.
    config: &'a RunConfig,
    /// Every work item.
    runs: BTreeMap<WorkItemId, ItemRun>,
    /// Turns under way.
    turns: FuturesUnordered<BoxFuture<'static, TurnResult>>,
    /// The report's counts.
    tally: Tally,
    /// Turns taken.
    total_turns: u64,
    /// Items done or dead.
    finished: u64,
    /// Time in requests.
    request: Duration,
    /// baton's own time in turns.
    overhead: Duration,
    /// Where item ends are recorded, with a journal.
    journal: Option<Arc<RunJournal>>,
    /// What was taken over from an earlier run.
    resumed: Option<Resumed>,
    /// A stop was asked for: no new turn starts.
    stopping: bool,
}

impl Driver<'_> {
    fn schedule(
        &mut self,
        item: WorkItemId,
        handle: SessionHandle,
        message: Option<String>,
        delay: Duration,
    ) {
        self.turns.push(schedule_turn(
            self.runtime.clone(),
            item,
            handle,
            message,
            delay,
        ));
    }

    async fn event(&mut self, event: FleetEvent) {
        self.tally.count(&event);
        match event {
            FleetEvent::SessionStarted {
                session, work_item, ..
            } => {
                let Some(run) = self.runs.get_mut(&work_item) else {
                    return;
                };
                run.current = Some(session);
                run.sessions += 1;
                if self.stopping {
                    // Left to the shutdown (with a journal, a resumed run takes it up).
                } else if run.end.is_some() {
                    // It ended while its successor was being prepared.
                    let _ = self.supervisor.close(session).await;
                } else {
                    match self.supervisor.session(session).await {
                        Some(handle) => self.schedule(work_item, handle, None, Duration::ZERO),
                        // Gone already (closed under its start): its end arrives as an event.
                        None => tracing::debug!(%session, "session gone before its first turn"),
                    }
                }
            }
            FleetEvent::WorkItemDone { work_item, .. } => self.finish(work_item, None),
            FleetEvent::Recovered { outcome, .. } => {
                if let Some(r) = &mut self.resumed {
                    match outcome {
                        RecoveryOutcome::Queued => r.queued += 1,
                        RecoveryOutcome::Requeued { .. } => r.requeued += 1,
                        RecoveryOutcome::RotationResumed { .. } => r.rotations_resumed += 1,
                    }
                }
            }
            FleetEvent::DeadLetter { work_item, reason } => {
                self.finish(work_item, Some(ItemEnd::Dead { reason }))
            }
            _ => {}
        }
    }

    fn finish(&mut self, item: WorkItemId, end: Option<ItemEnd>) {
        if let Some(run) = self.runs.get_mut(&item)
            && !run.finished
        {
            run.finished = true;
            if run.end.is_none() {
                run.end = end;
            }
            self.finished += 1;
        }
    }

    /// Ends the item and closes the session holding it.
    async fn end(&mut self, item: WorkItemId, end: ItemEnd) {
        let Some(run) = self.runs.get_mut(&item) else {
            return;
        };
        tracing::info!(work_item = %item, end = end.as_str(), turns = run.turns, "work item ends");
        if let Some(journal) = &self.journal
            && let Err(error) = journal.record_end(item, &end, run.turns, run.sessions)
        {
            tracing::error!(%error, work_item = %item, "the item's end could not be recorded; a resumed run takes it as done");
        }
        run.end = Some(end);
        if let Some(session) = run.current {
            // A session that has rotated away is no longer registered: its successor is
            // closed when it starts.
            let _ = self.supervisor.close(session).await;
        }
    }

    async fn turn_done(&mut self, (item, handle, message, result): TurnResult) {
        let session = handle.session;
        let Some(run) = self.runs.get_mut(&item) else {
            return;
        };
        if run.end.is_some() {
            return;
        }
        match result {
            Ok(turn) => {
                run.turns += 1;
                run.failures = 0;
                self.total_turns += 1;
                self.request += turn.request_time;
                self.overhead += turn.overhead();
                let current = run.current == Some(session) && turn.phase == Phase::Normal;
                if is_done(turn.text(), &self.config.done_marker) {
                    self.end(item, ItemEnd::Done).await;
                } else if run.turns >= self.config.max_turns {
                    self.end(item, ItemEnd::TurnLimit).await;
                } else if current && !self.stopping {
                    let prompt = self.config.continue_prompt.clone();
                    self.schedule(item, handle, Some(prompt), Duration::ZERO);
                }
                // Otherwise the session rotated: its successor's start schedules the next turn.
            }
            Err(ChatRuntimeError::UnknownSession(_)) => {
                // Closed under the turn (a rotation): the successor's start takes over.
            }
            Err(e) if self.stopping => {
                tracing::warn!(work_item = %item, session = %session, error = %e, "turn failed while stopping; left unfinished");
            }
            Err(e) if e.retry_may_help() && run.failures < self.config.turn_retries => {
                run.failures += 1;
                let delay = Duration::from_secs(1) * 2u32.pow(run.failures - 1);
                tracing::warn!(work_item = %item, session = %session, error = %e, ?delay, "turn failed; taking it again");
                self.schedule(item, handle, message, delay);
            }
            Err(e) => {
                tracing::warn!(work_item = %item, session = %session, error = %e, "turn failed; the work item ends");
                self.end(
                    item,
                    ItemEnd::Failed {
                        error: e.to_string(),
                    },
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_is_the_marker_means_done() {
        for reply in [
            "DONE",
            "Fixed the parser.\nDONE",
            "All tests pass.\n\n**Done.**\n",
            "  done!  ",
            "### DONE",
        ] {
            assert!(is_done(reply, DONE_MARKER), "{reply:?}");
        }
    }

    #[test]
    fn the_marker_inside_a_sentence_is_not_done() {
        for reply in [
            "",
            "Not done yet.",
            "I will write DONE when finished.",
            "DONE: the first half",
            "ABANDONED",
        ] {
            assert!(!is_done(reply, DONE_MARKER), "{reply:?}");
        }
        assert!(!is_done("DONE", "  "), "an empty marker never matches");
    }
}

//! The command queue: the agent runtime of `baton serve`, carried out by an orchestrator that
//! takes commands over HTTP and posts their results back.
//!
//! Every [`AgentRuntime`](crate::AgentRuntime) call becomes a [`Command`] with an id unique in
//! this process. It waits in the queue until a consumer takes it (`POST
//! /v1/runtime/commands/poll`, see [`commands`](super::commands)), which leases it for a while: a lease that expires unanswered
//! puts the command back in the queue, with the same id, for the next consumer. A posted result
//! ([`CommandResult`]) completes the call. baton calls the runtime under its own deadlines and
//! drops a call that overruns: the call's command is then withdrawn, and a later result for it
//! is refused as unknown. So a command nobody answers in time is a runtime timeout, exactly as
//! with any other runtime.
//!
//! [`QueueState`] is the bookkeeping alone (pending, leased until an instant, answered,
//! withdrawn), a plain struct; [`CommandQueue`] is the thin async layer around it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::runtime::RuntimeError;
use crate::usage::Usage;
use crate::vocab::{AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, WorkItem};

/// One runtime call, as an orchestrator receives it: what to do, and the lease it is held under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Command {
    /// Unique in this server process; the same command keeps it when it is offered again after
    /// a lease expired. Results are posted to `/v1/runtime/commands/{id}/result`.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: CommandOp,
    /// The number of the lease this consumer holds; echoed in the result, it lets baton refuse
    /// (409) the late answer of a consumer whose lease expired and went to another. Absent in
    /// webhook deliveries, which hold no lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// When the lease expires, in Unix milliseconds: past it, the command is offered again.
    /// Absent in webhook deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_ms: Option<u64>,
}

/// What a command asks for: one `AgentRuntime` operation and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CommandOp {
    /// `AgentRuntime::summarise`: answer `{"text", "tokens"}`.
    Summarise {
        /// The session to summarise.
        #[schema(value_type = u64)]
        session: SessionId,
        /// Why: `compaction` (the summary replaces the history) or `handoff` (a successor
        /// starts from it).
        #[schema(value_type = String)]
        purpose: SummaryPurpose,
    },
    /// `AgentRuntime::replace_history`: answer `{"tokens"}`, the tokens in use afterwards.
    ReplaceHistory {
        /// The session whose history is replaced.
        #[schema(value_type = u64)]
        session: SessionId,
        /// The summary that replaces it: `{"text", "tokens"}`.
        #[schema(value_type = Object)]
        summary: Summary,
    },
    /// `AgentRuntime::spawn`: answer `{"session"}`. A `key` seen before must return the session
    /// it made; otherwise use the proposed `session` id, which is new.
    Spawn {
        /// The agent type to start: `{"name", "window", "policy", "model", "system_prompt"}`.
        #[schema(value_type = Object)]
        agent_type: AgentType,
        /// The idempotency key: the same key must never start two sessions.
        #[schema(value_type = u64)]
        key: SpawnKey,
        /// A fresh session id baton proposes (the same for every command of one key).
        #[schema(value_type = u64)]
        session: SessionId,
    },
    /// `AgentRuntime::assign`: answer `{}`.
    Assign {
        /// The session that takes the work item.
        #[schema(value_type = u64)]
        session: SessionId,
        /// The work item: `{"id", "agent_type", "text"}`.
        #[schema(value_type = Object)]
        work_item: WorkItem,
        /// The handoff it continues from, if any: `{"text", "tokens", "fallback"}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        handoff: Option<Handoff>,
    },
    /// `AgentRuntime::close`: answer `{}`.
    Close {
        /// The session to end.
        #[schema(value_type = u64)]
        session: SessionId,
    },
}

impl CommandOp {
    /// The operation's name, as in the `op` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Summarise { .. } => "summarise",
            Self::ReplaceHistory { .. } => "replace_history",
            Self::Spawn { .. } => "spawn",
            Self::Assign { .. } => "assign",
            Self::Close { .. } => "close",
        }
    }

    /// The session the command acts on (for `spawn`, the proposed one).
    pub fn session(&self) -> SessionId {
        match self {
            Self::Summarise { session, .. }
            | Self::ReplaceHistory { session, .. }
            | Self::Spawn { session, .. }
            | Self::Assign { session, .. }
            | Self::Close { session } => *session,
        }
    }
}

/// A posted result: exactly one of `ok` (the operation's answer, shaped by its op) and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The lease the answer was computed under, from the command; optional (without it, the
    /// first answer wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// The answer: `summarise` `{"text", "tokens"}`, `replace_history` `{"tokens"}`, `spawn`
    /// `{"session"}`, `assign` and `close` `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ok: Option<serde_json::Value>,
    /// The failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
}

/// A failed command, as the orchestrator reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultError {
    /// Whether trying again may help, and how baton treats the failure.
    pub kind: ErrorKind,
    /// What went wrong (kept to its first 1,000 characters).
    #[serde(default)]
    pub message: String,
}

/// The kinds of failure an orchestrator can report: those of baton's runtime errors, minus the
/// timeout (which baton measures itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// May pass if tried again: baton retries within its deadline.
    Transient,
    /// Will not pass by trying again: baton does not retry.
    Permanent,
    /// The runtime does not know the session (closed, or never spawned).
    UnknownSession,
    /// The request did not fit the model's window: the session must rotate.
    ContextOverflow,
}

/// Error messages from outside are cut to this many characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// What a successful command produced, typed by its operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `summarise`'s summary.
    Summary(Summary),
    /// `replace_history`'s tokens in use afterwards.
    Tokens(u64),
    /// `spawn`'s session.
    Session(SessionId),
    /// `assign` and `close`.
    Done,
}

/// How a command ended: its reply or the runtime error baton sees.
pub type Outcome = Result<Reply, RuntimeError>;

/// `summarise`'s answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SummariseOk {
    text: String,
    tokens: u64,
}

/// `replace_history`'s answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensOk {
    tokens: u64,
}

/// `spawn`'s answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionOk {
    session: SessionId,
}

/// `assign`'s and `close`'s answer: an empty object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyOk {}

impl CommandResult {
    /// The outcome this result gives the call of `op`, or why it does not fit `op` (a message
    /// for a 400: the command stays pending).
    pub fn outcome(self, op: &CommandOp) -> Result<Outcome, String> {
        let ok = match (self.ok, self.error) {
            (Some(ok), None) => ok,
            (None, Some(error)) => return Ok(Err(error.into_runtime_error(op))),
            _ => return Err("a result holds exactly one of `ok` and `error`".into()),
        };
        let shape = |e: serde_json::Error| format!("not a `{}` result: {e}", op.name());
        let count = |tokens: u64| {
            if tokens > Usage::MAX_TOKENS {
                Err(format!(
                    "tokens = {tokens} is larger than the {} tokens baton accepts",
                    Usage::MAX_TOKENS
                ))
            } else {
                Ok(tokens)
            }
        };
        Ok(Ok(match op {
            CommandOp::Summarise { .. } => {
                let s: SummariseOk = serde_json::from_value(ok).map_err(shape)?;
                Reply::Summary(Summary {
                    text: s.text,
                    tokens: count(s.tokens)?,
                })
            }
            CommandOp::ReplaceHistory { .. } => {
                let t: TokensOk = serde_json::from_value(ok).map_err(shape)?;
                Reply::Tokens(count(t.tokens)?)
            }
            CommandOp::Spawn { .. } => Reply::Session(
                serde_json::from_value::<SessionOk>(ok)
                    .map_err(shape)?
                    .session,
            ),
            CommandOp::Assign { .. } | CommandOp::Close { .. } => {
                serde_json::from_value::<EmptyOk>(ok).map_err(shape)?;
                Reply::Done
            }
        }))
    }
}

impl ResultError {
    /// The [`RuntimeError`] baton sees for this failure of `op`.
    pub fn into_runtime_error(self, op: &CommandOp) -> RuntimeError {
        let message: String = self.message.chars().take(MAX_MESSAGE_CHARS).collect();
        match self.kind {
            ErrorKind::Transient => RuntimeError::transient(message),
            ErrorKind::Permanent => RuntimeError::permanent(message),
            ErrorKind::ContextOverflow => RuntimeError::ContextOverflow { message },
            // A spawn has no session yet: not knowing it is a plain permanent failure.
            ErrorKind::UnknownSession => match op {
                CommandOp::Spawn { .. } => RuntimeError::permanent(message),
                _ => RuntimeError::UnknownSession(op.session()),
            },
        }
    }
}

/// Why a posted result was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnswerError {
    /// No such command waits: never issued, already answered, or withdrawn because its call
    /// ended (timed out or cancelled).
    #[error("no pending command {0}: unknown, already answered, or its call ended")]
    Unknown(u64),
    /// The answer's lease expired and the command was leased to another consumer since.
    #[error("the lease of command {0} expired and the command went to another consumer")]
    LeaseMoved(u64),
    /// The result does not fit the command's operation; the command stays pending.
    #[error("{0}")]
    BadShape(String),
}

/// A command's lease: its number and when it ends.
#[derive(Debug, Clone, Copy)]
struct Lease {
    number: u64,
    expires: Instant,
}

/// One command waiting for its result.
#[derive(Debug)]
struct Entry {
    op: CommandOp,
    /// `None` while pending; the current lease once taken.
    lease: Option<Lease>,
    /// Where the outcome goes: the waiting call.
    reply: oneshot::Sender<Outcome>,
}

/// A command handed to a consumer by [`QueueState::take`].
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The command's id.
    pub id: u64,
    /// The lease's number.
    pub lease: u64,
    /// What to do.
    pub op: CommandOp,
}

/// The queue's bookkeeping, without any waiting: commands are pending (in arrival order),
/// leased until an instant, or gone (answered or withdrawn). Time is passed in, never read.
#[derive(Debug, Default)]
pub struct QueueState {
    /// The last command id handed out.
    last_id: u64,
    /// The last lease number handed out.
    last_lease: u64,
    /// Every command not answered nor withdrawn, by id.
    entries: HashMap<u64, Entry>,
    /// Pending ids, oldest first; ids of commands gone since are skipped when met.
    ready: VecDeque<u64>,
    /// Leased commands by expiry: `(expires, id)`.
    expiries: BTreeSet<(Instant, u64)>,
}

impl QueueState {
    /// Queues a command; returns its id. `reply` receives its outcome.
    pub fn push(&mut self, op: CommandOp, reply: oneshot::Sender<Outcome>) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        self.entries.insert(
            id,
            Entry {
                op,
                lease: None,
                reply,
            },
        );
        self.ready.push_back(id);
        id
    }

    /// Leases up to `max` commands until `now + lease`: first those whose lease expired by
    /// `now` (offered again, same id), then pending ones, oldest first.
    pub fn take(&mut self, now: Instant, max: usize, lease: Duration) -> Vec<Taken> {
        let mut expired = Vec::new();
        while let Some(&(expires, id)) = self.expiries.first() {
            if expires > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(e) = self.entries.get_mut(&id) {
                e.lease = None;
                expired.push(id);
            }
        }
        // Offered again before the pending ones, the earliest expired first.
        for id in expired.into_iter().rev() {
            self.ready.push_front(id);
        }
        let mut taken = Vec::new();
        let expires = now + lease;
        while taken.len() < max {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if entry.lease.is_some() {
                continue;
            }
            self.last_lease += 1;
            entry.lease = Some(Lease {
                number: self.last_lease,
                expires,
            });
            self.expiries.insert((expires, id));
            taken.push(Taken {
                id,
                lease: self.last_lease,
                op: entry.op.clone(),
            });
        }
        taken
    }

    /// When the earliest lease expires, if any command is leased: a waiting consumer should
    /// look again then.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// The operation of a command still waiting for its result.
    pub fn op(&self, id: u64) -> Option<&CommandOp> {
        self.entries.get(&id).map(|e| &e.op)
    }

    /// Completes command `id` with `outcome`, answered under `lease` (if the consumer said):
    /// refused when the command is gone, or leased to another consumer now. Returns the sender
    /// to hand the outcome to, with the command's operation.
    pub fn complete(
        &mut self,
        id: u64,
        lease: Option<u64>,
    ) -> Result<(CommandOp, oneshot::Sender<Outcome>), AnswerError> {
        let entry = self.entries.get(&id).ok_or(AnswerError::Unknown(id))?;
        if let (Some(given), Some(current)) = (lease, entry.lease)
            && given != current.number
        {
            return Err(AnswerError::LeaseMoved(id));
        }
        Ok(self.remove(id).expect("present"))
    }

    /// When the lease `(id, lease)` ends, if command `id` is still leased under it (not
    /// answered, withdrawn, nor offered again) at `now`.
    pub fn held_until(&self, id: u64, lease: u64, now: Instant) -> Option<Instant> {
        let current = self.entries.get(&id)?.lease?;
        (current.number == lease && current.expires > now).then_some(current.expires)
    }

    /// Withdraws command `id` (its call ended): a later result for it is unknown. Returns
    /// whether it was still waiting.
    pub fn withdraw(&mut self, id: u64) -> bool {
        self.remove(id).is_some()
    }

    /// Commands waiting for a result: `(pending, leased)`.
    pub fn depth(&self) -> (usize, usize) {
        let leased = self.expiries.len();
        (self.entries.len() - leased, leased)
    }

    fn remove(&mut self, id: u64) -> Option<(CommandOp, oneshot::Sender<Outcome>)> {
        let entry = self.entries.remove(&id)?;
        if let Some(l) = entry.lease {
            self.expiries.remove(&(l.expires, id));
        }
        Some((entry.op, entry.reply))
    }
}

/// The agent runtime of `baton serve`: each call waits as a [`Command`] until a consumer
/// answers it over HTTP. Shared behind an `Arc` by the supervisor (as its runtime) and the
/// handlers of [`commands`](super::commands).
#[derive(Debug)]
pub struct CommandQueue {
    state: Mutex<QueueState>,
    /// Bumped whenever a command is queued, so that waiting consumers look again.
    queued: watch::Sender<()>,
    /// Bumped whenever a command leaves the queue (answered or withdrawn), so that a consumer
    /// holding as many commands as it may take looks again.
    settled: watch::Sender<()>,
    /// The session ids proposed to spawns.
    proposals: Proposals,
}

impl Default for CommandQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// Withdraws a call's command when the call ends (answered, timed out or cancelled): held for
/// the whole of each call, which makes the call cancel-safe.
struct Withdraw<'a> {
    queue: &'a CommandQueue,
    id: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.queue.lock().withdraw(self.id) {
            self.queue.settled.send_replace(());
            tracing::debug!(
                command = self.id,
                "command withdrawn: its call ended unanswered"
            );
        }
    }
}

impl CommandQueue {
    /// An empty queue proposing session ids from 1.
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            queued: watch::Sender::new(()),
            settled: watch::Sender::new(()),
            proposals: Proposals::from(SessionId(1)),
        }
    }

    /// The same queue, proposing session ids from `first`: give it
    /// [`Journal::next_session_id`](crate::Journal::next_session_id) when a journal is kept,
    /// so that no id the journal knows is proposed again after a restart.
    pub fn numbering_from(mut self, first: SessionId) -> Self {
        self.proposals = Proposals::from(first);
        self
    }

    /// The same queue, making each block of proposed ids durable through `reservation` before
    /// proposing from it (call after [`numbering_from`](Self::numbering_from), from the larger
    /// of the journal's next id and the reservation's stored floor).
    pub fn reserving(mut self, reservation: std::sync::Arc<dyn IdReservation>) -> Self {
        self.proposals = self.proposals.reserving(reservation);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The state is consistent between statements: a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commands waiting for a result: `(pending, leased)`.
    pub fn depth(&self) -> (usize, usize) {
        self.lock().depth()
    }

    /// Takes up to `max` commands under a lease of `lease`, waiting up to `wait` for at least
    /// one. Cancel-safe: commands are taken only when the call returns them.
    pub async fn poll(&self, max: usize, wait: Duration, lease: Duration) -> Vec<Command> {
        let deadline = Instant::now() + wait;
        // Subscribed before the first look: a command queued after it marks the receiver.
        let mut queued = self.queued.subscribe();
        loop {
            let now = Instant::now();
            let (taken, next_expiry) = {
                let mut state = self.lock();
                let taken = state.take(now, max, lease);
                (taken, state.next_expiry())
            };
            if !taken.is_empty() || now >= deadline {
                let expires_ms = unix_ms(lease);
                return taken
                    .into_iter()
                    .map(|t| Command {
                        id: t.id,
                        op: t.op,
                        lease: Some(t.lease),
                        lease_expires_ms: Some(expires_ms),
                    })
                    .collect();
            }
            let wake = next_expiry.map_or(deadline, |at| at.min(deadline));
            // The sender lives in `self`; a closed channel cannot happen while we borrow it.
            let _ = tokio::time::timeout_at(wake, queued.changed()).await;
        }
    }

    /// Of `held` (a consumer's leases: command id and lease number), keeps those still leased
    /// to it at `now`, and answers when the earliest of them ends.
    pub fn still_held(&self, held: &mut Vec<(u64, u64)>, now: Instant) -> Option<Instant> {
        let state = self.lock();
        let mut earliest: Option<Instant> = None;
        held.retain(|&(id, lease)| match state.held_until(id, lease, now) {
            Some(until) => {
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
                true
            }
            None => false,
        });
        earliest
    }

    /// A receiver marked each time a command leaves the queue (answered or withdrawn).
    pub fn settled(&self) -> watch::Receiver<()> {
        self.settled.subscribe()
    }

    /// Posts a result for command `id`: parsed against the command's operation, then handed
    /// to the waiting call.
    pub fn answer(&self, id: u64, result: CommandResult) -> Result<(), AnswerError> {
        let op = self
            .lock()
            .op(id)
            .cloned()
            .ok_or(AnswerError::Unknown(id))?;
        let lease = result.lease;
        let outcome = result.outcome(&op).map_err(AnswerError::BadShape)?;
        let (op, reply) = self.lock().complete(id, lease)?;
        tracing::debug!(
            command = id,
            op = op.name(),
            ok = outcome.is_ok(),
            "command answered"
        );
        self.settled.send_replace(());
        // The call may have ended between the two locks: then nobody waits for this outcome.
        let _ = reply.send(outcome);
        Ok(())
    }

    /// Queues `op` and waits for its outcome; the command is withdrawn if this is dropped.
    async fn call(&self, op: CommandOp) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let name = op.name();
        let id = self.lock().push(op, tx);
        let _withdraw = Withdraw { queue: self, id };
        tracing::debug!(command = id, op = name, "command queued");
        self.queued.send_replace(());
        rx.await
            .unwrap_or_else(|_| Err(RuntimeError::permanent("the command was dropped")))
    }
}

/// Unix milliseconds `after` from now.
fn unix_ms(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + after).as_millis()).unwrap_or(u64::MAX)
}

/// A reply of the wrong kind: the parser matched it to the op, so this is a defect.
pub(crate) fn mismatch(op: &str, reply: &Reply) -> RuntimeError {
    tracing::error!(op, ?reply, "a command's reply does not fit its operation");
    RuntimeError::permanent(format!("internal: a reply of the wrong kind for {op}"))
}

/// Makes session ids durable as proposable before any of them is proposed, so that a restarted
/// server never proposes an id it proposed before a crash: a spawn the crash cut short may have
/// made a session under that id that no journal knows.
pub trait IdReservation: Send + Sync + std::fmt::Debug {
    /// Records durably that ids below `until` may have been proposed.
    fn reserve(&self, until: u64) -> Result<(), String>;
}

/// How many ids one reservation covers: one durable write per this many proposals.
pub const RESERVED_BLOCK: u64 = 1024;

/// What [`Proposals`] keeps under its lock.
#[derive(Debug, Default)]
struct ProposalState {
    /// The highest id proposed or answered so far.
    last: u64,
    /// Ids below this are reserved (always 0 without a reservation).
    reserved_until: u64,
    /// Proposals not yet answered, by key.
    open: HashMap<SpawnKey, SessionId>,
}

/// The session ids a runtime proposes to spawns: the same for every spawn of one key until one
/// is answered, and above every id proposed or answered before; with an [`IdReservation`],
/// above every id proposed before a restart too.
#[derive(Debug)]
pub(crate) struct Proposals {
    state: Mutex<ProposalState>,
    /// Where blocks of ids are made durable before they are proposed, if anywhere.
    reservation: Option<std::sync::Arc<dyn IdReservation>>,
}

impl Proposals {
    /// Proposals from `first` on.
    pub(crate) fn from(first: SessionId) -> Self {
        Self {
            state: Mutex::new(ProposalState {
                last: first.0.saturating_sub(1),
                ..ProposalState::default()
            }),
            reservation: None,
        }
    }

    /// The same, reserving each block of ids through `reservation` before proposing from it.
    pub(crate) fn reserving(mut self, reservation: std::sync::Arc<dyn IdReservation>) -> Self {
        self.reservation = Some(reservation);
        self
    }

    /// The session id to propose for `key`; an error when its reservation could not be made
    /// durable (nothing is proposed then).
    pub(crate) fn propose(&self, key: SpawnKey) -> Result<SessionId, String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = s.open.get(&key) {
            return Ok(*id);
        }
        let id = s.last + 1;
        if let Some(r) = &self.reservation
            && id >= s.reserved_until
        {
            let until = id.saturating_add(RESERVED_BLOCK);
            r.reserve(until)?;
            s.reserved_until = until;
        }
        s.last = id;
        s.open.insert(key, SessionId(id));
        Ok(SessionId(id))
    }

    /// `key` was answered with `session`: later proposals stay above it.
    pub(crate) fn spawned(&self, key: SpawnKey, session: SessionId) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.open.remove(&key);
        s.last = s.last.max(session.0);
    }
}

/// Carries out [`AgentRuntime`](crate::AgentRuntime) calls by sending each as a [`CommandOp`]
/// somewhere: the queue and the webhook runtime. [`runtime_over_dispatch!`] types the replies.
#[async_trait]
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// The session ids proposed to spawns.
    fn proposals(&self) -> &Proposals;
    /// Sends `op` and waits for its outcome.
    async fn dispatch(&self, op: CommandOp) -> Outcome;
}

#[async_trait]
impl Dispatch for CommandQueue {
    fn proposals(&self) -> &Proposals {
        &self.proposals
    }
    async fn dispatch(&self, op: CommandOp) -> Outcome {
        self.call(op).await
    }
}

/// Implements [`AgentRuntime`](crate::AgentRuntime) for a [`Dispatch`] type: each call a
/// command, each reply typed.
macro_rules! runtime_over_dispatch {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl $crate::runtime::AgentRuntime for $t {
            async fn summarise(
                &self,
                session: $crate::vocab::SessionId,
                purpose: $crate::vocab::SummaryPurpose,
            ) -> Result<$crate::vocab::Summary, $crate::runtime::RuntimeError> {
                use $crate::serve::queue::{CommandOp, Dispatch, Reply, mismatch};
                match self
                    .dispatch(CommandOp::Summarise { session, purpose })
                    .await?
                {
                    Reply::Summary(s) => Ok(s),
                    other => Err(mismatch("summarise", &other)),
                }
            }

            async fn replace_history(
                &self,
                session: $crate::vocab::SessionId,
                summary: &$crate::vocab::Summary,
            ) -> Result<u64, $crate::runtime::RuntimeError> {
                use $crate::serve::queue::{CommandOp, Dispatch, Reply, mismatch};
                let op = CommandOp::ReplaceHistory {
                    session,
                    summary: summary.clone(),
                };
                match self.dispatch(op).await? {
                    Reply::Tokens(t) => Ok(t),
                    other => Err(mismatch("replace_history", &other)),
                }
            }

            async fn close(
                &self,
                session: $crate::vocab::SessionId,
            ) -> Result<(), $crate::runtime::RuntimeError> {
                use $crate::serve::queue::{CommandOp, Dispatch, Reply, mismatch};
                match self.dispatch(CommandOp::Close { session }).await? {
                    Reply::Done => Ok(()),
                    other => Err(mismatch("close", &other)),
                }
            }

            async fn spawn(
                &self,
                agent: &$crate::vocab::AgentType,
                key: $crate::vocab::SpawnKey,
            ) -> Result<$crate::vocab::SessionId, $crate::runtime::RuntimeError> {
                use $crate::serve::queue::{CommandOp, Dispatch, Reply, mismatch};
                let op = CommandOp::Spawn {
                    agent_type: agent.clone(),
                    key,
                    session: self.proposals().propose(key).map_err(|e| {
                        $crate::runtime::RuntimeError::transient(format!(
                            "cannot reserve a session id: {e}"
                        ))
                    })?,
                };
                match self.dispatch(op).await? {
                    Reply::Session(s) => {
                        self.proposals().spawned(key, s);
                        Ok(s)
                    }
                    other => Err(mismatch("spawn", &other)),
                }
            }

            async fn assign(
                &self,
                session: $crate::vocab::SessionId,
                item: &$crate::vocab::WorkItem,
                handoff: Option<&$crate::vocab::Handoff>,
            ) -> Result<(), $crate::runtime::RuntimeError> {
                use $crate::serve::queue::{CommandOp, Dispatch, Reply, mismatch};
                let op = CommandOp::Assign {
                    session,
                    work_item: item.clone(),
                    handoff: handoff.cloned(),
                };
                match self.dispatch(op).await? {
                    Reply::Done => Ok(()),
                    other => Err(mismatch("assign", &other)),
                }
            }
        }
    };
}

pub(crate) use runtime_over_dispatch;

runtime_over_dispatch!(CommandQueue);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::AgentRuntime;

    fn close(session: u64) -> CommandOp {
        CommandOp::Close {
            session: SessionId(session),
        }
    }

    fn summarise(session: u64) -> CommandOp {
        CommandOp::Summarise {
            session: SessionId(session),
            purpose: SummaryPurpose::Compaction,
        }
    }

    fn ok(value: serde_json::Value) -> CommandResult {
        CommandResult {
            lease: None,
            ok: Some(value),
            error: None,
        }
    }

    #[test]
    fn commands_are_taken_oldest_first_and_at_most_max() {
        let mut q = QueueState::default();
        let now = Instant::now();
        let ids: Vec<u64> = (1..=3)
            .map(|s| q.push(close(s), oneshot::channel().0))
            .collect();
        let first = q.take(now, 2, Duration::from_secs(1));
        assert_eq!(first.iter().map(|t| t.id).collect::<Vec<_>>(), ids[..2]);
        let second = q.take(now, 2, Duration::from_secs(1));
        assert_eq!(second.iter().map(|t| t.id).collect::<Vec<_>>(), ids[2..]);
        assert!(q.take(now, 2, Duration::from_secs(1)).is_empty());
        assert_eq!(q.depth(), (0, 3));
    }

    #[test]
    fn an_expired_lease_offers_the_same_command_again_before_newer_ones() {
        let mut q = QueueState::default();
        let t0 = Instant::now();
        let a = q.push(close(1), oneshot::channel().0);
        let first = q.take(t0, 1, Duration::from_secs(10));
        let b = q.push(close(2), oneshot::channel().0);
        assert_eq!(q.next_expiry(), Some(t0 + Duration::from_secs(10)));
        // Before expiry only the newer one is offered.
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(q.take(t1, 5, Duration::from_secs(10))[0].id, b);
        assert!(q.take(t1, 5, Duration::from_secs(10)).is_empty());
        // At expiry the first comes back, same id, under a new lease.
        let t2 = t0 + Duration::from_secs(10);
        let again = q.take(t2, 5, Duration::from_secs(10));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, a);
        assert_ne!(again[0].lease, first[0].lease);
    }

    #[test]
    fn a_result_under_a_lease_that_moved_is_refused_and_the_current_one_taken() {
        let mut q = QueueState::default();
        let t0 = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        let id = q.push(close(1), tx);
        let old = q.take(t0, 1, Duration::from_secs(1))[0].lease;
        let new = q.take(t0 + Duration::from_secs(1), 1, Duration::from_secs(1))[0].lease;
        assert_eq!(
            q.complete(id, Some(old)).unwrap_err(),
            AnswerError::LeaseMoved(id)
        );
        let (_, reply) = q.complete(id, Some(new)).unwrap();
        reply.send(Ok(Reply::Done)).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Ok(Reply::Done));
        // Answered: gone.
        assert_eq!(
            q.complete(id, Some(new)).unwrap_err(),
            AnswerError::Unknown(id)
        );
        assert_eq!(q.depth(), (0, 0));
        assert_eq!(q.next_expiry(), None);
    }

    #[test]
    fn a_late_result_is_taken_while_nobody_else_holds_the_command() {
        let mut q = QueueState::default();
        let t0 = Instant::now();
        let id = q.push(close(1), oneshot::channel().0);
        let lease = q.take(t0, 1, Duration::from_secs(1))[0].lease;
        // Expired, not yet taken again: the answer still counts.
        assert!(q.complete(id, Some(lease)).is_ok());
        assert!(
            q.take(t0 + Duration::from_secs(5), 1, Duration::from_secs(1))
                .is_empty()
        );
    }

    #[test]
    fn a_withdrawn_command_is_never_offered_nor_answered() {
        let mut q = QueueState::default();
        let t0 = Instant::now();
        let a = q.push(close(1), oneshot::channel().0);
        let b = q.push(close(2), oneshot::channel().0);
        assert!(q.withdraw(a));
        assert!(!q.withdraw(a));
        let taken = q.take(t0, 5, Duration::from_secs(1));
        assert_eq!(taken.iter().map(|t| t.id).collect::<Vec<_>>(), [b]);
        assert!(q.withdraw(b));
        assert_eq!(q.next_expiry(), None);
        assert_eq!(q.complete(b, None).unwrap_err(), AnswerError::Unknown(b));
    }

    #[test]
    fn results_are_typed_by_their_operation() {
        let summary = ok(serde_json::json!({"text": "done so far", "tokens": 42}));
        assert_eq!(
            summary.clone().outcome(&summarise(1)),
            Ok(Ok(Reply::Summary(Summary {
                text: "done so far".into(),
                tokens: 42
            })))
        );
        // The same body does not fit a close, nor a spawn.
        assert!(summary.clone().outcome(&close(1)).is_err());
        let spawn = CommandOp::Spawn {
            agent_type: AgentType::new("coder", 1000),
            key: SpawnKey(7),
            session: SessionId(3),
        };
        assert!(summary.outcome(&spawn).is_err());
        let absurd = ok(serde_json::json!({"tokens": u64::MAX}));
        let replace = CommandOp::ReplaceHistory {
            session: SessionId(1),
            summary: Summary {
                text: String::new(),
                tokens: 1,
            },
        };
        assert!(
            absurd
                .outcome(&replace)
                .unwrap_err()
                .contains("larger than")
        );
        assert_eq!(
            ok(serde_json::json!({"session": 3})).outcome(&spawn),
            Ok(Ok(Reply::Session(SessionId(3))))
        );
        assert_eq!(
            ok(serde_json::json!({})).outcome(&close(1)),
            Ok(Ok(Reply::Done))
        );
        let both = CommandResult {
            lease: None,
            ok: Some(serde_json::json!({})),
            error: Some(ResultError {
                kind: ErrorKind::Permanent,
                message: String::new(),
            }),
        };
        assert!(both.outcome(&close(1)).is_err());
    }

    #[test]
    fn reported_failures_become_the_runtime_errors_baton_knows() {
        let failed = |kind, op: &CommandOp| {
            CommandResult {
                lease: None,
                ok: None,
                error: Some(ResultError {
                    kind,
                    message: "x".repeat(5000),
                }),
            }
            .outcome(op)
            .unwrap()
            .unwrap_err()
        };
        let transient = failed(ErrorKind::Transient, &close(4));
        assert!(transient.is_retryable());
        assert_eq!(transient.to_string().len(), MAX_MESSAGE_CHARS);
        assert!(!failed(ErrorKind::Permanent, &close(4)).is_retryable());
        assert_eq!(
            failed(ErrorKind::UnknownSession, &close(4)),
            RuntimeError::UnknownSession(SessionId(4))
        );
        assert!(matches!(
            failed(ErrorKind::ContextOverflow, &summarise(4)),
            RuntimeError::ContextOverflow { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_its_result_and_a_dropped_call_withdraws_its_command() {
        let q = Arc::new(CommandQueue::new());
        let call = tokio::spawn({
            let q = q.clone();
            async move { q.summarise(SessionId(1), SummaryPurpose::Handoff).await }
        });
        let taken = q
            .poll(4, Duration::from_secs(5), Duration::from_secs(30))
            .await;
        assert_eq!(taken.len(), 1);
        assert_eq!(
            taken[0].op,
            CommandOp::Summarise {
                session: SessionId(1),
                purpose: SummaryPurpose::Handoff
            }
        );
        q.answer(
            taken[0].id,
            ok(serde_json::json!({"text": "s", "tokens": 1})),
        )
        .unwrap();
        assert_eq!(call.await.unwrap().unwrap().tokens, 1);

        // A call dropped at baton's deadline: its command is gone, and a result is unknown.
        let timed_out = tokio::time::timeout(Duration::from_secs(2), q.close(SessionId(1))).await;
        assert!(timed_out.is_err());
        assert_eq!(q.depth(), (0, 0));
        let none = q.poll(4, Duration::ZERO, Duration::from_secs(30)).await;
        assert!(none.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_poll_gets_a_command_whose_lease_expires_meanwhile() {
        let q = Arc::new(CommandQueue::new());
        let _call = tokio::spawn({
            let q = q.clone();
            async move { q.close(SessionId(9)).await }
        });
        let first = q
            .poll(1, Duration::from_secs(5), Duration::from_secs(3))
            .await;
        let start = Instant::now();
        let again = q
            .poll(1, Duration::from_secs(20), Duration::from_secs(3))
            .await;
        assert_eq!(again[0].id, first[0].id);
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        // A poll with nothing to take answers empty when its wait is over.
        let start = Instant::now();
        assert!(
            q.poll(1, Duration::from_secs(2), Duration::from_secs(3))
                .await
                .is_empty()
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    /// A reservation that keeps its floor in memory, as the journal's table does on disk.
    #[derive(Debug, Default)]
    struct Floor(Mutex<Vec<u64>>);

    impl IdReservation for Floor {
        fn reserve(&self, until: u64) -> Result<(), String> {
            self.0.lock().unwrap().push(until);
            Ok(())
        }
    }

    #[test]
    fn proposals_reserve_a_block_first_and_a_restart_from_the_floor_proposes_above_all_of_them() {
        let floor = Arc::new(Floor::default());
        let first = Proposals::from(SessionId(10)).reserving(floor.clone());
        let ids: Vec<u64> = (0..RESERVED_BLOCK + 1)
            .map(|k| first.propose(SpawnKey(k)).unwrap().0)
            .collect();
        // One durable write per block, each before any id of its block went out.
        assert_eq!(
            *floor.0.lock().unwrap(),
            vec![10 + RESERVED_BLOCK, 10 + 2 * RESERVED_BLOCK]
        );
        // A crash: nothing of these proposals reached the journal. The restarted server starts
        // from the stored floor, above every id proposed before.
        let stored = *floor.0.lock().unwrap().last().unwrap();
        let again = Proposals::from(SessionId(stored)).reserving(floor.clone());
        let next = again.propose(SpawnKey(0)).unwrap().0;
        assert!(ids.iter().all(|&id| id < next), "{next}");
    }

    #[test]
    fn a_reservation_that_fails_proposes_nothing() {
        #[derive(Debug)]
        struct Broken;
        impl IdReservation for Broken {
            fn reserve(&self, _: u64) -> Result<(), String> {
                Err("disk full".into())
            }
        }
        let p = Proposals::from(SessionId(1)).reserving(Arc::new(Broken));
        assert_eq!(p.propose(SpawnKey(1)), Err("disk full".to_owned()));
    }

    #[tokio::test]
    async fn retried_spawns_of_one_key_propose_the_same_session_and_later_keys_go_above() {
        let q = Arc::new(CommandQueue::new().numbering_from(SessionId(40)));
        let agent = AgentType::new("coder", 1000);
        let spawn = |key| {
            let (q, agent) = (q.clone(), agent.clone());
            tokio::spawn(async move { q.spawn(&agent, SpawnKey(key)).await })
        };
        let proposed = |c: &Command| match c.op {
            CommandOp::Spawn { session, .. } => session,
            _ => panic!("not a spawn"),
        };
        let failing = spawn(1);
        let c = q
            .poll(1, Duration::from_secs(5), Duration::from_secs(30))
            .await;
        assert_eq!(proposed(&c[0]), SessionId(40));
        let transient = CommandResult {
            lease: c[0].lease,
            ok: None,
            error: Some(ResultError {
                kind: ErrorKind::Transient,
                message: "busy".into(),
            }),
        };
        q.answer(c[0].id, transient).unwrap();
        assert!(failing.await.unwrap().unwrap_err().is_retryable());
        let retry = spawn(1);
        let c = q
            .poll(1, Duration::from_secs(5), Duration::from_secs(30))
            .await;
        assert_eq!(
            proposed(&c[0]),
            SessionId(40),
            "the same key, the same proposal"
        );
        // The orchestrator answered with an id of its own: later proposals go above it.
        q.answer(c[0].id, ok(serde_json::json!({"session": 57})))
            .unwrap();
        assert_eq!(retry.await.unwrap().unwrap(), SessionId(57));
        let next = spawn(2);
        let c = q
            .poll(1, Duration::from_secs(5), Duration::from_secs(30))
            .await;
        assert_eq!(proposed(&c[0]), SessionId(58));
        next.abort();
    }
}

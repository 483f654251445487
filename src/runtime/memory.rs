//! [`MemoryRuntime`]: a complete agent runtime in memory, for tests, examples and simulation.
//!
//! Each simulated session has a context size that the caller grows ([`MemoryRuntime::grow`])
//! as its agent "works". Summaries follow a size model; every operation can be given a
//! latency; failures can be injected by script ("the 2nd spawn fails") or at random with a
//! seed. The runtime counts its calls and the peak number of concurrent summarise calls, so
//! tests can assert on them, and lets them await a count or a state
//! ([`MemoryRuntime::wait_calls`], [`MemoryRuntime::wait_until`]) instead of polling for it.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{AgentRuntime, RuntimeError};
use crate::usage::{Usage, UsageSource};
use crate::vocab::{AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, WorkItem};

/// The runtime operations, for latencies, faults and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeOp {
    /// [`AgentRuntime::summarise`].
    Summarise,
    /// [`AgentRuntime::replace_history`].
    ReplaceHistory,
    /// [`AgentRuntime::close`].
    Close,
    /// [`AgentRuntime::spawn`].
    Spawn,
    /// [`AgentRuntime::assign`].
    Assign,
    /// [`AgentRuntime::usage`].
    Usage,
}

impl RuntimeOp {
    const ALL: [RuntimeOp; 6] = [
        RuntimeOp::Summarise,
        RuntimeOp::ReplaceHistory,
        RuntimeOp::Close,
        RuntimeOp::Spawn,
        RuntimeOp::Assign,
        RuntimeOp::Usage,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The call fails with an error that may pass on retry.
    Transient,
    /// The call fails with an error that will not pass on retry.
    Permanent,
    /// The call panics (to test that a crashed session is noticed).
    Panic,
    /// The call never returns (to test deadlines).
    Hang,
}

/// A scripted fault: calls number `calls` (1-based, counted per operation) of `op` fail.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The operation.
    pub op: RuntimeOp,
    /// Which calls of it, 1-based.
    pub calls: RangeInclusive<u64>,
    /// What happens.
    pub kind: FaultKind,
}

/// How big a summary is: `clamp(ratio * (used - base), min, max)` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryModel {
    /// Share of the session's own conversation (above its base) kept in a summary.
    pub ratio: f64,
    /// Smallest summary.
    pub min_tokens: u64,
    /// Largest summary.
    pub max_tokens: u64,
}

impl Default for SummaryModel {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            min_tokens: 20,
            max_tokens: 4000,
        }
    }
}

/// Settings of a [`MemoryRuntime`].
#[derive(Debug, Clone, Default)]
pub struct MemoryConfig {
    /// Latency of each operation (zero by default).
    pub latency: HashMap<RuntimeOp, Duration>,
    /// Summary sizes.
    pub summary: SummaryModel,
    /// Tokens a fresh session starts with (system prompt), before its work item.
    pub base_tokens: u64,
    /// Scripted faults.
    pub faults: Vec<Fault>,
    /// Share of calls (any operation) that fail transiently at random, and the seed. The same
    /// seed fails the same calls of the same work items, whatever the timing.
    pub random_failures: Option<(f64, u64)>,
}

/// A simulated session, as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSession {
    /// Its agent type's name.
    pub agent_type: String,
    /// Its window.
    pub window: u64,
    /// Tokens in use now.
    pub used: u64,
    /// Tokens it started with (system prompt, work item and handoff).
    pub base: u64,
    /// The work item it holds.
    pub item: Option<WorkItem>,
    /// The handoff it was given.
    pub handoff: Option<Handoff>,
    /// Whether it was closed.
    pub closed: bool,
    /// Histories replaced so far.
    pub compactions: u32,
}

impl SimSession {
    /// Its usage as the provider would report it.
    fn usage(&self) -> Result<Usage, RuntimeError> {
        Usage::new(
            self.used.min(Usage::MAX_TOKENS),
            self.window,
            UsageSource::Reported,
        )
        .map_err(|e| RuntimeError::permanent(e.to_string()))
    }
}

/// The in-memory runtime. Cheap to share behind an `Arc`; all state is behind short locks
/// never held across an await.
#[derive(Debug)]
pub struct MemoryRuntime {
    /// Settings.
    config: MemoryConfig,
    /// Sessions by id.
    sessions: Mutex<HashMap<SessionId, SimSession>>,
    /// Spawns by key, so a repeated key returns the same session.
    spawned: Mutex<HashMap<SpawnKey, SessionId>>,
    /// The last id handed out.
    next_id: AtomicU64,
    /// Calls per operation, indexed by `RuntimeOp as usize`.
    calls: [AtomicU64; 6],
    /// Summarise calls running now.
    summarising: AtomicUsize,
    /// The most summarise calls ever running at once.
    peak_summarising: AtomicUsize,
    /// Calls so far per (operation, subject), for seeded random failures: a call fails when
    /// a hash of (seed, operation, subject, call number) falls below the rate, so the same
    /// seed fails the same calls however concurrent callers interleave.
    subject_calls: Mutex<HashMap<(RuntimeOp, u64), u64>>,
    /// Bumped whenever a call is counted, a call returns (or is dropped) and a session grows,
    /// so that [`wait_until`](MemoryRuntime::wait_until) re-checks its condition then, and
    /// only then.
    changed: watch::Sender<()>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

/// Bumps [`MemoryRuntime::changed`] when a call returns, fails, panics or is cancelled: held
/// for the whole of each call, so a waiter sees the call's effect.
struct Returned<'a>(&'a watch::Sender<()>);

impl Drop for Returned<'_> {
    fn drop(&mut self) {
        self.0.send_replace(());
    }
}

/// Decrements the in-flight summary count when a summarise call ends (or is cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MemoryRuntime {
    /// A runtime with these settings.
    pub fn new(config: MemoryConfig) -> Self {
        Self {
            config,
            sessions: Mutex::default(),
            spawned: Mutex::default(),
            next_id: AtomicU64::new(0),
            calls: Default::default(),
            summarising: AtomicUsize::new(0),
            peak_summarising: AtomicUsize::new(0),
            subject_calls: Mutex::default(),
            changed: watch::Sender::new(()),
        }
    }

    /// The same runtime, numbering its sessions from `first` (instead of 1): give it
    /// [`Journal::next_session_id`](crate::Journal::next_session_id) when it replaces agents
    /// that died with an earlier process, so that no id the journal knows is handed out again.
    pub fn numbering_from(self, first: crate::vocab::SessionId) -> Self {
        self.next_id
            .store(first.0.saturating_sub(1), Ordering::SeqCst);
        self
    }

    /// The agent "works": its context grows by `tokens`. Returns the new usage, to report.
    pub fn grow(&self, session: SessionId, tokens: u64) -> Result<Usage, RuntimeError> {
        let _changed = Returned(&self.changed);
        self.with_session(session, |s| {
            s.used = s.used.saturating_add(tokens);
            s.usage()
        })?
    }

    /// A copy of a session's simulated state.
    pub fn session(&self, session: SessionId) -> Option<SimSession> {
        self.sessions.lock().expect("lock").get(&session).cloned()
    }

    /// Every session ever spawned, closed ones included, by id.
    pub fn sessions(&self) -> Vec<(SessionId, SimSession)> {
        let mut all: Vec<_> = self
            .sessions
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// Ids of the sessions spawned and not closed, in order.
    pub fn open_sessions(&self) -> Vec<SessionId> {
        self.sessions()
            .into_iter()
            .filter(|(_, s)| !s.closed)
            .map(|(id, _)| id)
            .collect()
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: RuntimeOp) -> u64 {
        self.calls[op.index()].load(Ordering::SeqCst)
    }

    /// Waits until `op` has been called at least `n` times (counted as each call begins, as
    /// [`calls`](Self::calls) counts them: a call that never returns counts). For tests that
    /// must act while a call is under way, or once it has been made, without polling.
    pub async fn wait_calls(&self, op: RuntimeOp, n: u64) {
        self.wait_until(|rt| rt.calls(op) >= n).await;
    }

    /// Waits until `done` holds of the runtime. It is checked now, then again each time a call
    /// begins or returns (whatever its outcome) and each time a session grows, so a condition
    /// on the runtime's counters or its sessions' state ("session 2 is closed") is seen as soon
    /// as the call that made it true returns. No timeout: wrap it in one.
    pub async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        // Subscribed before the first check: a change after it marks the receiver, so none is
        // missed between a check and the wait.
        let mut changes = self.changed.subscribe();
        while !done(self) {
            // The sender lives in `self`, which outlives this borrow.
            let _ = changes.changed().await;
        }
    }

    /// Calls per operation, for reports.
    pub fn all_calls(&self) -> Vec<(RuntimeOp, u64)> {
        RuntimeOp::ALL
            .iter()
            .map(|op| (*op, self.calls(*op)))
            .collect()
    }

    /// The most summarise calls that were ever running at the same time.
    pub fn peak_concurrent_summaries(&self) -> usize {
        self.peak_summarising.load(Ordering::SeqCst)
    }

    fn with_session<T>(
        &self,
        id: SessionId,
        f: impl FnOnce(&mut SimSession) -> T,
    ) -> Result<T, RuntimeError> {
        let mut sessions = self.sessions.lock().expect("lock");
        match sessions.get_mut(&id) {
            Some(s) if !s.closed => Ok(f(s)),
            _ => Err(RuntimeError::UnknownSession(id)),
        }
    }

    /// What random faults are keyed by: the work item a session holds (stable across
    /// rotations and thread interleavings), else the session id.
    fn subject(&self, session: SessionId) -> u64 {
        let sessions = self.sessions.lock().expect("lock");
        match sessions.get(&session).and_then(|s| s.item.as_ref()) {
            Some(item) => item.id.0,
            None => session.0 | 1 << 63,
        }
    }

    /// Whether the random-failure model fails this call of `op` on `subject`: `Some(n)`, the
    /// call's number among the calls of `op` on `subject`, when it does.
    fn random_fault(&self, op: RuntimeOp, subject: u64) -> Option<u64> {
        let (rate, seed) = self.config.random_failures?;
        let n = {
            let mut calls = self.subject_calls.lock().expect("lock");
            let c = calls.entry((op, subject)).or_insert(0);
            *c += 1;
            *c
        };
        let z = crate::vocab::mix64(seed ^ subject.rotate_left(17) ^ (n << 8) ^ op as u64);
        (((z >> 11) as f64 / (1u64 << 53) as f64) < rate).then_some(n)
    }

    /// Counts the call, waits its latency, and applies any fault. Returns `Err` for a failing
    /// call; panics or hangs when told to.
    ///
    /// A scripted fault's message names the call by its number among all calls of `op` (what
    /// the script counts); a random fault's, by its number among the calls of `op` on
    /// `subject`, so that the message (which may end up in a fallback handoff, and so in a
    /// successor's size) is the same however the fleet's threads interleave.
    async fn enter(&self, op: RuntimeOp, subject: u64) -> Result<(), RuntimeError> {
        let n = self.calls[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.send_replace(());
        if let Some(d) = self.config.latency.get(&op).filter(|d| !d.is_zero()) {
            tokio::time::sleep(*d).await;
        }
        let scripted = self
            .config
            .faults
            .iter()
            .find(|f| f.op == op && f.calls.contains(&n))
            .map(|f| (f.kind, format!("injected fault: {op:?} call {n}")));
        let fault = scripted.or_else(|| {
            self.random_fault(op, subject).map(|k| {
                let message = format!("injected fault: {op:?} call {k} of its subject");
                (FaultKind::Transient, message)
            })
        });
        match fault {
            None => Ok(()),
            Some((FaultKind::Transient, message)) => Err(RuntimeError::transient(message)),
            Some((FaultKind::Permanent, message)) => Err(RuntimeError::permanent(message)),
            Some((FaultKind::Panic, _)) => panic!("injected panic: {op:?} call {n}"),
            Some((FaultKind::Hang, _)) => std::future::pending().await,
        }
    }
}

/// A rough token count for text the runtime makes up (4 characters a token).
fn tokens_of(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

#[async_trait]
impl AgentRuntime for MemoryRuntime {
    async fn summarise(
        &self,
        session: SessionId,
        purpose: SummaryPurpose,
    ) -> Result<Summary, RuntimeError> {
        let _returned = Returned(&self.changed);
        let now = self.summarising.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_summarising.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(&self.summarising);
        self.enter(RuntimeOp::Summarise, self.subject(session))
            .await?;
        let m = self.config.summary;
        self.with_session(session, |s| {
            let own = s.used.saturating_sub(s.base) as f64;
            let tokens = ((own * m.ratio) as u64).clamp(m.min_tokens, m.max_tokens.max(m.min_tokens));
            // Named by its work item, not its session: session ids depend on the order in
            // which the fleet's threads spawned, and this text may reach a fallback handoff,
            // whose size decides what the successor does.
            let of = s.item.as_ref().map_or_else(|| "no work item".to_string(), |i| format!("work item {}", i.id));
            Summary {
                text: format!("{purpose:?} summary of {of}: {tokens} tokens of completed work, patterns and decisions"),
                tokens,
            }
        })
    }

    async fn replace_history(
        &self,
        session: SessionId,
        summary: &Summary,
    ) -> Result<u64, RuntimeError> {
        let _returned = Returned(&self.changed);
        self.enter(RuntimeOp::ReplaceHistory, self.subject(session))
            .await?;
        self.with_session(session, |s| {
            s.used = s.base + summary.tokens;
            s.compactions += 1;
            s.used
        })
    }

    async fn close(&self, session: SessionId) -> Result<(), RuntimeError> {
        let _returned = Returned(&self.changed);
        self.enter(RuntimeOp::Close, self.subject(session)).await?;
        self.with_session(session, |s| s.closed = true)
    }

    async fn spawn(&self, agent: &AgentType, key: SpawnKey) -> Result<SessionId, RuntimeError> {
        let _returned = Returned(&self.changed);
        self.enter(RuntimeOp::Spawn, key.0).await?;
        let mut spawned = self.spawned.lock().expect("lock");
        if let Some(id) = spawned.get(&key) {
            return Ok(*id);
        }
        let id = SessionId(self.next_id.fetch_add(1, Ordering::SeqCst) + 1);
        spawned.insert(key, id);
        let base = self.config.base_tokens;
        self.sessions.lock().expect("lock").insert(
            id,
            SimSession {
                agent_type: agent.name.to_string(),
                window: agent.window,
                used: base,
                base,
                item: None,
                handoff: None,
                closed: false,
                compactions: 0,
            },
        );
        Ok(id)
    }

    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&Handoff>,
    ) -> Result<(), RuntimeError> {
        let _returned = Returned(&self.changed);
        // Keyed by the item being assigned: the new session holds no item yet, and its id
        // depends on the order in which the fleet's spawns happened.
        self.enter(RuntimeOp::Assign, item.id.0).await?;
        self.with_session(session, |s| {
            let added = tokens_of(&item.text) + handoff.map_or(0, |h| h.tokens);
            s.used += added;
            s.base += added;
            s.item = Some(item.clone());
            s.handoff = handoff.cloned();
        })
    }

    async fn usage(&self, session: SessionId) -> Result<Usage, RuntimeError> {
        let _returned = Returned(&self.changed);
        self.enter(RuntimeOp::Usage, self.subject(session)).await?;
        self.with_session(session, |s| s.usage())?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn agent() -> AgentType {
        AgentType::new("sonnet", 1000)
    }

    #[tokio::test]
    async fn wait_calls_returns_once_the_nth_call_has_begun_even_one_that_never_returns() {
        let rt = Arc::new(MemoryRuntime::new(MemoryConfig {
            faults: vec![Fault {
                op: RuntimeOp::Spawn,
                calls: 2..=2,
                kind: FaultKind::Hang,
            }],
            ..MemoryConfig::default()
        }));
        // Already true: returns at once.
        rt.wait_calls(RuntimeOp::Spawn, 0).await;
        let waiter = tokio::spawn({
            let rt = rt.clone();
            async move { rt.wait_calls(RuntimeOp::Spawn, 2).await }
        });
        rt.spawn(&agent(), SpawnKey(1)).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one call of two");
        let hanging = tokio::spawn({
            let rt = rt.clone();
            async move { rt.spawn(&agent(), SpawnKey(2)).await }
        });
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the second call woke the waiter")
            .unwrap();
        assert_eq!(rt.calls(RuntimeOp::Spawn), 2);
        assert!(!hanging.is_finished(), "the call itself still hangs");
        hanging.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_sees_a_call_s_effect_once_the_call_returns() {
        let rt = Arc::new(MemoryRuntime::new(MemoryConfig {
            latency: HashMap::from([(RuntimeOp::Close, Duration::from_millis(30))]),
            ..MemoryConfig::default()
        }));
        let s = rt.spawn(&agent(), SpawnKey(1)).await.unwrap();
        let closed = move |rt: &MemoryRuntime| rt.session(s).is_some_and(|s| s.closed);
        let waiter = tokio::spawn({
            let rt = rt.clone();
            async move { rt.wait_until(closed).await }
        });
        let closing = tokio::spawn({
            let rt = rt.clone();
            async move { rt.close(s).await }
        });
        // The close has begun (counted) but not taken effect: the waiter still waits.
        rt.wait_calls(RuntimeOp::Close, 1).await;
        assert!(!closed(&rt));
        assert!(!waiter.is_finished());
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the close's return woke the waiter")
            .unwrap();
        assert!(closed(&rt));
        closing.await.unwrap().unwrap();
    }
}

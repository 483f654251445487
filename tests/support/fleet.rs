//! A harness for fleet scenarios: a supervisor over a `MemoryRuntime`, with the event stream
//! collected and helpers to wait for what a scenario expects.
//!
//! Nothing here waits for a quiet spell: a scenario waits for the events it expects
//! ([`Harness::wait_for`], [`Harness::wait_until`]) or for an explicit condition on the
//! supervisor's inventory ([`Harness::quiet`]). Scenarios on one thread run on paused tokio time
//! ([`pause_clock`]), so that latencies, timeouts, retries and polls cost no wall time and fire
//! in the order of their deadlines, whatever the machine's load.

use std::sync::Arc;
use std::time::Duration;

use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::{
    AgentType, FleetEvent, Inventory, Phase, Place, SessionId, Supervisor, SupervisorConfig,
    SupervisorHandle, UsageSource, WorkItem, WorkItemId,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// A running fleet and everything it published so far.
pub struct Harness {
    pub runtime: Arc<MemoryRuntime>,
    pub supervisor: SupervisorHandle,
    events: UnboundedReceiver<FleetEvent>,
    pub log: Vec<FleetEvent>,
}

/// The agent type most scenarios use: a 1,000-token window.
pub fn agent(name: &str) -> AgentType {
    AgentType::new(name, 1000)
}

pub fn item(id: u64, agent_type: &str) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: agent_type.into(),
        text: format!("work item {id}: fix the flaky test in module {id}"),
    }
}

impl Harness {
    pub fn start(config: SupervisorConfig, memory: MemoryConfig, agents: Vec<AgentType>) -> Self {
        let runtime = Arc::new(MemoryRuntime::new(memory));
        Self::start_wrapped(config, runtime.clone(), runtime, agents)
    }

    /// Waits (up to 10 s) until an event matching `pred` arrives; returns it. Everything that
    /// arrived meanwhile is kept in `log`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&FleetEvent) -> bool) -> FleetEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let e = self.next(what, deadline).await;
            if pred(&e) {
                return e;
            }
        }
    }

    /// Waits (up to 10 s) until the whole log so far satisfies `pred`: a barrier on the events
    /// a scenario expects, which holds at once if they have all arrived already.
    pub async fn wait_until(&mut self, what: &str, pred: impl Fn(&[FleetEvent]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !pred(&self.log) {
            self.next(what, deadline).await;
        }
    }

    /// The next event, kept in `log`; panics with the log at `deadline` or if the stream ends.
    async fn next(&mut self, what: &str, deadline: tokio::time::Instant) -> FleetEvent {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(e)) => {
                self.log.push(e.clone());
                e
            }
            Ok(None) => panic!(
                "event stream closed while waiting for {what}; log: {:#?}",
                self.log
            ),
            Err(_) => panic!("timed out waiting for {what}; log: {:#?}", self.log),
        }
    }

    /// Keeps every event published so far, without waiting for more.
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.log.push(e);
        }
    }

    /// Waits (up to 60 s) until the supervisor's inventory shows a quiet fleet, and returns
    /// it: no start, rotation or close under way, and no session compacting or rotating. The
    /// condition is checked again on every event, and every millisecond besides, since a
    /// close that succeeds publishes nothing; on paused time the millisecond is virtual.
    pub async fn quiet(&mut self) -> Inventory {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.drain();
            let inv = self.inventory().await;
            if inv.in_flight == 0
                && inv
                    .sessions
                    .iter()
                    .all(|(_, _, p)| matches!(p, Phase::Normal | Phase::Closed))
            {
                return inv;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fleet never went quiet: {inv:?}"
            );
            if let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(1), self.events.recv()).await
            {
                self.log.push(e);
            }
        }
    }

    /// Lets `d` of virtual time pass on a paused clock, every timer due meanwhile firing in
    /// order: a scenario's way to show that nothing happens within `d` (time control, not a
    /// wait for something to happen).
    pub async fn elapse(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Waits for the session started for `item` (the next one, if it already had some).
    pub async fn started(&mut self, item: u64) -> SessionId {
        match self
            .wait_for("session start", |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == item))
            .await
        {
            FleetEvent::SessionStarted { session, .. } => session,
            _ => unreachable!(),
        }
    }

    /// Grows the session's simulated context to `used` tokens and reports it.
    pub async fn report(&self, session: SessionId, used: u64) {
        let now = self.runtime.session(session).expect("session exists").used;
        self.runtime
            .grow(session, used.saturating_sub(now))
            .unwrap();
        self.supervisor
            .report_usage(session, used, None, UsageSource::Reported)
            .await
            .unwrap();
    }

    pub async fn inventory(&self) -> Inventory {
        self.supervisor.inventory().await.unwrap()
    }

    pub async fn place(&self, item: u64) -> Place {
        self.inventory()
            .await
            .items
            .into_iter()
            .find(|(id, _)| id.0 == item)
            .map(|(_, p)| p)
            .expect("item is known")
    }
}

/// Checks that every work item is in exactly one consistent place and that the registry, the
/// runtime and the records agree. Call it when the fleet is quiet.
pub fn check_invariants(inv: &Inventory, runtime: &MemoryRuntime, log: &[FleetEvent]) {
    use std::collections::{HashMap, HashSet};
    // The registry and the item places point at each other.
    let mut holders: HashMap<WorkItemId, SessionId> = HashMap::new();
    for (session, item, _) in &inv.sessions {
        assert!(
            holders.insert(*item, *session).is_none(),
            "item {item} held by two sessions"
        );
        let place = &inv
            .items
            .iter()
            .find(|(id, _)| id == item)
            .expect("registered item")
            .1;
        assert!(
            matches!(place, Place::Live(s) | Place::Rotating(s) if s == session),
            "session {session} holds {item} but the item is {place:?}"
        );
    }
    for (id, place) in &inv.items {
        match place {
            Place::Live(s) | Place::Rotating(s) => {
                assert_eq!(
                    holders.get(id),
                    Some(s),
                    "item {id} is {place:?} but the registry disagrees"
                )
            }
            Place::Queued => assert!(
                inv.queue.contains(id),
                "item {id} is queued but not in the queue"
            ),
            _ => assert!(!holders.contains_key(id)),
        }
    }
    let queued: HashSet<_> = inv.queue.iter().collect();
    assert_eq!(queued.len(), inv.queue.len(), "an item is queued twice");
    // The runtime's open sessions are exactly the live ones.
    let live: Vec<SessionId> = inv.sessions.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        runtime.open_sessions(),
        live,
        "runtime sessions and registry differ"
    );
    // One record per compaction that took effect, and one per hand-over.
    let mut compactions: HashMap<SessionId, u32> = HashMap::new();
    let mut handed_over = HashSet::new();
    let mut rotated = HashSet::new();
    for e in log {
        match e {
            FleetEvent::Compaction(c) if c.success => {
                *compactions.entry(c.session).or_default() += 1
            }
            FleetEvent::Rotation(r) if r.success => {
                assert!(
                    rotated.insert(r.old_session),
                    "two successful rotations of {}",
                    r.old_session
                );
                let new = r
                    .new_session
                    .expect("a successful rotation has a successor");
                let sim = runtime.session(new).expect("the successor exists");
                assert_eq!(
                    sim.item.as_ref().map(|i| i.id),
                    Some(r.work_item),
                    "the successor holds the item"
                );
            }
            FleetEvent::Transition(t) if t.cause == baton::EventKind::HandedOver => {
                assert!(handed_over.insert(t.session));
            }
            _ => {}
        }
    }
    assert_eq!(
        rotated, handed_over,
        "every successful rotation was handed over, and only those"
    );
    for (session, sim) in runtime.sessions() {
        let recorded = compactions.get(&session).copied().unwrap_or(0);
        assert_eq!(
            recorded, sim.compactions,
            "compaction records of {session} vs histories replaced"
        );
    }
}

/// A `MemoryRuntime` whose usage polls panic for the sessions it is told to doom: a way to
/// crash a session's actor at a chosen moment (its poll runs inside the actor).
pub struct DoomedPolls {
    /// Does everything else.
    pub inner: Arc<MemoryRuntime>,
    /// Sessions whose next poll panics.
    pub doomed: std::sync::Mutex<std::collections::HashSet<SessionId>>,
}

#[async_trait::async_trait]
impl baton::AgentRuntime for DoomedPolls {
    async fn summarise(
        &self,
        session: SessionId,
        purpose: baton::SummaryPurpose,
    ) -> Result<baton::Summary, baton::RuntimeError> {
        self.inner.summarise(session, purpose).await
    }

    async fn replace_history(
        &self,
        session: SessionId,
        summary: &baton::Summary,
    ) -> Result<u64, baton::RuntimeError> {
        self.inner.replace_history(session, summary).await
    }

    async fn close(&self, session: SessionId) -> Result<(), baton::RuntimeError> {
        self.inner.close(session).await
    }

    async fn spawn(
        &self,
        agent: &AgentType,
        key: baton::SpawnKey,
    ) -> Result<SessionId, baton::RuntimeError> {
        self.inner.spawn(agent, key).await
    }

    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&baton::Handoff>,
    ) -> Result<(), baton::RuntimeError> {
        self.inner.assign(session, item, handoff).await
    }

    async fn usage(&self, session: SessionId) -> Result<baton::Usage, baton::RuntimeError> {
        if self.doomed.lock().unwrap().contains(&session) {
            panic!("doomed poll of {session}");
        }
        self.inner.usage(session).await
    }
}

impl Harness {
    /// A fleet over `outer`, a runtime that wraps `runtime` (which the harness inspects).
    pub fn start_wrapped(
        config: SupervisorConfig,
        runtime: Arc<MemoryRuntime>,
        outer: Arc<dyn baton::AgentRuntime>,
        agents: Vec<AgentType>,
    ) -> Self {
        let mut b = Supervisor::builder(outer).config(config);
        for a in agents {
            b = b.agent_type(a);
        }
        // Subscribed before the start: not one event can be missed.
        let events = b.subscribe();
        let supervisor = b.start();
        Self {
            runtime,
            supervisor,
            events,
            log: Vec::new(),
        }
    }
}

/// Pauses tokio's clock for a scenario whose fleet runs on the test's own thread (no shards, no
/// journal thread): timers then fire in deadline order as soon as every task waits, so a
/// latency, timeout, retry or poll costs no wall time and cannot be reordered by load.
pub fn pause_clock() {
    tokio::time::pause();
}

/// The event of `session` entering `phase`.
pub fn entered(session: SessionId, phase: Phase) -> impl Fn(&FleetEvent) -> bool {
    move |e| matches!(e, FleetEvent::Transition(t) if t.session == session && t.to == phase)
}

/// How many events of `log` match `pred`.
pub fn count(log: &[FleetEvent], pred: impl Fn(&FleetEvent) -> bool) -> usize {
    log.iter().filter(|e| pred(e)).count()
}

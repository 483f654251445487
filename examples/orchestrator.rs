//! A tokio orchestrator that embeds baton: its own agents (a toy `AgentRuntime`), a journal,
//! and one task per session. Kill it at any moment and start it again on the same journal: it
//! finishes every work item exactly once.
//!
//! Run: `cargo run --example orchestrator -- orchestrator.db [ITEMS]`, kill it (Ctrl-C, or
//! `kill -9`), run the same command again, then `cargo run -- log orchestrator.db items`.
//!
//! How it fits together, with nothing to poll and nothing to sleep on:
//!
//! * `Journal::open` then `journal.next_session_id()`: the first session id above every id the
//!   journal holds, so the toy runtime (whose agents die with the process) never hands out an
//!   id of a session the journal knows.
//! * `Supervisor::builder(..).journal(..)?` recovers what the journal says was unfinished;
//!   `builder.subscribe()` before `start()` sees every event, recovery's included.
//! * Each `SessionStarted` gets a task. The task reports its agent's usage after each turn
//!   with `report_and_settle`, which returns once any compaction is over (`Normal`), or the
//!   session has handed its item over (`Rotated`: the successor's own `SessionStarted` starts
//!   its task) or closed. When the item's work is finished, the task closes the session: the
//!   item is done.
//! * Every event is durable before it is published, so an item reported done here is done in
//!   the journal, and a restarted orchestrator never does it again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{
    AgentRuntime, AgentType, FleetEvent, Handoff, Journal, Place, RuntimeError, SessionId, Settled,
    SpawnKey, Summary, SummaryPurpose, Supervisor, SupervisorConfig, SupervisorError,
    SupervisorHandle, UsageSource, WorkItem, WorkItemId,
};

/// One toy agent: a context that grows with each turn.
struct Agent {
    /// Tokens in its context.
    used: u64,
    /// Its work item, once assigned.
    item: Option<WorkItemId>,
}

/// The toy agents: they live in this process, so they die with it, as a real orchestrator's
/// in-process agents would.
struct ToyAgents {
    /// The next session id to hand out.
    next_id: AtomicU64,
    /// Live agents.
    agents: Mutex<HashMap<SessionId, Agent>>,
    /// Sessions by spawn key: a spawn repeated with the same key returns the same session.
    spawned: Mutex<HashMap<SpawnKey, SessionId>>,
}

/// Tokens every fresh context starts with (system prompt, work item).
const BASE: u64 = 300;

impl ToyAgents {
    fn new(first_id: SessionId) -> Self {
        Self {
            next_id: AtomicU64::new(first_id.0),
            agents: Mutex::default(),
            spawned: Mutex::default(),
        }
    }

    /// One turn of the agent's work: its context grows by `tokens`. Returns the new size.
    fn turn(&self, session: SessionId, tokens: u64) -> Result<u64, RuntimeError> {
        let mut agents = self.agents.lock().expect("lock");
        let agent = agents
            .get_mut(&session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        agent.used += tokens;
        Ok(agent.used)
    }
}

#[baton::async_trait]
impl AgentRuntime for ToyAgents {
    async fn summarise(
        &self,
        session: SessionId,
        _: SummaryPurpose,
    ) -> Result<Summary, RuntimeError> {
        tokio::task::yield_now().await; // an agent thinking
        let agents = self.agents.lock().expect("lock");
        let agent = agents
            .get(&session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        let tokens = (agent.used - BASE) / 3;
        Ok(Summary {
            text: format!("{session} worked on {:?}", agent.item),
            tokens,
        })
    }

    async fn replace_history(
        &self,
        session: SessionId,
        summary: &Summary,
    ) -> Result<u64, RuntimeError> {
        let mut agents = self.agents.lock().expect("lock");
        let agent = agents
            .get_mut(&session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        agent.used = BASE + summary.tokens;
        Ok(agent.used)
    }

    async fn close(&self, session: SessionId) -> Result<(), RuntimeError> {
        match self.agents.lock().expect("lock").remove(&session) {
            Some(_) => Ok(()),
            None => Err(RuntimeError::UnknownSession(session)),
        }
    }

    async fn spawn(&self, _: &AgentType, key: SpawnKey) -> Result<SessionId, RuntimeError> {
        let mut spawned = self.spawned.lock().expect("lock");
        if let Some(session) = spawned.get(&key) {
            return Ok(*session);
        }
        let session = SessionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        spawned.insert(key, session);
        self.agents.lock().expect("lock").insert(
            session,
            Agent {
                used: BASE,
                item: None,
            },
        );
        Ok(session)
    }

    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&Handoff>,
    ) -> Result<(), RuntimeError> {
        let mut agents = self.agents.lock().expect("lock");
        let agent = agents
            .get_mut(&session)
            .ok_or(RuntimeError::UnknownSession(session))?;
        agent.item = Some(item.id);
        agent.used += handoff.map_or(0, |h| h.tokens);
        Ok(())
    }
}

/// Turns of work item `id` needs, in all (its sessions share them).
fn turns_needed(id: WorkItemId) -> u64 {
    20 + (id.0 * 7) % 25
}

/// Drives one session until its item's work is finished (then closes it: the item is done),
/// or until baton moves the item on (a rotation: the successor gets its own task).
async fn drive(
    fleet: SupervisorHandle,
    agents: Arc<ToyAgents>,
    progress: Arc<Mutex<HashMap<WorkItemId, u64>>>,
    session: SessionId,
    item: WorkItemId,
) {
    // Registered before its start was published: found at once, unless it already ended.
    let Some(handle) = fleet.session(session).await else {
        return;
    };
    loop {
        let done = {
            let mut progress = progress.lock().expect("lock");
            let turns = progress.entry(item).or_default();
            *turns += 1;
            *turns >= turns_needed(item)
        };
        if done {
            handle.close();
            return;
        }
        let tokens = 150 + (session.0 * 31 + item.0 * 17) % 200;
        let Ok(used) = agents.turn(session, tokens) else {
            return;
        };
        match handle
            .report_and_settle(used, None, UsageSource::Reported)
            .await
        {
            Ok(Settled::Normal) => {}
            Ok(Settled::Rotated { .. } | Settled::Closed) | Err(_) => return,
        }
    }
}

/// Runs the orchestrator on the journal at `path` until every one of `items` work items is
/// done (those a previous run finished included); returns the items this run finished.
pub async fn run(path: &Path, items: u64) -> Result<Vec<WorkItemId>, Box<dyn std::error::Error>> {
    let journal = Journal::open(path)?;
    let agents = Arc::new(ToyAgents::new(journal.next_session_id()?));
    let builder = Supervisor::builder(agents.clone())
        .config(SupervisorConfig {
            max_sessions: 4,
            ..SupervisorConfig::default()
        })
        .agent_type(AgentType::new("coder", 4_000))
        .journal(journal)?;
    let mut events = builder.subscribe(); // before start: nothing is missed
    let fleet = builder.start();

    for id in 1..=items {
        let item = WorkItem {
            id: WorkItemId(id),
            agent_type: "coder".into(),
            text: format!("issue #{id}"),
        };
        match fleet.submit(item).await {
            Ok(()) | Err(SupervisorError::DuplicateWorkItem(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut left: u64 = fleet
        .inventory()
        .await?
        .items
        .iter()
        .filter(|(_, place)| !matches!(place, Place::Done(_) | Place::Dead(_)))
        .count() as u64;
    let progress = Arc::new(Mutex::new(HashMap::new()));
    let mut finished = Vec::new();
    while left > 0 {
        let Some(event) = events.recv().await else {
            break;
        };
        match event {
            FleetEvent::SessionStarted {
                session, work_item, ..
            } => {
                tokio::spawn(drive(
                    fleet.clone(),
                    agents.clone(),
                    progress.clone(),
                    session,
                    work_item,
                ));
            }
            FleetEvent::WorkItemDone { work_item, session } => {
                println!("done {work_item} ({session})");
                finished.push(work_item);
                left -= 1;
            }
            FleetEvent::DeadLetter { work_item, reason } => {
                println!("dead {work_item}: {reason}");
                left -= 1;
            }
            FleetEvent::Rotation(r) => println!(
                "rotated {} -> {:?} for {} ({})",
                r.old_session, r.new_session, r.work_item, r.reason
            ),
            FleetEvent::Recovered { work_item, outcome } => {
                println!("recovered {work_item}: {outcome:?}")
            }
            _ => {}
        }
    }
    fleet.shutdown(Duration::from_secs(10)).await;
    Ok(finished)
}

#[allow(dead_code)] // (a test includes this file as a module and calls `run`)
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map_or("orchestrator.db", String::as_str);
    let items = args.get(2).map_or(Ok(12), |n| n.parse())?;
    let finished = run(Path::new(path), items).await?;
    println!(
        "all {items} work items are done ({} in this run)",
        finished.len()
    );
    Ok(())
}

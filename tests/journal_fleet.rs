//! The supervisor with a journal: what it writes, and how a restarted supervisor recovers.
//!
//! Restarts here are in-process: a supervisor runs on its own actix system in its own thread,
//! and is "crashed" by dropping that system with work under way (a runtime call that never
//! returns holds a rotation or a compaction at the chosen step). The runtime, like real agents,
//! outlives it; a second supervisor opens the same journal file over the same runtime. (The
//! SIGKILL tests in `journal_crash.rs` do the same across processes.)

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton::journal::{EndReason, Filter, SessionState, WorkItemPlace};
use baton::runtime::memory::{Fault, FaultKind, MemoryConfig, MemoryRuntime, RuntimeOp};
use baton::{
    FleetEvent, Inventory, Journal, JournalError, Phase, Place, RecoveryOutcome, RotationStep,
    SessionId, Supervisor, SupervisorConfig, SupervisorError, SupervisorHandle, UsageSource,
    WorkItemId,
};
use support::fleet::{agent, item};
use support::stores::{self, Store};
use tokio::sync::mpsc::UnboundedReceiver;

fn config() -> SupervisorConfig {
    SupervisorConfig {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        ..SupervisorConfig::default()
    }
}

fn memory(faults: Vec<Fault>) -> Arc<MemoryRuntime> {
    Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        faults,
        ..MemoryConfig::default()
    }))
}

fn hang(op: RuntimeOp, call: u64) -> Fault {
    Fault {
        op,
        calls: call..=call,
        kind: FaultKind::Hang,
    }
}

fn start(
    runtime: &Arc<MemoryRuntime>,
    journal: Journal,
    config: SupervisorConfig,
) -> SupervisorHandle {
    Supervisor::builder(runtime.clone())
        .config(config)
        .agent_type(agent("sonnet"))
        .journal(journal)
        .expect("the journal reads")
        .start()
}

/// Runs `f` on a fresh actix system in its own thread; when `f` returns the system is dropped
/// with whatever was still under way: a crash, as far as baton's state is concerned.
fn on_a_system<T: Send + 'static, Fut: Future<Output = T> + 'static>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    std::thread::spawn(move || actix::System::new().block_on(f()))
        .join()
        .expect("the system's thread")
}

async fn wait_for(
    events: &mut UnboundedReceiver<FleetEvent>,
    what: &str,
    pred: impl Fn(&FleetEvent) -> bool,
) -> Vec<FleetEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => {
                let done = pred(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            _ => panic!("no {what}; saw {seen:#?}"),
        }
    }
}

async fn started(events: &mut UnboundedReceiver<FleetEvent>, id: u64) -> SessionId {
    let seen = wait_for(
        events,
        "session start",
        |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == id),
    )
    .await;
    match seen.last() {
        Some(FleetEvent::SessionStarted { session, .. }) => *session,
        _ => unreachable!(),
    }
}

async fn report(sup: &SupervisorHandle, runtime: &MemoryRuntime, s: SessionId, used: u64) {
    let now = runtime.session(s).unwrap().used;
    runtime.grow(s, used.saturating_sub(now)).unwrap();
    sup.report_usage(s, used, None, UsageSource::Reported)
        .await
        .unwrap();
}

/// Waits (bounded) until the runtime has been called `n` times for `op`: the call has begun.
async fn calls(rt: &MemoryRuntime, op: RuntimeOp, n: u64) {
    tokio::time::timeout(Duration::from_secs(10), rt.wait_calls(op, n))
        .await
        .unwrap_or_else(|_| panic!("{op:?} was never called {n} times"));
}

/// Waits (bounded) until the runtime has closed `session`.
async fn closed_at_runtime(rt: &MemoryRuntime, session: SessionId) {
    let closed = move |rt: &MemoryRuntime| rt.session(session).is_some_and(|s| s.closed);
    tokio::time::timeout(Duration::from_secs(10), rt.wait_until(closed))
        .await
        .unwrap_or_else(|_| panic!("{session} was never closed at the runtime"));
}

/// Starts a (restarted) fleet subscribed from its first event, so that recovery's events are
/// all seen (a subscription made after `start` may miss them).
fn start_subscribed(
    runtime: &Arc<MemoryRuntime>,
    journal: Journal,
) -> (SupervisorHandle, UnboundedReceiver<FleetEvent>) {
    let builder = Supervisor::builder(runtime.clone())
        .config(config())
        .agent_type(agent("sonnet"))
        .journal(journal)
        .expect("the journal reads");
    let events = builder.subscribe();
    (builder.start(), events)
}

/// Everything the fleet published before this call: an inventory (a round-trip with the
/// supervisor, which publishes recovery's events before it handles any message), then a flush
/// of the journal (which delivers every committed event before it answers).
async fn published_so_far(
    sup: &SupervisorHandle,
    journal: &Journal,
    events: &mut UnboundedReceiver<FleetEvent>,
    log: &mut Vec<FleetEvent>,
) -> Inventory {
    let inv = sup.inventory().await.unwrap();
    journal.flush().await.unwrap();
    while let Ok(e) = events.try_recv() {
        log.push(e);
    }
    inv
}

/// What the event stream says of a fleet, to tell when it has gone quiet: every work item held
/// by a Normal session (or given up), no compaction or rotation without its record, and every
/// session that no longer holds an item closed. Nothing is then under way, so nothing more is
/// published until the fleet is told something.
#[derive(Default)]
struct Quiet {
    /// Each work item's holder, from its latest start; none while it waits for a new one.
    holder: HashMap<WorkItemId, SessionId>,
    /// Each announced session's phase, from its transitions.
    phase: HashMap<SessionId, Phase>,
    /// Sessions that closed or crashed.
    ended: HashSet<SessionId>,
    /// Sessions whose compaction began and is not yet recorded.
    compacting: HashSet<SessionId>,
    /// Sessions whose rotation began and is not yet recorded.
    rotating: HashSet<SessionId>,
    /// Items given up.
    dead: HashSet<WorkItemId>,
}

impl Quiet {
    fn see(&mut self, e: &FleetEvent) {
        match e {
            FleetEvent::SessionStarted {
                session, work_item, ..
            } => {
                self.holder.insert(*work_item, *session);
                self.phase.insert(*session, Phase::Normal);
            }
            FleetEvent::Transition(t) => {
                self.phase.insert(t.session, t.to);
                match t.to {
                    Phase::Compacting => self.compacting.insert(t.session),
                    Phase::Rotating => self.rotating.insert(t.session),
                    Phase::Closed => self.ended.insert(t.session),
                    Phase::Normal => false,
                };
            }
            FleetEvent::Compaction(c) => {
                self.compacting.remove(&c.session);
            }
            FleetEvent::Rotation(r) => {
                self.rotating.remove(&r.old_session);
            }
            FleetEvent::Crashed {
                session, work_item, ..
            } => {
                self.ended.insert(*session);
                self.holder.remove(work_item);
            }
            FleetEvent::WorkItemRequeued { work_item, .. } => {
                self.holder.remove(work_item);
            }
            FleetEvent::DeadLetter { work_item, .. } => {
                self.holder.remove(work_item);
                self.dead.insert(*work_item);
            }
            _ => {}
        }
    }

    fn holds(&self, items: u64) -> bool {
        let held: HashSet<SessionId> = self.holder.values().copied().collect();
        (1..=items).map(WorkItemId).all(|id| {
            self.dead.contains(&id)
                || self.holder.get(&id).is_some_and(|s| {
                    self.phase.get(s) == Some(&Phase::Normal) && !self.ended.contains(s)
                })
        }) && self.compacting.is_empty()
            && self.rotating.is_empty()
            && self
                .phase
                .keys()
                .all(|s| held.contains(s) || self.ended.contains(s))
    }

    /// The sessions holding items, in id order.
    fn holders(&self) -> Vec<SessionId> {
        let mut all: Vec<SessionId> = self.holder.values().copied().collect();
        all.sort();
        all
    }

    /// Receives events (into `log`) until the fleet of `items` items is quiet.
    async fn wait(
        &mut self,
        items: u64,
        events: &mut UnboundedReceiver<FleetEvent>,
        log: &mut Vec<FleetEvent>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.holds(items) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(e)) => {
                    self.see(&e);
                    log.push(e);
                }
                _ => panic!(
                    "never quiet: holders {:?}, compacting {:?}, rotating {:?}",
                    self.holder, self.compacting, self.rotating
                ),
            }
        }
    }
}

fn recovered(log: &[FleetEvent]) -> Vec<(WorkItemId, RecoveryOutcome)> {
    log.iter()
        .filter_map(|e| match e {
            FleetEvent::Recovered { work_item, outcome } => Some((*work_item, outcome.clone())),
            _ => None,
        })
        .collect()
}

/// Starts item 1 on a journaled fleet over `rt` (whose second assign hangs) and drives its
/// session to 96%, returning once the rotation is durable at `spawned` and the successor's
/// assign call has begun: the supervisor, the rotating session and the subscription.
async fn stuck_at_spawned(
    rt: &Arc<MemoryRuntime>,
    journal: &Journal,
) -> (SupervisorHandle, SessionId, UnboundedReceiver<FleetEvent>) {
    let sup = start(rt, journal.clone(), config());
    let mut events = sup.subscribe();
    sup.submit(item(1, "sonnet")).await.unwrap();
    let s1 = started(&mut events, 1).await;
    report(&sup, rt, s1, 960).await;
    calls(rt, RuntimeOp::Assign, 2).await;
    // The successor's id was durable before its assign was called.
    let rotations = journal
        .read(|v| v.rotations(&Filter::default()))
        .await
        .unwrap();
    assert_eq!(rotations[0].step, RotationStep::Spawned, "{rotations:?}");
    (sup, s1, events)
}

fn journal_file(dir: &Path) -> Journal {
    stores::journal(dir)
}

#[actix::test]
async fn a_rotation_s_steps_are_durable_before_its_successor_starts() {
    let runtime = memory(vec![]);
    let journal = Journal::in_memory().unwrap();
    let sup = start(&runtime, journal.clone(), config());
    let mut events = sup.subscribe();
    sup.submit(item(1, "sonnet")).await.unwrap();
    let old = started(&mut events, 1).await;
    report(&sup, &runtime, old, 960).await;
    wait_for(&mut events, "rotation", |e| {
        matches!(e, FleetEvent::Rotation(_))
    })
    .await;
    wait_for(
        &mut events,
        "the old session's close",
        |e| matches!(e, FleetEvent::Transition(t) if t.to == Phase::Closed),
    )
    .await;
    journal.flush().await.unwrap();
    let log = journal
        .read(|v| v.events(&Filter::default()))
        .await
        .unwrap();
    let kinds: Vec<String> = log
        .iter()
        .map(|e| match (&e.kind[..], e.session) {
            (kind, Some(s)) => format!("{kind} s{}", s.0),
            (kind, None) => kind.to_string(),
        })
        .collect();
    support::snapshot_settings().bind(|| {
        insta::assert_yaml_snapshot!("journal_fleet_rotation_event_log", kinds);
    });
    let rotations = journal
        .read(|v| v.rotations(&Filter::default()))
        .await
        .unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].step, RotationStep::Done);
    let items = journal
        .read(|v| v.work_items(&Filter::default()))
        .await
        .unwrap();
    assert_eq!(
        (items[0].place, items[0].session),
        (WorkItemPlace::Live, rotations[0].new_session)
    );
    assert_eq!(items[0].epoch, 2, "one lease per holder");
}

#[actix::test]
async fn the_journal_agrees_with_the_event_stream_and_the_registry_after_a_busy_run() {
    the_journal_agrees_after_a_busy_run(&Store::Sqlite).await;
}

#[actix::test]
async fn on_postgresql_the_journal_agrees_with_the_event_stream_and_the_registry_after_a_busy_run()
{
    if let Some(store) = Store::postgres() {
        the_journal_agrees_after_a_busy_run(&store).await;
    }
}

async fn the_journal_agrees_after_a_busy_run(store: &Store) {
    const ITEMS: u64 = 60;
    let dir = store.dir();
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        random_failures: Some((0.03, 11)),
        ..MemoryConfig::default()
    }));
    let journal = journal_file(dir.path());
    let sup = start(
        &runtime,
        journal.clone(),
        SupervisorConfig {
            max_attempts: 1_000,
            shards: 2,
            ..config()
        },
    );
    let mut events = sup.subscribe();
    for i in 1..=ITEMS {
        sup.submit(item(i, "sonnet")).await.unwrap();
    }
    let mut log = Vec::new();
    let mut quiet = Quiet::default();
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..12 {
        // Every item held by a Normal session, nothing under way.
        quiet.wait(ITEMS, &mut events, &mut log).await;
        let mut readings = Vec::new();
        for s in quiet.holders() {
            if runtime.session(s).is_none() {
                continue;
            }
            let used: u64 = [400, 850, 960][rng.usize(0..3)];
            let now = runtime.session(s).unwrap().used;
            if runtime.grow(s, used.saturating_sub(now)).is_ok() {
                let Some(handle) = sup.session(s).await else {
                    continue;
                };
                readings.push(async move {
                    // Until the session is Normal again, handed over or closed.
                    let _ = handle
                        .report_and_settle(used.max(now), None, UsageSource::Reported)
                        .await;
                });
            }
        }
        futures_util::future::join_all(readings).await;
        // What the readings caused is published: delivered once durable.
        journal.flush().await.unwrap();
        while let Ok(e) = events.try_recv() {
            quiet.see(&e);
            log.push(e);
        }
    }
    // The events that end the work (restarts, closes of the rotated-out sessions, records),
    // then the registry.
    quiet.wait(ITEMS, &mut events, &mut log).await;
    let inv = sup.inventory().await.unwrap();
    journal.flush().await.unwrap();
    let (items, rotations, compactions, rows) = journal
        .read(|v| {
            let all = Filter::default();
            Ok((
                v.work_items(&all)?,
                v.rotations(&all)?,
                v.compactions(&all)?,
                v.events(&all)?,
            ))
        })
        .await
        .unwrap();
    // Anything committed before the read was delivered before this flush answered.
    journal.flush().await.unwrap();
    while let Ok(e) = events.try_recv() {
        log.push(e);
    }
    // Places.
    let places: HashMap<_, _> = inv.items.iter().cloned().collect();
    assert_eq!(items.len() as u64, ITEMS);
    for row in &items {
        let expected = match &places[&row.work_item] {
            Place::Queued => (WorkItemPlace::Queued, None),
            Place::Live(s) => (WorkItemPlace::Live, Some(*s)),
            Place::Done(s) => (WorkItemPlace::Done, Some(*s)),
            Place::Dead(_) => (WorkItemPlace::Dead, None),
            other => panic!("{other:?}"),
        };
        assert_eq!(row.place, expected.0, "{row:?}");
        if expected.1.is_some() {
            assert_eq!(row.session, expected.1, "{row:?}");
        }
    }
    // Every rotation and compaction published is journaled exactly once, and nothing else.
    let published_rotations: HashSet<u64> = log
        .iter()
        .filter_map(|e| match e {
            FleetEvent::Rotation(r) => Some(r.rotation.0),
            _ => None,
        })
        .collect();
    assert!(
        published_rotations.len() > 10,
        "the run rotated: {}",
        published_rotations.len()
    );
    let journaled: HashSet<u64> = rotations.iter().map(|r| r.rotation.0).collect();
    assert_eq!(published_rotations, journaled);
    assert!(rotations.iter().all(|r| r.step.is_final()));
    let rotation_rows = rows.iter().filter(|r| r.kind == "rotation").count();
    assert_eq!(rotation_rows, journaled.len(), "one record per rotation");
    let published_compactions = log
        .iter()
        .filter(|e| matches!(e, FleetEvent::Compaction(_)))
        .count();
    assert_eq!(published_compactions, compactions.len());
    let published_transitions = log
        .iter()
        .filter(|e| matches!(e, FleetEvent::Transition(_)))
        .count();
    assert_eq!(
        published_transitions,
        rows.iter().filter(|r| r.kind == "transition").count()
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

fn a_restarted_supervisor_resumes_the_rotation_requeues_the_rest_and_says_so(store: &Store) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    // Spawn call 3 (item 1's successor) never returns.
    let runtime = memory(vec![hang(RuntimeOp::Spawn, 3)]);
    let rt = runtime.clone();
    let p = path.clone();
    let before = on_a_system(move || async move {
        let journal = journal_file(&p);
        let sup = start(
            &rt,
            journal.clone(),
            SupervisorConfig {
                max_sessions: 2,
                ..config()
            },
        );
        let mut events = sup.subscribe();
        for i in 1..=3 {
            sup.submit(item(i, "sonnet")).await.unwrap();
        }
        let s1 = started(&mut events, 1).await;
        started(&mut events, 2).await;
        report(&sup, &rt, s1, 960).await;
        // The hanging spawn has been entered: the crash comes after the call.
        calls(&rt, RuntimeOp::Spawn, 3).await;
        // The handoff was durable before the successor's spawn was called.
        let rotations = journal
            .read(|v| v.rotations(&Filter::default()))
            .await
            .unwrap();
        assert_eq!(rotations[0].step, RotationStep::Handoff, "{rotations:?}");
        sup.inventory().await.unwrap()
    });
    assert_eq!(before.items[0].1, Place::Rotating(SessionId(1)));
    assert_eq!(before.items[2].1, Place::Queued);

    let rt = runtime.clone();
    let (log, inv) = on_a_system(move || async move {
        let journal = journal_file(&path);
        let (sup, mut events) = start_subscribed(&rt, journal.clone());
        // The resumed rotation's record and the three items' starts (the successor's, and
        // the two requeued items').
        let mut log = Vec::new();
        let mut started = HashSet::new();
        let mut rotated = false;
        while !(rotated && started.len() == 3) {
            let seen = wait_for(&mut events, "the resumed rotation and the starts", |e| {
                matches!(
                    e,
                    FleetEvent::Rotation(_) | FleetEvent::SessionStarted { .. }
                )
            })
            .await;
            match seen.last() {
                Some(FleetEvent::SessionStarted { work_item, .. }) => {
                    started.insert(*work_item);
                }
                _ => rotated = true,
            }
            log.extend(seen);
        }
        // The rotation's old session and the lost one are closed at the runtime.
        closed_at_runtime(&rt, SessionId(1)).await;
        closed_at_runtime(&rt, SessionId(2)).await;
        let inv = published_so_far(&sup, &journal, &mut events, &mut log).await;
        (log, inv)
    });
    assert_eq!(
        recovered(&log),
        vec![
            (
                WorkItemId(1),
                RecoveryOutcome::RotationResumed {
                    rotation: baton::RotationId(1),
                    session: SessionId(1),
                    step: RotationStep::Handoff
                }
            ),
            (
                WorkItemId(2),
                RecoveryOutcome::Requeued {
                    session: SessionId(2)
                }
            ),
            (WorkItemId(3), RecoveryOutcome::Queued),
        ]
    );
    let FleetEvent::Rotation(r) = log
        .iter()
        .find(|e| matches!(e, FleetEvent::Rotation(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert!(r.success, "{r:?}");
    let successor = r.new_session.unwrap();
    assert_eq!(
        runtime.calls(RuntimeOp::Spawn),
        3 + 1 + 2,
        "one spawn for the successor, one per requeued item"
    );
    assert_eq!(inv.items[0].1, Place::Live(successor));
    assert!(matches!(inv.items[1].1, Place::Live(s) if s != SessionId(2)));
    assert!(matches!(inv.items[2].1, Place::Live(_)));
    assert!(runtime.session(SessionId(1)).unwrap().closed);
    assert!(
        runtime.session(SessionId(2)).unwrap().closed,
        "the lost session was closed"
    );
    let live: Vec<SessionId> = inv.sessions.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(runtime.open_sessions(), live, "no agent left open");
}

fn a_rotation_killed_after_its_successor_spawned_adopts_that_successor(store: &Store) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    // Assign call 2 (the successor's) never returns: the successor exists, unassigned.
    let runtime = memory(vec![hang(RuntimeOp::Assign, 2)]);
    let rt = runtime.clone();
    let p = path.clone();
    on_a_system(move || async move {
        stuck_at_spawned(&rt, &journal_file(&p)).await;
    });
    let rt = runtime.clone();
    let log = on_a_system(move || async move {
        let (_sup, mut events) = start_subscribed(&rt, journal_file(&path));
        wait_for(&mut events, "the resumed rotation", |e| {
            matches!(e, FleetEvent::Rotation(_))
        })
        .await
    });
    let FleetEvent::Rotation(r) = log.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(
        r.new_session,
        Some(SessionId(2)),
        "the successor spawned before the crash"
    );
    assert_eq!(runtime.calls(RuntimeOp::Spawn), 2, "and no other");
    assert_eq!(
        runtime.session(SessionId(2)).unwrap().item.unwrap().id,
        WorkItemId(1)
    );
}

fn a_compaction_cut_short_by_a_crash_is_recorded_as_interrupted(store: &Store) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    let runtime = memory(vec![hang(RuntimeOp::ReplaceHistory, 1)]);
    let rt = runtime.clone();
    let p = path.clone();
    on_a_system(move || async move {
        let journal = journal_file(&p);
        let sup = start(&rt, journal.clone(), config());
        let mut events = sup.subscribe();
        sup.submit(item(1, "sonnet")).await.unwrap();
        let s1 = started(&mut events, 1).await;
        report(&sup, &rt, s1, 850).await;
        calls(&rt, RuntimeOp::ReplaceHistory, 1).await;
        // The compaction's start was durable before the history was replaced.
        let sessions = journal
            .read(|v| v.sessions(&Filter::default()))
            .await
            .unwrap();
        assert_eq!(sessions[0].phase, Phase::Compacting, "{sessions:?}");
    });
    let rt = runtime.clone();
    let p = path.clone();
    let log = on_a_system(move || async move {
        let (_sup, mut events) = start_subscribed(&rt, journal_file(&p));
        wait_for(&mut events, "a new session", |e| {
            matches!(e, FleetEvent::SessionStarted { .. })
        })
        .await
    });
    let FleetEvent::Compaction(c) = &log[0] else {
        panic!("{log:#?}")
    };
    assert!(
        !c.success && c.error.as_deref().unwrap().starts_with("interrupted"),
        "{c:?}"
    );
    assert_eq!((c.session, c.before_tokens), (SessionId(1), 850));
    assert!(matches!(
        &log[1],
        FleetEvent::Recovered {
            outcome: RecoveryOutcome::Requeued {
                session: SessionId(1)
            },
            ..
        }
    ));
    let reader = stores::reader(dir.path());
    let compactions = reader.view().compactions(&Filter::default()).unwrap();
    assert_eq!(compactions.len(), 1);
    assert_eq!(
        reader.view().sessions(&Filter::default()).unwrap()[0].end_reason,
        Some(EndReason::Lost)
    );
}

fn after_a_graceful_shutdown_a_restart_picks_every_item_up_again(store: &Store) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    let runtime = memory(vec![]);
    let rt = runtime.clone();
    let p = path.clone();
    on_a_system(move || async move {
        let sup = start(&rt, journal_file(&p), config());
        let mut events = sup.subscribe();
        for i in 1..=2 {
            sup.submit(item(i, "sonnet")).await.unwrap();
        }
        let s1 = started(&mut events, 1).await;
        started(&mut events, 2).await;
        sup.close(s1).await.unwrap();
        wait_for(&mut events, "item 1 done", |e| {
            matches!(e, FleetEvent::WorkItemDone { .. })
        })
        .await;
        assert!(sup.shutdown(Duration::from_secs(5)).await.clean);
    });
    let rt = runtime.clone();
    let (log, resubmitted, inv) = on_a_system(move || async move {
        let sup = start(&rt, journal_file(&path), config());
        let mut events = sup.subscribe();
        let log = wait_for(&mut events, "item 2 restarted", |e| {
            matches!(e, FleetEvent::SessionStarted { .. })
        })
        .await;
        let again = sup.submit(item(1, "sonnet")).await;
        // Item 2's session is registered before its start is announced.
        (log, again, sup.inventory().await.unwrap())
    });
    assert_eq!(
        recovered(&log),
        vec![(WorkItemId(2), RecoveryOutcome::Queued)]
    );
    assert_eq!(
        resubmitted,
        Err(SupervisorError::DuplicateWorkItem(WorkItemId(1)))
    );
    assert_eq!(inv.items[0].1, Place::Done(SessionId(1)));
    assert!(matches!(inv.items[1].1, Place::Live(s) if s.0 > 2));
    assert_eq!(runtime.open_sessions().len(), 1);
}

#[test]
fn a_journal_that_another_process_writes_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let _first = journal_file(dir.path());
    let e = Journal::open(dir.path().join("baton.db")).unwrap_err();
    assert!(matches!(e, JournalError::InUse { .. }), "{e}");
}

#[actix::test]
async fn a_full_journal_is_reported_once_and_the_fleet_goes_on_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = baton::JournalOptions {
        max_bytes: Some(48 * 1024),
        ..baton::JournalOptions::default()
    };
    let journal = Journal::open_with(dir.path().join("baton.db"), options).unwrap();
    let runtime = memory(vec![]);
    let generous = SupervisorConfig {
        rotation_budget: baton::supervisor::Budget {
            count: 1_000,
            period: Duration::from_secs(600),
        },
        ..config()
    };
    let sup = start(&runtime, journal.clone(), generous);
    let mut events = sup.subscribe();
    sup.submit(item(1, "sonnet")).await.unwrap();
    let mut session = started(&mut events, 1).await;
    let mut failed = 0;
    let mut rotations = 0;
    let mut rotations_after = 0;
    for _ in 0..80 {
        report(&sup, &runtime, session, 960).await;
        let seen = wait_for(&mut events, "rotation", |e| {
            matches!(e, FleetEvent::Rotation(_))
        })
        .await;
        failed += seen
            .iter()
            .filter(|e| matches!(e, FleetEvent::JournalFailed { .. }))
            .count();
        let Some(FleetEvent::Rotation(r)) = seen.last() else {
            unreachable!()
        };
        assert!(r.success, "rotations go on: {r:?}");
        rotations += 1;
        session = r.new_session.unwrap();
        if failed > 0 {
            rotations_after += 1;
            if rotations_after == 3 {
                break;
            }
        }
    }
    assert_eq!(failed, 1, "reported once");
    assert!(matches!(
        journal.failure(),
        Some(JournalError::DiskFull { .. })
    ));
    let refused = sup.submit(item(2, "sonnet")).await.unwrap_err();
    assert!(
        matches!(&refused, SupervisorError::Journal(JournalError::Failed(cause)) if matches!(**cause, JournalError::DiskFull { .. })),
        "{refused:?}"
    );
    sup.shutdown(Duration::from_secs(5)).await;
    // The file holds a consistent prefix: the item is where its last journaled rotation left it.
    let reader = stores::reader(dir.path());
    let journaled = reader.view().rotations(&Filter::default()).unwrap();
    assert!(
        !journaled.is_empty() && journaled.len() < rotations,
        "{} of {rotations}",
        journaled.len()
    );
    let last = journaled.last().unwrap();
    let row = &reader.view().work_items(&Filter::default()).unwrap()[0];
    match last.step {
        RotationStep::Done => assert_eq!(
            (row.place, row.session),
            (WorkItemPlace::Live, last.new_session)
        ),
        _ => assert_eq!(
            (row.place, row.session),
            (WorkItemPlace::Rotating, Some(last.old_session))
        ),
    }
}

/// How the work item leaves a rotation that is still under way (its successor spawned, the
/// successor's assign hanging) before the crash.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LeftBy {
    /// The orchestrator closes the rotating session: the item is done.
    Close,
    /// A shutdown closes it: the item goes back to the queue.
    Shutdown,
}

fn a_rotation_its_item_left_before_a_crash_is_recorded_failed_and_its_successor_closed(
    store: &Store,
) {
    for left_by in [LeftBy::Close, LeftBy::Shutdown] {
        let dir = store.dir();
        let path = dir.path().to_owned();
        // Assign call 2 (the successor's) never returns: the rotation stays at `spawned`.
        let runtime = memory(vec![hang(RuntimeOp::Assign, 2)]);
        let rt = runtime.clone();
        let p = path.clone();
        on_a_system(move || async move {
            let journal = journal_file(&p);
            let (sup, s1, mut events) = stuck_at_spawned(&rt, &journal).await;
            match left_by {
                LeftBy::Close => {
                    sup.close(s1).await.unwrap();
                    // Durable before it is delivered.
                    wait_for(&mut events, "the item done", |e| {
                        matches!(e, FleetEvent::WorkItemDone { .. })
                    })
                    .await;
                }
                LeftBy::Shutdown => {
                    // The hanging rotation keeps the shutdown from finishing: it times out.
                    let report = sup.shutdown(Duration::from_millis(200)).await;
                    assert!(!report.clean);
                }
            }
            journal.flush().await.unwrap();
            // The journal, as the crash leaves it: the item has left the rotation, which is
            // still at `spawned` with its successor recorded.
            let (items, rotations) = journal
                .read(|v| {
                    Ok((
                        v.work_items(&Filter::default())?,
                        v.rotations(&Filter::default())?,
                    ))
                })
                .await
                .unwrap();
            let expected = match left_by {
                LeftBy::Close => WorkItemPlace::Done,
                LeftBy::Shutdown => WorkItemPlace::Queued,
            };
            assert_eq!(items[0].place, expected, "{left_by:?}");
            assert_eq!(rotations[0].step, RotationStep::Spawned, "{left_by:?}");
        });
        let successor = SessionId(2);
        assert!(!runtime.session(successor).unwrap().closed);

        let rt = runtime.clone();
        let p = path.clone();
        let (log, inv) = on_a_system(move || async move {
            let journal = journal_file(&p);
            let (sup, mut events) = start_subscribed(&rt, journal.clone());
            let mut log = wait_for(&mut events, "the left-behind rotation's record", |e| {
                matches!(e, FleetEvent::Rotation(_))
            })
            .await;
            if left_by == LeftBy::Shutdown {
                log.extend(
                    wait_for(&mut events, "the item started again", |e| {
                        matches!(e, FleetEvent::SessionStarted { .. })
                    })
                    .await,
                );
            }
            // What the rotation left open is closed at the runtime.
            closed_at_runtime(&rt, SessionId(2)).await;
            closed_at_runtime(&rt, SessionId(1)).await;
            let inv = published_so_far(&sup, &journal, &mut events, &mut log).await;
            sup.shutdown(Duration::from_secs(5)).await;
            (log, inv)
        });
        let FleetEvent::Rotation(r) = log
            .iter()
            .find(|e| matches!(e, FleetEvent::Rotation(_)))
            .unwrap()
        else {
            unreachable!()
        };
        assert!(!r.success, "{left_by:?}: {r:?}");
        assert!(
            r.error.as_deref().unwrap().contains("left the rotation"),
            "{r:?}"
        );
        assert!(
            runtime.session(successor).unwrap().closed,
            "{left_by:?}: the recorded successor was closed at the runtime"
        );
        assert!(runtime.session(SessionId(1)).unwrap().closed, "{left_by:?}");
        match left_by {
            LeftBy::Close => {
                assert_eq!(inv.items[0].1, Place::Done(SessionId(1)));
                assert!(recovered(&log).is_empty(), "a done item is not recovered");
            }
            LeftBy::Shutdown => {
                assert!(
                    matches!(inv.items[0].1, Place::Live(s) if s.0 > 2),
                    "{:?}",
                    inv.items
                );
                assert_eq!(
                    recovered(&log),
                    vec![(WorkItemId(1), RecoveryOutcome::Queued)]
                );
            }
        }
        let reader = stores::reader(&path);
        let v = reader.view();
        let rotations = v.rotations(&Filter::default()).unwrap();
        assert_eq!(rotations[0].step, RotationStep::Failed, "{left_by:?}");
        assert_eq!(rotations[0].new_session, Some(successor));
        let sessions = v.sessions(&Filter::default()).unwrap();
        let row = sessions.iter().find(|s| s.session == successor).unwrap();
        assert_eq!(
            (row.state, row.end_reason),
            (SessionState::Closed, Some(EndReason::RotationFailed)),
            "{left_by:?}"
        );
        assert!(
            sessions.iter().all(|s| s.state == SessionState::Closed),
            "{left_by:?}: {sessions:?}"
        );
        assert!(
            runtime.open_sessions().is_empty(),
            "{left_by:?}: no agent left open"
        );
    }
}

fn a_start_that_finished_during_a_shutdown_is_not_adopted_again_after_a_restart(store: &Store) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    // Assign takes a while: the shutdown begins while the start is under way.
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        latency: HashMap::from([(RuntimeOp::Assign, Duration::from_millis(150))]),
        ..MemoryConfig::default()
    }));
    let rt = runtime.clone();
    let p = path.clone();
    on_a_system(move || async move {
        let sup = start(&rt, journal_file(&p), config());
        sup.submit(item(1, "sonnet")).await.unwrap();
        calls(&rt, RuntimeOp::Assign, 1).await;
        assert!(sup.shutdown(Duration::from_secs(5)).await.clean);
    });
    let first = SessionId(1);
    assert!(
        runtime.session(first).unwrap().closed,
        "the start's session was closed at shutdown"
    );
    let rt = runtime.clone();
    let p = path.clone();
    let (log, inv) = on_a_system(move || async move {
        let sup = start(&rt, journal_file(&p), config());
        let mut events = sup.subscribe();
        let log = wait_for(&mut events, "item 1 started", |e| {
            matches!(e, FleetEvent::SessionStarted { .. })
        })
        .await;
        // Its session is registered before its start is announced.
        let inv = sup.inventory().await.unwrap();
        sup.shutdown(Duration::from_secs(5)).await;
        (log, inv)
    });
    assert!(
        !log.iter()
            .any(|e| matches!(e, FleetEvent::WorkItemRequeued { .. })),
        "no failed start: {log:#?}"
    );
    let FleetEvent::SessionStarted { session, .. } = log.last().unwrap() else {
        unreachable!()
    };
    assert_ne!(*session, first, "a fresh session, not the closed one");
    assert_eq!(
        (
            runtime.calls(RuntimeOp::Spawn),
            runtime.calls(RuntimeOp::Assign)
        ),
        (2, 2),
        "one spawn and one assign per start"
    );
    assert!(matches!(inv.items[0].1, Place::Live(s) if s == *session));
    let reader = stores::reader(&path);
    let items = reader.view().work_items(&Filter::default()).unwrap();
    assert_eq!(items[0].attempts, 0, "no attempt was charged");
    let sessions = reader.view().sessions(&Filter::default()).unwrap();
    assert_eq!(
        sessions[0].end_reason,
        Some(EndReason::StartAbandoned),
        "{sessions:?}"
    );
}

fn a_restart_over_agents_that_died_closes_their_sessions_quietly_with_fresh_ids(store: &Store) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    let p = path.clone();
    on_a_system(move || async move {
        let journal = journal_file(&p);
        let rt = memory(vec![]);
        let sup = start(&rt, journal, config());
        let mut events = sup.subscribe();
        for i in 1..=3 {
            sup.submit(item(i, "sonnet")).await.unwrap();
        }
        for i in 1..=3 {
            started(&mut events, i).await;
        }
        // Dropped here with three live sessions: a crash; their agents die with it.
    });
    let (log, inv) = on_a_system(move || async move {
        let journal = journal_file(&path);
        let first = journal.next_session_id().unwrap();
        assert_eq!(first, SessionId(4), "above the three the journal holds");
        // A new runtime: it knows none of the old sessions, and numbers from `first`.
        let rt = Arc::new(
            MemoryRuntime::new(MemoryConfig {
                base_tokens: 100,
                ..MemoryConfig::default()
            })
            .numbering_from(first),
        );
        let builder = Supervisor::builder(rt.clone())
            .config(config())
            .agent_type(agent("sonnet"))
            .journal(journal.clone())
            .unwrap();
        let mut events = builder.subscribe();
        let sup = builder.start();
        let mut log = Vec::new();
        // The three items start again (in whatever order).
        for _ in 1..=3 {
            log.extend(
                wait_for(&mut events, "restart", |e| {
                    matches!(e, FleetEvent::SessionStarted { .. })
                })
                .await,
            );
        }
        // Each session is registered before its start is announced.
        let inv = sup.inventory().await.unwrap();
        // The shutdown waits for recovery's closes; the flush delivers what they published.
        sup.shutdown(Duration::from_secs(5)).await;
        journal.flush().await.unwrap();
        while let Ok(e) = events.try_recv() {
            log.push(e);
        }
        (log, inv)
    });
    let requeued = recovered(&log)
        .into_iter()
        .filter(|(_, o)| matches!(o, RecoveryOutcome::Requeued { .. }))
        .count();
    assert_eq!(requeued, 3, "{log:#?}");
    assert!(
        !log.iter()
            .any(|e| matches!(e, FleetEvent::RuntimeWarning { .. })),
        "closing sessions that died with the old process is not a warning: {log:#?}"
    );
    for (_, place) in &inv.items {
        let Place::Live(s) = place else {
            panic!("{place:?}")
        };
        assert!(s.0 >= 4, "a fresh id, not one the journal knows: {s}");
    }
}

on_both_stores!(
    a_restarted_supervisor_resumes_the_rotation_requeues_the_rest_and_says_so,
    a_rotation_killed_after_its_successor_spawned_adopts_that_successor,
    a_compaction_cut_short_by_a_crash_is_recorded_as_interrupted,
    after_a_graceful_shutdown_a_restart_picks_every_item_up_again,
    a_rotation_its_item_left_before_a_crash_is_recorded_failed_and_its_successor_closed,
    a_start_that_finished_during_a_shutdown_is_not_adopted_again_after_a_restart,
    a_restart_over_agents_that_died_closes_their_sessions_quietly_with_fresh_ids,
);

//! The supervisor's API for servers (`baton serve`): sequenced events that resume from the
//! journal, agent types at run time, work item lookup, cancellation.
//!
//! Each test runs a supervisor over a `MemoryRuntime` on baton's own actix thread and waits for
//! the events it expects (never for a quiet spell).

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton::journal::{EventRow, Filter};
use baton::runtime::memory::{MemoryConfig, MemoryRuntime, RuntimeOp};
use baton::{
    AgentType, FleetEvent, Journal, Place, PutOutcome, Sequenced, SessionId, Settled, Supervisor,
    SupervisorConfig, SupervisorError, SupervisorHandle, UsageSource, WorkItemId,
};
use support::fleet::{agent, item};
use support::stores::{self, Store};
use tokio::sync::mpsc::UnboundedReceiver;

/// Rows of the log that are supervisor steps, not published events: never delivered live.
const STEPS: [&str; 4] = [
    "work_item_submitted",
    "rotation_started",
    "rotation_handoff",
    "rotation_successor",
];

fn memory() -> Arc<MemoryRuntime> {
    Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        ..MemoryConfig::default()
    }))
}

/// Waits (up to 10 s) for a sequenced event matching `pred`; everything received meanwhile,
/// it included, is appended to `seen`.
async fn wait_seq(
    rx: &mut UnboundedReceiver<Sequenced>,
    seen: &mut Vec<Sequenced>,
    what: &str,
    pred: impl Fn(&FleetEvent) -> bool,
) -> FleetEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen {seen:#?}"))
            .unwrap_or_else(|| panic!("stream closed waiting for {what}"));
        seen.push(e.clone());
        if pred(&e.event) {
            return e.event;
        }
    }
}

async fn started(
    rx: &mut UnboundedReceiver<Sequenced>,
    seen: &mut Vec<Sequenced>,
    item: u64,
) -> SessionId {
    match wait_seq(
        rx,
        seen,
        "a session start",
        |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == item),
    )
    .await
    {
        FleetEvent::SessionStarted { session, .. } => session,
        _ => unreachable!(),
    }
}

/// Grows `session`'s simulated context to `used` tokens, reports it, and waits until the
/// session settled.
async fn report(
    sup: &SupervisorHandle,
    runtime: &MemoryRuntime,
    session: SessionId,
    used: u64,
) -> Settled {
    let now = runtime.session(session).expect("session exists").used;
    runtime.grow(session, used.saturating_sub(now)).unwrap();
    sup.session(session)
        .await
        .expect("live session")
        .report_and_settle(used, None, UsageSource::Reported)
        .await
        .unwrap()
}

/// Drives item `id` through a compaction and a rotation, then closes its successor; waits for
/// its `WorkItemDone`.
async fn drive(
    sup: &SupervisorHandle,
    runtime: &MemoryRuntime,
    rx: &mut UnboundedReceiver<Sequenced>,
    seen: &mut Vec<Sequenced>,
    id: u64,
) {
    let s = started(rx, seen, id).await;
    assert_eq!(report(sup, runtime, s, 850).await, Settled::Normal);
    let Settled::Rotated { successor } = report(sup, runtime, s, 990).await else {
        panic!("the session should have rotated");
    };
    sup.close(successor).await.unwrap();
    wait_seq(
        rx,
        seen,
        "the item done",
        |e| matches!(e, FleetEvent::WorkItemDone { work_item, .. } if work_item.0 == id),
    )
    .await;
}

/// The log's rows that are published events.
fn event_rows(rows: Vec<EventRow>) -> Vec<EventRow> {
    rows.into_iter()
        .filter(|r| !STEPS.contains(&r.kind.as_str()))
        .collect()
}

/// `(seq, kind)` of a delivered event, as the log lists it.
fn key(e: &Sequenced) -> (u64, String) {
    let kind = serde_json::to_value(&e.event).unwrap();
    let kind = kind
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .expect("an externally tagged event");
    (e.seq, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sequenced_events_carry_the_seq_the_journal_reader_lists_for_them() {
    live_sequenced_events_carry_the_seq_the_journal_reader_lists_for_them_on(&Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_live_sequenced_events_carry_the_seq_the_journal_reader_lists_for_them() {
    if let Some(store) = Store::postgres() {
        live_sequenced_events_carry_the_seq_the_journal_reader_lists_for_them_on(&store).await;
    }
}

async fn live_sequenced_events_carry_the_seq_the_journal_reader_lists_for_them_on(store: &Store) {
    let dir = store.dir();
    let runtime = memory();
    let builder = Supervisor::builder(runtime.clone())
        .agent_type(agent("sonnet"))
        .journal(stores::journal(dir.path()))
        .unwrap();
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    for id in [1, 2] {
        sup.submit(item(id, "sonnet")).await.unwrap();
        drive(&sup, &runtime, &mut rx, &mut seen, id).await;
    }
    sup.journal().unwrap().flush().await.unwrap();

    let reader = stores::reader(dir.path());
    let rows = event_rows(reader.view().events(&Filter::default()).unwrap());
    let listed: Vec<(u64, String)> = rows.iter().map(|r| (r.seq, r.kind.clone())).collect();
    let live: Vec<(u64, String)> = seen.iter().map(key).collect();
    assert_eq!(live, listed, "live stream and the log disagree");
    for (e, r) in seen.iter().zip(&rows) {
        assert_eq!(e.at, r.at, "seq {}: the time the journal stored", e.seq);
    }
    assert!(
        live.iter().any(|(_, k)| k == "rotation") && live.iter().any(|(_, k)| k == "compaction"),
        "the run compacted and rotated: {live:?}"
    );
    assert!(live.windows(2).all(|w| w[0].0 < w[1].0), "seq rises");
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_is_the_backlog_after_n_then_the_live_events_each_once() {
    a_resumed_stream_is_the_backlog_after_n_then_the_live_events_each_once_on(&Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_resumed_stream_is_the_backlog_after_n_then_the_live_events_each_once() {
    if let Some(store) = Store::postgres() {
        a_resumed_stream_is_the_backlog_after_n_then_the_live_events_each_once_on(&store).await;
    }
}

async fn a_resumed_stream_is_the_backlog_after_n_then_the_live_events_each_once_on(store: &Store) {
    let dir = store.dir();
    let runtime = memory();
    let builder = Supervisor::builder(runtime.clone())
        .agent_type(agent("sonnet"))
        .journal(stores::journal(dir.path()))
        .unwrap();
    let mut first = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    sup.submit(item(1, "sonnet")).await.unwrap();
    drive(&sup, &runtime, &mut first, &mut seen, 1).await;
    // A client that saw up to the third event reconnects while item 2 runs.
    let last_seen = seen[2].seq;
    sup.submit(item(2, "sonnet")).await.unwrap();
    let s2 = started(&mut first, &mut seen, 2).await;

    // The server's resume: subscribe, then read the backlog, then forward live events above it.
    let mut live = sup.subscribe_sequenced();
    assert_eq!(report(&sup, &runtime, s2, 850).await, Settled::Normal);
    let backlog = event_rows(
        sup.journal()
            .unwrap()
            .read(move |v| {
                v.events(&Filter {
                    after: Some(last_seen),
                    ..Filter::default()
                })
            })
            .await
            .unwrap(),
    );
    let backlog_end = backlog.last().expect("a backlog").seq;
    let Settled::Rotated { successor } = report(&sup, &runtime, s2, 990).await else {
        panic!("the session should have rotated");
    };
    sup.close(successor).await.unwrap();
    let mut tail = Vec::new();
    wait_seq(
        &mut live,
        &mut tail,
        "item 2 done",
        |e| matches!(e, FleetEvent::WorkItemDone { work_item, .. } if work_item.0 == 2),
    )
    .await;
    assert!(
        tail.iter().any(|e| e.seq <= backlog_end),
        "the live stream overlapped the backlog (else the test shows nothing)"
    );

    let mut resumed: Vec<u64> = backlog.iter().map(|r| r.seq).collect();
    resumed.extend(tail.iter().map(|e| e.seq).filter(|s| *s > backlog_end));
    sup.journal().unwrap().flush().await.unwrap();
    let all = event_rows(
        stores::reader(dir.path())
            .view()
            .events(&Filter::default())
            .unwrap(),
    );
    let expected: Vec<u64> = all
        .iter()
        .map(|r| r.seq)
        .filter(|s| *s > last_seen)
        .collect();
    assert_eq!(resumed, expected, "every event after N, once, in order");

    // Paging: with `after`, `limit` takes the first rows after it.
    let page = stores::reader(dir.path())
        .view()
        .events(&Filter {
            after: Some(last_seen),
            limit: Some(2),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(page.len(), 2);
    assert!(page[0].seq > last_seen && page[0].seq < page[1].seq);
    assert_eq!(page[0].seq, last_seen + 1, "the very next row of the log");
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_journal_sequenced_events_are_numbered_from_one() {
    let runtime = memory();
    let builder = Supervisor::builder(runtime.clone()).agent_type(agent("sonnet"));
    let mut rx = builder.subscribe_sequenced();
    let mut plain = builder.subscribe();
    let sup = builder.start();
    let mut seen = Vec::new();
    sup.submit(item(1, "sonnet")).await.unwrap();
    drive(&sup, &runtime, &mut rx, &mut seen, 1).await;
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seen.len() as u64).collect::<Vec<_>>());
    for e in &seen {
        assert_eq!(
            plain.recv().await.as_ref(),
            Some(&e.event),
            "same events, same order"
        );
    }
    sup.shutdown(Duration::from_secs(5)).await;
}

fn policy(compact_at: f64) -> baton::Policy {
    baton::Policy::builder()
        .compact_at(compact_at)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_update_decides_the_next_reading_of_a_live_session() {
    let runtime = memory();
    let coder = agent("coder").with_policy(policy(0.9));
    let builder = Supervisor::builder(runtime.clone()).agent_type(coder.clone());
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    sup.submit(item(1, "coder")).await.unwrap();
    let s = started(&mut rx, &mut seen, 1).await;

    assert_eq!(report(&sup, &runtime, s, 850).await, Settled::Normal);
    assert_eq!(runtime.calls(RuntimeOp::Summarise), 0, "85% is under 0.9");

    let updated = coder.clone().with_policy(policy(0.8));
    assert_eq!(
        sup.put_agent_type(updated.clone()).await,
        Ok(PutOutcome::Updated)
    );
    assert_eq!(sup.agent_type("coder").await, Some(updated.clone()));
    assert_eq!(
        sup.put_agent_type(updated.clone()).await,
        Ok(PutOutcome::Unchanged)
    );

    assert_eq!(report(&sup, &runtime, s, 860).await, Settled::Normal);
    assert_eq!(runtime.calls(RuntimeOp::Summarise), 1, "86% is over 0.8");
    wait_seq(
        &mut rx,
        &mut seen,
        "the compaction",
        |e| matches!(e, FleetEvent::Compaction(c) if c.session == s && c.success),
    )
    .await;
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_types_are_created_at_run_time_and_only_their_policy_may_change() {
    let runtime = memory();
    let builder = Supervisor::builder(runtime.clone()).agent_type(agent("sonnet"));
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    assert_eq!(
        sup.submit(item(1, "glm")).await,
        Err(SupervisorError::UnknownAgentType("glm".into()))
    );
    let glm = agent("glm");
    assert_eq!(
        sup.put_agent_type(glm.clone()).await,
        Ok(PutOutcome::Created)
    );
    let names: Vec<String> = sup
        .agent_types()
        .await
        .iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["glm", "sonnet"]);
    for other in [
        AgentType::new("glm", 2000),
        AgentType {
            model: "glm-4".into(),
            ..glm.clone()
        },
        AgentType {
            system_prompt: "be terse".into(),
            ..glm.clone()
        }
        .with_policy(policy(0.5)),
    ] {
        assert!(matches!(
            sup.put_agent_type(other).await,
            Err(SupervisorError::AgentTypeConflict(_))
        ));
    }
    assert_eq!(
        sup.agent_type("glm").await,
        Some(glm),
        "a conflict changes nothing"
    );
    assert_eq!(sup.agent_type("nope").await, None);

    sup.submit(item(1, "glm")).await.unwrap();
    let mut seen = Vec::new();
    let s = started(&mut rx, &mut seen, 1).await;
    assert_eq!(runtime.session(s).unwrap().agent_type, "glm");
    sup.shutdown(Duration::from_secs(5)).await;
}

fn one_at_a_time() -> SupervisorConfig {
    SupervisorConfig {
        max_sessions: 1,
        ..SupervisorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_items_are_found_with_their_text_and_place_done_ones_included_after_a_restart() {
    let runtime = memory();
    let journal = Journal::in_memory().unwrap();
    let builder = Supervisor::builder(runtime.clone())
        .config(one_at_a_time())
        .agent_type(agent("sonnet"))
        .journal(journal.clone())
        .unwrap();
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    for id in [3, 1, 2] {
        sup.submit(item(id, "sonnet")).await.unwrap();
    }
    let s3 = started(&mut rx, &mut seen, 3).await;
    sup.close(s3).await.unwrap();
    let s1 = started(&mut rx, &mut seen, 1).await;

    let info = sup.work_item(WorkItemId(3)).await.expect("a known item");
    assert_eq!(info.item, item(3, "sonnet"), "the text is kept once done");
    assert_eq!(info.place, Place::Done(s3));
    let all = sup.work_items().await;
    let places: Vec<(u64, Place)> = all.iter().map(|i| (i.item.id.0, i.place.clone())).collect();
    assert_eq!(
        places,
        [
            (1, Place::Live(s1)),
            (2, Place::Queued),
            (3, Place::Done(s3))
        ],
        "id order"
    );
    assert_eq!(sup.work_item(WorkItemId(9)).await, None);
    sup.shutdown(Duration::from_secs(5)).await;

    // A restarted supervisor knows the finished item, text included.
    let sup = Supervisor::builder(runtime.clone())
        .config(one_at_a_time())
        .agent_type(agent("sonnet"))
        .journal(journal)
        .unwrap()
        .start();
    let info = sup.work_item(WorkItemId(3)).await.expect("recovered");
    assert_eq!(
        (info.item, info.place),
        (item(3, "sonnet"), Place::Done(s3))
    );
    assert_eq!(
        sup.work_item(WorkItemId(2)).await.map(|i| i.item),
        Some(item(2, "sonnet"))
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

fn cancelled() -> Place {
    Place::Dead(baton::CANCELLED.into())
}

fn dead_letter(id: u64) -> impl Fn(&FleetEvent) -> bool {
    move |e| {
        matches!(e, FleetEvent::DeadLetter { work_item, reason }
            if work_item.0 == id && reason == baton::CANCELLED)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_item_cancelled_leaves_the_queue_and_never_starts() {
    let runtime = memory();
    let builder = Supervisor::builder(runtime.clone())
        .config(one_at_a_time())
        .agent_type(agent("sonnet"));
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    for id in [1, 2, 3] {
        sup.submit(item(id, "sonnet")).await.unwrap();
    }
    let s1 = started(&mut rx, &mut seen, 1).await;
    assert_eq!(sup.cancel(WorkItemId(2)).await, Ok(cancelled()));
    wait_seq(&mut rx, &mut seen, "the dead letter", dead_letter(2)).await;
    assert_eq!(sup.inventory().await.unwrap().queue, [WorkItemId(3)]);
    assert_eq!(
        sup.cancel(WorkItemId(2)).await,
        Err(SupervisorError::AlreadyEnded(WorkItemId(2)))
    );
    assert_eq!(
        sup.cancel(WorkItemId(9)).await,
        Err(SupervisorError::UnknownWorkItem(WorkItemId(9)))
    );

    sup.close(s1).await.unwrap();
    started(&mut rx, &mut seen, 3).await;
    assert!(
        !seen.iter().any(|e| matches!(e.event,
            FleetEvent::SessionStarted { work_item, .. } if work_item.0 == 2)),
        "the cancelled item never started: {seen:#?}"
    );
    assert_eq!(
        sup.cancel(WorkItemId(1)).await,
        Err(SupervisorError::AlreadyEnded(WorkItemId(1))),
        "done is an end"
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_item_cancelled_has_its_session_closed_without_counting_as_done_and_stays_dead_after_a_restart()
 {
    let runtime = memory();
    let journal = Journal::in_memory().unwrap();
    let builder = Supervisor::builder(runtime.clone())
        .agent_type(agent("sonnet"))
        .journal(journal.clone())
        .unwrap();
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    sup.submit(item(1, "sonnet")).await.unwrap();
    let s1 = started(&mut rx, &mut seen, 1).await;
    assert_eq!(report(&sup, &runtime, s1, 850).await, Settled::Normal);

    assert_eq!(sup.cancel(WorkItemId(1)).await, Ok(cancelled()));
    // Durable once `cancel` returns: the journal holds the item dead, its session closed.
    let (items, sessions) = journal
        .read(|v| {
            let all = Filter::default();
            Ok((v.work_items(&all)?, v.sessions(&all)?))
        })
        .await
        .unwrap();
    assert_eq!(
        (items[0].place, items[0].reason.as_deref()),
        (baton::journal::WorkItemPlace::Dead, Some(baton::CANCELLED))
    );
    assert_eq!(sessions[0].state, baton::journal::SessionState::Closed);
    wait_seq(&mut rx, &mut seen, "the session's close", |e| {
        matches!(e, FleetEvent::Transition(t) if t.session == s1 && t.to == baton::Phase::Closed)
    })
    .await;
    let report = sup.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean);
    assert!(runtime.open_sessions().is_empty(), "closed at the runtime");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e.event, FleetEvent::WorkItemDone { .. })),
        "a cancelled item is not done: {seen:#?}"
    );

    // A restarted supervisor does not resurrect it.
    let builder = Supervisor::builder(runtime.clone())
        .agent_type(agent("sonnet"))
        .journal(journal)
        .unwrap();
    let mut rx = builder.subscribe();
    let sup = builder.start();
    assert_eq!(
        sup.work_item(WorkItemId(1)).await.map(|i| i.place),
        Some(cancelled())
    );
    assert_eq!(
        sup.submit(item(1, "sonnet")).await,
        Err(SupervisorError::DuplicateWorkItem(WorkItemId(1)))
    );
    let inv = sup.inventory().await.unwrap();
    assert!(inv.sessions.is_empty() && inv.queue.is_empty() && inv.in_flight == 0);
    assert!(rx.try_recv().is_err(), "nothing to recover");
    sup.shutdown(Duration::from_secs(5)).await;
}

#[actix::test]
async fn an_item_cancelled_while_its_session_starts_has_that_session_closed_never_registered() {
    tokio::time::pause();
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        latency: [(RuntimeOp::Spawn, Duration::from_secs(1))].into(),
        ..MemoryConfig::default()
    }));
    let builder = Supervisor::builder(runtime.clone()).agent_type(agent("sonnet"));
    let mut rx = builder.subscribe();
    let sup = builder.start();
    sup.submit(item(1, "sonnet")).await.unwrap();
    assert_eq!(
        sup.work_item(WorkItemId(1)).await.map(|i| i.place),
        Some(Place::Starting)
    );
    assert_eq!(sup.cancel(WorkItemId(1)).await, Ok(cancelled()));
    // Shutdown waits for the start under way and the close of what it spawned.
    assert!(sup.shutdown(Duration::from_secs(60)).await.clean);
    assert_eq!(runtime.calls(RuntimeOp::Spawn), 1);
    assert!(
        runtime.open_sessions().is_empty(),
        "the spawned session is closed"
    );
    let mut log = Vec::new();
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }
    assert!(dead_letter(1)(&log[0]), "{log:#?}");
    assert!(
        !log.iter()
            .any(|e| matches!(e, FleetEvent::SessionStarted { .. })),
        "never registered: {log:#?}"
    );
}

#[actix::test]
async fn an_item_cancelled_while_rotating_has_its_successor_closed_and_its_rotation_failed() {
    tokio::time::pause();
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        latency: [(RuntimeOp::Summarise, Duration::from_secs(1))].into(),
        ..MemoryConfig::default()
    }));
    let builder = Supervisor::builder(runtime.clone()).agent_type(agent("sonnet"));
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    sup.submit(item(1, "sonnet")).await.unwrap();
    let s1 = started(&mut rx, &mut seen, 1).await;
    runtime.grow(s1, 890).unwrap();
    sup.report_usage(s1, 990, None, UsageSource::Reported)
        .await
        .unwrap();
    wait_seq(&mut rx, &mut seen, "the rotation's start", |e| {
        matches!(e, FleetEvent::Transition(t) if t.session == s1 && t.to == baton::Phase::Rotating)
    })
    .await;
    assert_eq!(
        sup.work_item(WorkItemId(1)).await.map(|i| i.place),
        Some(Place::Rotating(s1))
    );

    assert_eq!(sup.cancel(WorkItemId(1)).await, Ok(cancelled()));
    assert!(sup.shutdown(Duration::from_secs(60)).await.clean);
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    let records: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.event {
            FleetEvent::Rotation(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 1, "{seen:#?}");
    assert!(!records[0].success, "the item left the rotation");
    assert_eq!(
        runtime.calls(RuntimeOp::Spawn),
        2,
        "the rotation spawned its successor"
    );
    assert!(
        runtime.open_sessions().is_empty(),
        "old session and successor closed at the runtime"
    );
    let starts = seen
        .iter()
        .filter(|e| matches!(e.event, FleetEvent::SessionStarted { .. }))
        .count();
    assert_eq!(starts, 1, "the successor was never started");
    assert!(
        !seen.iter().any(|e| matches!(
            e.event,
            FleetEvent::WorkItemDone { .. } | FleetEvent::WorkItemRequeued { .. }
        )),
        "{seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_cancelled_while_its_hand_over_is_committed_has_the_successor_closed_not_started() {
    use std::sync::Mutex;
    use std::sync::mpsc;
    use std::task::Poll;
    // The journal's writer stops after committing the rotation's last step, until released.
    let (reached_tx, reached) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let (reached_tx, release_rx) = (Mutex::new(reached_tx), Mutex::new(release_rx));
    let hook: baton::journal::CommitHook = Arc::new(move |labels: &[&'static str]| {
        if labels.contains(&"rotation_done") {
            reached_tx.lock().unwrap().send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
    });
    let journal = Journal::in_memory_with(baton::JournalOptions {
        on_commit: Some(hook),
        ..baton::JournalOptions::default()
    })
    .unwrap();
    let runtime = memory();
    let builder = Supervisor::builder(runtime.clone())
        .agent_type(agent("sonnet"))
        .journal(journal.clone())
        .unwrap();
    let mut rx = builder.subscribe_sequenced();
    let sup = builder.start();
    let mut seen = Vec::new();
    sup.submit(item(1, "sonnet")).await.unwrap();
    let s1 = started(&mut rx, &mut seen, 1).await;
    runtime.grow(s1, 890).unwrap();
    sup.report_usage(s1, 990, None, UsageSource::Reported)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || reached.recv().unwrap())
        .await
        .unwrap();
    assert_eq!(
        sup.work_item(WorkItemId(1)).await.map(|i| i.place),
        Some(Place::Starting),
        "the successor is being started"
    );

    // The cancel reaches the supervisor now; its durability waits for the writer.
    let mut cancel = Box::pin(sup.cancel(WorkItemId(1)));
    let first = std::future::poll_fn(|cx| Poll::Ready(cancel.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    assert_eq!(
        sup.work_item(WorkItemId(1)).await.map(|i| i.place),
        Some(cancelled())
    );
    release.send(()).unwrap();
    assert_eq!(cancel.await, Ok(cancelled()));

    let rotation = wait_seq(&mut rx, &mut seen, "the rotation's record", |e| {
        matches!(e, FleetEvent::Rotation(_))
    })
    .await;
    let FleetEvent::Rotation(record) = rotation else {
        unreachable!()
    };
    assert!(record.success, "the rotation itself finished");
    let successor = record.new_session.unwrap();
    wait_seq(&mut rx, &mut seen, "the old session's close", |e| {
        matches!(e, FleetEvent::Transition(t) if t.session == s1 && t.to == baton::Phase::Closed)
    })
    .await;
    assert!(sup.shutdown(Duration::from_secs(10)).await.clean);
    assert!(
        runtime.open_sessions().is_empty(),
        "the successor is closed at the runtime"
    );
    assert!(
        !seen.iter().any(|e| matches!(e.event,
            FleetEvent::SessionStarted { session, .. } if session == successor)),
        "the successor was never started: {seen:#?}"
    );
    let (items, sessions) = journal
        .read(|v| {
            let all = Filter::default();
            Ok((v.work_items(&all)?, v.sessions(&all)?))
        })
        .await
        .unwrap();
    assert_eq!(items[0].place, baton::journal::WorkItemPlace::Dead);
    assert!(
        sessions
            .iter()
            .all(|s| s.state == baton::journal::SessionState::Closed),
        "{sessions:#?}"
    );
}

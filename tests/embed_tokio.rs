//! Embedding from plain tokio: a fleet started under `#[tokio::main]`-style multi-thread
//! runtimes or from a plain thread works, its handles cross threads and runtimes, and a session's
//! compaction or rotation is awaited in one call, without polling.

mod support;

use std::sync::Arc;

use std::time::Duration;
use support::stores::{self, Store};

use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::{
    AgentType, FleetEvent, Phase, RotationReason, SessionHandle, Settled, Supervisor,
    SupervisorHandle, UsageSource, WorkItem, WorkItemId,
};

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

#[test]
fn handles_are_send_sync_and_clone() {
    assert_send_sync_clone::<SupervisorHandle>();
    assert_send_sync_clone::<SessionHandle>();
}

fn item(id: u64) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: "coder".into(),
        text: format!("work item {id}"),
    }
}

fn runtime() -> Arc<MemoryRuntime> {
    Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        ..MemoryConfig::default()
    }))
}

/// Waits for the `SessionStarted` of `item` on `events`.
async fn started(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<FleetEvent>,
    item: u64,
) -> baton::SessionId {
    loop {
        match events.recv().await.expect("the event stream stays open") {
            FleetEvent::SessionStarted {
                session, work_item, ..
            } if work_item.0 == item => return session,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_started_from_multi_thread_tokio_finishes_its_work() {
    let runtime = runtime();
    let fleet = Supervisor::builder(runtime.clone())
        .agent_type(AgentType::new("coder", 1000))
        .start();
    let mut events = fleet.subscribe();
    for id in 1..=4 {
        fleet.submit(item(id)).await.unwrap();
    }
    // Each item's agent loop runs as its own tokio task, on any worker thread.
    // Sessions start concurrently: their starts arrive in any order.
    let mut sessions = std::collections::BTreeMap::new();
    while sessions.len() < 4 {
        if let FleetEvent::SessionStarted {
            session, work_item, ..
        } = events.recv().await.expect("the event stream stays open")
        {
            sessions.insert(work_item.0, session);
        }
    }
    let mut agents = Vec::new();
    for session in sessions.into_values() {
        let (fleet, runtime) = (fleet.clone(), runtime.clone());
        agents.push(tokio::spawn(async move {
            let mut handle = fleet
                .session(session)
                .await
                .expect("registered before started");
            for _ in 0..40 {
                let used = runtime.grow(handle.session, 60).unwrap().used();
                match handle
                    .report_and_settle(used, None, UsageSource::Reported)
                    .await
                    .unwrap()
                {
                    Settled::Normal => {}
                    Settled::Rotated { successor } => {
                        handle = fleet
                            .session(successor)
                            .await
                            .expect("successor registered");
                    }
                    Settled::Closed => panic!("nobody closed {}", handle.session),
                }
                assert_eq!(handle.info().await.unwrap().phase, Phase::Normal);
            }
            handle.close();
        }));
    }
    for a in agents {
        a.await.unwrap();
    }
    let mut done = 0;
    while done < 4 {
        if let FleetEvent::WorkItemDone { .. } = events.recv().await.unwrap() {
            done += 1;
        }
    }
    let report = fleet.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean);
    assert!(runtime.open_sessions().is_empty());
}

#[test]
fn a_fleet_started_from_a_plain_thread_is_usable_from_any_runtime() {
    // No runtime at all where it starts.
    let runtime = runtime();
    let fleet = Supervisor::builder(runtime.clone())
        .agent_type(AgentType::new("coder", 1000))
        .start();
    let mut events = fleet.subscribe();
    // Then driven from a current-thread runtime of another thread.
    let worker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                fleet.submit(item(1)).await.unwrap();
                let session = started(&mut events, 1).await;
                let handle = fleet.session(session).await.unwrap();
                // 96% rotates: the call returns with the successor, already registered.
                runtime.grow(session, 860).unwrap();
                let settled = handle
                    .report_and_settle(960, None, UsageSource::Reported)
                    .await
                    .unwrap();
                let Settled::Rotated { successor } = settled else {
                    panic!("expected a rotation, got {settled:?}");
                };
                let next = fleet
                    .session(successor)
                    .await
                    .expect("successor registered");
                assert_eq!(next.info().await.unwrap().phase, Phase::Normal);
                // The old session is gone: asking it again is an error, not a hang.
                assert!(handle.settled().await.is_err());
                // A watcher sees the close as the last status.
                let mut status = next.status().await.unwrap();
                next.close();
                let last = *status.wait_for(|s| s.phase == Phase::Closed).await.unwrap();
                assert_eq!(last.successor, None);
                fleet.shutdown(Duration::from_secs(5)).await
            })
    });
    assert!(worker.join().unwrap().clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflow_rotates_the_session_and_names_its_successor() {
    let runtime = runtime();
    let builder = Supervisor::builder(runtime.clone()).agent_type(AgentType::new("coder", 1000));
    let mut events = builder.subscribe();
    let fleet = builder.start();
    fleet.submit(item(1)).await.unwrap();
    let session = started(&mut events, 1).await;
    let handle = fleet.session(session).await.unwrap();
    let settled = handle
        .overflow_and_settle(Some(1200), Some(1000))
        .await
        .unwrap();
    let Settled::Rotated { successor } = settled else {
        panic!("an overflow rotates: got {settled:?}");
    };
    let record = loop {
        if let FleetEvent::Rotation(r) = events.recv().await.unwrap() {
            break r;
        }
    };
    assert_eq!(record.reason, RotationReason::Overflow);
    assert_eq!(record.old_session, session);
    assert_eq!(record.new_session, Some(successor));
    assert!(fleet.session(successor).await.is_some());
    assert!(fleet.shutdown(Duration::from_secs(5)).await.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_on_the_builder_sees_every_recovered_item() {
    a_subscription_made_on_the_builder_sees_every_recovered_item_on(&Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_subscription_made_on_the_builder_sees_every_recovered_item() {
    if let Some(store) = Store::postgres() {
        a_subscription_made_on_the_builder_sees_every_recovered_item_on(&store).await;
    }
}

async fn a_subscription_made_on_the_builder_sees_every_recovered_item_on(store: &Store) {
    let dir = store.dir();
    {
        let fleet = Supervisor::builder(runtime())
            .agent_type(AgentType::new("coder", 1000))
            .journal(stores::journal(dir.path()))
            .unwrap()
            .start();
        for id in 1..=5 {
            fleet.submit(item(id)).await.unwrap();
        }
        // Shut down with the items held or queued: the journal keeps them unfinished.
        fleet.shutdown(Duration::from_secs(5)).await;
    }
    let journal = stores::journal(dir.path());
    let builder = Supervisor::builder(runtime())
        .agent_type(AgentType::new("coder", 1000))
        .journal(journal)
        .unwrap();
    let mut events = builder.subscribe();
    let fleet = builder.start();
    // However long the caller takes after start, nothing published since is lost.
    fleet.inventory().await.unwrap();
    tokio::task::yield_now().await;
    let mut recovered = Vec::new();
    while recovered.len() < 5 {
        if let FleetEvent::Recovered { work_item, .. } = events.recv().await.unwrap() {
            recovered.push(work_item.0);
        }
    }
    recovered.sort_unstable();
    assert_eq!(recovered, [1, 2, 3, 4, 5]);
    fleet.shutdown(Duration::from_secs(5)).await;
}

//! Adoption against a real PostgreSQL, through the real code paths: a node's journal and
//! supervisor, a lease that runs out (the node stopped heartbeating: SIGSTOP in-process), the
//! sweeper's adoption on another node, and the lost node's journal refusing its next write.

mod cluster_common;

use std::sync::Arc;
use std::time::Duration;

use baton::cluster::{Epoch, node, pool, sweep};
use baton::journal::{JournalOptions, PgOptions};
use baton::runtime::memory::{Fault, FaultKind, MemoryConfig, MemoryRuntime, RuntimeOp};
use baton::{
    AgentType, FleetEvent, Journal, RecoveryOutcome, RotationStep, SessionId, Supervisor,
    SupervisorHandle, UsageSource, WorkItem, WorkItemId,
};
use cluster_common::{TestDb, off_runtime, test_db};
use tokio::sync::mpsc::UnboundedReceiver;

/// Long enough for anything here; waits end on events, never on time.
const PATIENCE: Duration = Duration::from_secs(60);

fn item(id: u64) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: "coder".into(),
        text: format!("task {id}"),
    }
}

/// A node of the cluster in this process: its epoch, journal and supervisor over `runtime`.
struct TestNode {
    epoch: Epoch,
    journal: Journal,
    supervisor: SupervisorHandle,
    events: UnboundedReceiver<FleetEvent>,
}

fn start_node(db: &TestDb, name: &str, runtime: Arc<MemoryRuntime>) -> TestNode {
    let url = db.pg_url();
    let epoch = db.with(|c| node::join(c, name, None, Duration::from_secs(600)).unwrap());
    let journal = off_runtime(move || {
        Journal::open_postgres(
            &url,
            JournalOptions::default(),
            PgOptions { epoch: Some(epoch) },
        )
        .unwrap()
    });
    let builder = Supervisor::builder(runtime)
        .agent_type(AgentType::new("coder", 1000))
        .journal(journal.clone())
        .unwrap();
    let events = builder.subscribe();
    TestNode {
        epoch,
        journal,
        supervisor: builder.start(),
        events,
    }
}

/// The first event `pick` accepts.
async fn wait_for<T>(
    events: &mut UnboundedReceiver<FleetEvent>,
    mut pick: impl FnMut(&FleetEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let e = events.recv().await.expect("the supervisor runs");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await
    .expect("the event came")
}

/// Claims item `id` from the pool for `n` and hands it to its supervisor, as the claimer does.
async fn claim_into(db: &TestDb, n: &TestNode, id: u64) {
    let epoch = n.epoch;
    let claimed = db.with(move |c| pool::claim(c, epoch, &["coder".to_owned()], 1).unwrap());
    assert_eq!(claimed, [item(id)]);
    for i in claimed {
        n.supervisor.submit(i).await.unwrap();
    }
}

fn owner_of(db: &TestDb, id: u64) -> (Option<i64>, String) {
    db.with(move |c| {
        let r = c
            .query_one(
                "SELECT owner, place FROM work_items WHERE id = $1",
                &[&(id as i64)],
            )
            .unwrap();
        (r.get(0), r.get(1))
    })
}

/// What stopping heartbeats for a whole TTL leaves in the database (a SIGSTOPped node).
fn run_out_lease(db: &TestDb, epoch: Epoch) {
    db.with(move |c| {
        c.execute(
            "UPDATE baton_nodes SET lease_until = 0 WHERE epoch = $1",
            &[&epoch.0],
        )
        .unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_is_adopted_its_live_item_requeued_on_the_adopter_and_its_journal_fenced() {
    let Some(db) = test_db("adoptlive") else {
        return;
    };
    let mut a = start_node(
        &db,
        "a",
        Arc::new(MemoryRuntime::new(MemoryConfig::default())),
    );
    db.with(|c| pool::submit(c, &item(1)).unwrap());
    claim_into(&db, &a, 1).await;
    let session = wait_for(&mut a.events, |e| match e {
        FleetEvent::SessionStarted { session, .. } => Some(*session),
        _ => None,
    })
    .await;
    a.journal.flush().await.unwrap();
    assert_eq!(owner_of(&db, 1), (Some(a.epoch.0), "live".into()));

    // a stops heartbeating; its lease runs out. b's sweeper sees it, and only it.
    run_out_lease(&db, a.epoch);
    let runtime_b =
        Arc::new(MemoryRuntime::new(MemoryConfig::default()).numbering_from(SessionId(1_000_000)));
    let mut b = start_node(&db, "b", runtime_b.clone());
    let (epoch_b, epoch_a) = (b.epoch, a.epoch);
    assert_eq!(
        db.with(move |c| sweep::expired(c, epoch_b).unwrap()),
        [epoch_a]
    );
    sweep::adopt(&b.journal, &b.supervisor, a.epoch)
        .await
        .unwrap();

    // b recovers it as a restart would: the session that died with a is requeued, and b starts
    // one of its own for the item.
    let outcome = wait_for(&mut b.events, |e| match e {
        FleetEvent::Recovered { work_item, outcome } if *work_item == WorkItemId(1) => {
            Some(outcome.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(outcome, RecoveryOutcome::Requeued { session });
    let successor = wait_for(&mut b.events, |e| match e {
        FleetEvent::SessionStarted {
            session, work_item, ..
        } if *work_item == WorkItemId(1) => Some(*session),
        _ => None,
    })
    .await;
    assert!(successor.0 >= 1_000_000, "b's own session: {successor}");
    b.journal.flush().await.unwrap();
    assert_eq!(owner_of(&db, 1), (Some(b.epoch.0), "live".into()));
    assert!(
        db.with(move |c| sweep::expired(c, epoch_b).unwrap())
            .is_empty()
    );
    assert_eq!(db.with(|c| node::list(c).unwrap().0.len()), 1);

    // a wakes up and writes: refused, nothing of a's reaches the database.
    let refused = a.supervisor.submit(item(2)).await;
    assert!(refused.is_err(), "a fenced node's write was accepted");
    let failure = a.journal.failure().expect("the journal failed");
    assert!(failure.to_string().contains("fenced"), "{failure}");
    let rows: i64 = db.with(|c| {
        c.query_one("SELECT count(*) FROM work_items WHERE id = 2", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 0);
    b.supervisor.shutdown(Duration::from_secs(5)).await;
    a.supervisor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_resumes_a_half_done_rotation_from_its_handoff_on_the_adopter() {
    let Some(db) = test_db("adoptrotation") else {
        return;
    };
    // a's successor spawn (its second spawn) never returns: a dies mid-rotation, its handoff
    // durable, no successor recorded.
    let hang = MemoryConfig {
        faults: vec![Fault {
            op: RuntimeOp::Spawn,
            calls: 2..=2,
            kind: FaultKind::Hang,
        }],
        ..MemoryConfig::default()
    };
    let mut a = start_node(&db, "a", Arc::new(MemoryRuntime::new(hang)));
    db.with(|c| pool::submit(c, &item(1)).unwrap());
    claim_into(&db, &a, 1).await;
    let old = wait_for(&mut a.events, |e| match e {
        FleetEvent::SessionStarted { session, .. } => Some(*session),
        _ => None,
    })
    .await;
    a.supervisor
        .report_usage(old, 990, None, UsageSource::Reported)
        .await
        .unwrap();
    // The handoff is durable once the rotation row says so.
    let step = tokio::time::timeout(PATIENCE, async {
        loop {
            let step: Option<String> = db.with(|c| {
                c.query_opt("SELECT step FROM rotations WHERE work_item = 1", &[])
                    .unwrap()
                    .map(|r| r.get(0))
            });
            if step.as_deref() == Some("handoff") {
                return step;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the rotation reaches its handoff");
    assert_eq!(step.as_deref(), Some("handoff"));

    run_out_lease(&db, a.epoch);
    let runtime_b =
        Arc::new(MemoryRuntime::new(MemoryConfig::default()).numbering_from(SessionId(1_000_000)));
    let mut b = start_node(&db, "b", runtime_b.clone());
    sweep::adopt(&b.journal, &b.supervisor, a.epoch)
        .await
        .unwrap();
    let outcome = wait_for(&mut b.events, |e| match e {
        FleetEvent::Recovered { outcome, .. } => Some(outcome.clone()),
        _ => None,
    })
    .await;
    let RecoveryOutcome::RotationResumed {
        rotation,
        session,
        step,
    } = outcome
    else {
        panic!("not resumed: {outcome:?}")
    };
    assert_eq!((session, step), (old, RotationStep::Handoff));
    // The rotation ends on b, with one successor of b's, holding the item with the handoff.
    let record = wait_for(&mut b.events, |e| match e {
        FleetEvent::Rotation(r) if r.rotation == rotation => Some(r.clone()),
        _ => None,
    })
    .await;
    assert!(record.success, "{record:?}");
    let successor = record.new_session.expect("a successor");
    assert!(successor.0 >= 1_000_000);
    let sim = runtime_b
        .session(successor)
        .expect("spawned on b's runtime");
    assert_eq!(sim.item, Some(item(1)));
    assert!(
        sim.handoff.is_some(),
        "the successor starts from the handoff"
    );
    b.journal.flush().await.unwrap();
    assert_eq!(owner_of(&db, 1), (Some(b.epoch.0), "live".into()));
    let rotations: Vec<(String, Option<i64>)> = db.with(|c| {
        c.query("SELECT step, owner FROM rotations WHERE work_item = 1", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    });
    assert_eq!(rotations, [("done".to_owned(), Some(b.epoch.0))]);
    b.supervisor.shutdown(Duration::from_secs(5)).await;
    a.supervisor.shutdown(Duration::from_millis(100)).await;
}

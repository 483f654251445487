//! The journal's throughput, and its cost to a fleet.
//!
//! Run: `cargo bench --bench journal` (the journal file goes to a temporary directory; set
//! `TMPDIR` to measure another disk). Prints:
//!
//! * durable events per second: a stream of events handed to the journal and flushed once
//!   (group commit at its best), and writers that each wait for every event to be durable
//!   before sending the next (1 writer: one fsync per event; 64 writers: group commit);
//! * a fleet with and without a file journal: submissions per second (all at once; with a
//!   journal each returns once its item is durable), usage messages per second on the Normal
//!   path (no event is published there, so the journal costs nothing by construction),
//!   compactions per second (each waits for its start to be durable; 3 records), rotations per
//!   second (4 awaited steps; about 9 records), and usage messages per second when usage crosses
//!   a threshold: a burst of reports to each rotated session whose last report crosses 80%, so
//!   the journal writes a transition, a compaction and the transition back per session while
//!   the burst is handled (timed until every compaction is recorded). Each phase starts with the
//!   journal idle.
//!
//! Fleet size: `BATON_BENCH_SESSIONS` (default 10000). Under `cargo test --all-targets` (no
//! `--bench` argument) it runs a small smoke version, to check that it works, in a few seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::runtime::memory::MemoryRuntime;
use baton::supervisor::SessionHandle;
use baton::{
    AgentType, EventKind, FleetEvent, Journal, Phase, SessionId, Supervisor, SupervisorConfig,
    TransitionRecord, UsageSource, WorkItem, WorkItemId,
};

const MESSAGES_PER_SESSION: u64 = 20;

fn transition(seq: u64) -> FleetEvent {
    FleetEvent::Transition(TransitionRecord {
        seq,
        session: SessionId(1),
        from: Phase::Normal,
        to: Phase::Compacting,
        cause: EventKind::Usage,
        usage: Some(baton::Usage::reported(850, 1000).unwrap()),
        reason: None,
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs the same binary without it.
    let full = std::env::args().any(|a| a == "--bench");
    let scale = |n: usize, smoke: usize| if full { n } else { smoke };
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!("journal in {}", dir.path().display());

    // ===== Durable events per second =====
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let journal = Journal::open(dir.path().join("stream.db")).unwrap();
        let n = scale(200_000, 2_000) as u64;
        let t = Instant::now();
        for seq in 1..=n {
            journal.record(&transition(seq));
        }
        rt.block_on(journal.flush()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let stats = journal.stats();
        println!(
            "stream:             {:>9.0} durable events/s  ({n} events, {} commits, {:.0} records/commit)",
            n as f64 / secs,
            stats.commits,
            stats.records as f64 / stats.commits as f64
        );
    }
    for writers in [1usize, 64] {
        let journal = Journal::open(dir.path().join(format!("acked-{writers}.db"))).unwrap();
        let per_writer = if writers == 1 {
            scale(300, 10)
        } else {
            scale(400, 5)
        };
        let t = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let journal = journal.clone();
                    tokio::spawn(async move {
                        for i in 0..per_writer {
                            journal.record(&transition((w * per_writer + i + 1) as u64));
                            journal.flush().await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let secs = t.elapsed().as_secs_f64();
        let stats = journal.stats();
        let total = writers * per_writer;
        println!(
            "{writers:>2} waiting writer{}: {:>9.0} durable events/s  ({total} events, {} commits, {:.1} ms/commit)",
            if writers == 1 { " " } else { "s" },
            total as f64 / secs,
            stats.commits,
            secs * 1000.0 / stats.commits as f64
        );
    }

    // ===== A fleet with and without the journal =====
    let n: usize = std::env::var("BATON_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(scale(10_000, 200));
    println!(
        "\n{:>9} | {:>7} | {:>9} | {:>14} | {:>13} | {:>11} | {:>19} | {:>14}",
        "sessions",
        "journal",
        "submits/s",
        "usage msgs/s",
        "compactions/s",
        "rotations/s",
        "threshold msgs/s",
        "records/commit"
    );
    for journaled in [false, true] {
        let path = dir.path().join(format!("fleet-{n}.db"));
        let row = actix::System::new().block_on(fleet(n, journaled.then_some(path)));
        println!(
            "{:>9} | {:>7} | {:>9.0} | {:>14.0} | {:>13.0} | {:>11.0} | {:>19.0} | {:>14}",
            n,
            if journaled { "file" } else { "none" },
            row.submit_rate,
            row.usage_rate,
            row.compaction_rate,
            row.rotation_rate,
            row.threshold_usage_rate,
            row.records_per_commit
                .map_or("-".to_string(), |r| format!("{r:.0}"))
        );
    }
}

struct Row {
    submit_rate: f64,
    usage_rate: f64,
    compaction_rate: f64,
    rotation_rate: f64,
    /// Usage messages per second in a burst whose last report per session crosses 80%.
    threshold_usage_rate: f64,
    records_per_commit: Option<f64>,
}

async fn fleet(n: usize, journal: Option<std::path::PathBuf>) -> Row {
    let runtime = Arc::new(MemoryRuntime::default());
    let config = SupervisorConfig {
        max_sessions: n,
        max_concurrent_compactions: n,
        ..SupervisorConfig::default()
    };
    let mut builder = Supervisor::builder(runtime.clone())
        .config(config)
        .agent_type(AgentType::new("bench", 1_000_000));
    let journal = journal.map(|p| Journal::open(p).unwrap());
    if let Some(j) = &journal {
        builder = builder.journal(j.clone()).unwrap();
    }
    let supervisor = builder.start();
    let mut events = supervisor.subscribe();
    // Submissions, all at once (each returns when its item is durable).
    let t = Instant::now();
    let submits: Vec<_> = (0..n as u64)
        .map(|i| {
            let supervisor = supervisor.clone();
            let item = WorkItem {
                id: WorkItemId(i),
                agent_type: "bench".into(),
                text: String::new(),
            };
            tokio::task::spawn_local(async move { supervisor.submit(item).await.unwrap() })
        })
        .collect();
    for s in submits {
        s.await.unwrap();
    }
    let submit_rate = n as f64 / t.elapsed().as_secs_f64();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        if let Some(FleetEvent::SessionStarted { session, .. }) = events.recv().await {
            ids.push(session);
        }
    }
    // Each phase starts with the journal idle.
    let idle = || async {
        if let Some(j) = &journal {
            j.flush().await.unwrap();
        }
    };
    idle().await;
    let mut handles: Vec<SessionHandle> = Vec::with_capacity(n);
    for id in &ids {
        handles.push(supervisor.session(*id).await.unwrap());
    }

    // Usage on the Normal path, straight to each session.
    let t = Instant::now();
    for round in 0..MESSAGES_PER_SESSION {
        for h in &handles {
            h.report_usage(1_000 + round, None, UsageSource::Reported);
        }
    }
    for h in &handles {
        h.info().await.unwrap();
    }
    let usage_rate = (n as u64 * MESSAGES_PER_SESSION) as f64 / t.elapsed().as_secs_f64();

    // Compactions: every session reports 85% at once.
    idle().await;
    let before = journal.as_ref().map(|j| j.stats());
    let t = Instant::now();
    for (h, id) in handles.iter().zip(&ids) {
        runtime.grow(*id, 850_000).unwrap();
        h.report_usage(850_000, None, UsageSource::Reported);
    }
    let mut compactions = 0;
    while compactions < n {
        if let Some(FleetEvent::Compaction(c)) = events.recv().await {
            assert!(c.success);
            compactions += 1;
        }
    }
    let compaction_rate = n as f64 / t.elapsed().as_secs_f64();

    // Rotations: every session reports 96% at once.
    idle().await;
    let t = Instant::now();
    for h in &handles {
        h.report_usage(960_000, None, UsageSource::Reported);
    }
    let mut successors = Vec::with_capacity(n);
    while successors.len() < n {
        if let Some(FleetEvent::Rotation(r)) = events.recv().await {
            assert!(r.success);
            successors.push(r.new_session.expect("a successor"));
        }
    }
    let rotation_rate = n as f64 / t.elapsed().as_secs_f64();

    // Usage that crosses a threshold: a burst to every successor, rising, whose last report
    // crosses 80%; timed until every message is handled and every compaction recorded.
    idle().await;
    let mut handles: Vec<SessionHandle> = Vec::with_capacity(n);
    for id in &successors {
        // Registered before its rotation's record was published.
        handles.push(supervisor.session(*id).await.expect("a live successor"));
        runtime.grow(*id, 850_000).unwrap();
    }
    let t = Instant::now();
    for round in 0..MESSAGES_PER_SESSION {
        let used = if round + 1 == MESSAGES_PER_SESSION {
            850_000
        } else {
            500_000 + round * 1_000
        };
        for h in &handles {
            h.report_usage(used, None, UsageSource::Reported);
        }
    }
    for h in &handles {
        h.info().await.unwrap();
    }
    let mut compactions = 0;
    while compactions < n {
        if let Some(FleetEvent::Compaction(_)) = events.recv().await {
            compactions += 1;
        }
    }
    let threshold_usage_rate = (n as u64 * MESSAGES_PER_SESSION) as f64 / t.elapsed().as_secs_f64();
    if let Some(j) = &journal {
        j.flush().await.unwrap();
    }
    let records_per_commit = journal.as_ref().zip(before).map(|(j, b)| {
        let s = j.stats();
        (s.records - b.records) as f64 / (s.commits - b.commits).max(1) as f64
    });
    supervisor.shutdown(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Row {
        submit_rate,
        usage_rate,
        compaction_rate,
        rotation_rate,
        threshold_usage_rate,
        records_per_commit,
    }
}

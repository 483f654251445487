//! Fleet throughput and footprint: the real supervisor and session actors over a zero-latency
//! `MemoryRuntime`, on one actix system (one thread).
//!
//! Run: `cargo bench --bench fleet` (sizes: `BATON_BENCH_SIZES=10000,100000` by default).
//! Prints, per fleet size: session spawn rate, resident bytes per idle session (RSS delta /
//! sessions), usage messages per second on the Normal path (sent straight to each session), and
//! rotations per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::runtime::memory::MemoryRuntime;
use baton::supervisor::SessionHandle;
use baton::{
    AgentType, FleetEvent, Supervisor, SupervisorConfig, UsageSource, WorkItem, WorkItemId,
};

const MESSAGES_PER_SESSION: u64 = 20;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BATON_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "{:>9} | {:>12} | {:>11} | {:>14} | {:>12}",
        "sessions", "spawn/s", "bytes/sess", "usage msgs/s", "rotations/s"
    );
    for n in sizes {
        let row = actix::System::new().block_on(run(n));
        println!(
            "{:>9} | {:>12.0} | {:>11.0} | {:>14.0} | {:>12.0}",
            n, row.spawn_rate, row.bytes_per_session, row.usage_rate, row.rotation_rate
        );
    }
}

struct Row {
    spawn_rate: f64,
    bytes_per_session: f64,
    usage_rate: f64,
    rotation_rate: f64,
}

async fn run(n: usize) -> Row {
    let runtime = Arc::new(MemoryRuntime::default());
    let config = SupervisorConfig {
        max_sessions: n,
        ..SupervisorConfig::default()
    };
    let supervisor = Supervisor::builder(runtime.clone())
        .config(config)
        .agent_type(AgentType::new("bench", 1_000_000))
        .start();
    let mut events = supervisor.subscribe();
    let rss0 = rss_bytes();

    // Spawn.
    let t = Instant::now();
    for i in 0..n as u64 {
        let item = WorkItem {
            id: WorkItemId(i),
            agent_type: "bench".into(),
            text: String::new(),
        };
        supervisor.submit(item).await.unwrap();
    }
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        if let Some(FleetEvent::SessionStarted { session, .. }) = events.recv().await {
            ids.push(session);
        }
    }
    let spawn_rate = n as f64 / t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bytes_per_session = rss_bytes().saturating_sub(rss0) as f64 / n as f64;

    // Usage on the Normal path, straight to each session.
    let mut handles: Vec<SessionHandle> = Vec::with_capacity(n);
    for id in &ids {
        handles.push(supervisor.session(*id).await.unwrap());
    }
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

    // Rotations: every session reports 96% at once.
    let t = Instant::now();
    for h in &handles {
        h.report_usage(960_000, None, UsageSource::Reported);
    }
    let mut rotations = 0;
    while rotations < n {
        if let Some(FleetEvent::Rotation(r)) = events.recv().await {
            assert!(r.success);
            rotations += 1;
        }
    }
    let rotation_rate = n as f64 / t.elapsed().as_secs_f64();
    supervisor.shutdown(Duration::from_secs(60)).await;
    Row {
        spawn_rate,
        bytes_per_session,
        usage_rate,
        rotation_rate,
    }
}

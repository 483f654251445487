//! Fleet throughput and footprint: baton (the real supervisor and session actors over a
//! zero-latency, stateless runtime) against a bare tokio baseline doing the same work (the same
//! state machine in one tokio task per session, fed by an unbounded channel, on a 2-worker
//! multi-thread runtime), measured in one run.
//!
//! Run: `cargo bench --bench fleet` (sizes: `BATON_BENCH_SIZES=10000,100000,1000000` by
//! default). Per size and stack it prints: session spawn rate, resident bytes per idle session,
//! usage messages per second (a burst of 20 to 200 reports per session, 2 M or more in all, on the
//! Normal path), p50/p99 latency from a usage report crossing 80% to the runtime's summarise call
//! while usage flows at a paced 1 M messages per second, and rotations per second; then the ratio baton / baseline. baton
//! coalesces a session's pending readings (only the newest matters on the Normal path), so it
//! also prints the share of burst reports that its sessions handled one by one. A third row, the
//! floor, is an empty actix actor kept by its address: what one actor per session costs before
//! any session state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::runtime::{AgentRuntime, RuntimeError};
use baton::supervisor::SessionHandle;
use baton::{
    AgentType, Effect, Event, FleetEvent, Handoff, Policy, SessionId, SessionMachine, SpawnKey,
    Summary, SummaryPurpose, Supervisor, SupervisorConfig, Usage, UsageSource, WorkItem,
    WorkItemId,
};
use tokio::sync::mpsc;

const WINDOW: u64 = 1_000_000;
/// The burst: at least 20 reports per session, and at least 2 M in all (up to 200 per session),
/// so that a small fleet's burst lasts long enough to measure on a noisy machine.
fn burst_per_session(n: usize) -> u64 {
    (2_000_000 / n.max(1) as u64).clamp(20, 200)
}
const PACED_RATE: f64 = 1_000_000.0;
const PACED_SECONDS: f64 = 1.0;
const SAMPLES: usize = 500;

/// Marks a phase boundary for a profiler: with `BATON_BENCH_MARK=1`, sends SIGUSR2 to the
/// parent process, which `perf record --switch-output=signal` (the parent when it runs the
/// bench) takes as "start a new output file", so each phase lands in a file of its own (see
/// docs/performance.md). Waits a little so that the switch happens at the boundary.
fn mark() {
    if std::env::var_os("BATON_BENCH_MARK").is_none() {
        return;
    }
    let parent = std::os::unix::process::parent_id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-USR2", &parent])
        .status();
    std::thread::sleep(Duration::from_millis(200));
}

/// CPU time the process has used so far (all threads, user and system), in seconds: a phase's
/// CPU time per session does not depend on what else the machine runs, as its rate does.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Prints (to stderr, seen when a `BATON_BENCH_ONE` child runs by hand) the CPU time per
/// session a phase took.
fn cpu_note(stack: &str, phase: &str, since: f64, n: usize) {
    eprintln!(
        "CPU {stack} {phase}: {:.1} µs per session",
        (cpu_secs() - since) * 1e6 / n as f64
    );
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The runtime both stacks call: zero latency and no per-session state (so the footprint
/// measured is the fleet's own, not a simulation's), noting when each session's summarise call
/// arrived, to measure report-to-effect latency.
struct Timed {
    next_id: AtomicU64,
    summarised: Mutex<HashMap<SessionId, Instant>>,
}

impl Timed {
    fn new() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            summarised: Mutex::default(),
        }
    }
}

#[async_trait]
impl AgentRuntime for Timed {
    async fn summarise(
        &self,
        session: SessionId,
        _: SummaryPurpose,
    ) -> Result<Summary, RuntimeError> {
        self.summarised
            .lock()
            .unwrap()
            .entry(session)
            .or_insert_with(Instant::now);
        Ok(Summary {
            text: String::new(),
            tokens: 500,
        })
    }
    async fn replace_history(&self, _: SessionId, summary: &Summary) -> Result<u64, RuntimeError> {
        Ok(1_000 + summary.tokens)
    }
    async fn close(&self, _: SessionId) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn spawn(&self, _: &AgentType, _: SpawnKey) -> Result<SessionId, RuntimeError> {
        Ok(SessionId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1))
    }
    async fn assign(
        &self,
        _: SessionId,
        _: &WorkItem,
        _: Option<&Handoff>,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}

#[derive(Default, Clone, Copy)]
struct Row {
    spawn_rate: f64,
    bytes_per_session: f64,
    usage_rate: f64,
    p50_us: f64,
    p99_us: f64,
    rotation_rate: f64,
    /// Share of burst reports handled one by one (the rest were coalesced into a newer one).
    handled: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits (up to a minute) until the runtime saw `expected` summarise calls; then the p50 and p99
/// of the time from each sampled crossing report to its session's summarise call.
async fn latencies(
    sent: &HashMap<SessionId, Instant>,
    runtime: &Timed,
    expected: usize,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while runtime.summarised.lock().unwrap().len() < expected {
        assert!(
            Instant::now() < deadline,
            "a threshold crossing was never acted on"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = runtime.summarised.lock().unwrap();
    let mut l: Vec<f64> = sent
        .iter()
        .filter_map(|(s, t)| got.get(s).map(|g| g.duration_since(*t).as_secs_f64() * 1e6))
        .collect();
    l.sort_by(f64::total_cmp);
    (percentile(&l, 0.50), percentile(&l, 0.99))
}

/// Sends `PACED_RATE / senders` messages per second for `PACED_SECONDS`, in 1 ms batches over
/// the sessions round-robin; spread evenly through it, each sample session's report crosses 80%.
async fn paced(
    n: usize,
    senders: f64,
    mut send: impl FnMut(usize, u64),
    samples: &[usize],
    mut mark: impl FnMut(usize),
) {
    let rate = PACED_RATE / senders;
    let total = (rate * PACED_SECONDS) as usize;
    let per_ms = (rate / 1000.0) as usize;
    let every = (total / samples.len().max(1)).max(1);
    let crossing: HashMap<usize, usize> = samples
        .iter()
        .enumerate()
        .map(|(j, s)| (j * every, *s))
        .collect();
    let start = Instant::now();
    let mut crossed = std::collections::HashSet::new();
    let mut i = 0usize;
    while i < total {
        for _ in 0..per_ms.min(total - i) {
            match crossing.get(&i) {
                Some(&s) => {
                    mark(s);
                    crossed.insert(s);
                    send(s, WINDOW * 85 / 100);
                }
                // A session that crossed gets no lower reading after it: usage only grows,
                // and a coalescing session keeps only the newest reading.
                None if crossed.contains(&(i % n)) => {}
                None => send(i % n, 2_000 + (i / n) as u64),
            }
            i += 1;
        }
        let due = start + Duration::from_micros((i as f64 / rate * 1e6) as u64);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Returns once each arbiter has run everything queued on it before (actors are built on their
/// arbiter's thread, after `start_in_arbiter` returns).
async fn drained(arbiters: &[actix::ArbiterHandle]) {
    for a in arbiters {
        let (tx, rx) = tokio::sync::oneshot::channel();
        a.spawn(async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();
    }
}

fn sample_sessions(n: usize) -> Vec<usize> {
    let step = (n / SAMPLES).max(1);
    (0..n).step_by(step).take(SAMPLES).collect()
}

// ===== baton =====

async fn baton_run(n: usize) -> Row {
    let runtime = Arc::new(Timed::new());
    let config = SupervisorConfig {
        max_sessions: n,
        shards: 2,
        ..SupervisorConfig::default()
    };
    // History long enough to keep every burst reading, to count the ones handled.
    let policy = Policy::builder()
        .max_compactions(u32::MAX)
        .history_len(burst_per_session(n) as usize)
        .build()
        .unwrap();
    let supervisor = Supervisor::builder(runtime.clone())
        .config(config)
        .agent_type(AgentType::new("b", WINDOW).with_policy(policy))
        .start();
    let mut events = supervisor.subscribe();
    let rss0 = rss_bytes();
    mark();
    let (t, cpu) = (Instant::now(), cpu_secs());
    for i in 0..n as u64 {
        let item = WorkItem {
            id: WorkItemId(i),
            agent_type: "b".into(),
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
    drained(&supervisor.shards().await).await;
    let spawn_rate = n as f64 / t.elapsed().as_secs_f64();
    cpu_note("baton", "spawn", cpu, n);
    mark();
    // The fleet's own footprint (registry, actors, machines), before the caller takes handles.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes_per_session = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    if std::env::var_os("BATON_BENCH_FOOTPRINT").is_some() {
        // For a heap profiler: what is still allocated at exit is the idle fleet.
        println!("footprint {bytes_per_session:.0} bytes per idle session");
        std::process::exit(0);
    }
    let mut handles: Vec<SessionHandle> = Vec::with_capacity(n);
    for id in &ids {
        handles.push(supervisor.session(*id).await.unwrap());
    }

    // Burst on the Normal path, sent by one task per shard to that shard's sessions.
    let shards = supervisor.shards().await;
    let mut per_shard: Vec<Vec<SessionHandle>> = vec![Vec::new(); shards.len()];
    for h in &handles {
        per_shard[h.shard.unwrap_or(0)].push(h.clone());
    }
    let burst = burst_per_session(n);
    let t = Instant::now();
    let mut done = Vec::new();
    for (arbiter, mine) in shards.iter().zip(per_shard) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        arbiter.spawn(async move {
            for round in 0..burst {
                for h in &mine {
                    h.report_usage(1_000 + round, None, UsageSource::Reported);
                }
                // Let the shard's sessions drain between rounds.
                tokio::task::yield_now().await;
            }
            let mut infos = Vec::with_capacity(mine.len());
            for h in &mine {
                infos.push(h.info().await.unwrap());
            }
            let _ = tx.send(infos);
        });
        done.push(rx);
    }
    let mut handled = 0usize;
    for rx in done {
        for info in rx.await.unwrap() {
            assert_eq!(
                info.usage.map(|u| u.used()),
                Some(1_000 + burst - 1),
                "every session handled its newest reading"
            );
            handled += info.history.len();
        }
    }
    let usage_rate = (n as u64 * burst) as f64 / t.elapsed().as_secs_f64();
    let handled = handled as f64 / (n as u64 * burst) as f64;

    // Paced load with threshold crossings: one paced sender per shard, each at its share of
    // the rate, to its own sessions.
    let samples = sample_sessions(n);
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let mut done = Vec::new();
    let share = shards.len().max(1);
    for (k, arbiter) in shards.iter().enumerate() {
        let mine: Vec<SessionHandle> = handles
            .iter()
            .filter(|h| h.shard == Some(k))
            .cloned()
            .collect();
        let my_samples: Vec<usize> = samples
            .iter()
            .map(|i| i / share)
            .filter(|i| *i < mine.len())
            .collect();
        let sent = sent.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        arbiter.spawn(async move {
            paced(
                mine.len(),
                share as f64,
                |i, used| mine[i].report_usage(used, None, UsageSource::Reported),
                &my_samples,
                |i| {
                    sent.lock().unwrap().insert(mine[i].session, Instant::now());
                },
            )
            .await;
            let _ = tx.send(());
        });
        done.push(rx);
    }
    for rx in done {
        rx.await.unwrap();
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let samples: Vec<SessionId> = sent.keys().copied().collect();
    let (p50_us, p99_us) = latencies(&sent, &runtime, samples.len()).await;
    // Let the sampled compactions finish.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Rotations: every session reports 96%.
    while events.try_recv().is_ok() {}
    mark();
    let (t, cpu) = (Instant::now(), cpu_secs());
    for h in &handles {
        h.report_usage(WINDOW * 96 / 100, None, UsageSource::Reported);
    }
    let mut rotations = 0;
    while rotations < n {
        if let Some(FleetEvent::Rotation(r)) = events.recv().await {
            assert!(r.success);
            rotations += 1;
        }
    }
    let rotation_rate = n as f64 / t.elapsed().as_secs_f64();
    cpu_note("baton", "rotation", cpu, n);
    mark();
    supervisor.shutdown(Duration::from_secs(120)).await;
    Row {
        spawn_rate,
        bytes_per_session,
        usage_rate,
        p50_us,
        p99_us,
        rotation_rate,
        handled,
    }
}

// ===== the floor: empty actix actors =====

/// An actor with no state and no handlers: what actix itself costs per session.
struct Empty;

impl actix::Actor for Empty {
    type Context = actix::Context<Self>;
}

async fn floor_run(n: usize) -> Row {
    let arbiter = actix::Arbiter::new();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let addrs: Vec<actix::Addr<Empty>> = (0..n)
        .map(|_| <Empty as actix::Actor>::start_in_arbiter(&arbiter.handle(), |_| Empty))
        .collect();
    drained(&[arbiter.handle()]).await;
    let spawn_rate = n as f64 / t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes_per_session = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    drop(addrs);
    Row {
        spawn_rate,
        bytes_per_session,
        usage_rate: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        rotation_rate: f64::NAN,
        handled: f64::NAN,
    }
}

// ===== bare tokio baseline =====

enum Msg {
    Usage(u64),
    HandedOver(SessionId),
}

/// One session: the same machine, in a plain task; effects run inline (compaction) or go to
/// the rotation task.
async fn session_task(
    id: SessionId,
    policy: Arc<Policy>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    runtime: Arc<Timed>,
    rotations: mpsc::UnboundedSender<SessionId>,
    processed: Arc<AtomicUsize>,
) {
    let mut machine = SessionMachine::new(id, policy);
    while let Some(msg) = rx.recv().await {
        let step = match msg {
            Msg::Usage(used) => {
                machine.handle(&Event::Usage(Usage::reported(used, WINDOW).unwrap()))
            }
            Msg::HandedOver(s) => machine.handle(&Event::HandedOver { successor: s }),
        };
        processed.fetch_add(1, Ordering::Relaxed);
        for effect in step.map(|s| s.effects).unwrap_or_default() {
            match effect {
                Effect::Compact { .. } => {
                    let summary = runtime
                        .summarise(id, SummaryPurpose::Compaction)
                        .await
                        .unwrap();
                    let after = runtime.replace_history(id, &summary).await.unwrap();
                    let _ = machine.handle(&Event::Compacted {
                        after,
                        summary_tokens: summary.tokens,
                    });
                }
                Effect::RequestRotation { .. } => {
                    let _ = rotations.send(id);
                }
                Effect::Stop => return,
            }
        }
    }
}

async fn baseline_run(n: usize) -> Row {
    let runtime = Arc::new(Timed::new());
    let policy = Arc::new(Policy::builder().max_compactions(u32::MAX).build().unwrap());
    let agent = AgentType::new("b", WINDOW);
    let processed = Arc::new(AtomicUsize::new(0));
    let (rot_tx, mut rot_rx) = mpsc::unbounded_channel::<SessionId>();
    let rss0 = rss_bytes();
    let (t, cpu) = (Instant::now(), cpu_secs());
    let mut senders: HashMap<SessionId, mpsc::UnboundedSender<Msg>> = HashMap::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let start_session =
        |id: SessionId, senders: &mut HashMap<SessionId, mpsc::UnboundedSender<Msg>>| {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(id, tx);
            tokio::spawn(session_task(
                id,
                policy.clone(),
                rx,
                runtime.clone(),
                rot_tx.clone(),
                processed.clone(),
            ));
        };
    for i in 0..n as u64 {
        let id = runtime.spawn(&agent, SpawnKey(i)).await.unwrap();
        let item = WorkItem {
            id: WorkItemId(i),
            agent_type: "b".into(),
            text: String::new(),
        };
        runtime.assign(id, &item, None).await.unwrap();
        start_session(id, &mut senders);
        ids.push(id);
    }
    let spawn_rate = n as f64 / t.elapsed().as_secs_f64();
    cpu_note("tokio", "spawn", cpu, n);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes_per_session = rss_bytes().saturating_sub(rss0) as f64 / n as f64;

    let wait_processed = |target: usize| {
        let processed = processed.clone();
        async move {
            while processed.load(Ordering::Relaxed) < target {
                tokio::task::yield_now().await;
            }
        }
    };
    let burst = burst_per_session(n);
    let t = Instant::now();
    for round in 0..burst {
        for id in &ids {
            let _ = senders[id].send(Msg::Usage(1_000 + round));
        }
    }
    wait_processed(n * burst as usize).await;
    let usage_rate = (n as u64 * burst) as f64 / t.elapsed().as_secs_f64();

    let samples = sample_sessions(n);
    let mut sent = HashMap::new();
    paced(
        n,
        1.0,
        |i, used| {
            let _ = senders[&ids[i]].send(Msg::Usage(used));
        },
        &samples,
        |i| {
            sent.insert(ids[i], Instant::now());
        },
    )
    .await;
    let (p50_us, p99_us) = latencies(&sent, &runtime, samples.len()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Rotations, as the supervisor does them: handoff, spawn, assign, close, hand over.
    let (t, cpu) = (Instant::now(), cpu_secs());
    for id in &ids {
        let _ = senders[id].send(Msg::Usage(WINDOW * 96 / 100));
    }
    let mut done = 0usize;
    let mut key = n as u64;
    while done < n {
        let old = rot_rx.recv().await.unwrap();
        let summary = runtime
            .summarise(old, SummaryPurpose::Handoff)
            .await
            .unwrap();
        key += 1;
        let new = runtime.spawn(&agent, SpawnKey(key)).await.unwrap();
        let item = WorkItem {
            id: WorkItemId(key),
            agent_type: "b".into(),
            text: String::new(),
        };
        let handoff = Handoff {
            text: summary.text,
            tokens: summary.tokens,
            fallback: false,
        };
        runtime.assign(new, &item, Some(&handoff)).await.unwrap();
        runtime.close(old).await.unwrap();
        start_session(new, &mut senders);
        let _ = senders[&old].send(Msg::HandedOver(new));
        done += 1;
    }
    let rotation_rate = n as f64 / t.elapsed().as_secs_f64();
    cpu_note("tokio", "rotation", cpu, n);
    Row {
        spawn_rate,
        bytes_per_session,
        usage_rate,
        p50_us,
        p99_us,
        rotation_rate,
        handled: 1.0,
    }
}

/// A figure, or `-` where the stack does not measure it.
fn cell(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.decimals$}")
    }
}

fn print(label: &str, n: usize, r: &Row, decimals: usize) {
    println!(
        "{:>9} | {:<8} | {:>10} | {:>10} | {:>12} | {:>7} | {:>9} | {:>9} | {:>11}",
        n,
        label,
        cell(r.spawn_rate, decimals),
        cell(r.bytes_per_session, decimals),
        cell(r.usage_rate, decimals),
        cell(r.handled * 100.0, if decimals == 0 { 1 } else { decimals }),
        cell(r.p50_us, decimals),
        cell(r.p99_us, decimals),
        cell(r.rotation_rate, decimals)
    );
}

fn main() {
    // One (stack, size) per process, so that one run's freed memory does not hide the next
    // one's footprint: the parent re-runs itself for each.
    if let Ok(one) = std::env::var("BATON_BENCH_ONE") {
        let (stack, n) = one.split_once(':').expect("stack:size");
        let n: usize = n.parse().expect("size");
        let row = if stack == "baton" {
            actix::System::new().block_on(baton_run(n))
        } else if stack == "floor" {
            actix::System::new().block_on(floor_run(n))
        } else {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(baseline_run(n))
        };
        println!(
            "ROW {} {} {} {} {} {} {}",
            row.spawn_rate,
            row.bytes_per_session,
            row.usage_rate,
            row.p50_us,
            row.p99_us,
            row.rotation_rate,
            row.handled
        );
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, as a
    // smoke test of a small fleet.
    let full = std::env::args().any(|a| a == "--bench");
    let default_sizes = if full { "10000,100000,1000000" } else { "2000" };
    let sizes: Vec<usize> = std::env::var("BATON_BENCH_SIZES")
        .unwrap_or_else(|_| default_sizes.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "{:>9} | {:<8} | {:>10} | {:>10} | {:>12} | {:>7} | {:>9} | {:>9} | {:>11}",
        "sessions",
        "stack",
        "spawn/s",
        "B/session",
        "usage msg/s",
        "handled",
        "p50 µs",
        "p99 µs",
        "rotations/s"
    );
    let one = |stack: &str, n: usize| -> Row {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("BATON_BENCH_ONE", format!("{stack}:{n}"))
            .output()
            .expect("bench child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("ROW "))
            .unwrap_or_else(|| {
                panic!(
                    "{stack} at {n} printed no figures: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let f: Vec<f64> = line[4..].split(' ').map(|x| x.parse().unwrap()).collect();
        Row {
            spawn_rate: f[0],
            bytes_per_session: f[1],
            usage_rate: f[2],
            p50_us: f[3],
            p99_us: f[4],
            rotation_rate: f[5],
            handled: f[6],
        }
    };
    for n in sizes {
        let b = one("baton", n);
        print("baton", n, &b, 0);
        let t = one("tokio", n);
        print("tokio", n, &t, 0);
        let ratio = Row {
            spawn_rate: b.spawn_rate / t.spawn_rate,
            bytes_per_session: b.bytes_per_session / t.bytes_per_session,
            usage_rate: b.usage_rate / t.usage_rate,
            p50_us: b.p50_us / t.p50_us,
            p99_us: b.p99_us / t.p99_us,
            rotation_rate: b.rotation_rate / t.rotation_rate,
            handled: b.handled / t.handled / 100.0,
        };
        print("ratio", n, &ratio, 2);
        print("floor", n, &one("floor", n), 0);
    }
}

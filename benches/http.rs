//! `baton serve` under load, next to the same work done in-process, measured in one run.
//!
//! A fleet of `BATON_BENCH_HTTP_SESSIONS` live sessions (10,000 by default) over a zero-latency
//! runtime, journaled in a temporary directory (as `baton serve` runs by default), is served on
//! 127.0.0.1 by the real server (`serve::bind`, two HTTP workers). Then, with the client in the
//! same process:
//!
//! - usage reports, one per request (`POST /v1/sessions/{id}/usage`, 64 requests in flight),
//!   against `SessionHandle::report_usage_and_wait` with 64 calls in flight;
//! - usage reports in batches of 100 (`POST /v1/usage`, 8 batches in flight), against 100
//!   concurrent in-process calls per batch;
//! - events: every session closed at once; the rate at which the event stream
//!   (`GET /v1/events/stream`) delivers the resulting events, against an in-process sequenced
//!   subscriber reading the same events in the same run.
//!
//! Readings stay far below 80%, so every report takes the Normal path. Latency is per request
//! (per batch for batches), from send to the full answer. Run: `cargo bench --bench http`
//! (`BATON_BENCH_HTTP_SESSIONS`, `BATON_BENCH_HTTP_REPORTS` change the sizes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::serve::events::EventHub;
use baton::serve::guard::Token;
use baton::serve::metrics::{MeteredRuntime, Metrics};
use baton::serve::{Parts, ServeConfig};
use baton::supervisor::SessionHandle;
use baton::{
    AgentType, FleetEvent, Journal, SessionId, Supervisor, SupervisorConfig, UsageSource, WorkItem,
    WorkItemId,
};

const TOKEN: &str = "bench-token-0123456789abcdef";
const WINDOW: u64 = 1_000_000;
const IN_FLIGHT: usize = 64;
const BATCH: usize = 100;
const BATCHES_IN_FLIGHT: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Throughput and latency of one way of reporting.
struct Figure {
    what: &'static str,
    reports: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Figure {
    fn per_second(&self) -> f64 {
        self.reports as f64 / self.seconds
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Runs `total` jobs with `in_flight` at once; `job(i)` does the i-th and the time it took is
/// one latency sample.
async fn drive<F, Fut>(total: usize, in_flight: usize, job: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let job = job.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return samples;
                }
                let t = Instant::now();
                job(i).await;
                samples.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await.expect("a bench worker panicked"));
    }
    (start.elapsed().as_secs_f64(), latencies)
}

/// The reading for report `i` of session `s`: low, and changing so each one is new.
fn used(i: usize) -> u64 {
    10_000 + (i % 1000) as u64
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, as a
    // smoke test of the same code on a small fleet.
    let full = std::env::args().any(|a| a == "--bench");
    let sessions = env_usize("BATON_BENCH_HTTP_SESSIONS", if full { 10_000 } else { 100 });
    let reports = env_usize(
        "BATON_BENCH_HTTP_REPORTS",
        if full { 100_000 } else { 1_000 },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(bench(sessions, reports));
}

async fn bench(n: usize, reports: usize) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
        base_tokens: 100,
        ..MemoryConfig::default()
    }));
    let metrics = Metrics::new();
    let builder = Supervisor::builder(Arc::new(MeteredRuntime::new(runtime.clone(), &metrics)))
        .config(SupervisorConfig {
            max_sessions: n,
            ..SupervisorConfig::default()
        })
        .agent_type(AgentType::new("coder", WINDOW));
    metrics.follow(builder.subscribe());
    let builder = builder
        .journal(Journal::open(dir.path().join("baton.db")).expect("a journal"))
        .expect("the journal");
    let mut inproc_events = builder.subscribe_sequenced();
    let supervisor = builder.start();
    metrics.spawn_feed();

    // The fleet: n live sessions.
    let t = Instant::now();
    for i in 0..n as u64 {
        supervisor
            .submit(WorkItem {
                id: WorkItemId(i + 1),
                agent_type: "coder".into(),
                text: format!("item {i}"),
            })
            .await
            .expect("submit");
    }
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let e = inproc_events.recv().await.expect("the event stream");
        if let FleetEvent::SessionStarted { session, .. } = e.event {
            ids.push(session);
        }
    }
    println!(
        "fleet: {n} live sessions started in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut handles = Vec::with_capacity(n);
    for id in &ids {
        handles.push(supervisor.session(*id).await.expect("a live session"));
    }
    let handles: Arc<Vec<SessionHandle>> = Arc::new(handles);
    let ids: Arc<Vec<SessionId>> = Arc::new(ids);

    let mut config = ServeConfig::new(Token::new(TOKEN).expect("a token"));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.workers = 2;
    let parts = Parts {
        supervisor: supervisor.clone(),
        store: None,
        commands: None,
        events: EventHub::new(&supervisor),
        metrics,
        cluster: None,
    };
    let (addr, server) = baton::serve::bind(&config, parts).expect("bind");
    let server_handle = server.handle();
    tokio::spawn(server);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("an HTTP client");

    let mut figures = Vec::new();

    // In-process, one report per call.
    let h = handles.clone();
    let (seconds, latencies) = drive(reports, IN_FLIGHT, move |i| {
        let h = h.clone();
        async move {
            h[i % h.len()]
                .report_usage_and_wait(used(i), None, UsageSource::Reported)
                .await
                .expect("a live session");
        }
    })
    .await;
    figures.push(Figure {
        what: "in-process, single",
        reports,
        seconds,
        latencies,
    });

    // HTTP, one report per request.
    let (c, b, s) = (http.clone(), base.clone(), ids.clone());
    let (seconds, latencies) = drive(reports, IN_FLIGHT, move |i| {
        let (c, b, s) = (c.clone(), b.clone(), s.clone());
        async move {
            let id = s[i % s.len()].0;
            let r = c
                .post(format!("{b}/v1/sessions/{id}/usage"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({ "used": used(i) }))
                .send()
                .await
                .expect("a response");
            assert!(r.status().is_success(), "usage answered {}", r.status());
            r.bytes().await.expect("a body");
        }
    })
    .await;
    figures.push(Figure {
        what: "HTTP, single",
        reports,
        seconds,
        latencies,
    });

    // In-process, batches of 100 concurrent calls.
    let batches = reports / BATCH;
    let h = handles.clone();
    let (seconds, latencies) = drive(batches, BATCHES_IN_FLIGHT, move |k| {
        let h = h.clone();
        async move {
            let calls = (0..BATCH).map(|j| {
                let i = k * BATCH + j;
                let h = h.clone();
                async move {
                    h[i % h.len()]
                        .report_usage_and_wait(used(i), None, UsageSource::Reported)
                        .await
                        .expect("a live session");
                }
            });
            futures_util::future::join_all(calls).await;
        }
    })
    .await;
    figures.push(Figure {
        what: "in-process, batches of 100",
        reports: batches * BATCH,
        seconds,
        latencies,
    });

    // HTTP, batches of 100 reports per request.
    let (c, b, s) = (http.clone(), base.clone(), ids.clone());
    let (seconds, latencies) = drive(batches, BATCHES_IN_FLIGHT, move |k| {
        let (c, b, s) = (c.clone(), b.clone(), s.clone());
        async move {
            let reports: Vec<_> = (0..BATCH)
                .map(|j| {
                    let i = k * BATCH + j;
                    serde_json::json!({ "session": s[i % s.len()].0, "used": used(i) })
                })
                .collect();
            let r = c
                .post(format!("{b}/v1/usage"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({ "reports": reports }))
                .send()
                .await
                .expect("a response");
            assert!(
                r.status().is_success(),
                "usage batch answered {}",
                r.status()
            );
            r.bytes().await.expect("a body");
        }
    })
    .await;
    figures.push(Figure {
        what: "HTTP, batches of 100",
        reports: batches * BATCH,
        seconds,
        latencies,
    });

    println!();
    println!(
        "usage reports at {n} sessions ({IN_FLIGHT} requests in flight; batches: {BATCHES_IN_FLIGHT})"
    );
    println!(
        "| {:<28} | {:>12} | {:>10} | {:>10} |",
        "how", "reports/s", "p50", "p99"
    );
    println!("| {:-<28} | {:->12} | {:->10} | {:->10} |", "", "", "", "");
    for f in &figures {
        println!(
            "| {:<28} | {:>12.0} | {:>10} | {:>10} |",
            f.what,
            f.per_second(),
            micros(f.percentile(0.5)),
            micros(f.percentile(0.99))
        );
    }
    println!(
        "ratio HTTP / in-process: single {:.2}, batched {:.2}",
        figures[1].per_second() / figures[0].per_second(),
        figures[3].per_second() / figures[2].per_second()
    );

    // Events: open the stream, note where the log is, close every session at once, and time
    // both readers until each has seen every event that followed.
    while inproc_events.try_recv().is_ok() {}
    let mut stream = http
        .get(format!("{base}/v1/events/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the event stream");
    assert!(stream.status().is_success());
    let t = Instant::now();
    for id in ids.iter() {
        supervisor.close(*id).await.expect("close");
    }
    // In-process: every session's WorkItemDone.
    let mut inproc_count = 0usize;
    let mut done = 0usize;
    let mut last_seq = 0;
    while done < n {
        let e = inproc_events.recv().await.expect("the event stream");
        inproc_count += 1;
        last_seq = e.seq;
        if matches!(e.event, FleetEvent::WorkItemDone { .. }) {
            done += 1;
        }
    }
    let inproc_seconds = t.elapsed().as_secs_f64();
    // The stream: every event up to the same seq.
    let mut http_count = 0usize;
    let mut buffer = String::new();
    'read: while let Some(chunk) = stream.chunk().await.expect("a chunk") {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if let Some(id) = line.strip_prefix("id:") {
                http_count += 1;
                if id.trim().parse::<u64>().ok() >= Some(last_seq) {
                    break 'read;
                }
            }
        }
    }
    let http_seconds = t.elapsed().as_secs_f64();
    println!();
    println!(
        "events after closing {n} sessions at once (journaled; includes the closes' own time)"
    );
    println!(
        "| {:<28} | {:>10} | {:>12} |",
        "reader", "events", "events/s"
    );
    println!("| {:-<28} | {:->10} | {:->12} |", "", "", "");
    println!(
        "| {:<28} | {:>10} | {:>12.0} |",
        "in-process subscriber",
        inproc_count,
        inproc_count as f64 / inproc_seconds
    );
    println!(
        "| {:<28} | {:>10} | {:>12.0} |",
        "SSE /v1/events/stream",
        http_count,
        http_count as f64 / http_seconds
    );
    server_handle.stop(true).await;
    supervisor.shutdown(Duration::from_secs(10)).await;
}

//! baton's own time per chat turn, against the time a real model takes to answer one.
//!
//! Run: `cargo bench --bench chat`. Two parts, each a `ChatRuntime` under the real supervisor:
//!
//! 1. **Overhead**, against the loopback stub (which answers at once): every turn's
//!    [`Turn::overhead`], that is the turn's wall time minus the time spent waiting on the
//!    endpoint. It covers building and serialising the request, parsing the reply, the usage
//!    accounting (tiktoken on the new messages, the tracker) and the report to the session's
//!    actor. Measured at three history sizes, from about 1.5k tokens (the real-server window
//!    below), 32k and 128k, over 50 turns each (which grow the history a little).
//! 2. **A real turn**, against llama-server with SmolLM2-135M (2,048-token window, one thread):
//!    the request latency of short turns, and baton's overhead on those same turns.
//!
//! It prints medians and p95s and the share of a real turn that is baton's. Under `cargo test`
//! (no `--bench` argument) it runs a few turns of each part, to check that it works.

#[path = "../tests/support/llama.rs"]
#[allow(dead_code)]
mod llama;
#[path = "../tests/support/stub.rs"]
#[allow(dead_code)]
mod stub;

use std::sync::Arc;
use std::time::Duration;

use baton::run::take_turn;
use baton::runtime::chat::{ChatClient, ChatRuntime, ChatRuntimeConfig, ClientConfig, Turn};
use baton::{
    AgentType, FleetEvent, SessionHandle, Supervisor, SupervisorHandle, WorkItem, WorkItemId,
};

/// A fleet of one agent over `base_url`, and its session.
async fn one_session(
    base_url: String,
    window: u64,
    reply_tokens: u32,
) -> (Arc<ChatRuntime>, SupervisorHandle, SessionHandle) {
    let mut client = ClientConfig::new(base_url);
    client.request_timeout = Duration::from_secs(300);
    let runtime = Arc::new(ChatRuntime::with_config(
        ChatClient::new(client).unwrap(),
        ChatRuntimeConfig {
            reply_tokens: Some(reply_tokens),
            temperature: Some(0.0),
            seed: Some(7),
            ..ChatRuntimeConfig::default()
        },
    ));
    let agent = AgentType {
        model: "smollm2".into(),
        system_prompt: "You are a terse assistant.".into(),
        ..AgentType::new("bench", window)
    };
    let builder = Supervisor::builder(runtime.clone()).agent_type(agent);
    let mut events = builder.subscribe();
    let supervisor = builder.start();
    supervisor
        .submit(WorkItem {
            id: WorkItemId(1),
            agent_type: "bench".into(),
            text: "Answer each question in a few words.".into(),
        })
        .await
        .unwrap();
    let session = loop {
        if let Some(FleetEvent::SessionStarted { session, .. }) = events.recv().await {
            break session;
        }
    };
    let handle = supervisor.session(session).await.expect("registered");
    (runtime, supervisor, handle)
}

/// Median and 95th percentile, in microseconds.
fn stats(mut xs: Vec<Duration>) -> (f64, f64) {
    xs.sort();
    let at = |p: f64| xs[((xs.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.95))
}

/// A tool output of about `tokens` tokens (4 characters each), varied per turn.
fn tool_output(turn: usize, tokens: usize) -> String {
    let line = format!("{turn}: src/module_{turn}.rs:42: warning: unused variable `x_{turn}`\n");
    line.repeat((tokens * 4).div_ceil(line.len()))
}

/// Part 1: overhead per turn against the stub, measured at the history sizes in `sizes`
/// (tokens), `turns` turns each.
async fn overhead(sizes: &[usize], turns: usize) -> Vec<((usize, usize), (f64, f64), usize)> {
    let stub = stub::Stub::start().await;
    // The stub's usage is a quarter of the request's characters: as big as the history.
    let (runtime, supervisor, s) = one_session(stub.base_url(), 1_000_000, 64).await;
    take_turn(&runtime, &s, None).await.unwrap();
    let mut rows = Vec::new();
    let mut history_tokens = 0;
    let mut turn = 0;
    for &size in sizes {
        // Grow the history to `size` with turns of 500-token tool outputs (not measured).
        while history_tokens < size {
            turn += 1;
            let t = take_turn(&runtime, &s, Some(&tool_output(turn, 500)))
                .await
                .unwrap();
            history_tokens = t.reading.unwrap().usage.used() as usize;
        }
        // Then measure turns that each add a small message, so the size stays put.
        let start = history_tokens;
        let mut samples = Vec::with_capacity(turns);
        for _ in 0..turns {
            turn += 1;
            let t: Turn = take_turn(
                &runtime,
                &s,
                Some(&format!("Next question, number {turn}?")),
            )
            .await
            .unwrap();
            history_tokens = t.reading.unwrap().usage.used() as usize;
            samples.push(t.overhead());
        }
        let messages = runtime.history(s.session).await.unwrap().len();
        rows.push(((start, history_tokens), stats(samples), messages));
    }
    supervisor.shutdown(Duration::from_secs(5)).await;
    rows
}

/// Part 2: `turns` short turns against the real server: request latency and baton's overhead.
async fn real(turns: usize) -> ((f64, f64), (f64, f64)) {
    let server = llama::LlamaServer::start(llama::LlamaOptions::window(2048));
    let (runtime, supervisor, s) = one_session(server.base_url(), 2048, 16).await;
    // The first reply warms the server's cache; not measured.
    take_turn(&runtime, &s, None).await.unwrap();
    let mut latency = Vec::with_capacity(turns);
    let mut own = Vec::with_capacity(turns);
    for i in 0..turns {
        let t = take_turn(&runtime, &s, Some(&format!("Name prime number {}.", i + 1)))
            .await
            .unwrap();
        latency.push(t.request_time);
        own.push(t.overhead());
    }
    supervisor.shutdown(Duration::from_secs(5)).await;
    drop(server);
    (stats(latency), stats(own))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, stub_turns, real_turns): (&[usize], usize, usize) = if full {
        (&[1_500, 32_000, 128_000], 50, 12)
    } else {
        (&[1_500], 10, 2)
    };
    actix::System::new().block_on(async move {
        println!("baton's own time per chat turn (ChatRuntime under the supervisor)");
        println!("\n1. against the loopback stub (answers at once), {stub_turns} turns per size");
        println!("{:>16} | {:>9} | {:>14} | {:>14}", "history tokens", "messages", "median µs", "p95 µs");
        let rows = overhead(sizes, stub_turns).await;
        for ((from, to), (p50, p95), messages) in &rows {
            let tokens = format!("{from}-{to}");
            println!("{tokens:>16} | {messages:>9} | {p50:>14.1} | {p95:>14.1}");
        }
        println!("\n2. against llama-server, SmolLM2-135M, 2,048-token window, -t 1; {real_turns} turns of up to 16 tokens");
        let ((lat50, lat95), (own50, own95)) = real(real_turns).await;
        println!("request latency: median {:.1} ms, p95 {:.1} ms", lat50 / 1e3, lat95 / 1e3);
        println!("baton's overhead on those turns: median {own50:.1} µs, p95 {own95:.1} µs");
        let stub_2k = rows[0].1.0;
        println!(
            "\nbaton's share of a real turn: {:.4}% (stub overhead at about 2k tokens / (that + median real latency)); \
             {:.4}% measured on the real turns",
            stub_2k / (stub_2k + lat50) * 100.0,
            own50 / (own50 + lat50) * 100.0
        );
    });
}

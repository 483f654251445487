//! Cost of the session machine and of `baton replay`.
//!
//! Run: `cargo bench --bench machine`. Figures to read:
//! * `usage_event_normal_path`: one usage reading that changes nothing (the hot path);
//! * `usage_event_with_transition`: a reading that compacts, plus the `Compacted` answer that
//!   returns to Normal (two events, two transitions);
//! * `replay_*`: a whole trace replayed, including parsing; divan prints bytes/s.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use baton::replay::{ReplayOptions, replay};
use baton::{Event, Policy, SessionId, SessionMachine, Usage, trace};
use divan::Bencher;
use divan::counter::BytesCount;

fn main() {
    divan::main();
}

#[divan::bench]
fn usage_event_normal_path(b: Bencher) {
    let mut m = SessionMachine::new(SessionId(1), Arc::new(Policy::default()));
    let usage = Event::Usage(Usage::reported(500, 1000).unwrap());
    b.bench_local(|| m.handle(black_box(&usage)).unwrap());
}

#[divan::bench]
fn usage_event_with_transition(b: Bencher) {
    let policy = Arc::new(Policy::builder().max_compactions(u32::MAX).build().unwrap());
    let mut m = SessionMachine::new(SessionId(1), policy);
    let high = Event::Usage(Usage::reported(850, 1000).unwrap());
    let done = Event::Compacted {
        after: 300,
        summary_tokens: 100,
    };
    b.bench_local(|| {
        m.handle(black_box(&high)).unwrap();
        m.handle(black_box(&done)).unwrap()
    });
}

/// A large synthetic series (the DeepSeek trace's per-call growth, repeated) as JSON Lines.
fn big_series() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/deepseek-pydicom-901.jsonl");
    let real = trace::read_path(&path).unwrap().remove(0);
    let mut out = String::new();
    let mut prompt = 0u64;
    for i in 0..20_000 {
        let c = real.calls[i % real.calls.len()];
        prompt += c.completion_tokens + 50;
        out.push_str(&format!(
            "{{\"prompt_tokens\":{},\"completion_tokens\":{}}}\n",
            prompt % 900_000,
            c.completion_tokens
        ));
    }
    out
}

#[divan::bench]
fn replay_series_jsonl(b: Bencher) {
    let text = big_series();
    let opts = ReplayOptions {
        window: Some(200_000),
        ..ReplayOptions::default()
    };
    b.counter(BytesCount::of_str(&text)).bench_local(|| {
        let traces = trace::parse(Path::new("big"), "big", text.as_bytes()).unwrap();
        replay(&traces[0], &opts).unwrap()
    });
}

#[divan::bench]
fn replay_mini_swe_agent_trajectory(b: Bencher) {
    // The real trajectory's figures, derived into tests/data/real (hermetic: nothing outside
    // the project is read).
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real/pydicom__pydicom-901.traj.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let opts = ReplayOptions {
        window: Some(8192),
        ..ReplayOptions::default()
    };
    b.counter(BytesCount::of_str(&text)).bench_local(|| {
        let traces = trace::parse(Path::new("t"), "t", text.as_bytes()).unwrap();
        replay(&traces[0], &opts).unwrap()
    });
}

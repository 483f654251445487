//! Fuzzing on stable Rust: every parser of outside data in the trace and provider areas, over
//! arbitrary bytes and over the samples mutated at random (truncated, bytes flipped, JSON tokens
//! and hostile figures inserted), returns `Ok` or a typed error: never a panic, never a hang.
//! Inputs are bounded (a few KB) so that each property runs in a few seconds; every case must
//! also finish within [`CASE_LIMIT`], which catches a slow path long before it is a hang.
//!
//! Covered: format detection and every trace reader (through `trace::parse`, which detects and
//! dispatches), the replay over whatever the readers accept, the provider usage JSON parser
//! (`parse_usage_json`, every provider shape and hint), and the window bodies (`/v1/models`,
//! `/props`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::provider::{
    Provider, parse_usage_json, slots_from_props, window_from_models, window_from_props,
};
use baton::replay::{ReplayOptions, replay};
use baton::trace::{self, Call, Format, Trace};
use baton::{Policy, Usage};
use proptest::prelude::*;

/// The longest one case may take (debug build, a shared machine): far above what a few KB cost.
const CASE_LIMIT: Duration = Duration::from_secs(2);

/// Pieces inserted by mutations: JSON structure, the keys formats are told apart by, and the
/// figures readers must refuse.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "\n",
    "null",
    "true",
    "0",
    "-1",
    "1.5",
    "1e300",
    "NaN",
    "-0",
    "4294967296",
    "18446744073709551616",
    "\"\\u001b[2J\"",
    "\u{feff}",
    "\\",
    "\"type\"",
    "\"payload\"",
    "\"token_count\"",
    "\"event_msg\"",
    "\"info\"",
    "\"last_token_usage\"",
    "\"usage\"",
    "\"prompt_tokens\"",
    "\"completion_tokens\"",
    "\"messages\"",
    "\"history\"",
    "\"instance_id\"",
    "\"metrics\"",
    "\"tool_call_metadata\"",
    "\"model_response\"",
    "\"message\"",
    "\"sessionId\"",
    "\"input_tokens\"",
    "\"cache_read_input_tokens\"",
    "\"model_context_window\"",
    "\"role\"",
    "\"assistant\"",
    "\"content\"",
    "\"total_slots\"",
    "\"n_ctx\"",
    "\"data\"",
    "\"max_model_len\"",
    "\"timings\"",
    "\"prompt_n\"",
];

fn data_dir(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// One change to a sample.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the input at this fraction of its length.
    Truncate(f64),
    /// Replace the byte at this fraction with this byte.
    Flip(f64, u8),
    /// Insert this token at this fraction.
    Insert(f64, usize),
    /// Remove up to this many bytes at this fraction.
    Delete(f64, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (0.0..1.0f64, 0..TOKENS.len()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (0.0..1.0f64, 1..64usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |f: f64| ((bytes.len() as f64 * f) as usize).min(bytes.len());
        match *m {
            Mutation::Truncate(f) => bytes.truncate(at(f)),
            Mutation::Flip(f, b) => {
                let i = at(f);
                if i < bytes.len() {
                    bytes[i] = b;
                }
            }
            Mutation::Insert(f, t) => {
                let i = at(f);
                bytes.splice(i..i, TOKENS[t].bytes());
            }
            Mutation::Delete(f, n) => {
                let i = at(f);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
        }
    }
    bytes
}

/// Parses `bytes` as a trace and replays whatever is read: no panic, and in time.
fn parse_and_replay(bytes: &[u8]) {
    let start = Instant::now();
    match trace::parse(Path::new("fuzz.trace"), "fuzz", bytes) {
        Ok(traces) => {
            for t in &traces {
                assert!(!t.calls.is_empty(), "a trace always has calls");
                let opts = ReplayOptions {
                    window: t.window.is_none().then_some(200_000),
                    ..ReplayOptions::default()
                };
                // A window from the trace may be too small for S: a typed error, not a panic.
                let _ = replay(t, &opts);
            }
        }
        Err(e) => {
            assert!(
                e.to_string().contains("fuzz.trace"),
                "errors name the file: {e}"
            );
        }
    }
    assert!(
        start.elapsed() < CASE_LIMIT,
        "{:?} for {} bytes",
        start.elapsed(),
        bytes.len()
    );
}

/// Every provider parser over `bytes`: no panic, and in time.
fn parse_provider_bodies(bytes: &[u8]) {
    let start = Instant::now();
    let text = String::from_utf8_lossy(bytes);
    let hints = [
        None,
        Some(Provider::OpenAiChat),
        Some(Provider::Anthropic),
        Some(Provider::DeepSeek),
        Some(Provider::LlamaCpp),
    ];
    for hint in hints {
        if let Ok(r) = parse_usage_json(&text, hint) {
            // Whatever is accepted is within baton's bound.
            assert!(r.prompt_tokens <= Usage::MAX_TOKENS, "{r:?}");
            assert!(r.completion_tokens <= Usage::MAX_TOKENS, "{r:?}");
        }
    }
    let _ = window_from_models(&text, None);
    let _ = window_from_models(&text, Some("m"));
    let _ = window_from_props(&text);
    let _ = slots_from_props(&text);
    assert!(
        start.elapsed() < CASE_LIMIT,
        "{:?} for {} bytes",
        start.elapsed(),
        bytes.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn trace_parsing_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        parse_and_replay(&bytes);
    }

    #[test]
    fn trace_parsing_of_json_like_token_soup_never_panics(tokens in proptest::collection::vec(0..TOKENS.len(), 0..400)) {
        let text: String = tokens.iter().map(|&t| TOKENS[t]).collect();
        parse_and_replay(text.as_bytes());
    }

    #[test]
    fn every_trace_sample_mutated_at_random_is_read_or_refused(
        pick in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let samples = data_dir("traces");
        let (_, bytes) = &samples[pick.index(samples.len())];
        parse_and_replay(&mutate(bytes.clone(), &mutations));
    }

    #[test]
    fn provider_bodies_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        parse_provider_bodies(&bytes);
    }

    #[test]
    fn every_usage_and_window_sample_mutated_at_random_is_read_or_refused(
        pick in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let mut samples = data_dir("usage");
        samples.extend(data_dir("windows"));
        let (_, bytes) = &samples[pick.index(samples.len())];
        parse_provider_bodies(&mutate(bytes.clone(), &mutations));
    }

    /// The replay over any figures a reader could accept (up to baton's bound), any window and
    /// any format: a report or a typed error, the events in call order.
    #[test]
    fn the_replay_of_arbitrary_figures_never_panics(
        calls in proptest::collection::vec((0..=u32::MAX as u64, 0..=u32::MAX as u64), 1..200),
        window in 1..=u32::MAX as u64,
        summary in 0..=u32::MAX as u64,
        format in prop::sample::select(Format::ALL.to_vec()),
        recorded in proptest::option::of(1..=u32::MAX as u64),
    ) {
        let t = Trace {
            name: "fuzz".into(),
            format,
            calls: calls.iter().map(|&(p, c)| Call { prompt_tokens: p, completion_tokens: c }).collect(),
            window: recorded,
            model: None,
        };
        let opts = ReplayOptions { policy: Arc::new(Policy::default()), window: Some(window), summary_tokens: summary };
        if let Ok(r) = replay(&t, &opts) {
            prop_assert!(r.events.windows(2).all(|w| w[0].call <= w[1].call));
            prop_assert_eq!(r.calls, calls.len());
        }
    }
}

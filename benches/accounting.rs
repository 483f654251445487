//! Cost of token accounting: the estimator, the incremental counter, and trace reading.
//!
//! Run: `cargo bench --bench accounting`. Figures to read:
//! * `estimator_o200k` / `estimator_cl100k`: tokens counted per second on about 1 MB of mixed
//!   prose, code and JSON (divan's `item/s` is tokens/s);
//! * `counter_push_one_message`: appending one message to a 2,000-message conversation (it
//!   must not depend on the history's length);
//! * `read_*`: parsing a generated trace of about 1 MB in each format, in bytes per second (the
//!   aim is well under 100 ms per MB). SWE-agent's includes tokenizing its whole history, since
//!   that format records no per-call figures.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use baton::provider::{Encoding, Message, PromptCounter};
use baton::trace;
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};

fn main() {
    divan::main();
}

/// About `bytes` of text that looks like what agents send: prose, code and JSON, varied so that
/// the tokenizer's caches do not make it look cheaper than it is.
fn text(bytes: usize, seed: u64) -> String {
    const WORDS: &[&str] = &[
        "the",
        "function",
        "returns",
        "an",
        "error",
        "when",
        "the",
        "file",
        "is",
        "missing",
        "fn",
        "main()",
        "{",
        "}",
        "let",
        "mut",
        "x",
        "=",
        "vec![1,",
        "2];",
        "self.items",
        ".iter()",
        "Result<(),",
        "Error>",
        "{\"id\":",
        "42,",
        "\"name\":",
        "\"pydicom\"}",
        "    ",
        "\n",
        "tests/test_config.py",
        "::",
        "assert_eq!",
        "0x1F",
        "Traceback",
        "(most",
        "recent",
        "call",
        "last):",
        "ValueError:",
        "invalid",
        "literal",
        "é",
        "über",
        "données",
        "日本語",
        "テスト",
        "1234567",
        "3.14159",
        "#",
        "//",
        "TODO:",
    ];
    let mut state = seed | 1;
    let mut out = String::with_capacity(bytes + 32);
    while out.len() < bytes {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(state >> 33) as usize % WORDS.len()];
        out.push_str(w);
        if !(state >> 20).is_multiple_of(3) {
            out.push(' ');
        }
    }
    out
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[divan::bench(sample_count = 20)]
fn estimator_o200k(b: Bencher) {
    let t = text(1 << 20, 1);
    let e = Encoding::O200kBase;
    let tokens = e.count(&t);
    b.counter(ItemsCount::new(tokens as usize))
        .bench(|| e.count(black_box(&t)));
}

#[divan::bench(sample_count = 20)]
fn estimator_cl100k(b: Bencher) {
    let t = text(1 << 20, 2);
    let e = Encoding::Cl100kBase;
    let tokens = e.count(&t);
    b.counter(ItemsCount::new(tokens as usize))
        .bench(|| e.count(black_box(&t)));
}

#[divan::bench]
fn counter_push_one_message(b: Bencher) {
    let history: Vec<Message> = (0..2000)
        .map(|i| Message::new("user", text(400, i)))
        .collect();
    let next = Message::new("assistant", text(400, 9999));
    let mut counter = PromptCounter::new(Encoding::O200kBase);
    counter.sync(&history);
    b.bench_local(|| {
        counter.push(black_box(&next));
        counter.truncate(2000);
    });
}

/// ~1 MB OpenHands evaluation output: instances whose history holds most of the bytes.
fn openhands_output() -> String {
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < 1 << 20 {
        let usages: Vec<String> = (1..=40)
            .map(|k| {
                format!(
                    "{{\"model\":\"m\",\"prompt_tokens\":{},\"completion_tokens\":90,\"cache_read_tokens\":{},\"cache_write_tokens\":300,\"response_id\":\"r{k}\"}}",
                    2000 + k * 700,
                    1500 + k * 650
                )
            })
            .collect();
        let history: Vec<String> = (0..40)
            .map(|k| {
                format!(
                    "{{\"id\":{k},\"source\":\"agent\",\"action\":\"run\",\"args\":{{\"command\":{}}},\"content\":{}}}",
                    json_str(&text(120, i * 100 + k)),
                    json_str(&text(1500, i * 100 + k + 50))
                )
            })
            .collect();
        writeln!(
            out,
            "{{\"instance_id\":\"bench__repo-{i}\",\"instruction\":{},\"history\":[{}],\"metrics\":{{\"accumulated_cost\":1.0,\"token_usages\":[{}]}},\"error\":null}}",
            json_str(&text(2000, i)),
            history.join(","),
            usages.join(",")
        )
        .unwrap();
        i += 1;
    }
    out
}

/// ~1 MB OpenHands event stream: each response repeated on its observation.
fn openhands_events() -> String {
    let mut events = Vec::new();
    let mut k = 0u64;
    while events.iter().map(String::len).sum::<usize>() < 1 << 20 {
        let response = format!(
            "{{\"id\":\"chatcmpl-{k}\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{}}}}}],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":80,\"cache_creation_input_tokens\":200,\"cache_read_input_tokens\":{}}}}}",
            json_str(&text(400, k)),
            3000 + k * 500,
            2800 + k * 500
        );
        for (kind, content) in [
            ("action", text(100, k + 7)),
            ("observation", text(2500, k + 9)),
        ] {
            events.push(format!(
                "{{\"id\":{},\"source\":\"agent\",\"{kind}\":\"run\",\"content\":{},\"tool_call_metadata\":{{\"function_name\":\"bash\",\"model_response\":{response}}}}}",
                events.len(),
                json_str(&content)
            ));
        }
        k += 1;
    }
    format!("[{}]", events.join(",\n"))
}

/// ~1 MB Codex rollout: model output and tool results between token_count events.
fn codex_rollout() -> String {
    let mut out = String::from(
        "{\"timestamp\":\"t\",\"type\":\"session_meta\",\"payload\":{\"id\":\"s\",\"cwd\":\"/w\"}}\n",
    );
    let mut k = 0u64;
    while out.len() < 1 << 20 {
        writeln!(out, "{{\"timestamp\":\"t\",\"type\":\"response_item\",\"payload\":{{\"type\":\"function_call_output\",\"call_id\":\"c{k}\",\"output\":{}}}}}", json_str(&text(3000, k))).unwrap();
        writeln!(out, "{{\"timestamp\":\"t\",\"type\":\"event_msg\",\"payload\":{{\"type\":\"token_count\",\"info\":{{\"total_token_usage\":{{\"input_tokens\":{},\"cached_input_tokens\":0,\"output_tokens\":{},\"reasoning_output_tokens\":0,\"total_tokens\":1}},\"last_token_usage\":{{\"input_tokens\":{},\"cached_input_tokens\":0,\"output_tokens\":80,\"reasoning_output_tokens\":0,\"total_tokens\":1}},\"model_context_window\":272000}}}}}}", k * 9000, k * 80, 9000 + k * 900).unwrap();
        k += 1;
    }
    out
}

/// ~1 MB Claude Code session: user tool results and assistant records with usage.
fn claude_code() -> String {
    let mut out = String::new();
    let mut k = 0u64;
    while out.len() < 1 << 20 {
        writeln!(out, "{{\"type\":\"user\",\"sessionId\":\"s\",\"uuid\":\"u{k}\",\"message\":{{\"role\":\"user\",\"content\":[{{\"type\":\"tool_result\",\"content\":{}}}]}}}}", json_str(&text(3000, k))).unwrap();
        writeln!(out, "{{\"type\":\"assistant\",\"sessionId\":\"s\",\"uuid\":\"a{k}\",\"message\":{{\"id\":\"msg_{k}\",\"model\":\"claude-sonnet-4-5\",\"content\":[{{\"type\":\"text\",\"text\":{}}}],\"usage\":{{\"input_tokens\":4,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":{},\"output_tokens\":120}}}}}}", json_str(&text(300, k + 1)), 15000 + k * 900).unwrap();
        k += 1;
    }
    out
}

/// ~1 MB SWE-agent trajectory: half in `trajectory`, half in `history` (which is tokenized).
fn swe_agent() -> String {
    let mut history = Vec::new();
    let mut steps = Vec::new();
    let mut k = 0u64;
    while history.iter().map(String::len).sum::<usize>() < 1 << 19 {
        let thought = text(300, k);
        let observation = text(2500, k + 1);
        history.push(format!(
            "{{\"role\":\"assistant\",\"content\":{},\"agent\":\"primary\"}}",
            json_str(&thought)
        ));
        history.push(format!(
            "{{\"role\":\"user\",\"content\":{},\"agent\":\"primary\"}}",
            json_str(&observation)
        ));
        steps.push(format!(
            "{{\"action\":\"ls\",\"observation\":{},\"response\":{},\"thought\":{}}}",
            json_str(&observation),
            json_str(&thought),
            json_str(&thought)
        ));
        k += 2;
    }
    format!(
        "{{\"environment\":\"swe_main\",\"trajectory\":[{}],\"history\":[{{\"role\":\"system\",\"content\":\"You are a programmer.\",\"agent\":\"primary\"}},{}],\"info\":{{\"model_stats\":{{\"tokens_sent\":0,\"tokens_received\":0}}}}}}",
        steps.join(","),
        history.join(",")
    )
}

fn bench_read(b: Bencher, text: String) {
    // Fail loudly if the generator drifted from the format.
    let traces = trace::parse(Path::new("bench"), "bench", text.as_bytes()).unwrap();
    assert!(!traces[0].calls.is_empty());
    b.counter(BytesCount::of_str(&text))
        .bench(|| trace::parse(Path::new("bench"), "bench", black_box(text.as_bytes())).unwrap());
}

#[divan::bench(sample_count = 30)]
fn read_openhands_output(b: Bencher) {
    bench_read(b, openhands_output());
}

#[divan::bench(sample_count = 30)]
fn read_openhands_events(b: Bencher) {
    bench_read(b, openhands_events());
}

#[divan::bench(sample_count = 30)]
fn read_codex_rollout(b: Bencher) {
    bench_read(b, codex_rollout());
}

#[divan::bench(sample_count = 30)]
fn read_claude_code(b: Bencher) {
    bench_read(b, claude_code());
}

#[divan::bench(sample_count = 20)]
fn read_swe_agent(b: Bencher) {
    bench_read(b, swe_agent());
}

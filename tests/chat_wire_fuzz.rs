//! Fuzzing on stable Rust for what a chat endpoint sends back: any body, as bytes, as JSON token
//! soup or as a real reply mutated, is a parsed response (whose usage is judged without a
//! panic) or a typed error; any error body is recognised as an overflow or not, and what is
//! kept of it carries no control character to a terminal.

use baton::runtime::chat::{ChatResponse, printable, recognise_overflow};
use proptest::prelude::*;
use serde::Deserialize;

/// JSON structure, the keys a reply is read by, and hostile figures.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "0",
    "-1",
    "1e300",
    "18446744073709551616",
    "4294967296",
    "0.5",
    "NaN",
    "\"choices\"",
    "\"message\"",
    "\"content\"",
    "\"role\"",
    "\"assistant\"",
    "\"usage\"",
    "\"prompt_tokens\"",
    "\"completion_tokens\"",
    "\"total_tokens\"",
    "\"prompt_tokens_details\"",
    "\"cached_tokens\"",
    "\"timings\"",
    "\"tool_calls\"",
    "\"function\"",
    "\"arguments\"",
    "\"error\"",
    "\"type\"",
    "\"code\"",
    "\"exceed_context_size_error\"",
    "\"n_prompt_tokens\"",
    "\"n_ctx\"",
    "\"maximum context length is\"",
    "\"prompt is too long:\"",
    "\"\\u001b[2J\"",
];

/// A real llama-server reply, for mutation.
const REPLY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1764000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":2,"total_tokens":23},"timings":{"cache_n":0,"prompt_n":21,"prompt_ms":1.0,"predicted_n":2,"predicted_ms":1.0}}"#;

/// Parses `bytes` as a reply the way the client does; judging its usage must not panic.
fn parse_reply(bytes: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Ok(response) = ChatResponse::deserialize(&body) {
        let _ = response.usage_reading();
        let _ = response.text();
    }
}

/// Reads `text` as an error body of every status a server sends.
fn read_error(text: &str) {
    for status in [400, 413, 429, 500, 503] {
        if let Some(overflow) = recognise_overflow(status, text) {
            assert!(
                !overflow.message.chars().any(char::is_control),
                "{:?}",
                overflow.message
            );
        }
    }
    assert!(!printable(text).chars().any(char::is_control));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replies_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        parse_reply(&bytes);
        read_error(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn replies_of_json_token_soup_never_panic(tokens in proptest::collection::vec(0..TOKENS.len(), 0..300)) {
        let soup: String = tokens.iter().map(|&t| TOKENS[t]).collect();
        parse_reply(soup.as_bytes());
        read_error(&soup);
    }

    #[test]
    fn a_real_reply_mutated_at_random_is_read_or_refused(
        cuts in proptest::collection::vec((0..REPLY.len(), 0..TOKENS.len()), 1..8),
    ) {
        let mut body = REPLY.to_owned();
        for (at, token) in cuts {
            let mut at = at.min(body.len());
            while !body.is_char_boundary(at) {
                at -= 1;
            }
            body.insert_str(at, TOKENS[token]);
        }
        parse_reply(body.as_bytes());
        read_error(&body);
    }
}

#[test]
fn the_unmutated_reply_is_read_with_its_usage() {
    let body: serde_json::Value = serde_json::from_str(REPLY).unwrap();
    let response = ChatResponse::deserialize(&body).unwrap();
    assert_eq!(response.text(), "ok");
    let usage = response.usage_reading().trusted().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (21, 2));
}

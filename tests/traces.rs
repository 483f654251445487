//! `baton::trace` readers of every format: samples of our own making (`tests/data/traces/`), the
//! figures of three public real traces (`tests/data/real/`, see its README), detection from
//! content, and the error paths.

use std::path::{Path, PathBuf};

use baton::provider::{Encoding, Message};
use baton::trace::{self, Call, Format, Location, Trace, TraceError};
use baton::{UsageError, UsageSource};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/traces")
        .join(name)
}

/// A real trace's figures, derived into `tests/data/real` (texts replaced by words of one token).
fn real(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real")
        .join(name)
}

fn read(name: &str) -> Vec<Trace> {
    trace::read_path(&sample(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn calls(pairs: &[(u64, u64)]) -> Vec<Call> {
    pairs
        .iter()
        .map(|&(prompt_tokens, completion_tokens)| Call {
            prompt_tokens,
            completion_tokens,
        })
        .collect()
}

fn parse(text: &str) -> Result<Vec<Trace>, TraceError> {
    trace::parse(Path::new("t.jsonl"), "t", text.as_bytes())
}

// ===== samples of our own making =====

#[test]
fn openhands_events_count_each_response_once() {
    let t = &read("openhands-events.json")[0];
    assert_eq!(t.format, Format::OpenHandsEvents);
    // Three responses, each repeated on its observation; the final message carries no usage.
    assert_eq!(t.calls, calls(&[(2000, 50), (2300, 80), (2900, 40)]));
    assert_eq!(t.window, None);
}

#[test]
fn openhands_output_gives_one_trace_per_instance() {
    let ts = read("openhands-output.jsonl");
    // The third instance has no usage and is skipped.
    assert_eq!(ts.len(), 2);
    assert!(ts.iter().all(|t| t.format == Format::OpenHandsOutput));
    assert_eq!(ts[0].name, "sample__repo-1");
    assert_eq!(
        ts[0].calls,
        calls(&[(1500, 60), (1800, 90), (2400, 30)]),
        "prompt_tokens already holds the cache"
    );
    assert_eq!(ts[0].window, None);
    assert_eq!(ts[1].name, "sample__repo-2");
    // prompt_tokens (12) is smaller than the cache fields: it cannot hold them, so they are added.
    assert_eq!(
        ts[1].calls,
        calls(&[(12 + 5000 + 800, 100), (15 + 5800 + 400, 70)])
    );
    assert_eq!(ts[1].window, Some(128_000));
}

#[test]
fn codex_rollout_reads_last_token_usage_and_the_window() {
    let t = &read("codex-rollout.jsonl")[0];
    assert_eq!(t.format, Format::CodexRollout);
    // info: null is skipped, and the repeated token_count event is counted once.
    assert_eq!(t.calls, calls(&[(9000, 150), (9400, 220), (9800, 30)]));
    assert_eq!(t.window, Some(272_000));
}

#[test]
fn claude_code_adds_the_cache_and_merges_records_of_one_message() {
    let t = &read("claude-code.jsonl")[0];
    assert_eq!(t.format, Format::ClaudeCode);
    // msg_s1 spans two records (output 2, then 88); the sidechain and the synthetic error
    // message are not calls of this context.
    assert_eq!(t.calls, calls(&[(4 + 15_000, 88), (6 + 120 + 15_000, 40)]));
}

#[test]
fn mini_swe_agent_sample_reads_each_assistant_usage() {
    let t = &read("mini-swe-agent.traj.json")[0];
    assert_eq!(t.format, Format::MiniSweAgent);
    assert_eq!(t.name, "sample__repo-901", "named by its instance_id");
    // The prompt already holds DeepSeek's cache hits; system and observation messages are
    // not calls.
    assert_eq!(t.calls, calls(&[(1200, 40), (1310, 35), (1620, 28)]));
    assert_eq!(t.window, None);
    assert_eq!(t.model.as_deref(), Some("deepseek-chat"));
}

#[test]
fn csv_series_sample_reads_its_columns_and_ignores_the_rest() {
    let t = &read("series.csv")[0];
    assert_eq!(t.format, Format::SeriesCsv);
    assert_eq!(
        t.calls,
        calls(&[(1800, 60), (2100, 45), (0, 52), (2600, 70)])
    );
    assert_eq!((t.window, t.model.as_deref()), (None, None));
}

#[test]
fn openhands_responses_without_an_id_are_counted_once_by_content() {
    // Two responses without an id: each repeated on its observation, and the two differ.
    let response = |n: u64| {
        format!(
            r#"{{"model": "gpt-4o", "created": {n}, "usage": {{"prompt_tokens": {}, "completion_tokens": 5}}}}"#,
            n * 100
        )
    };
    let event = |id: u64, kind: &str, n: u64| {
        format!(
            r#"{{"id": {id}, "{kind}": "run", "tool_call_metadata": {{"model_response": {}}}}}"#,
            response(n)
        )
    };
    let text = format!(
        "[{}, {}, {}, {}]",
        event(1, "action", 1),
        event(2, "observation", 1),
        event(3, "action", 2),
        event(4, "observation", 2)
    );
    let t = &parse(&text).unwrap()[0];
    assert_eq!(t.format, Format::OpenHandsEvents);
    assert_eq!(t.calls, calls(&[(100, 5), (200, 5)]));
    assert_eq!(t.model.as_deref(), Some("gpt-4o"));
}

#[test]
fn codex_events_without_a_running_total_are_deduped_by_their_last_usage() {
    let event = |input: u64| {
        format!(
            r#"{{"type": "event_msg", "payload": {{"type": "token_count", "info": {{"last_token_usage": {{"input_tokens": {input}, "output_tokens": 7, "total_tokens": {}}}}}}}}}"#,
            input + 7
        )
    };
    // The first event is re-emitted (a rate-limit update) before the next call.
    let text = [event(900), event(900), event(1300)].join("\n");
    let t = &parse(&text).unwrap()[0];
    assert_eq!(t.format, Format::CodexRollout);
    assert_eq!(t.calls, calls(&[(900, 7), (1300, 7)]));
}

#[test]
fn swe_agent_calls_are_rebuilt_from_history_prefixes() {
    let t = &read("swe-agent.traj")[0];
    assert_eq!(t.format, Format::SweAgent);
    assert_eq!(t.format.usage_source(), UsageSource::Estimated);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sample("swe-agent.traj")).unwrap()).unwrap();
    let history: Vec<Message> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::from_openai(m).unwrap())
        .collect();
    let e = Encoding::Cl100kBase;
    let expected: Vec<Call> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "assistant")
        .map(|(k, m)| Call {
            prompt_tokens: e.prompt_tokens(&history[..k]),
            completion_tokens: e.count(&m.content),
        })
        .collect();
    assert_eq!(t.calls.len(), 3);
    assert_eq!(t.calls, expected);
    // The sample's recorded totals were computed the same way.
    let stats = &doc["info"]["model_stats"];
    let sent: u64 = t.calls.iter().map(|c| c.prompt_tokens).sum();
    let received: u64 = t.calls.iter().map(|c| c.completion_tokens).sum();
    assert_eq!(stats["tokens_sent"].as_u64(), Some(sent));
    assert_eq!(stats["tokens_received"].as_u64(), Some(received));
}

#[test]
fn every_format_reports_where_its_figures_come_from() {
    for f in Format::ALL {
        let want = if f == Format::SweAgent {
            UsageSource::Estimated
        } else {
            UsageSource::Reported
        };
        assert_eq!(f.usage_source(), want, "{f}");
    }
}

// ===== the real traces (their figures, derived into tests/data/real) =====

/// Golden: the GPT-4 SWE-agent run, rebuilt call by call with cl100k_base and the chat formula,
/// adds up to exactly the totals it recorded.
#[test]
fn swe_agent_trace_rebuilt_with_cl100k_matches_its_recorded_totals() {
    let t = &trace::read_path(&real("pydicom__pydicom-1458.traj")).unwrap()[0];
    assert_eq!(t.format, Format::SweAgent);
    assert_eq!(t.calls.len(), 12, "api_calls");
    let sent: u64 = t.calls.iter().map(|c| c.prompt_tokens).sum();
    let received: u64 = t.calls.iter().map(|c| c.completion_tokens).sum();
    assert_eq!((sent, received), (122_612, 1_369));
    assert!(
        t.calls
            .windows(2)
            .all(|w| w[1].prompt_tokens > w[0].prompt_tokens)
    );
}

/// The OpenHands event stream repeats each response on its observation: 4 calls, not 8, each
/// with Anthropic's cache folded into the prompt.
#[test]
fn openhands_event_trace_yields_four_calls_not_eight() {
    let t = &trace::read_path(&real("basic_gui_mode.json")).unwrap()[0];
    assert_eq!(t.format, Format::OpenHandsEvents);
    assert_eq!(t.calls.len(), 4);
    let prompts: Vec<u64> = t.calls.iter().map(|c| c.prompt_tokens).collect();
    assert_eq!(prompts, [3439, 3601, 4769, 5488]);
}

#[test]
fn the_mini_swe_agent_trace_is_still_read() {
    let t = &trace::read_path(&real("pydicom__pydicom-901.traj.json")).unwrap()[0];
    assert_eq!((t.format, t.calls.len()), (Format::MiniSweAgent, 61));
}

// ===== detection =====

#[test]
fn one_line_documents_and_pretty_lines_are_told_apart() {
    // A minified OpenHands output instance on one line, and the same pretty-printed.
    let line = r#"{"instance_id": "x-1", "metrics": {"token_usages": [{"prompt_tokens": 10, "completion_tokens": 2}]}}"#;
    let one = parse(line).unwrap();
    assert_eq!(
        (one[0].format, one[0].name.as_str()),
        (Format::OpenHandsOutput, "x-1")
    );
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(line).unwrap())
            .unwrap();
    assert_eq!(parse(&pretty).unwrap()[0].calls, one[0].calls);
    // A minified SWE-agent document on one line.
    let swe = r#"{"history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], "info": {}}"#;
    assert_eq!(parse(swe).unwrap()[0].format, Format::SweAgent);
}

#[test]
fn a_log_opening_with_records_that_name_no_format_is_still_recognised() {
    let text = concat!(
        "{\"note\": \"opened\"}\n",
        "{\"type\": \"assistant\", \"sessionId\": \"s\", \"message\": {\"id\": \"m1\", \"usage\": {\"input_tokens\": 2, \"cache_read_input_tokens\": 900, \"output_tokens\": 7}}}\n",
    );
    let t = &parse(text).unwrap()[0];
    assert_eq!(t.format, Format::ClaudeCode);
    assert_eq!(t.calls, calls(&[(902, 7)]));
}

// ===== error paths =====

#[test]
fn a_json_lines_file_with_a_corrupt_first_line_names_its_real_format() {
    let good = std::fs::read_to_string(sample("claude-code.jsonl")).unwrap();
    let text = format!("{{\"type\": \"summary\", \"summary\": \"cut\n{good}");
    match parse(&text).unwrap_err() {
        TraceError::Broken {
            format,
            at: Location::Line(line, _),
            tried,
            ..
        } => {
            assert_eq!(format, Format::ClaudeCode, "recognised by its later lines");
            assert_eq!(line, 1);
            assert!(tried.is_empty(), "not a guess: {tried:?}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_guessed_format_is_said_to_be_a_guess_with_the_formats_tried() {
    // One broken document that names no format's keys.
    let err = parse("{\"something\": [1, 2,").unwrap_err();
    let msg = err.to_string();
    match &err {
        TraceError::Broken { tried, .. } => assert_eq!(tried, &Format::ALL.to_vec()),
        other => panic!("{other}"),
    }
    assert!(msg.contains("is a guess"), "{msg}");
    for f in Format::ALL {
        assert!(msg.contains(&f.to_string()), "{f} missing from: {msg}");
    }
    // A recognised format's error makes no such claim.
    let recognised =
        parse("{\"prompt_tokens\": 1, \"completion_tokens\": 1}\n{\"prompt_tokens\": \"x\"}\n")
            .unwrap_err()
            .to_string();
    assert!(!recognised.contains("guess"), "{recognised}");
}

#[test]
fn a_series_window_of_zero_is_refused_at_its_line() {
    let text = "{\"prompt_tokens\": 1, \"completion_tokens\": 1}\n{\"prompt_tokens\": 2, \"completion_tokens\": 1, \"window\": 0}\n";
    match parse(text).unwrap_err() {
        TraceError::BadFigure {
            format: Format::SeriesJsonl,
            at: Location::Line(2, None),
            source: UsageError::ZeroWindow,
            ..
        } => {}
        other => panic!("{other}"),
    }
}

#[test]
fn a_mini_swe_agent_usage_without_completion_tokens_is_broken_at_its_call() {
    let doc = serde_json::json!({
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "extra": {"response": {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}}},
            {"role": "assistant", "extra": {"response": {"usage": {"prompt_tokens": 30}}}},
        ]
    });
    let err = parse(&doc.to_string()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            TraceError::Broken {
                format: Format::MiniSweAgent,
                at: Location::Call(2),
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("completion_tokens"), "{msg}");
}

#[test]
fn an_empty_file_is_an_error_of_every_reader() {
    for text in ["", "\n\n", "[]"] {
        let err = parse(text).unwrap_err();
        assert!(
            matches!(err, TraceError::Empty { .. } | TraceError::Unknown { .. }),
            "{text:?}: {err}"
        );
    }
    let no_calls = [
        (
            r#"{"timestamp": "t", "type": "session_meta", "payload": {"id": "x"}}"#,
            Format::CodexRollout,
        ),
        (
            r#"{"type": "user", "sessionId": "s", "message": {"role": "user", "content": "hi"}}"#,
            Format::ClaudeCode,
        ),
        (
            r#"{"instance_id": "a", "metrics": {"token_usages": []}}"#,
            Format::OpenHandsOutput,
        ),
        (
            r#"[{"id": 0, "source": "user", "action": "message", "args": {}}]"#,
            Format::OpenHandsEvents,
        ),
        (
            r#"{"history": [{"role": "user", "content": "hi"}], "trajectory": []}"#,
            Format::SweAgent,
        ),
    ];
    for (text, format) in no_calls {
        match parse(text).unwrap_err() {
            TraceError::Empty { expected, .. } => {
                assert_eq!(expected, format.describe(), "{text}")
            }
            other => panic!("{text}: {other}"),
        }
    }
}

#[test]
fn truncated_json_names_the_format_and_the_line() {
    let events = std::fs::read_to_string(sample("openhands-events.json")).unwrap();
    let cut = &events[..events.len() / 2];
    match parse(cut).unwrap_err() {
        TraceError::Broken {
            format: Format::OpenHandsEvents,
            at: Location::Line(line, Some(_)),
            ..
        } => assert!(line > 10),
        other => panic!("{other}"),
    }
    let traj = std::fs::read_to_string(sample("swe-agent.traj")).unwrap();
    match parse(&traj[..traj.len() - 40]).unwrap_err() {
        TraceError::Broken {
            format: Format::SweAgent,
            at: Location::Line(..),
            ..
        } => {}
        other => panic!("{other}"),
    }
    // A JSON Lines trace cut in its last line.
    let codex = std::fs::read_to_string(sample("codex-rollout.jsonl")).unwrap();
    let cut = &codex[..codex.len() - 30];
    let last_line = cut.lines().count();
    match parse(cut).unwrap_err() {
        TraceError::Broken {
            format: Format::CodexRollout,
            at: Location::Line(line, _),
            ..
        } => assert_eq!(line, last_line),
        other => panic!("{other}"),
    }
}

#[test]
fn wrong_types_are_located_errors() {
    let cases: &[(&str, Format, &str)] = &[
        (
            "{\"instance_id\": \"a\", \"metrics\": {\"token_usages\": [{\"prompt_tokens\": \"ten\", \"completion_tokens\": 1}]}}\n",
            Format::OpenHandsOutput,
            "line 1",
        ),
        (
            "{\"type\": \"session_meta\", \"payload\": {}}\n{\"type\": \"event_msg\", \"payload\": {\"type\": \"token_count\", \"info\": {\"last_token_usage\": {\"input_tokens\": [1]}}}}\n",
            Format::CodexRollout,
            "line 2",
        ),
        (
            "{\"type\": \"user\", \"sessionId\": \"s\"}\n{\"type\": \"assistant\", \"sessionId\": \"s\", \"message\": {\"id\": \"m\", \"usage\": {\"input_tokens\": \"4\", \"output_tokens\": 1}}}\n",
            Format::ClaudeCode,
            "line 2",
        ),
        (
            "[{\"id\": 0, \"action\": \"run\", \"tool_call_metadata\": {\"model_response\": {\"id\": \"r\", \"usage\": {\"prompt_tokens\": true, \"completion_tokens\": 1}}}}]",
            Format::OpenHandsEvents,
            "event entry 1",
        ),
        (
            "{\"history\": [{\"role\": \"user\", \"content\": 5}], \"trajectory\": []}",
            Format::SweAgent,
            "history entry 1",
        ),
    ];
    for (text, format, at) in cases {
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, TraceError::Broken { format: f, .. } if f == format),
            "{text}: {msg}"
        );
        assert!(msg.contains(at) && msg.starts_with("t.jsonl"), "{msg}");
    }
}

#[test]
fn negative_figures_are_bad_figures_in_every_format() {
    let cases: &[(&str, Format)] = &[
        (
            "{\"instance_id\": \"a\", \"metrics\": {\"token_usages\": [{\"prompt_tokens\": -3, \"completion_tokens\": 1}]}}\n",
            Format::OpenHandsOutput,
        ),
        (
            "{\"type\": \"event_msg\", \"payload\": {\"type\": \"token_count\", \"info\": {\"last_token_usage\": {\"input_tokens\": -1, \"output_tokens\": 1}}}}\n",
            Format::CodexRollout,
        ),
        (
            "{\"type\": \"assistant\", \"sessionId\": \"s\", \"message\": {\"id\": \"m\", \"usage\": {\"input_tokens\": 4, \"cache_read_input_tokens\": -9, \"output_tokens\": 1}}}\n",
            Format::ClaudeCode,
        ),
        (
            "[{\"id\": 0, \"action\": \"run\", \"tool_call_metadata\": {\"model_response\": {\"id\": \"r\", \"usage\": {\"prompt_tokens\": -1, \"completion_tokens\": 1}}}}]",
            Format::OpenHandsEvents,
        ),
    ];
    for (text, format) in cases {
        match parse(text).unwrap_err() {
            TraceError::BadFigure { format: f, .. } => assert_eq!(f, *format, "{text}"),
            other => panic!("{text}: {other}"),
        }
    }
}

#[test]
fn unknown_json_lines_list_every_format_tried() {
    let err = parse("{\"event\": 1}\n{\"event\": 2}\n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TraceError::Unknown { .. }), "{msg}");
    assert!(msg.contains("keys [event]"), "{msg}");
    for f in Format::ALL {
        assert!(msg.contains(f.describe()), "{f} missing from: {msg}");
    }
    let list = parse("[{\"a\": 1}]").unwrap_err();
    assert!(matches!(list, TraceError::Unknown { .. }), "{list}");
}

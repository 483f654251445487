//! `ChatRuntime` under the supervisor against a real llama.cpp `llama-server` serving
//! SmolLM2-135M-Instruct: real requests, real usage figures, a real model writing the summaries
//! that replace histories and the handoffs that successors start from.
//!
//! The model's words are not reproducible, so these tests assert on shapes, usage figures and
//! state, never on text. Each starts its own server with a small window (2,048 tokens, or 1,024)
//! so that a few turns cross 80% and 95%, and prints how long it took.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baton::runtime::chat::{ChatClient, ChatRuntime, ClientConfig, Role, SUMMARY_PREFIX, Turn};
use baton::{AgentType, Phase, Policy, RotationReason, SessionId, UsageSource};
use support::chat::{ChatFleet, runtime_config};
use support::llama::{LlamaOptions, LlamaServer};

/// Generous deadlines: two servers and a cargo build may share two cores.
fn policy() -> baton::PolicyBuilder {
    Policy::builder()
        .compaction_timeout(Duration::from_secs(300))
        .rotation_timeout(Duration::from_secs(600))
}

fn agent(window: u64, policy: Policy) -> AgentType {
    AgentType {
        model: "smollm2".into(),
        system_prompt: "You are a build engineer. Read each part of the build log and say \
                        briefly what failed and where."
            .into(),
        ..AgentType::new("engineer", window).with_policy(policy)
    }
}

fn fleet(server: &LlamaServer, agent: AgentType) -> ChatFleet {
    let mut client = ClientConfig::new(server.base_url());
    client.request_timeout = Duration::from_secs(300);
    let runtime = ChatRuntime::with_config(ChatClient::new(client).unwrap(), runtime_config());
    ChatFleet::start(runtime, agent)
}

/// Part `n` of a build log: about 250 tokens of distinct compiler errors.
fn log_part(n: usize) -> String {
    let mut out = format!("Build log, part {n}:\n");
    for i in 0..8 {
        let line = 10 * n + i;
        out.push_str(&format!(
            "error[E0308]: mismatched types\n  --> src/parse_{n}.rs:{line}:17\n   | expected `Ast`, found `Result<Ast, Error>`\n"
        ));
    }
    out
}

const ITEM: &str = "Find every failing file in the build log and say how to fix it.";

/// Takes turns with successive log parts until `stop` says so (at most `max` turns).
async fn chat_until(
    fleet: &ChatFleet,
    session: SessionId,
    max: usize,
    stop: impl Fn(&Turn) -> bool,
) -> Vec<Turn> {
    let mut turns = vec![fleet.reply(session).await.unwrap()];
    for n in 1..max {
        if stop(turns.last().unwrap()) {
            return turns;
        }
        turns.push(fleet.chat(session, log_part(n)).await.unwrap());
    }
    panic!("still going after {max} turns: {:#?}", turns.last());
}

#[actix::test]
async fn a_session_past_80_percent_compacts_with_the_models_own_summary_and_the_server_measures_the_reduction()
 {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(2048));
    let mut fleet = fleet(&server, agent(2048, policy().build().unwrap()));
    let s = fleet.start_item(1, "engineer", ITEM).await;

    // The turn whose reading crossed 80%: take_turn returned once its compaction was done.
    let turns = chat_until(&fleet, s, 12, |t| {
        t.reading.is_some_and(|r| r.usage.ratio() >= 0.8)
    })
    .await;

    let crossing = turns.last().unwrap();
    assert_eq!(
        crossing.phase,
        Phase::Normal,
        "sufficient: the session stays"
    );
    let reading = crossing.reading.unwrap();
    assert_eq!(reading.usage.source(), UsageSource::Reported);
    let reported = reading.reported.unwrap();
    let compactions = fleet.compactions();
    assert_eq!(compactions.len(), 1, "{:#?}", fleet.log);
    let c = &compactions[0];
    assert!(c.success, "{c:?}");
    // The compaction started from the server's own figure for the turn that crossed 80%.
    assert_eq!(c.before_tokens, reported.occupancy());
    assert!(c.before_percent >= 80.0 && c.before_percent < 95.0, "{c:?}");
    assert!(c.summary_tokens > 0 && c.after_tokens < c.before_tokens);

    // The history is the system prompt, the work item, the model's summary and the latest user
    // message.
    let history = fleet.runtime.history(s).await.unwrap();
    let roles: Vec<Role> = history.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::User, Role::User]);
    assert!(history[1].text().contains(ITEM));
    let summary = history[2]
        .text()
        .strip_prefix(SUMMARY_PREFIX)
        .unwrap()
        .trim();
    assert!(!summary.is_empty(), "the model wrote a summary");
    assert!(
        turns.iter().all(|t| t.text().trim() != summary),
        "the summary is new text, not a reply"
    );
    assert_eq!(history[3].text(), log_part(turns.len() - 1));

    // The next request is measured by the server: a reply to the rewritten history as it
    // stands (no new message), so its prompt is exactly what the recorded `after` estimated.
    let next = fleet.reply(s).await.unwrap();
    let measured = next.reading.unwrap();
    assert_eq!(
        measured.distrust, None,
        "a smaller prompt after a rewrite is trusted"
    );
    let prompt = measured.reported.unwrap().prompt_tokens;
    let recorded = c.reduction_percent / 100.0;
    let seen = 1.0 - prompt as f64 / c.before_tokens as f64;
    eprintln!(
        "compaction: before {} (server), after {} (estimated), next prompt {} (server); \
         reduction recorded {:.1}%, measured {:.1}%",
        c.before_tokens,
        c.after_tokens,
        prompt,
        recorded * 100.0,
        seen * 100.0
    );
    assert!(prompt < c.before_tokens);
    // The estimate's error is the tokenizer's (o200k against SmolLM2's, on the model's own
    // summary), a few points at most.
    assert!(
        (seen - recorded).abs() < 0.08,
        "recorded {recorded:.3}, measured {seen:.3}"
    );
    fleet.stop().await;
    server.report_timing("a_session_past_80_percent_compacts_with_the_models_own_summary_and_the_server_measures_the_reduction", started);
}

#[actix::test]
async fn a_session_that_keeps_going_rotates_into_a_successor_that_starts_from_the_handoff() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(2048));
    // No compactions allowed: the first crossing of 80% rotates.
    let policy = policy().max_compactions(0).build().unwrap();
    let mut fleet = fleet(&server, agent(2048, policy));
    let s = fleet.start_item(1, "engineer", ITEM).await;

    let turns = chat_until(&fleet, s, 12, |t| t.phase == Phase::Closed).await;

    let last = turns.last().unwrap();
    let successor = last.successor.expect("a successor holds the item");
    let rotations = fleet.rotations();
    assert_eq!(rotations.len(), 1, "{:#?}", fleet.log);
    let r = &rotations[0];
    assert!(r.success && !r.handoff_fallback, "{r:?}");
    assert_eq!((r.old_session, r.new_session), (s, Some(successor)));
    assert_eq!(&*r.agent_type, "engineer", "a successor of the same type");
    assert_eq!(r.reason, RotationReason::CompactionBudget);
    // The record's figures are the server's.
    let reading = last.reading.unwrap();
    assert_eq!(reading.usage.source(), UsageSource::Reported);
    assert_eq!(r.before_tokens, reading.reported.unwrap().occupancy());
    assert!((r.before_percent - r.before_tokens as f64 / 2048.0 * 100.0).abs() < 1e-9);
    assert!(r.handoff_tokens > 0);

    // The successor's conversation: its instructions, then the work item with the handoff.
    let history = fleet.runtime.history(successor).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].role, Role::System);
    let assignment = history[1].text();
    assert!(assignment.contains(ITEM));
    let handoff = assignment
        .split_once("Continue from its handoff:")
        .expect("the handoff is in the assignment")
        .1
        .trim();
    assert!(!handoff.is_empty());
    // Its first request carries the handoff: a reply sends the history as it stands (the
    // reply is appended after those two messages), and the server's count of the prompt is
    // its own count of those two texts plus the chat template's few tokens.
    let first = fleet.reply(successor).await.unwrap();
    let prompt = first.reading.unwrap().reported.unwrap().prompt_tokens;
    let after = fleet.runtime.history(successor).await.unwrap();
    assert_eq!(
        after[..2],
        history[..],
        "the request was those two messages"
    );
    let texts =
        server_tokens(&server, history[0].text()).await + server_tokens(&server, assignment).await;
    eprintln!(
        "rotation at {} tokens; handoff {} tokens; the successor's first prompt {} tokens \
         (its two messages {} tokens without the template)",
        r.before_tokens, r.handoff_tokens, prompt, texts
    );
    assert!(
        prompt >= texts && prompt <= texts + 20,
        "prompt {prompt}, messages {texts}"
    );
    assert_eq!(first.phase, Phase::Normal);
    fleet.stop().await;
    server.report_timing(
        "a_session_that_keeps_going_rotates_into_a_successor_that_starts_from_the_handoff",
        started,
    );
}

/// The server's own count of `text`'s tokens (llama.cpp `POST /tokenize`, no special tokens).
async fn server_tokens(server: &LlamaServer, text: &str) -> u64 {
    let url = server.base_url().replace("/v1", "/tokenize");
    let body: serde_json::Value = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({ "content": text }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["tokens"].as_array().expect("a token list").len() as u64
}

#[actix::test]
async fn a_request_that_overflows_the_window_is_turned_into_a_rotation() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(1024));
    let mut fleet = fleet(&server, agent(1024, policy().build().unwrap()));
    let s = fleet.start_item(1, "engineer", ITEM).await;
    fleet.reply(s).await.unwrap();

    let huge = (1..8).map(log_part).collect::<Vec<_>>().join("\n");
    let turn = fleet.chat(s, huge).await.expect("not an error");

    let overflow = turn
        .overflow
        .clone()
        .expect("the server refused the request");
    let prompt = overflow.prompt_tokens.expect("llama.cpp says how many");
    assert!(prompt > 1024);
    assert_eq!(overflow.window, Some(1024));
    assert_eq!(turn.phase, Phase::Closed);
    let successor = turn.successor.expect("a successor holds the item");
    let r = &fleet.rotations()[0];
    assert!(r.success, "{r:?}");
    assert_eq!(r.reason, RotationReason::Overflow, "the machine's decision");
    assert_eq!(
        r.before_tokens, prompt,
        "the server's count of the refused prompt"
    );
    assert_eq!(r.new_session, Some(successor));
    let next = fleet.reply(successor).await.unwrap();
    assert_eq!(next.phase, Phase::Normal);
    fleet.stop().await;
    server.report_timing(
        "a_request_that_overflows_the_window_is_turned_into_a_rotation",
        started,
    );
}

#[test]
fn baton_run_works_through_a_file_against_the_real_server() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(2048));
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.txt");
    std::fs::write(
        &items,
        "# one work item\nList three causes of a failing build, one per line.\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", items.to_str().unwrap()])
        .args(["--endpoint", &server.base_url(), "--model", "smollm2"])
        .args(["--max-turns", "2", "--reply-tokens", "24", "--seed", "7"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("baton run, smollm2 on"), "{stdout}");
    assert!(
        stdout.contains("0 failed, 0 dead-lettered, 0 unfinished"),
        "{stdout}"
    );
    assert!(stdout.contains("usage messages"), "{stdout}");
    server.report_timing(
        "baton_run_works_through_a_file_against_the_real_server",
        started,
    );
}

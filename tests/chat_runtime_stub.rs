//! `ChatRuntime` under the supervisor, against the loopback stub: usage is reported by the
//! runtime itself after every reply, and every fault an endpoint produces ends as the issue
//! says (an overflow rotates, missing or zero usage is estimated, a 429 is retried, a slow
//! reply times out), with the API key in no log line and no record.

mod support;

use std::time::Duration;

use baton::provider::{Distrust, Encoding, Message as ProviderMessage, Provider, WindowSource};
use baton::runtime::AgentRuntime;
use baton::runtime::chat::{
    ApiKey, ChatClient, ChatError, ChatRuntime, ChatRuntimeError, EndpointWindow, MESSAGE_OVERHEAD,
    REPLY_PRIMING, Role, SUMMARY_INSTRUCTIONS, SUMMARY_PREFIX, SummaryBudget, choose_window,
};
use baton::{AgentType, FleetEvent, Phase, RotationReason, SpawnKey, SummaryPurpose, UsageSource};
use support::chat::{ChatFleet, quick_client, runtime_config};
use support::stub::{Fault, Stub, StubWindow};

const WINDOW: u64 = 2000;

/// The work item every fleet here starts with.
const ITEM: &str = "Fix the failing test in tests/parse.rs";

fn agent() -> AgentType {
    AgentType {
        model: "stub-model".into(),
        system_prompt: "You are a careful coding agent.".into(),
        ..AgentType::new("coder", WINDOW)
    }
}

fn runtime(stub: &Stub) -> ChatRuntime {
    ChatRuntime::with_config(
        ChatClient::new(quick_client(stub.base_url())).unwrap(),
        runtime_config(),
    )
}

/// A fleet over the stub with one work item started; its session.
async fn fleet(stub: &Stub) -> (ChatFleet, baton::SessionId) {
    let mut fleet = ChatFleet::start(runtime(stub), agent());
    let session = fleet.start_item(1, "coder", ITEM).await;
    (fleet, session)
}

async fn phase_of(fleet: &ChatFleet, session: baton::SessionId) -> Option<baton::SessionInfo> {
    fleet.supervisor.session(session).await?.info().await
}

#[actix::test]
async fn usage_is_reported_after_each_reply_without_the_caller_reporting_anything() {
    let stub = Stub::start().await;
    // Three turns, the third at 86% of the window; then the summary request.
    stub.usage_series(vec![(100, 10), (500, 20), (1700, 20), (300, 60)]);
    let (mut fleet, s) = fleet(&stub).await;

    let first = fleet.reply(s).await.unwrap();
    assert_eq!(first.phase, Phase::Normal);
    let info = phase_of(&fleet, s).await.unwrap();
    assert_eq!(
        info.usage.map(|u| (u.used(), u.source())),
        Some((110, UsageSource::Reported))
    );

    let second = fleet.chat(s, "Go on.").await.unwrap();
    assert_eq!(second.reading.unwrap().usage.used(), 520);
    assert_eq!(
        phase_of(&fleet, s).await.unwrap().usage.unwrap().used(),
        520
    );

    // Crossing 80% compacts the session before the turn returns.
    let third = fleet.chat(s, "Go on.").await.unwrap();
    assert_eq!(third.phase, Phase::Normal, "the compaction was waited out");
    assert!(third.settle_time > Duration::ZERO);
    let compactions = fleet.compactions();
    assert_eq!(compactions.len(), 1, "{:#?}", fleet.log);
    let c = &compactions[0];
    assert!(c.success, "{c:?}");
    assert_eq!((c.session, c.before_tokens), (s, 1720));
    assert_eq!(c.summary_tokens, 60, "the server's count of the summary");
    assert!(c.after_tokens < c.before_tokens);

    // The summary request asked for what successors need; the history was rewritten.
    let requests = stub.chat_requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(
        requests[3].body["messages"][0]["content"],
        SUMMARY_INSTRUCTIONS
    );
    // It keeps the work item's message, whose goal the latest "Go on." does not carry.
    let history = fleet.runtime.history(s).await.unwrap();
    let roles: Vec<Role> = history.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::User, Role::User]);
    assert!(history[1].text().contains(ITEM));
    assert!(history[2].text().starts_with(SUMMARY_PREFIX));
    assert_eq!(history[3].text(), "Go on.");
    // The next request still carries the work item, outside the summary.
    fleet.chat(s, "Go on.").await.unwrap();
    let next = &stub.chat_requests()[4].body["messages"];
    assert!(
        next[1]["content"].as_str().unwrap().contains(ITEM),
        "{next}"
    );
    fleet.stop().await;
}

#[actix::test]
async fn a_llama_cpp_overflow_rotates_the_session_at_once_and_is_never_retried() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(600, 20)]);
    stub.script([
        Fault::Reply,
        Fault::OverflowLlamaCpp {
            prompt: 2300,
            window: WINDOW,
        },
    ]);
    stub.reply_text("Handoff: tests/parse.rs fails with `assertion failed: ast.is_empty()`.");
    let (mut fleet, s) = fleet(&stub).await;
    fleet.reply(s).await.unwrap();

    let turn = fleet
        .chat(s, "a very long tool output ".repeat(50))
        .await
        .expect("an overflow is not an error");

    let overflow = turn.overflow.as_ref().expect("the overflow is reported");
    assert_eq!(overflow.prompt_tokens, Some(2300));
    assert!(turn.reply.is_none() && turn.reading.is_none());
    assert_eq!(turn.phase, Phase::Closed);
    let successor = turn.successor.expect("a successor holds the work item");
    assert_eq!(turn.next_session(), Some(successor));
    let rotations = fleet.rotations();
    assert_eq!(rotations.len(), 1);
    let r = &rotations[0];
    assert!(r.success);
    assert_eq!(r.reason, RotationReason::Overflow, "the machine's decision");
    assert_eq!(r.before_tokens, 2300, "the server's own count");
    assert_eq!((r.old_session, r.new_session), (s, Some(successor)));
    assert_eq!(&*r.agent_type, "coder");
    // The overflowing request went out once; what followed are the handoff summary's parts.
    let requests = stub.chat_requests();
    let last_user = |r: &support::stub::Received| {
        let m = r.body["messages"].as_array().unwrap();
        m[m.len() - 1]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        requests
            .iter()
            .filter(|r| last_user(r).starts_with("a very long"))
            .count(),
        1
    );
    assert!(requests.len() >= 3);
    for r in &requests[2..] {
        assert_eq!(r.body["messages"][0]["content"], SUMMARY_INSTRUCTIONS);
    }
    // The successor starts from the handoff, and its first request carries it.
    let next = fleet.reply(successor).await.unwrap();
    assert_eq!(next.phase, Phase::Normal);
    let first = &stub.chat_requests()[requests.len()].body["messages"];
    assert_eq!(first[0]["content"], "You are a careful coding agent.");
    let assignment = first[1]["content"].as_str().unwrap();
    assert!(assignment.contains("Fix the failing test in tests/parse.rs"));
    assert!(
        assignment.contains("assertion failed: ast.is_empty()"),
        "{assignment}"
    );
    assert!(
        fleet.runtime.history(s).await.is_none(),
        "the old history is dropped"
    );
    fleet.stop().await;
}

#[actix::test]
async fn a_vllm_overflow_below_the_rotation_threshold_rotates_for_the_overflow() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(600, 20)]);
    // 1,800 of 2,000 tokens is 90%: as a reading it would compact, but an overflow is the
    // machine's to judge, and it rotates (the runtime makes no policy decision of its own).
    stub.script([
        Fault::Reply,
        Fault::OverflowVllm {
            prompt: 1800,
            window: WINDOW,
        },
    ]);
    let (mut fleet, s) = fleet(&stub).await;
    fleet.reply(s).await.unwrap();
    let turn = fleet.chat(s, "Go on.").await.unwrap();
    assert_eq!(turn.overflow.unwrap().prompt_tokens, Some(1800));
    assert_eq!(turn.phase, Phase::Closed);
    assert!(turn.successor.is_some());
    let r = &fleet.rotations()[0];
    assert_eq!(r.reason, RotationReason::Overflow);
    assert_eq!(r.before_tokens, 1800, "the server's figure");
    assert!(fleet.compactions().is_empty());
    fleet.stop().await;
}

#[actix::test]
async fn a_reply_without_usage_is_reported_as_an_estimate() {
    let stub = Stub::start().await;
    stub.script([Fault::NoUsage]);
    let (fleet, s) = fleet(&stub).await;
    let turn = fleet.reply(s).await.unwrap();
    let reading = turn.reading.unwrap();
    assert_eq!(reading.distrust, Some(Distrust::NoReport));
    assert_eq!(reading.usage.source(), UsageSource::Estimated);
    assert!(
        reading.usage.used() > 10,
        "the system prompt and the work item count"
    );
    let usage = phase_of(&fleet, s).await.unwrap().usage.unwrap();
    assert_eq!(
        (usage.used(), usage.source()),
        (reading.usage.used(), UsageSource::Estimated)
    );
    fleet.stop().await;
}

#[actix::test]
async fn zero_prompt_tokens_are_distrusted_and_estimated() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(400, 20)]);
    stub.script([Fault::Reply, Fault::ZeroPrompt]);
    let (fleet, s) = fleet(&stub).await;
    fleet.reply(s).await.unwrap();
    let turn = fleet.chat(s, "Go on.").await.unwrap();
    let reading = turn.reading.unwrap();
    assert_eq!(reading.distrust, Some(Distrust::ZeroPrompt));
    assert_eq!(reading.usage.source(), UsageSource::Estimated);
    assert!(
        reading.usage.used() > 420,
        "grown from the last trusted report: {}",
        reading.usage.used()
    );
    let usage = phase_of(&fleet, s).await.unwrap().usage.unwrap();
    assert_eq!(usage.source(), UsageSource::Estimated);
    fleet.stop().await;
}

#[actix::test]
async fn a_rate_limit_then_success_is_one_turn_and_one_report() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(300, 10)]);
    stub.script([
        Fault::Status {
            status: 429,
            headers: vec![],
        },
        Fault::Reply,
    ]);
    let (mut fleet, s) = fleet(&stub).await;
    let turn = fleet.reply(s).await.unwrap();
    assert_eq!(turn.phase, Phase::Normal);
    assert_eq!(stub.chat_requests().len(), 2);
    assert_eq!(turn.reading.unwrap().usage.used(), 310);
    assert_eq!(
        fleet.runtime.history(s).await.unwrap().len(),
        3,
        "one reply appended"
    );
    assert!(fleet.compactions().is_empty() && fleet.rotations().is_empty());
    fleet.stop().await;
}

#[actix::test]
async fn a_slow_reply_past_the_timeout_fails_the_turn_and_leaves_the_history_as_it_was() {
    let stub = Stub::start().await;
    stub.script([Fault::Slow(Duration::from_secs(3))]);
    let mut client = quick_client(stub.base_url());
    client.request_timeout = Duration::from_millis(300);
    let runtime = ChatRuntime::with_config(ChatClient::new(client).unwrap(), runtime_config());
    let mut fleet = ChatFleet::start(runtime, agent());
    let s = fleet.start_item(1, "coder", "Fix it").await;
    let before = fleet.runtime.history(s).await.unwrap();
    let err = fleet.chat(s, "Go on.").await.unwrap_err();
    assert!(
        matches!(
            err,
            ChatRuntimeError::Chat(ChatError::Timeout { attempts: 1, .. })
        ),
        "{err:?}"
    );
    assert!(err.retry_may_help());
    assert_eq!(fleet.runtime.history(s).await.unwrap(), before);
    // The same turn, taken again, goes through.
    let turn = fleet.chat(s, "Go on.").await.unwrap();
    assert_eq!(turn.phase, Phase::Normal);
    assert_eq!(
        fleet.runtime.history(s).await.unwrap().len(),
        before.len() + 2
    );
    fleet.stop().await;
}

#[actix::test]
async fn no_api_key_appears_in_any_log_line_or_record() {
    const KEY: &str = "sk-baton-runtime-7d1e0c55";
    let (logs, _guard) = support::capture_logs();
    let stub = Stub::start().await;
    stub.usage_series(vec![(400, 20), (1700, 20), (300, 40)]);
    stub.script([
        Fault::Status {
            status: 500,
            headers: vec![],
        },
        Fault::Reply,
        Fault::Reply,
        Fault::Reply,
        Fault::OverflowLlamaCpp {
            prompt: 2100,
            window: WINDOW,
        },
    ]);
    let mut client = quick_client(stub.base_url());
    client.api_key = Some(ApiKey::new(KEY).unwrap());
    let runtime = ChatRuntime::with_config(ChatClient::new(client).unwrap(), runtime_config());
    tracing::info!(?runtime, "runtime");
    let mut fleet = ChatFleet::start(runtime, agent());
    let s = fleet.start_item(1, "coder", "Fix it").await;
    // A long first reply: the history grows by about what the figures say, and the
    // compaction summarises it away.
    stub.reply_text(&"The build fails in src/parse.rs at line 12.\n".repeat(110));
    fleet.reply(s).await.unwrap();
    stub.reply_text("Looking at src/parse.rs.");
    let compacting = fleet.chat(s, "Go on.").await.unwrap();
    assert_eq!(compacting.phase, Phase::Normal);
    let rotated = fleet.chat(s, "Go on.").await.unwrap();
    assert!(rotated.overflow.is_some() && rotated.successor.is_some());
    let events = fleet.stop().await;

    assert!(
        events
            .iter()
            .any(|e| matches!(e, FleetEvent::Compaction(c) if c.success))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, FleetEvent::Rotation(r) if r.success))
    );
    for r in stub.received() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    }
    let records = serde_json::to_string(&events).unwrap();
    assert!(!records.contains("7d1e0c55"), "the key is in a record");
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying chat request"), "{logs}");
    assert!(logs.contains("context overflow"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
    assert!(
        !logs.contains("7d1e0c55"),
        "the key leaked into the logs:\n{logs}"
    );
}

#[actix::test]
async fn the_agent_types_window_wins_over_a_smaller_endpoint_window_with_one_warning() {
    let (logs, _guard) = support::capture_logs();
    let stub = Stub::start().await;
    stub.window(StubWindow {
        props: Some((1024, 1)),
        ..StubWindow::default()
    });
    let (mut fleet, s) = fleet(&stub).await;
    assert_eq!(fleet.runtime.session_window(s), Some(WINDOW));
    let turn = fleet.reply(s).await.unwrap();
    assert_eq!(turn.reading.unwrap().usage.window(), WINDOW);
    let other = fleet.start_item(2, "coder", "Fix tests/lex.rs").await;
    assert_eq!(fleet.runtime.session_window(other), Some(WINDOW));
    fleet.stop().await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert_eq!(
        logs.matches("window is larger than the endpoint's").count(),
        1,
        "one warning per agent type: {logs}"
    );
    let asked = stub
        .received()
        .iter()
        .filter(|r| r.path == "/props")
        .count();
    assert_eq!(asked, 1, "the endpoint's answer is kept");
}

#[test]
fn a_window_the_user_gives_wins_then_the_endpoints_then_the_known_models() {
    let endpoint = EndpointWindow {
        tokens: 4096,
        source: WindowSource::ServerSlot,
        slots: Some(1),
    };
    let w = |user, endpoint: Option<&EndpointWindow>, model| {
        choose_window(user, endpoint, model).map(|w| (w.tokens, w.source))
    };
    assert_eq!(
        w(Some(8192), Some(&endpoint), "gpt-4o"),
        Some((8192, WindowSource::User)),
        "even above the endpoint's"
    );
    assert_eq!(
        w(None, Some(&endpoint), "gpt-4o"),
        Some((4096, WindowSource::ServerSlot))
    );
    assert_eq!(
        w(None, None, "openai/gpt-4o-mini"),
        Some((128_000, WindowSource::KnownModel))
    );
    assert_eq!(w(None, None, "stub-model"), None);
}

#[actix::test]
async fn without_a_window_of_its_own_an_agent_type_takes_the_endpoints_or_a_known_models() {
    let stub = Stub::start().await;
    let runtime = runtime(&stub);
    // The stub states no window (both endpoints answer 404).
    let known = runtime.window_for("coder", "gpt-4o", None).await.unwrap();
    assert_eq!(
        (known.tokens, known.source),
        (128_000, WindowSource::KnownModel)
    );
    assert_eq!(runtime.window_for("coder", "stub-model", None).await, None);
    let given = runtime
        .window_for("coder", "gpt-4o", Some(5000))
        .await
        .unwrap();
    assert_eq!((given.tokens, given.source), (5000, WindowSource::User));

    let llama = Stub::start().await;
    llama.window(StubWindow {
        props: Some((1024, 1)),
        ..StubWindow::default()
    });
    let w = self::runtime(&llama)
        .window_for("coder", "gpt-4o", None)
        .await
        .unwrap();
    assert_eq!((w.tokens, w.source), (1024, WindowSource::ServerSlot));
}

#[actix::test]
async fn a_window_lookup_that_failed_is_asked_again_and_an_answer_is_kept() {
    let stub = Stub::start().await;
    stub.window(StubWindow {
        unavailable: true,
        ..StubWindow::default()
    });
    let runtime = runtime(&stub);
    assert_eq!(runtime.endpoint_window(&agent()).await, None);
    stub.window(StubWindow {
        props: Some((1024, 1)),
        ..StubWindow::default()
    });
    let window = |w: Option<EndpointWindow>| w.map(|w| w.tokens);
    assert_eq!(window(runtime.endpoint_window(&agent()).await), Some(1024));
    stub.window(StubWindow {
        props: Some((4096, 1)),
        ..StubWindow::default()
    });
    assert_eq!(
        window(runtime.endpoint_window(&agent()).await),
        Some(1024),
        "kept"
    );
    let asked = stub
        .received()
        .iter()
        .filter(|r| r.path == "/props")
        .count();
    assert_eq!(asked, 2);

    // An endpoint that states none (404s) has answered: it is not asked again.
    let silent = Stub::start().await;
    let runtime = self::runtime(&silent);
    assert_eq!(runtime.endpoint_window(&agent()).await, None);
    assert_eq!(runtime.endpoint_window(&agent()).await, None);
    assert_eq!(silent.received().len(), 2, "/props and /v1/models, once");
}

#[actix::test]
async fn llama_cpp_timings_alone_are_read_as_the_servers_figures() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(300, 12)]);
    stub.script([Fault::TimingsOnly]);
    let (fleet, s) = fleet(&stub).await;
    let turn = fleet.reply(s).await.unwrap();
    let reading = turn.reading.unwrap();
    assert_eq!(reading.distrust, None);
    assert_eq!(reading.usage.source(), UsageSource::Reported);
    assert_eq!(
        reading.usage.used(),
        312,
        "prompt_n + cache_n + predicted_n"
    );
    assert_eq!(reading.reported.unwrap().provider, Provider::LlamaCpp);
    fleet.stop().await;
}

#[actix::test]
async fn an_overflow_that_states_a_smaller_window_budgets_the_handoff_for_it() {
    let stub = Stub::start().await;
    let (mut fleet, s) = fleet(&stub).await;
    // No usage: the token scale stays at 1.0 until the overflow measures it.
    stub.script([Fault::NoUsage]);
    fleet.reply(s).await.unwrap();
    let long = "error[E0308]: mismatched types in src/parse.rs, expected `Ast`. ".repeat(100);
    let encoding = Encoding::for_model("stub-model");
    let mut sent: Vec<ProviderMessage> = fleet
        .runtime
        .history(s)
        .await
        .unwrap()
        .iter()
        .map(|m| ProviderMessage::new(role_name(m.role), m.text()))
        .collect();
    sent.push(ProviderMessage::new("user", long.as_str()));
    let local = encoding.prompt_tokens(&sent);
    // The server counts 2 tokens per local token, and has about half the agent type's window.
    let prompt = local * 2;
    let scale = prompt as f64 / local as f64;
    stub.script([Fault::OverflowLlamaCpp {
        prompt,
        window: 1024,
    }]);
    let before = stub.chat_requests().len();

    let turn = fleet.chat(s, long.as_str()).await.unwrap();

    assert!(turn.overflow.is_some() && turn.successor.is_some());
    let r = &fleet.rotations()[0];
    assert!(r.success && !r.handoff_fallback, "{r:?}");
    let budget = SummaryBudget::for_window(1024);
    let handoff = &stub.chat_requests()[before + 1..];
    assert!(!handoff.is_empty());
    for request in handoff {
        assert_eq!(request.body["max_tokens"], budget.summary_tokens);
        // Counted afresh from what the stub received, at the server's measured scale.
        let tokens: usize = request.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let text = m["content"].as_str().unwrap();
                (encoding.count(text) as f64 * scale).ceil() as usize + MESSAGE_OVERHEAD
            })
            .sum::<usize>()
            + REPLY_PRIMING;
        assert!(
            tokens <= budget.input_tokens(),
            "{tokens} > {}",
            budget.input_tokens()
        );
    }
    fleet.stop().await;
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

#[actix::test]
async fn spawn_is_idempotent_per_key_and_ids_are_new() {
    let stub = Stub::start().await;
    let runtime = runtime(&stub);
    let a = runtime.spawn(&agent(), SpawnKey(1)).await.unwrap();
    assert_eq!(runtime.spawn(&agent(), SpawnKey(1)).await.unwrap(), a);
    let b = runtime.spawn(&agent(), SpawnKey(2)).await.unwrap();
    assert_ne!(a, b);
    let history = runtime.history(a).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].role, Role::System);
    runtime.close(a).await.unwrap();
    assert!(runtime.history(a).await.is_none());
    assert_ne!(runtime.spawn(&agent(), SpawnKey(3)).await.unwrap(), a);
}

#[actix::test]
async fn the_runtime_takes_a_turn_on_its_own_and_leaves_the_report_to_the_caller() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(120, 8)]);
    let runtime = runtime(&stub);
    // No supervisor at all: the runtime is an edge.
    let s = runtime.spawn(&agent(), SpawnKey(1)).await.unwrap();
    let turn = runtime.chat(s, "hello").await.unwrap();
    assert!(turn.reply.is_some() && turn.reading.is_some(), "{turn:?}");
    assert_eq!((turn.phase, turn.successor), (Phase::Normal, None));
    assert_eq!(turn.window, agent().window, "the window to report with");
    runtime.close(s).await.unwrap();
    assert_eq!(
        runtime.chat(s, "again").await.unwrap_err(),
        ChatRuntimeError::UnknownSession(s)
    );
    assert_eq!(
        stub.chat_requests().len(),
        1,
        "no request for a closed session"
    );
}

#[actix::test]
async fn a_turn_on_a_closed_session_spends_no_request() {
    let stub = Stub::start().await;
    let (mut fleet, s) = fleet(&stub).await;
    fleet.supervisor.close(s).await.unwrap();
    fleet
        .wait_for("the item done", Duration::from_secs(10), |e| {
            matches!(e, FleetEvent::WorkItemDone { .. })
        })
        .await;
    assert!(matches!(
        fleet.runtime.chat(s, "hello").await.unwrap_err(),
        ChatRuntimeError::UnknownSession(_)
    ));
    assert!(stub.chat_requests().is_empty(), "no request was spent");
    fleet.stop().await;
}

#[actix::test]
async fn a_summary_replaces_the_history_it_was_written_from_and_later_messages_are_kept() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(300, 20)]);
    let (fleet, s) = fleet(&stub).await;
    fleet.reply(s).await.unwrap();
    fleet.chat(s, "First question?").await.unwrap();
    // Summarised now; a turn lands before the history is replaced.
    let summary = fleet
        .runtime
        .summarise(s, SummaryPurpose::Compaction)
        .await
        .unwrap();
    fleet.chat(s, "Second question?").await.unwrap();
    let after = fleet.runtime.replace_history(s, &summary).await.unwrap();

    let history = fleet.runtime.history(s).await.unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.text()).collect();
    assert_eq!(texts.len(), 6, "{texts:#?}");
    assert_eq!(texts[0], "You are a careful coding agent.");
    assert!(texts[1].contains(ITEM), "the work item's message");
    assert!(texts[2].starts_with(SUMMARY_PREFIX) && texts[2].contains(&summary.text));
    assert_eq!(
        texts[3], "First question?",
        "the latest user message it was written from"
    );
    assert_eq!(
        texts[4], "Second question?",
        "what came after is kept, in order"
    );
    assert_eq!(history[5].role, Role::Assistant);
    assert!(after > 0);
    fleet.stop().await;
}

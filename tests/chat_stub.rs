//! The chat client against the loopback stub: every fault a real endpoint produces, handled as
//! the client promises (retried, typed, never retried, timed out), and what it sends on the
//! wire.

mod support;

use std::time::{Duration, Instant};

use baton::provider::WindowSource;
use baton::runtime::chat::{
    ApiKey, CharEstimate, ChatClient, ChatError, ChatMessage, ChatRequest, ChatToolCall,
    ClientConfig, EndpointWindow, History, MESSAGE_OVERHEAD, OverflowShape, REPLY_PRIMING,
    SummaryBudget, SummaryPlan, UsageReading, summarise,
};
use support::stub::{Fault, Stub, StubWindow};

/// Quick retries, so the suite stays fast; bounded like the defaults.
fn config(base_url: String) -> ClientConfig {
    support::chat::quick_client(base_url)
}

fn client(stub: &Stub) -> ChatClient {
    ChatClient::new(config(stub.base_url())).unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest::new(
        "stub-model",
        vec![
            ChatMessage::system("You are terse."),
            ChatMessage::user("Say OK."),
        ],
    )
    .max_tokens(16)
    .temperature(0.0)
}

fn status(status: u16) -> Fault {
    Fault::Status {
        status,
        headers: vec![],
    }
}

#[tokio::test]
async fn a_reply_is_parsed_and_the_request_is_sent_in_the_wire_format() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(21, 2)]);
    let done = client(&stub).chat(&hello()).await.unwrap();
    assert_eq!(done.attempts, 1);
    assert_eq!(done.response.text(), "stub reply 0");
    let tokens = done.usage().trusted().unwrap();
    assert_eq!((tokens.prompt_tokens, tokens.completion_tokens), (21, 2));
    let sent = &stub.chat_requests()[0];
    assert_eq!(sent.body["model"], "stub-model");
    assert_eq!(sent.body["messages"][1]["role"], "user");
    assert_eq!(sent.body["max_tokens"], 16);
    assert_eq!(sent.body["stream"], false);
    assert_eq!(sent.authorization, None);
}

#[tokio::test]
async fn a_usage_series_is_replayed_in_order() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(100, 10), (200, 20), (300, 30)]);
    let c = client(&stub);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let done = c.chat(&hello()).await.unwrap();
        seen.push(done.usage().trusted().unwrap().context_tokens());
    }
    assert_eq!(seen, [110, 220, 330]);
}

#[tokio::test]
async fn a_rate_limit_is_retried_then_succeeds() {
    let stub = Stub::start().await;
    stub.script([status(429), Fault::Reply]);
    let done = client(&stub).chat(&hello()).await.unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(stub.chat_requests().len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let stub = Stub::start().await;
    stub.script([status(500), status(503), Fault::Reply]);
    let done = client(&stub).chat(&hello()).await.unwrap();
    assert_eq!(done.attempts, 3);
    assert!(done.usage().trusted().is_some());
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_error_is_typed() {
    let stub = Stub::start().await;
    stub.script(std::iter::repeat_n(status(502), 10));
    let err = client(&stub).chat(&hello()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ChatError::Server {
                status: 502,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.retry_may_help());
    assert_eq!(stub.chat_requests().len(), 4);
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    let stub = Stub::start().await;
    stub.script([
        Fault::Status {
            status: 429,
            headers: vec![("retry-after-ms", "300".into())],
        },
        Fault::Reply,
    ]);
    let started = Instant::now();
    let done = client(&stub).chat(&hello()).await.unwrap();
    assert_eq!(done.attempts, 2);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured() {
    let stub = Stub::start().await;
    stub.script([
        Fault::Status {
            status: 503,
            headers: vec![("retry-after", "1".into())],
        },
        Fault::Reply,
    ]);
    let started = Instant::now();
    client(&stub).chat(&hello()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_wait_longer_than_the_policy_allows_ends_the_retries_at_once() {
    let stub = Stub::start().await;
    stub.script([Fault::Status {
        status: 429,
        headers: vec![("retry-after", "3600".into())],
    }]);
    let started = Instant::now();
    let err = client(&stub).chat(&hello()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    match err {
        ChatError::RateLimited {
            attempts,
            retry_after,
            ..
        } => {
            assert_eq!(attempts, 1);
            assert_eq!(retry_after, Some(Duration::from_secs(3600)));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn a_llama_cpp_overflow_is_typed_with_its_numbers_and_never_retried() {
    let stub = Stub::start().await;
    stub.script([Fault::OverflowLlamaCpp {
        prompt: 5554,
        window: 2048,
    }]);
    let err = client(&stub).chat(&hello()).await.unwrap_err();
    let o = err.overflow().expect("an overflow").clone();
    assert_eq!(o.shape, OverflowShape::LlamaCpp);
    assert_eq!(
        (o.prompt_tokens, o.window, o.status),
        (Some(5554), Some(2048), 400)
    );
    assert!(!err.retry_may_help());
    assert_eq!(stub.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_vllm_overflow_is_typed_with_its_numbers_and_never_retried() {
    let stub = Stub::start().await;
    stub.script([Fault::OverflowVllm {
        prompt: 16000,
        window: 16384,
    }]);
    let err = client(&stub).chat(&hello()).await.unwrap_err();
    let o = err.overflow().expect("an overflow");
    assert_eq!(o.shape, OverflowShape::Vllm);
    assert_eq!((o.prompt_tokens, o.window), (Some(16000), Some(16384)));
    assert_eq!(stub.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_slow_response_past_the_timeout_fails_with_a_timeout_and_is_not_retried() {
    let stub = Stub::start().await;
    stub.script([Fault::Slow(Duration::from_secs(3))]);
    let started = Instant::now();
    let err = client(&stub)
        .chat_with_timeout(&hello(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{err:?}");
    assert!(
        matches!(err, ChatError::Timeout { attempts: 1, timeout } if timeout == Duration::from_millis(200))
    );
    assert!(err.retry_may_help());
    assert_eq!(stub.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_reply_without_usage_is_returned_with_usage_missing() {
    let stub = Stub::start().await;
    stub.script([Fault::NoUsage]);
    let done = client(&stub).chat(&hello()).await.unwrap();
    assert_eq!(done.usage(), UsageReading::Missing);
    assert_eq!(done.response.text(), "stub reply 0");
}

#[tokio::test]
async fn zero_prompt_tokens_are_returned_but_not_trusted() {
    let stub = Stub::start().await;
    stub.script([Fault::ZeroPrompt]);
    let done = client(&stub).chat(&hello()).await.unwrap();
    assert!(
        matches!(done.usage(), UsageReading::ZeroPrompt { tokens } if tokens.completion_tokens == 5)
    );
    assert_eq!(done.usage().trusted(), None);
}

#[tokio::test]
async fn a_success_status_with_a_body_that_is_not_a_completion_is_malformed() {
    let stub = Stub::start().await;
    stub.script([Fault::Garbage]);
    let err = client(&stub).chat(&hello()).await.unwrap_err();
    assert!(matches!(err, ChatError::Malformed { .. }), "{err:?}");
    assert!(!err.retry_may_help());
    assert_eq!(stub.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_client_error_is_refused_without_retry() {
    let stub = Stub::start().await;
    stub.script([status(401)]);
    let err = client(&stub).chat(&hello()).await.unwrap_err();
    assert!(
        matches!(err, ChatError::Refused { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(stub.chat_requests().len(), 1);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_reported() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(format!("http://127.0.0.1:{port}/v1"));
    c.retry = c.retry.with_max_times(1);
    let err = ChatClient::new(c)
        .unwrap()
        .chat(&hello())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChatError::Unreachable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.retry_may_help());
}

#[tokio::test]
async fn the_api_key_is_sent_but_never_logged() {
    const KEY: &str = "sk-baton-test-4f3c9e21";
    let (logs, _guard) = support::capture_logs();
    let stub = Stub::start().await;
    stub.script([
        status(500),
        Fault::Reply,
        Fault::OverflowLlamaCpp {
            prompt: 3000,
            window: 2048,
        },
        status(401),
    ]);
    let mut config = config(stub.base_url());
    config.api_key = Some(ApiKey::new(KEY).unwrap());
    tracing::info!(?config, "client configuration");
    let c = ChatClient::new(config).unwrap();
    tracing::info!(client = ?c, "client");
    c.chat(&hello()).await.unwrap();
    for _ in 0..2 {
        let err = c.chat(&hello()).await.unwrap_err();
        tracing::error!(error = %err, debug = ?err, "request failed");
    }
    c.window(None).await.ok();

    let sent = stub.received();
    assert!(sent.len() >= 5);
    for r in &sent {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    }
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying chat request"), "{logs}");
    assert!(logs.contains("context overflow"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
    assert!(
        !logs.contains("4f3c9e21"),
        "the key leaked into the logs:\n{logs}"
    );
}

#[tokio::test]
async fn the_window_comes_from_props_then_from_models() {
    let stub = Stub::start().await;
    stub.window(StubWindow {
        props: Some((4096, 2)),
        max_model_len: Some(32768),
        ..StubWindow::default()
    });
    let c = client(&stub);
    assert_eq!(
        c.window(None).await.unwrap(),
        Some(EndpointWindow {
            tokens: 4096,
            source: WindowSource::ServerSlot,
            slots: Some(2)
        })
    );
    stub.window(StubWindow {
        props: None,
        max_model_len: Some(32768),
        ..StubWindow::default()
    });
    let w = c.window(Some("stub-model")).await.unwrap().unwrap();
    assert_eq!((w.tokens, w.source), (32768, WindowSource::ServerModel));
}

/// An agent's history of `turns` tool rounds, each with a tool output of about `output_chars`.
fn agent_history(turns: usize, output_chars: usize) -> History {
    let mut h =
        History::new("You are a coding agent. Work in /repo; run the tests after each change.");
    h.push(ChatMessage::user(
        "The test tests/parse.rs::empty_input fails; make it pass.",
    ));
    for t in 0..turns {
        let id = format!("call_{t}");
        h.push(ChatMessage::tool_calls(vec![ChatToolCall::function(
            &id,
            "bash",
            format!(r#"{{"cmd":"sed -n {t},+40p src/parse.rs"}}"#),
        )]));
        h.push(ChatMessage::tool_result(
            &id,
            format!("{t}: fn parse(input: &str) -> Result<Ast, Error> {{ todo }}\n")
                .repeat(output_chars / 56 + 1),
        ));
        h.push(ChatMessage::assistant(format!(
            "Step {t}: parse() in src/parse.rs returns Error::Empty for \"\"; checking caller {t}."
        )));
    }
    h
}

#[tokio::test]
async fn the_summariser_input_never_exceeds_its_budget_on_the_wire() {
    let stub = Stub::start().await;
    // A long summary, so that the running summary must be cut to its reserve.
    stub.reply_text(&"Goal: fix empty_input. Completed: read src/parse.rs. ".repeat(60));
    let counter = CharEstimate::default();
    let history = agent_history(40, 400);
    let split = history.split(&counter, 200);
    let budget = SummaryBudget::for_window(2048);
    let plan = SummaryPlan::build(&history, &split, &counter, budget).unwrap();
    assert!(plan.parts() > 1, "{:?}", plan.stats());

    let summary = summarise(&client(&stub), "stub-model", &plan, &counter)
        .await
        .unwrap();

    let sent = stub.chat_requests();
    assert_eq!(sent.len(), plan.parts());
    for (i, r) in sent.iter().enumerate() {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(r.body["messages"].clone()).unwrap();
        // Counted from the JSON the stub received, by the budget's rule (3 characters a token,
        // rounded up; the template's tokens per message and before the reply), not by the
        // plan's own counting code.
        let wire = r.body["messages"].as_array().unwrap();
        let tokens = wire
            .iter()
            .map(|m| m["content"].as_str().unwrap().chars().count().div_ceil(3) + MESSAGE_OVERHEAD)
            .sum::<usize>()
            + REPLY_PRIMING;
        assert!(
            tokens <= budget.input_tokens(),
            "request {i}: {tokens} > {}",
            budget.input_tokens()
        );
        assert_eq!(r.body["max_tokens"], budget.summary_tokens);
        // From the second part on, the running summary travels with the chunk.
        assert_eq!(
            messages[1].text().contains("Summary of the earlier parts"),
            i > 0
        );
    }
    assert_eq!(summary.calls.len(), plan.parts());
    let rewritten = history.rewrite(&split, &summary.text);
    assert!(rewritten.tokens(&counter) < history.tokens(&counter) / 2);
    assert!(
        rewritten.messages()[1]
            .text()
            .contains("Goal: fix empty_input")
    );
}

#[tokio::test]
async fn an_endless_body_is_refused_at_the_size_limit_and_never_retried() {
    let stub = Stub::start().await;
    stub.script([Fault::Endless]);
    let mut c = config(stub.base_url());
    c.max_body_bytes = 1024 * 1024;
    let err = ChatClient::new(c)
        .unwrap()
        .chat(&hello())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChatError::TooLarge { limit: 1048576, .. }),
        "{err:?}"
    );
    assert!(!err.retry_may_help());
    assert_eq!(stub.chat_requests().len(), 1, "not retried");
}

#[tokio::test]
async fn endless_window_answers_are_refused_at_the_size_limit() {
    let stub = Stub::start().await;
    stub.window(StubWindow {
        endless: true,
        ..StubWindow::default()
    });
    let mut c = config(stub.base_url());
    c.max_body_bytes = 256 * 1024;
    let c = ChatClient::new(c).unwrap();
    for err in [
        c.models().await.unwrap_err(),
        c.props().await.unwrap_err(),
        c.window(Some("stub-model")).await.unwrap_err(),
    ] {
        assert!(matches!(err, ChatError::TooLarge { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() {
    let (logs, _guard) = support::capture_logs();
    let stub = Stub::start().await;
    stub.script([status(500), status(500), status(500), status(500)]);
    let url = stub.base_url().replace("http://", "http://alice:s3cr%2Ft@");
    let c = ChatClient::new(config(url)).unwrap();
    assert_eq!(c.config().base_url, stub.base_url());
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cr") && !shown.contains("alice"),
        "{shown}"
    );
    c.chat(&hello()).await.unwrap_err();
    // Basic base64("alice:s3cr/t").
    assert_eq!(
        stub.chat_requests()[0].authorization.as_deref(),
        Some("Basic YWxpY2U6czNjci90")
    );
    let port = stub.base_url().split(':').nth(2).unwrap().to_owned();
    let down = format!("http://alice:s3cr3t@127.0.0.1:{}/v1", free_port());
    let err = ChatClient::new(config(down))
        .unwrap()
        .chat(&hello())
        .await
        .unwrap_err();
    let err = format!("{err} {err:?}");
    assert!(!err.contains("s3cr3t") && !err.contains("alice"), "{err}");
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying chat request"), "{logs}");
    assert!(!logs.contains("s3cr") && !logs.contains("alice"), "{logs}");
    let bad = ChatClient::new(config(format!("http://alice:s3cr3t@[::1:{port}/v1")))
        .unwrap_err()
        .to_string();
    assert!(!bad.contains("s3cr3t"), "{bad}");
}

#[tokio::test]
async fn control_characters_in_a_server_error_are_escaped() {
    let stub = Stub::start().await;
    stub.script([Fault::Error {
        status: 400,
        message: "bad \u{1b}]0;pwned\u{7}\u{1b}[2J request".into(),
    }]);
    let err = client(&stub).chat(&hello()).await.unwrap_err().to_string();
    assert!(!err.chars().any(|c| c.is_control()), "{err:?}");
    assert!(
        err.contains(r"bad \u{1b}]0;pwned\u{7}\u{1b}[2J request"),
        "{err}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

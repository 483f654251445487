//! The chat client against a real llama.cpp `llama-server` serving SmolLM2-135M-Instruct.
//!
//! The model's words are not reproducible (they change with the thread count and the build),
//! so these tests assert on shapes, usage figures, windows and error types, never on text.
//! Each test starts its own server (about a second) with a small window and stops it at the end.

mod support;

use std::time::{Duration, Instant};

use baton::provider::{WindowSource, window_from_models};
use baton::runtime::chat::{
    CharEstimate, ChatClient, ChatError, ChatMessage, ChatRequest, ChatToolCall, ClientConfig,
    History, OverflowShape, Role, SummaryBudget, SummaryPlan, request_tokens, summarise,
};
use support::llama::{LlamaOptions, LlamaServer};

fn client(server: &LlamaServer) -> ChatClient {
    let mut config = ClientConfig::new(server.base_url());
    // Generous: two of these servers and a cargo build may share two cores.
    config.request_timeout = Duration::from_secs(300);
    ChatClient::new(config).unwrap()
}

#[tokio::test]
async fn a_chat_round_trip_returns_real_usage() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(2048));
    let request = ChatRequest::new(
        "smollm2",
        vec![
            ChatMessage::system("You are a terse assistant."),
            ChatMessage::user("Name one primary colour."),
        ],
    )
    .max_tokens(16)
    .temperature(0.0)
    .seed(7);
    let done = client(&server).chat(&request).await.unwrap();

    assert_eq!(done.attempts, 1);
    let response = &done.response;
    assert_eq!(response.choices.len(), 1);
    let message = response.message().unwrap();
    assert_eq!(message.role, Role::Assistant);
    assert!(message.tool_calls.is_empty());
    let finish = response.choices[0].finish_reason.as_deref();
    assert!(matches!(finish, Some("stop" | "length")), "{finish:?}");

    let tokens = done.usage().trusted().expect("llama-server reports usage");
    assert!(tokens.prompt_tokens > 0);
    assert!((1..=16).contains(&tokens.completion_tokens), "{tokens:?}");
    let raw = response.usage.as_ref().unwrap();
    assert_eq!(raw["total_tokens"], tokens.context_tokens());
    // llama.cpp's timings agree with its usage: prompt = evaluated + cached.
    let timings = response.timings.expect("llama-server sends timings");
    assert_eq!(
        timings.prompt_n + timings.cache_n,
        tokens.prompt_tokens as i64
    );
    assert_eq!(timings.predicted_n, tokens.completion_tokens as i64);
    server.report_timing("a_chat_round_trip_returns_real_usage", started);
}

#[tokio::test]
async fn the_window_read_from_props_matches_the_context_size() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(2048));
    let c = client(&server);
    let window = c.window(Some("smollm2")).await.unwrap().unwrap();
    assert_eq!(window.tokens, 2048);
    assert_eq!(window.source, WindowSource::ServerSlot);
    assert_eq!(window.slots, Some(1));
    // /v1/models knows the server's context and the model's trained one, larger than -c here.
    let models = c.models().await.unwrap();
    let from_models = window_from_models(&models.to_string(), Some("smollm2")).unwrap();
    assert_eq!(
        (from_models.tokens, from_models.source),
        (2048, WindowSource::ServerContext)
    );
    assert_eq!(models["data"][0]["meta"]["n_ctx_train"], 8192);
    server.report_timing(
        "the_window_read_from_props_matches_the_context_size",
        started,
    );
}

#[tokio::test]
async fn each_parallel_slot_has_its_share_of_the_context() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions {
        parallel: 2,
        ..LlamaOptions::window(1024)
    });
    let window = client(&server).window(None).await.unwrap().unwrap();
    assert_eq!((window.tokens, window.slots), (1024, Some(2)));
    server.report_timing("each_parallel_slot_has_its_share_of_the_context", started);
}

#[tokio::test]
async fn a_prompt_past_the_window_is_a_typed_overflow() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(1024));
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    let request = ChatRequest::new("smollm2", vec![ChatMessage::user(long)]).max_tokens(8);
    let err = client(&server).chat(&request).await.unwrap_err();
    let overflow = match &err {
        ChatError::ContextOverflow(o) => o,
        other => panic!("expected a context overflow, got {other:?}"),
    };
    assert_eq!(overflow.shape, OverflowShape::LlamaCpp);
    assert_eq!(overflow.status, 400);
    assert_eq!(overflow.window, Some(server.slot_ctx()));
    assert!(overflow.prompt_tokens.unwrap() > server.slot_ctx());
    assert!(!err.retry_may_help());
    server.report_timing("a_prompt_past_the_window_is_a_typed_overflow", started);
}

#[test]
fn a_test_that_panics_leaves_no_server_behind() {
    let started = Instant::now();
    let pid = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(|| {
        let server = LlamaServer::start(LlamaOptions::window(512));
        *pid.lock().unwrap() = Some(server.pid());
        panic!("the test fails while its server runs");
    });
    assert!(outcome.is_err());
    let pid = pid.lock().unwrap().expect("the server had started");
    // Killed and reaped by the guard's drop during unwinding: the process is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    eprintln!(
        "timing a_test_that_panics_leaves_no_server_behind: {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// A coding agent's history of `turns` tool rounds.
fn agent_history(turns: usize) -> History {
    let mut h =
        History::new("You are a coding agent. Work in /repo. Run cargo test after every change.");
    h.push(ChatMessage::user(
        "tests/parse.rs::empty_input fails with `assertion failed: ast.is_empty()`. Fix it.",
    ));
    for t in 0..turns {
        let id = format!("call_{t}");
        h.push(ChatMessage::tool_calls(vec![ChatToolCall::function(
            &id,
            "bash",
            format!(r#"{{"cmd":"sed -n {},+20p src/parse.rs"}}"#, t * 20),
        )]));
        h.push(ChatMessage::tool_result(
            &id,
            format!("{t}: let tokens = lex(input)?; if tokens.is_empty() {{ return Err(Error::Empty); }}\n")
                .repeat(4),
        ));
        h.push(ChatMessage::assistant(format!(
            "Step {t}: src/parse.rs line {} returns Error::Empty for empty input; the test expects an empty Ast.",
            t * 20 + 3
        )));
    }
    h
}

#[tokio::test]
async fn a_history_larger_than_the_window_is_summarised_in_parts_that_all_fit() {
    let started = Instant::now();
    let server = LlamaServer::start(LlamaOptions::window(1536));
    let c = client(&server);
    let window = c.window(None).await.unwrap().unwrap().tokens as usize;
    let counter = CharEstimate::default();
    let history = agent_history(10);
    assert!(history.tokens(&counter) > window);
    let split = history.split(&counter, 0);
    let budget = SummaryBudget {
        window,
        summary_tokens: 64,
        margin: window / 10,
    };
    let plan = SummaryPlan::build(&history, &split, &counter, budget).unwrap();
    assert!(plan.parts() >= 2, "{:?}", plan.stats());

    let summary = summarise(&c, "smollm2", &plan, &counter).await.unwrap();

    assert!(!summary.text.is_empty());
    assert_eq!(summary.calls.len(), plan.parts());
    for call in &summary.calls {
        let tokens = call.usage.trusted().expect("real usage");
        // Measured by the server's own tokenizer: the request fit, with room for the reply.
        assert!(tokens.prompt_tokens as usize + budget.summary_tokens <= window);
        assert!(tokens.completion_tokens as usize <= budget.summary_tokens);
        // The local estimate is within the margin kept for its error.
        assert!(tokens.prompt_tokens as usize <= call.estimated_tokens + budget.margin);
    }
    let rewritten = history.rewrite(&split, &summary.text);
    assert_eq!(rewritten.messages().len(), 3);
    assert!(request_tokens(&counter, rewritten.messages()) < window);
    eprintln!(
        "summary: {} parts, {:?}",
        plan.parts(),
        summary
            .calls
            .iter()
            .map(|c| (
                c.estimated_tokens,
                c.usage.trusted().map(|t| t.prompt_tokens)
            ))
            .collect::<Vec<_>>()
    );
    server.report_timing(
        "a_history_larger_than_the_window_is_summarised_in_parts_that_all_fit",
        started,
    );
}

//! `baton run`, run as a user would, against the loopback stub: work items from a file, turns
//! until the done marker or the turn limit, compaction live, the results table, and clear errors
//! for an endpoint that is down, a bad file or a missing key.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::cli::{stderr, stdout};
use support::stub::{Stub, StubWindow};

/// Runs `baton run` with `args` (off the async runtime, so that the stub keeps answering).
async fn baton_run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("run")
            .args(args)
            .env_remove("BATON_TEST_KEY")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
            .output()
            .expect("baton runs")
    })
    .await
    .unwrap()
}

/// Log output without its colours.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('\u{1b}') {
        out.push_str(&rest[..at]);
        rest = rest[at..].split_once('m').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out
}

fn items_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("items");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn args(file: &str, endpoint: &str, extra: &[&str]) -> Vec<String> {
    [file, "--endpoint", endpoint, "--model", "stub-model"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_works_through_plain_text_items_until_each_agent_says_done() {
    let stub = Stub::start().await;
    stub.usage_series(vec![(200, 20)]);
    stub.reply_text("Fixed it and ran the tests.\nDONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(
        &dir,
        "# three items\nFix tests/parse.rs\n\nFix tests/lex.rs\nFix tests/eval.rs\n",
    );
    let o = baton_run(args(
        &file,
        &stub.base_url(),
        &["--agent-type", "coder:4096"],
    ))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("baton run, stub-model on http://127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("3 of 3 done; 0 failed, 0 dead-lettered, 0 unfinished"),
        "{out}"
    );
    assert!(
        out.contains("reduction mean / p50 / p95"),
        "the simulation's table: {out}"
    );
    assert_eq!(out.matches("┆ done").count(), 3, "{out}");
    assert_eq!(stub.chat_requests().len(), 3, "one turn each");
    let first = &stub.chat_requests()[0].body["messages"];
    assert_eq!(first[0]["role"], "system");
    assert!(
        first[1]["content"]
            .as_str()
            .unwrap()
            .starts_with("Work item w")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_compacts_live_and_stops_at_the_turn_limit() {
    let stub = Stub::start().await;
    // The third turn reaches 86% of the 2,000-token window; the summary follows.
    stub.usage_series(vec![(300, 20), (900, 20), (1700, 20), (200, 40), (400, 20)]);
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(
        &dir,
        r#"{"id": 7, "agent_type": "coder", "text": "Make the parser accept trailing commas"}"#,
    );
    let o = baton_run(args(
        &file,
        &stub.base_url(),
        &[
            "--agent-type",
            "coder:2000=You fix bugs.",
            "--max-turns",
            "4",
            "--json",
        ],
    ))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["fleet"]["compactions"]["count"], 1, "{report}");
    assert_eq!(report["fleet"]["done"], 1);
    assert_eq!(report["fleet"]["usage_messages"], 4);
    let item = &report["items"][0];
    assert_eq!(
        (item["id"].as_u64(), item["turns"].as_u64()),
        (Some(7), Some(4))
    );
    assert_eq!(item["end"]["kind"], "turn_limit");
    let requests = stub.chat_requests();
    assert_eq!(requests.len(), 5, "four turns and one summary");
    assert_eq!(requests[0].body["messages"][0]["content"], "You fix bugs.");
    assert!(
        requests[1].body["messages"][3]["content"]
            .as_str()
            .unwrap()
            .starts_with("Continue with the work item."),
        "{}",
        requests[1].body
    );
    // After the compaction (request 3 is the summary), the work item is still in the prompt,
    // as a message of its own: the latest user message is only the continue prompt.
    let after = requests[4].body["messages"].as_array().unwrap();
    assert_eq!(after[0]["content"], "You fix bugs.");
    let item = after[1]["content"].as_str().unwrap();
    assert!(
        item.contains("Make the parser accept trailing commas"),
        "{}",
        requests[4].body
    );
    assert!(
        after[2]["content"]
            .as_str()
            .unwrap()
            .starts_with("Summary of the conversation so far.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_the_window_from_the_endpoint_and_the_key_from_the_environment() {
    let stub = Stub::start().await;
    stub.window(StubWindow {
        props: Some((4096, 1)),
        max_model_len: None,
        ..StubWindow::default()
    });
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, "Say DONE\n");
    let mut a = args(
        &file,
        &stub.base_url(),
        &["--api-key-env", "BATON_TEST_KEY"],
    );
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("run")
            .args(a.drain(..))
            .arg("-vv")
            .env("BATON_TEST_KEY", "sk-cli-9a8b7c6d")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 of 1"), "{}", stdout(&o));
    let chat = &stub.chat_requests()[0];
    assert_eq!(
        chat.authorization.as_deref(),
        Some("Bearer sk-cli-9a8b7c6d")
    );
    let logs = format!("{}{}", stdout(&o), stderr(&o));
    assert!(logs.contains("chat request"), "debug logs are on: {logs}");
    assert!(!logs.contains("9a8b7c6d"), "the key leaked: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_a_well_known_models_window_when_the_endpoint_states_none() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, "Say DONE\n");
    let mut a = args(&file, &stub.base_url(), &["-v"]);
    // args() names stub-model; this run names a model from baton's table instead.
    let model = a.iter().position(|x| x == "stub-model").unwrap();
    a[model] = "gpt-4o".into();
    let o = baton_run(a).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let err = plain(&stderr(&o));
    assert!(
        err.contains("window=128000") && err.contains("KnownModel"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_a_given_window_above_the_endpoints_and_warns() {
    let stub = Stub::start().await;
    stub.window(StubWindow {
        props: Some((1024, 1)),
        ..StubWindow::default()
    });
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, "Say DONE\n");
    let o = baton_run(args(
        &file,
        &stub.base_url(),
        &["--agent-type", "coder:8192", "-v"],
    ))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let err = plain(&stderr(&o));
    assert!(err.contains("window=8192") && err.contains("User"), "{err}");
    assert_eq!(
        err.matches("window is larger than the endpoint's").count(),
        1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_explains_an_endpoint_that_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, "Fix it\n");
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = baton_run(args(&file, &endpoint, &["--agent-type", "a:1000"])).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "cannot reach the endpoint http://127.0.0.1:{port}/v1"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_explains_a_bad_work_item_file() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{\"id\": 1, \"text\": \"ok\"}\n{\"id\": 2, \"txt\": \"typo\"}\n",
            "line 2: not a work item",
        ),
        (
            "{\"id\": 1, \"agent_type\": \"nobody\", \"text\": \"x\"}\n",
            "agent type \"nobody\" is not one of --agent-type (a)",
        ),
        (
            "{\"id\": 3, \"text\": \"x\"}\n{\"id\": 3, \"text\": \"y\"}\n",
            "work item id 3 is already used on line 1",
        ),
        ("# only a comment\n\n", "holds no work items"),
    ];
    for (text, expected) in cases {
        let file = items_file(&dir, text);
        let o = baton_run(args(&file, &stub.base_url(), &["--agent-type", "a:1000"])).await;
        assert!(!o.status.success(), "{text}");
        assert!(stderr(&o).contains(expected), "{text}: {}", stderr(&o));
    }
    let o = baton_run(args("no/such/file", &stub.base_url(), &[])).await;
    assert!(
        stderr(&o).contains("cannot read the work items in no/such/file"),
        "{}",
        stderr(&o)
    );
    let file = items_file(&dir, "x\n");
    let o = baton_run(args(
        &file,
        &stub.base_url(),
        &["--api-key-env", "BATON_TEST_KEY"],
    ))
    .await;
    assert!(
        stderr(&o).contains("$BATON_TEST_KEY is not set or empty"),
        "{}",
        stderr(&o)
    );
    // Without a window given, stated by the endpoint or known for the model, there is nothing
    // to measure against.
    let o = baton_run(args(&file, &stub.base_url(), &[])).await;
    assert!(
        stderr(&o).contains("has no window") && stderr(&o).contains("well-known models"),
        "{}",
        stderr(&o)
    );
    assert!(stub.chat_requests().is_empty(), "no turn was taken");
}

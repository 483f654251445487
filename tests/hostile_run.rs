//! Issue 13's hostile inputs to `baton run` and `baton simulate`, reproduced against the release
//! of today's binary: loopback stub servers that stream without end, overflow every request or
//! answer with terminal escape sequences; generated work-item files (a byte-order mark, standard
//! input, a huge item); credentials in the endpoint URL; flags that used to be accepted. Memory
//! is asserted from the child's peak resident size (see [`support::cli::Measured`]), never from
//! timing.

mod support;

use support::cli::{Measured, baton_measured, stderr, stdout, stub_run_args};
use support::stub::{Fault, Stub, StubWindow};

/// The most a `baton run` child may hold resident while refusing an endless body: the 16 MiB
/// cap, a copy, and the program itself (about 20 MB), with room to spare. Before the cap, 8.3 GB.
const RUN_PEAK_LIMIT: u64 = 200 * 1024 * 1024;

/// `baton run ITEMS --endpoint STUB --model stub-model EXTRA...`, measured, off the async
/// runtime so that the stub keeps answering.
async fn run(items: &str, endpoint: &str, extra: &[&str], stdin: Option<Vec<u8>>) -> Measured {
    let args = stub_run_args(items, endpoint, extra);
    tokio::task::spawn_blocking(move || baton_measured(&args, stdin, &[]))
        .await
        .unwrap()
}

fn items_file(dir: &tempfile::TempDir, bytes: &[u8]) -> String {
    let path = dir.path().join("items");
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

fn code(m: &Measured) -> Option<i32> {
    m.output.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chat_body_fails_the_item_in_bounded_memory() {
    let stub = Stub::start().await;
    stub.script([Fault::Endless]);
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix it\n");
    let m = run(&file, &stub.base_url(), &["--agent-type", "a:4096"], None).await;
    let (out, err) = (stdout(&m.output), stderr(&m.output));
    assert_eq!(code(&m), Some(1), "{out}\n{err}");
    assert!(out.contains("0 of 1 done; 1 failed"), "{out}");
    assert!(out.contains("larger than 16777216 bytes"), "{out}");
    assert_eq!(
        stub.chat_requests().len(),
        1,
        "a body over the cap is not retried"
    );
    assert!(
        m.peak_rss_bytes < RUN_PEAK_LIMIT,
        "peak {} MB",
        m.peak_rss_bytes >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_window_answers_are_refused_in_bounded_memory() {
    let stub = Stub::start().await;
    stub.window(StubWindow {
        endless: true,
        ..StubWindow::default()
    });
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix it\n");
    let m = run(
        &file,
        &stub.base_url(),
        &["--agent-type", "a:4096", "--max-response-mib", "2"],
        None,
    )
    .await;
    assert_eq!(code(&m), Some(0), "{}", stderr(&m.output));
    assert!(
        m.peak_rss_bytes < RUN_PEAK_LIMIT,
        "peak {} MB",
        m.peak_rss_bytes >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_always_overflows_dead_letters_and_exits_1() {
    let stub = Stub::start().await;
    stub.script(std::iter::repeat_n(
        Fault::OverflowLlamaCpp {
            prompt: 5000,
            window: 4096,
        },
        500,
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix one\nFix two\n");
    let m = run(
        &file,
        &stub.base_url(),
        &["--agent-type", "a:4096", "--json"],
        None,
    )
    .await;
    let (out, err) = (stdout(&m.output), stderr(&m.output));
    assert_eq!(code(&m), Some(1), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let o = &report["outcomes"];
    assert_eq!(o["done"], 0, "{report}");
    assert_eq!(
        o["failed"].as_u64().unwrap() + o["dead_lettered"].as_u64().unwrap(),
        2,
        "{report}"
    );
    assert!(err.contains("2 of 2 work items did not finish"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_item_larger_than_its_window_is_refused_before_any_request() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // 5 MB of prose in one item, against a 4,096-token window.
    let mut big = "lorem ipsum dolor sit amet ".repeat(5 * 1024 * 1024 / 27);
    big.push('\n');
    let file = items_file(&dir, format!("small\n{big}").as_bytes());
    let m = run(&file, &stub.base_url(), &["--agent-type", "a:4096"], None).await;
    let err = stderr(&m.output);
    assert_eq!(code(&m), Some(1), "{err}");
    assert!(err.contains("work item w2 is too large"), "{err}");
    assert!(stub.chat_requests().is_empty(), "no chat request was sent");
    // An agent type whose window cannot hold even its instructions and a short item.
    let file = items_file(&dir, b"Fix it\n");
    let m = run(&file, &stub.base_url(), &["--agent-type", "a:40"], None).await;
    assert!(
        stderr(&m.output).contains("work item w1 is too large"),
        "{}",
        stderr(&m.output)
    );
    assert!(stub.chat_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_and_standard_input_are_read_as_json_lines() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let json = "\u{feff}{\"id\": 7, \"text\": \"Fix the lexer\"}\n";
    let file = items_file(&dir, json.as_bytes());
    let m = run(
        &file,
        &stub.base_url(),
        &["--agent-type", "a:4096", "--json"],
        None,
    )
    .await;
    assert_eq!(code(&m), Some(0), "{}", stderr(&m.output));
    let report: serde_json::Value = serde_json::from_str(stdout(&m.output).trim()).unwrap();
    assert_eq!(report["items"][0]["id"], 7);
    let sent = stub.chat_requests()[0].body["messages"][1]["content"].clone();
    assert_eq!(sent, "Work item w7:\nFix the lexer", "{sent}");
    let m = run(
        "-",
        &stub.base_url(),
        &["--agent-type", "a:4096", "--json"],
        Some(json.as_bytes().to_vec()),
    )
    .await;
    assert_eq!(code(&m), Some(0), "{}", stderr(&m.output));
    let report: serde_json::Value = serde_json::from_str(stdout(&m.output).trim()).unwrap();
    assert_eq!(report["items"][0]["id"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_item_file_over_the_cap_is_refused() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, "x\n".repeat(600 * 1024).as_bytes());
    let m = run(
        &file,
        &stub.base_url(),
        &["--agent-type", "a:4096", "--max-items-mib", "1"],
        None,
    )
    .await;
    let err = stderr(&m.output);
    assert_eq!(code(&m), Some(1), "{err}");
    assert!(
        err.contains("larger than the 1048576-byte limit; raise it with --max-items-mib"),
        "{err}"
    );
    assert!(stub.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_endpoint_url_are_never_printed() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix it\n");
    let endpoint = stub.base_url().replace("http://", "http://alice:hunter2@");
    let m = run(&file, &endpoint, &["--agent-type", "a:4096", "-vv"], None).await;
    let (out, err) = (stdout(&m.output), stderr(&m.output));
    assert_eq!(code(&m), Some(0), "{err}");
    assert!(
        out.contains(&format!("baton run, stub-model on {}", stub.base_url())),
        "{out}"
    );
    assert!(err.contains("chat request"), "-vv logs are on: {err}");
    for text in [&out, &err] {
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "{text}"
        );
    }
    assert!(
        stub.chat_requests()[0]
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "sent as basic authentication"
    );
    // An endpoint that is down: the error names it, without the credentials.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://alice:hunter2@127.0.0.1:{port}/v1");
    let m = run(&file, &down, &["--agent-type", "a:4096", "-vv"], None).await;
    let err = stderr(&m.output);
    assert_eq!(code(&m), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the endpoint http://127.0.0.1:{port}/v1"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2") && !err.contains("alice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_message_reaches_the_terminal_escaped() {
    let stub = Stub::start().await;
    stub.script([Fault::Error {
        status: 400,
        message: "no \u{1b}]0;pwned\u{7}\u{1b}[2J way".into(),
    }]);
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix it\n");
    let m = run(&file, &stub.base_url(), &["--agent-type", "a:4096"], None).await;
    let (out, err) = (stdout(&m.output), stderr(&m.output));
    assert_eq!(code(&m), Some(1), "{err}");
    assert!(
        out.contains(r"no \u{1b}]0;pwned\u{7}\u{1b}[2J way"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(
        !err.contains('\u{7}') && !err.contains("\u{1b}]0;"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_were_accepted_are_usage_errors() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix it\n");
    for (flags, expected) in [
        (&["--temperature", "NaN"][..], "--temperature"),
        (&["--temperature", "inf"][..], "--temperature"),
        (&["--reply-tokens", "0"][..], "--reply-tokens"),
        (&["--request-timeout", "0s"][..], "--request-timeout"),
        (&["--max-turns", "0"][..], "--max-turns"),
        (&["--agent-type", "a:0"][..], "the window must be"),
        (
            &["--agent-type", "a:1", "--agent-type", "a:2"][..],
            "given twice",
        ),
        (&["--compact-at", "0.99"][..], "compact_at"),
    ] {
        let m = run(&file, &stub.base_url(), flags, None).await;
        let err = stderr(&m.output);
        assert_eq!(code(&m), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    assert!(stub.received().is_empty(), "nothing was sent");
}

fn simulate(args: &[&str]) -> Measured {
    let args: Vec<String> = std::iter::once("simulate")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    baton_measured(&args, None, &[])
}

#[test]
fn simulate_flags_that_were_accepted_are_usage_errors() {
    for (flags, expected) in [
        (
            &["--agent-types", "a:100,a:200"][..],
            "agent type \"a\" is given twice",
        ),
        (&["--turns", "..5"][..], "--turns \"..5\": MIN"),
        (
            &["--work-items", "18446744073709551615"][..],
            "--work-items",
        ),
        (&["--sessions", "9223372036854775808"][..], "--sessions"),
        (&["--sessions", "0"][..], "--sessions"),
        (&["--shards", "400000"][..], "--shards"),
    ] {
        let m = simulate(flags);
        let err = stderr(&m.output);
        assert_eq!(code(&m), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
}

#[test]
fn a_simulation_stopped_by_its_duration_exits_1_and_counts_the_unfinished() {
    let m = simulate(&[
        "--sessions",
        "10",
        "--work-items",
        "1000",
        "--turns",
        "1000..1000",
        "--duration",
        "200ms",
        "--json",
    ]);
    let err = stderr(&m.output);
    assert_eq!(code(&m), Some(1), "{err}");
    let report: serde_json::Value = serde_json::from_str(stdout(&m.output).trim()).unwrap();
    let unfinished = report["unfinished"].as_u64().unwrap();
    assert!(unfinished > 0, "{report}");
    assert_eq!(report["interrupted"], false, "{report}");
    // Every way an item may not finish is named, as `baton run` names them.
    let dead = &report["dead_letters"];
    assert!(
        err.contains(&format!(
            "did not finish (0 failed, {dead} dead-lettered, {unfinished} unfinished)"
        )),
        "{err}"
    );
}

#[test]
fn a_simulation_beyond_the_machines_memory_is_refused_up_front() {
    let m = simulate(&["--sessions", "10000000", "--work-items", "100000000"]);
    let err = stderr(&m.output);
    assert_eq!(code(&m), Some(1), "{err}");
    assert!(
        err.contains("need about 100.0 GB of memory; this machine has"),
        "{err}"
    );
    assert!(m.peak_rss_bytes < 100 << 20, "refused before allocating");
}

#[test]
fn more_shards_than_the_process_can_open_files_for_are_refused() {
    let script = format!(
        "ulimit -n 256 && exec {} simulate --shards 400 --sessions 10",
        env!("CARGO_BIN_EXE_baton")
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--shards 400 needs about 1664 open files; this process may open 256"),
        "{err}"
    );
}

#[test]
fn a_simulation_stopped_by_sigint_prints_its_report_and_exits_130() {
    let args: Vec<String> = [
        "simulate",
        "--sessions",
        "4",
        "--work-items",
        "8",
        "--turns",
        "100000..100000",
        "--json",
        "-v",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = support::cli::baton_spawn(&args);
    // Turns are being taken: the handlers were installed before the fleet started.
    child.wait_for_stderr("session transition");
    child.signal(libc::SIGINT);
    let o = child.finish();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["unfinished"], 8, "{report}");
}

/// Runs `baton` with `args` with its standard output already closed by its reader (as
/// `baton ... | head -0` leaves it), off the async runtime so that a stub keeps answering.
async fn with_stdout_closed(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baton starts");
        drop(child.stdout.take()); // the reader goes away before the report
        child.wait_with_output().expect("baton ends")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_run_and_simulate_quietly_with_0() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix one\nFix two\n");
    let endpoint = stub.base_url();
    let run: Vec<String> = [
        "run",
        &file,
        "--endpoint",
        &endpoint,
        "--model",
        "stub-model",
        "--agent-type",
        "a:4096",
    ]
    .map(str::to_owned)
    .into();
    let simulate: Vec<String> = ["simulate", "--sessions", "20", "--turns", "2..4"]
        .map(str::to_owned)
        .into();
    let json: Vec<String> = simulate.iter().cloned().chain(["--json".into()]).collect();
    for args in [run, simulate, json] {
        let o = with_stdout_closed(args.clone()).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("error:"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(stub.chat_requests().len(), 2, "the run itself happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_endpoint_query_is_sent_but_never_printed() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let file = items_file(&dir, b"Fix it\n");
    let endpoint = format!(
        "{}?key=s3cretpw",
        stub.base_url().replace("http://", "http://u:p@")
    );
    for verbosity in ["", "-v", "-vv"] {
        let mut extra = vec!["--agent-type", "a:4096"];
        extra.extend(Some(verbosity).filter(|v| !v.is_empty()));
        let m = run(&file, &endpoint, &extra, None).await;
        let (out, err) = (stdout(&m.output), stderr(&m.output));
        assert_eq!(code(&m), Some(0), "{verbosity}: {err}");
        assert!(
            out.contains(&format!(
                "baton run, stub-model on {}?key=REDACTED",
                stub.base_url()
            )),
            "{verbosity}: {out}"
        );
        if verbosity == "-vv" {
            assert!(err.contains("chat request"), "-vv logs are on: {err}");
        }
        for text in [&out, &err] {
            assert!(!text.contains("s3cretpw"), "{verbosity}: {text}");
        }
    }
    // The requests went to the endpoint's paths (the query is not glued onto the path).
    assert!(
        stub.chat_requests()
            .iter()
            .all(|r| r.path == "/v1/chat/completions"),
        "{:?}",
        stub.chat_requests()
    );
    // An endpoint that is down: the error names it, without the secret.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{port}/v1?key=s3cretpw");
    let m = run(&file, &down, &["--agent-type", "a:4096", "-vv"], None).await;
    let err = stderr(&m.output);
    assert_eq!(code(&m), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the endpoint http://127.0.0.1:{port}/v1?key=REDACTED"
        )),
        "{err}"
    );
    assert!(!err.contains("s3cretpw"), "{err}");
}

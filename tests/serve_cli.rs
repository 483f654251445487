//! `baton serve` as a user runs it: the real binary, its token, its first line, its signals, and
//! a restart on the same journal. No sleeping: the test reads the child's announced address and
//! waits for it to exit.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "cli-test-token-9f8e7d6c5b4a";

/// A running `baton serve`.
struct Server {
    child: Child,
    base: String,
    first_line: String,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// What a stopped server left: its exit code and everything it printed.
struct Stopped {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn baton_serve(args: &[&str], token: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.arg("serve")
        .args(args)
        .env_remove("BATON_TOKEN")
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(t) = token {
        cmd.env("BATON_TOKEN", t);
    }
    cmd
}

impl Server {
    /// Starts `baton serve -vv --listen 127.0.0.1:0 ARGS` and waits for its first line.
    fn start(args: &[&str]) -> Self {
        let mut all = vec!["-vv", "--listen", "127.0.0.1:0", "--grace", "1s"];
        all.extend_from_slice(args);
        let mut child = baton_serve(&all, Some(TOKEN))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baton starts");
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            err.read_to_string(&mut s).unwrap();
            s
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        out.read_line(&mut first_line).unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).unwrap();
            s
        });
        let base = first_line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the first line announces the address: {first_line:?}"))
            .to_owned();
        Self {
            child,
            base,
            first_line,
            stdout,
            stderr,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// Sends `signal` and waits for the process to end.
    fn stop(mut self, signal: libc::c_int) -> Stopped {
        // SAFETY: kill with our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
        let status = self.child.wait().unwrap();
        Stopped {
            code: status.code(),
            stdout: self.first_line + &self.stdout.join().unwrap(),
            stderr: self.stderr.join().unwrap(),
        }
    }
}

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[test]
fn without_a_token_serve_exits_2_and_says_how_to_give_one() {
    let o = baton_serve(&["--no-journal"], None).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("BATON_TOKEN") && stderr.contains("--token-file"),
        "{stderr}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn a_short_token_exits_2_without_showing_it() {
    let o = baton_serve(&["--no-journal"], Some("hunter2hunter"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("too short"), "{stderr}");
    assert!(!stderr.contains("hunter2hunter"), "{stderr}");
}

#[tokio::test]
async fn serve_announces_its_address_answers_with_the_token_only_and_exits_143_on_sigterm() {
    provider();
    let server = Server::start(&["--no-journal"]);
    assert!(
        server
            .first_line
            .starts_with("listening on http://127.0.0.1:")
    );
    let (status, _) = server
        .call(reqwest::Method::GET, "/v1/agent-types", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let wrong = reqwest::Client::new()
        .get(format!("{}/v1/agent-types", server.base))
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body = wrong.text().await.unwrap();
    assert!(!body.contains(TOKEN), "{body}");
    let stopped = server.stop(libc::SIGTERM);
    assert_eq!(stopped.code, Some(143), "{}", stopped.stderr);
    assert!(stopped.stdout.contains("stopped:"), "{}", stopped.stdout);
    for printed in [&stopped.stdout, &stopped.stderr] {
        assert!(
            !printed.contains(TOKEN),
            "the token is never printed: {printed}"
        );
    }
}

#[tokio::test]
async fn a_restart_on_the_same_journal_knows_the_work_items_and_the_agent_types_given_over_http() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("serve.db");
    let journal = journal.to_str().unwrap();
    let types = dir.path().join("types.json");
    std::fs::write(&types, r#"[{"name": "coder", "window": 1000}]"#).unwrap();

    let server = Server::start(&[
        "--journal",
        journal,
        "--agent-types",
        types.to_str().unwrap(),
    ]);
    let reviewer = json!({"window": 2000, "policy": {"compact_at": 0.7}});
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            "/v1/agent-types/reviewer",
            Some(reviewer),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for (id, agent_type) in [(5, "reviewer"), (6, "coder")] {
        let item = json!({"id": id, "agent_type": agent_type, "text": format!("item {id}")});
        let (status, _) = server
            .call(reqwest::Method::POST, "/v1/work-items", Some(item))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let stopped = server.stop(libc::SIGINT);
    assert_eq!(stopped.code, Some(130), "{}", stopped.stderr);

    let server = Server::start(&["--journal", journal]);
    let (status, list) = server
        .call(reqwest::Method::GET, "/v1/agent-types", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = list["agent_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("coder"), json!("reviewer")]);
    assert_eq!(list["agent_types"][1]["policy"]["compact_at"], 0.7);
    for id in [5, 6] {
        let (status, item) = server
            .call(reqwest::Method::GET, &format!("/v1/work-items/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{item}");
        assert_eq!(item["text"], format!("item {id}"));
    }
    // The same submission again is a retry, not a new item.
    let again = json!({"id": 5, "agent_type": "reviewer", "text": "item 5"});
    let (status, _) = server
        .call(reqwest::Method::POST, "/v1/work-items", Some(again))
        .await;
    assert_eq!(status, StatusCode::OK);
    let stopped = server.stop(libc::SIGTERM);
    assert_eq!(stopped.code, Some(143), "{}", stopped.stderr);
}

#[test]
fn an_agent_types_file_that_is_not_a_list_of_valid_types_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (n, text) in [
        r#"{"name": "a", "window": 10}"#,
        r#"[{"name": "a", "window": 0}]"#,
        r#"[{"name": "a", "window": 10}, {"name": "a", "window": 10}]"#,
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("types{n}.json"));
        std::fs::write(&path, text).unwrap();
        let o = baton_serve(
            &["--no-journal", "--agent-types", path.to_str().unwrap()],
            Some(TOKEN),
        )
        .output()
        .unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{text}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

//! The webhook runtime against an axum loopback receiver that checks every delivery's signature
//! by recomputing the HMAC, answers by script, and records what it received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use baton::serve::webhook::{WebhookConfig, WebhookRuntime};
use baton::{
    AgentRuntime, AgentType, FleetEvent, SessionId, SpawnKey, SummaryPurpose, Supervisor,
    SupervisorConfig, WorkItem, WorkItemId,
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &[u8] = b"a webhook secret of the test";

/// One answer of the receiver: a status and a body; `None` answers the command correctly.
type Answer = Option<(u16, Vec<u8>)>;

struct Receiver {
    /// Answers for the next deliveries, in order; then correct answers.
    script: VecDeque<Answer>,
    /// Every delivery: its command JSON, and whether its signature and timestamp checked out.
    received: Vec<(Value, bool)>,
    /// How many deliveries arrived, for tests to wait on.
    arrived: tokio::sync::watch::Sender<usize>,
    /// Where it listens: `http://127.0.0.1:PORT/hook`.
    url: String,
}

type Shared = Arc<Mutex<Receiver>>;

/// Whether the headers sign `body` with [`SECRET`] within the last five minutes.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers
            .get("x-baton-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-baton-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = ts.parse::<u64>().is_ok_and(|t| now.abs_diff(t) < 300);
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    fresh && mac.verify_slice(&given).is_ok()
}

/// The correct answer to a command.
fn correct(command: &Value) -> Value {
    match command["op"].as_str().unwrap() {
        "summarise" => json!({"ok": {"text": "what was done", "tokens": 12}}),
        "replace_history" => json!({"ok": {"tokens": 100}}),
        "spawn" => json!({"ok": {"session": command["session"]}}),
        _ => json!({"ok": {}}),
    }
}

async fn hook(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let command: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ok = verified(&headers, &body);
    let mut r = shared.lock().unwrap();
    r.received.push((command.clone(), ok));
    r.arrived.send_replace(r.received.len());
    if !ok {
        return (StatusCode::UNAUTHORIZED, b"bad signature".to_vec());
    }
    match r.script.pop_front().flatten() {
        Some((status, body)) => (StatusCode::from_u16(status).unwrap(), body),
        None => (
            StatusCode::OK,
            serde_json::to_vec(&correct(&command)).unwrap(),
        ),
    }
}

/// A receiver on 127.0.0.1:0 answering `script` first, and a runtime delivering to it.
async fn start(script: Vec<Answer>) -> (Shared, Arc<WebhookRuntime>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared: Shared = Arc::new(Mutex::new(Receiver {
        script: script.into(),
        received: Vec::new(),
        arrived: tokio::sync::watch::Sender::new(0),
        url: format!("http://{addr}/hook"),
    }));
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(shared.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let runtime = Arc::new(runtime_to(&shared.lock().unwrap().url.clone()));
    (shared, runtime, task)
}

fn runtime_to(url: &str) -> WebhookRuntime {
    let mut config = WebhookConfig::new(url, SECRET);
    config.min_delay = Duration::from_millis(1);
    config.max_delay = Duration::from_millis(10);
    config.attempt_timeout = Duration::from_secs(5);
    config.max_answer_bytes = 4096;
    WebhookRuntime::new(config).unwrap()
}

fn received(shared: &Shared) -> Vec<(Value, bool)> {
    shared.lock().unwrap().received.clone()
}

/// Waits (up to 10 s) until `n` deliveries arrived.
async fn wait_deliveries(shared: &Shared, n: usize) {
    let mut arrived = shared.lock().unwrap().arrived.subscribe();
    tokio::time::timeout(Duration::from_secs(10), arrived.wait_for(|k| *k >= n))
        .await
        .unwrap_or_else(|_| panic!("{n} deliveries within 10 s: {:?}", received(shared)))
        .unwrap();
}

#[tokio::test]
async fn every_delivery_is_signed_and_its_answer_typed_by_its_operation() {
    let (shared, rt, _task) = start(vec![]).await;
    let summary = rt
        .summarise(SessionId(4), SummaryPurpose::Compaction)
        .await
        .unwrap();
    assert_eq!(
        (summary.text.as_str(), summary.tokens),
        ("what was done", 12)
    );
    assert_eq!(
        rt.replace_history(SessionId(4), &summary).await.unwrap(),
        100
    );
    let session = rt
        .spawn(&AgentType::new("coder", 1000), SpawnKey(77))
        .await
        .unwrap();
    assert_eq!(session, SessionId(1), "the proposed session");
    rt.close(SessionId(4)).await.unwrap();
    let got = received(&shared);
    assert!(got.iter().all(|(_, ok)| *ok), "every signature verified");
    let ops: Vec<_> = got.iter().map(|(c, _)| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["summarise", "replace_history", "spawn", "close"]);
    assert_eq!(got[0].0["purpose"], "compaction");
    assert_eq!(
        got[1].0["summary"],
        json!({"text": "what was done", "tokens": 12})
    );
    assert_eq!(got[2].0["key"], 77);
    assert!(got[0].0.get("lease").is_none(), "webhooks hold no lease");
}

#[tokio::test]
async fn a_500_is_retried_with_the_same_command_signed_again() {
    let (shared, rt, _task) = start(vec![Some((500, b"down".to_vec()))]).await;
    rt.close(SessionId(2)).await.unwrap();
    let got = received(&shared);
    assert_eq!(got.len(), 2, "one retry");
    assert_eq!(got[0].0, got[1].0, "the same command, the same id");
    assert!(got.iter().all(|(_, ok)| *ok));
}

#[tokio::test]
async fn a_400_is_a_permanent_failure_and_not_retried() {
    let (shared, rt, _task) = start(vec![Some((400, b"no".to_vec()))]).await;
    let e = rt.close(SessionId(2)).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("400"), "{e}");
    assert_eq!(received(&shared).len(), 1);
}

#[tokio::test]
async fn reported_errors_wrong_shapes_and_oversized_answers_fail_as_they_should() {
    let transient = br#"{"error": {"kind": "transient", "message": "busy"}}"#.to_vec();
    let (_shared, rt, _task) = start(vec![
        Some((200, transient)),
        Some((200, br#"{"ok": {"session": 3}}"#.to_vec())),
        Some((200, vec![b' '; 8192])),
    ])
    .await;
    // The orchestrator's own transient error: retryable, for the supervisor to retry.
    let e = rt.close(SessionId(1)).await.unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("busy"), "{e}");
    // A spawn's answer to a close: permanent.
    let e = rt.close(SessionId(1)).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    // Over the cap: permanent.
    let e = rt.close(SessionId(1)).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("4096"), "{e}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_callers_deadline() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let rt = runtime_to(&format!("http://127.0.0.1:{port}/hook"));
    // Not a quick permanent failure: still retrying when the caller's deadline drops it.
    let call = tokio::time::timeout(Duration::from_millis(300), rt.close(SessionId(1))).await;
    assert!(call.is_err(), "still retrying at the deadline: {call:?}");
}

#[actix::test]
async fn a_supervisor_starts_a_work_item_through_the_webhook() {
    let (shared, rt, _task) = start(vec![Some((503, Vec::new()))]).await;
    let builder = Supervisor::builder(rt)
        .config(SupervisorConfig::default())
        .agent_type(AgentType::new("coder", 1000));
    let mut events = builder.subscribe();
    let supervisor = builder.start();
    supervisor
        .submit(WorkItem {
            id: WorkItemId(9),
            agent_type: "coder".into(),
            text: "fix it".into(),
        })
        .await
        .unwrap();
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(FleetEvent::SessionStarted { session, .. }) = events.recv().await {
                return session;
            }
        }
    })
    .await
    .expect("a session started");
    let got = received(&shared);
    let ops: Vec<_> = got.iter().map(|(c, _)| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["spawn", "spawn", "assign"], "the 503 was retried");
    assert_eq!(got[2].0["session"], json!(started.0));
    assert_eq!(got[2].0["work_item"]["id"], 9);
}

/// `baton serve` started with `args` (and a token in the environment); its first stdout line
/// gives the address.
struct Binary {
    child: std::process::Child,
    base: String,
}

const BINARY_TOKEN: &str = "binary-test-token-0123456789";

impl Binary {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("serve")
            .args(["--no-journal", "--listen", "127.0.0.1:0", "--workers", "1"])
            .args(["--grace", "200ms"])
            .args(args)
            .env("BATON_TOKEN", BINARY_TOKEN)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        Self { child, base }
    }

    async fn poll_status(&self) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/v1/runtime/commands/poll", self.base))
            .bearer_auth(BINARY_TOKEN)
            .json(&json!({"wait_ms": 0}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // SAFETY: kill with our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Submits work item `id` of agent type `coder`.
    async fn submit(&self, id: u64) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/work-items", self.base))
            .bearer_auth(BINARY_TOKEN)
            .json(&json!({"id": id, "agent_type": "coder", "text": "fix it"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
}

/// A file of one agent type, `coder`.
fn agent_types(dir: &std::path::Path) -> String {
    let path = dir.join("types.json");
    std::fs::write(&path, r#"[{"name": "coder", "window": 1000}]"#).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn baton_serve_serves_the_queue_by_default_and_delivers_signed_webhooks_with_one() {
    let (shared, _runtime, _task) = start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let types = agent_types(dir.path());
    // By default: the work item's spawn waits in the queue.
    let queue = Binary::start(&["--agent-types", &types]);
    queue.submit(1).await;
    let polled: Value = reqwest::Client::new()
        .post(format!("{}/v1/runtime/commands/poll", queue.base))
        .bearer_auth(BINARY_TOKEN)
        .json(&json!({"wait_ms": 10000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled["commands"][0]["op"], "spawn", "{polled}");
    // With --webhook: no queue to poll; the spawn and the assign go to the receiver, signed.
    let secret = dir.path().join("secret");
    std::fs::write(
        &secret,
        format!("{}\n", std::str::from_utf8(SECRET).unwrap()),
    )
    .unwrap();
    let url = shared.lock().unwrap().url.clone();
    let hooked = Binary::start(&[
        "--agent-types",
        &types,
        "--webhook",
        &url,
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(hooked.poll_status().await, 404);
    hooked.submit(2).await;
    wait_deliveries(&shared, 2).await;
    let got = received(&shared);
    let ops: Vec<_> = got.iter().map(|(c, _)| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["spawn", "assign"]);
    assert!(
        got.iter().all(|(_, ok)| *ok),
        "signed with the file's secret"
    );
}

#[test]
fn baton_serve_refuses_a_webhook_without_a_secret_or_with_a_bad_url() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("serve")
            .args(["--no-journal", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("BATON_TOKEN", BINARY_TOKEN)
            .output()
            .unwrap()
    };
    let alone = run(&["--webhook", "http://127.0.0.1:9/hook"]);
    assert_eq!(alone.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "never-shown-secret\n").unwrap();
    let bad = run(&[
        "--webhook",
        "ftp://example/hook",
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("--webhook"), "{said}");
    assert!(!said.contains("never-shown-secret"), "{said}");
}

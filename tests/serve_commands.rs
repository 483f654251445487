//! The command queue over HTTP: a supervisor whose runtime is a `CommandQueue`, a real server on
//! 127.0.0.1:0, and a reqwest client acting as the orchestrator that polls commands and posts
//! their results. Leases and timeouts here are short real times (the server's workers run their
//! own runtimes, whose clocks a test cannot pause); nothing sleeps to synchronise: every step
//! waits on a poll's answer or on a fleet event.

use std::sync::Arc;
use std::time::Duration;

use baton::serve::events::EventHub;
use baton::serve::guard::Token;
use baton::serve::metrics::Metrics;
use baton::serve::queue::CommandQueue;
use baton::serve::{Parts, ServeConfig};
use baton::{
    AgentType, FleetEvent, Policy, SessionId, Supervisor, SupervisorConfig, SupervisorHandle,
    UsageSource, WorkItem, WorkItemId,
};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const TOKEN: &str = "0123456789abcdef-commands";

/// A served fleet and an orchestrator client.
struct Served {
    supervisor: SupervisorHandle,
    events: UnboundedReceiver<FleetEvent>,
    client: reqwest::Client,
    base: String,
    server: actix_web::dev::ServerHandle,
}

fn agent(policy: Policy) -> AgentType {
    AgentType::new("coder", 1000).with_policy(policy)
}

fn item(id: u64) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: "coder".into(),
        text: format!("work item {id}"),
    }
}

impl Served {
    fn start(policy: Policy, config: SupervisorConfig) -> Self {
        // reqwest is built without a TLS provider of its own (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let queue = Arc::new(CommandQueue::new());
        let builder = Supervisor::builder(queue.clone())
            .config(config)
            .agent_type(agent(policy));
        let events = builder.subscribe();
        let supervisor = builder.start();
        let mut serve = ServeConfig::new(Token::new(TOKEN).unwrap());
        serve.listen = "127.0.0.1:0".parse().unwrap();
        serve.max_body_bytes = 4096;
        serve.workers = 1;
        let parts = Parts {
            supervisor: supervisor.clone(),
            store: None,
            commands: Some(queue),
            events: EventHub::new(&supervisor),
            metrics: Metrics::new(),
            cluster: None,
        };
        let (addr, server) = baton::serve::bind(&serve, parts).unwrap();
        let handle = server.handle();
        actix::spawn(server);
        Self {
            supervisor,
            events,
            client: reqwest::Client::new(),
            base: format!("http://{addr}"),
            server: handle,
        }
    }

    /// Polls once: `(status, body)`.
    async fn poll_raw(&self, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/v1/runtime/commands/poll", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Polls until one command comes (within 10 s), with this lease.
    async fn next_command(&self, lease_ms: u64) -> Value {
        let (status, body) = self
            .poll_raw(json!({"max": 1, "wait_ms": 10000, "lease_ms": lease_ms}))
            .await;
        assert_eq!(status, 200, "{body}");
        let commands = body["commands"].as_array().unwrap();
        assert_eq!(commands.len(), 1, "a command within 10 s: {body}");
        commands[0].clone()
    }

    /// Posts a raw result body: `(status, body text)`.
    async fn post_raw(&self, id: &Value, body: Vec<u8>) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}/v1/runtime/commands/{id}/result", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Posts a result: its status.
    async fn answer(&self, command: &Value, result: Value) -> u16 {
        self.post_raw(&command["id"], serde_json::to_vec(&result).unwrap())
            .await
            .0
    }

    /// Waits (up to 10 s) for an event matching `pred`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&FleetEvent) -> bool) -> FleetEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if pred(&e) => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("event stream closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Submits item `id` and carries out its spawn and assign: returns the session.
    async fn start_item(&mut self, id: u64) -> SessionId {
        self.supervisor.submit(item(id)).await.unwrap();
        let spawn = self.next_command(30_000).await;
        assert_eq!(spawn["op"], "spawn");
        let session = spawn["session"].clone();
        assert_eq!(
            self.answer(
                &spawn,
                json!({"ok": {"session": session}, "lease": spawn["lease"]})
            )
            .await,
            204
        );
        let assign = self.next_command(30_000).await;
        assert_eq!(assign["op"], "assign");
        assert_eq!(assign["session"], session);
        assert_eq!(assign["work_item"]["id"], json!(id));
        assert_eq!(self.answer(&assign, json!({"ok": {}})).await, 204);
        let started = self
            .wait_for(
                "session start",
                |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == id),
            )
            .await;
        let FleetEvent::SessionStarted { session: s, .. } = started else {
            unreachable!()
        };
        assert_eq!(json!(s.0), session);
        s
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

fn fast() -> SupervisorConfig {
    SupervisorConfig {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        ..SupervisorConfig::default()
    }
}

#[actix::test]
async fn a_submitted_work_item_is_spawned_and_assigned_through_poll_and_result() {
    let mut s = Served::start(Policy::default(), fast());
    let session = s.start_item(7).await;
    assert_eq!(session, SessionId(1), "the first proposal of a fresh queue");
    // Nothing else is asked for.
    let (status, body) = s.poll_raw(json!({"wait_ms": 0})).await;
    assert_eq!((status, body), (200, json!({"commands": []})));
}

#[actix::test]
async fn a_compaction_is_a_summarise_then_a_replace_history() {
    let mut s = Served::start(Policy::default(), fast());
    let session = s.start_item(1).await;
    s.supervisor
        .report_usage(session, 850, None, UsageSource::Reported)
        .await
        .unwrap();
    let summarise = s.next_command(30_000).await;
    assert_eq!(summarise["op"], "summarise");
    assert_eq!(summarise["purpose"], "compaction");
    assert_eq!(summarise["session"], json!(session.0));
    let summary = json!({"text": "the work so far", "tokens": 60});
    assert_eq!(s.answer(&summarise, json!({"ok": summary})).await, 204);
    let replace = s.next_command(30_000).await;
    assert_eq!(replace["op"], "replace_history");
    assert_eq!(replace["summary"], summary);
    assert_eq!(
        s.answer(&replace, json!({"ok": {"tokens": 300}})).await,
        204
    );
    let FleetEvent::Compaction(c) = s
        .wait_for("the compaction", |e| matches!(e, FleetEvent::Compaction(_)))
        .await
    else {
        unreachable!()
    };
    assert!(c.success, "{c:?}");
    assert_eq!((c.before_tokens, c.after_tokens), (850, 300));
    assert_eq!(c.summary_tokens, 60);
}

#[actix::test]
async fn an_expired_lease_offers_the_same_command_again_and_the_late_answer_is_409() {
    let s = Served::start(Policy::default(), fast());
    s.supervisor.submit(item(3)).await.unwrap();
    let first = s.next_command(100).await;
    // The second poll waits until the first lease expires, then gets the same command.
    let second = s.next_command(30_000).await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["key"], first["key"]);
    assert_ne!(second["lease"], first["lease"]);
    let answer = |c: &Value| json!({"ok": {"session": c["session"]}, "lease": c["lease"]});
    assert_eq!(s.answer(&first, answer(&first)).await, 409);
    assert_eq!(s.answer(&second, answer(&second)).await, 204);
    // Answered: another answer finds nothing.
    assert_eq!(s.answer(&second, answer(&second)).await, 404);
    let assign = s.next_command(30_000).await;
    assert_eq!(assign["op"], "assign");
}

#[actix::test]
async fn an_unanswered_summarise_fails_the_compaction_by_timeout_and_its_result_is_404() {
    let policy = Policy::builder()
        .compaction_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut s = Served::start(policy, fast());
    let session = s.start_item(1).await;
    s.supervisor
        .report_usage(session, 850, None, UsageSource::Reported)
        .await
        .unwrap();
    let summarise = s.next_command(30_000).await;
    assert_eq!(summarise["op"], "summarise");
    let FleetEvent::Compaction(c) = s
        .wait_for("the failed compaction", |e| {
            matches!(e, FleetEvent::Compaction(_))
        })
        .await
    else {
        unreachable!()
    };
    assert!(!c.success);
    assert!(
        c.error.as_deref().is_some_and(|e| e.contains("timed out")),
        "{c:?}"
    );
    // The call ended: its command was withdrawn, and the late result is refused.
    let late = json!({"ok": {"text": "too late", "tokens": 5}});
    assert_eq!(s.answer(&summarise, late).await, 404);
}

#[actix::test]
async fn a_transient_spawn_failure_is_retried_with_the_same_key_and_session() {
    let mut s = Served::start(Policy::default(), fast());
    s.supervisor.submit(item(5)).await.unwrap();
    let first = s.next_command(30_000).await;
    let busy = json!({"error": {"kind": "transient", "message": "no capacity yet"}});
    assert_eq!(s.answer(&first, busy).await, 204);
    let retry = s.next_command(30_000).await;
    assert_eq!(retry["op"], "spawn");
    assert_ne!(retry["id"], first["id"], "a new call, a new command");
    assert_eq!(retry["key"], first["key"]);
    assert_eq!(retry["session"], first["session"]);
    assert_eq!(
        s.answer(&retry, json!({"ok": {"session": retry["session"]}}))
            .await,
        204
    );
    let assign = s.next_command(30_000).await;
    assert_eq!(s.answer(&assign, json!({"ok": {}})).await, 204);
    s.wait_for("session start", |e| {
        matches!(e, FleetEvent::SessionStarted { .. })
    })
    .await;
}

#[actix::test]
async fn a_permanent_spawn_failure_is_not_retried() {
    let config = SupervisorConfig {
        max_attempts: 1,
        ..fast()
    };
    let mut s = Served::start(Policy::default(), config);
    s.supervisor.submit(item(6)).await.unwrap();
    let spawn = s.next_command(30_000).await;
    let refused = json!({"error": {"kind": "permanent", "message": "no such model"}});
    assert_eq!(s.answer(&spawn, refused).await, 204);
    let FleetEvent::DeadLetter { reason, .. } = s
        .wait_for("dead letter", |e| {
            matches!(e, FleetEvent::DeadLetter { .. })
        })
        .await
    else {
        unreachable!()
    };
    assert!(reason.contains("no such model"), "{reason}");
    let (_, body) = s.poll_raw(json!({"wait_ms": 0})).await;
    assert_eq!(body, json!({"commands": []}), "no second spawn");
}

#[actix::test]
async fn malformed_wrong_shaped_and_oversized_results_are_refused_and_the_command_stays() {
    let s = Served::start(Policy::default(), fast());
    s.supervisor.submit(item(8)).await.unwrap();
    let spawn = s.next_command(30_000).await;
    let id = &spawn["id"];
    let (status, body) = s.post_raw(id, b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"bad_request\""), "{body}");
    // A summarise's answer for a spawn: the wrong shape for its op.
    let (status, body) = s
        .post_raw(id, br#"{"ok": {"text": "t", "tokens": 1}}"#.to_vec())
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("spawn"), "{body}");
    let (status, _) = s
        .post_raw(
            id,
            br#"{"ok": {}, "error": {"kind": "permanent"}}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .post_raw(id, br#"{"error": {"kind": "bogus"}}"#.to_vec())
        .await;
    assert_eq!(status, 400);
    let huge =
        serde_json::to_vec(&json!({"error": {"kind": "permanent", "message": "x".repeat(8192)}}))
            .unwrap();
    let (status, body) = s.post_raw(id, huge).await;
    assert_eq!(status, 413, "{body}");
    // Unknown ids and a path id that is no number.
    assert_eq!(
        s.post_raw(&json!(999_999), b"{\"ok\": {}}".to_vec())
            .await
            .0,
        404
    );
    assert_eq!(
        s.post_raw(&json!("abc"), b"{\"ok\": {}}".to_vec()).await.0,
        400
    );
    // Polls out of bounds.
    for bad in [
        json!({"max": 0}),
        json!({"wait_ms": 60001}),
        json!({"lease_ms": 5}),
        json!({"other": 1}),
    ] {
        assert_eq!(s.poll_raw(bad.clone()).await.0, 400, "{bad}");
    }
    // Still pending: the right answer is taken.
    assert_eq!(
        s.answer(&spawn, json!({"ok": {"session": spawn["session"]}}))
            .await,
        204
    );
}

#[actix::test]
async fn the_command_endpoints_need_the_token_and_are_in_the_openapi_document() {
    let s = Served::start(Policy::default(), fast());
    let r = s
        .client
        .post(format!("{}/v1/runtime/commands/poll", s.base))
        .json(&json!({"wait_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let doc: Value = s
        .client
        .get(format!("{}/openapi.json", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/runtime/commands/poll",
        "/v1/runtime/commands/{id}/result",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["Command"].is_object());
}

/// Reads server-sent event frames from a response, one at a time.
struct Frames {
    response: reqwest::Response,
    buffer: String,
}

impl Frames {
    /// The next frame's `data:` JSON of an `event: command` frame, skipping comments (10 s at
    /// most).
    async fn next_command(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    if frame.lines().any(|l| l == "event: command") {
                        let data: String = frame
                            .lines()
                            .filter_map(|l| l.strip_prefix("data: "))
                            .collect();
                        return serde_json::from_str(&data).unwrap();
                    }
                    continue;
                }
                let chunk = self.response.chunk().await.unwrap().expect("stream open");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("a command within 10 s")
    }
}

#[actix::test]
async fn the_command_stream_sends_each_command_leased_and_answers_go_to_the_result_endpoint() {
    let mut s = Served::start(Policy::default(), fast());
    let bad = s
        .client
        .get(format!("{}/v1/runtime/commands/stream?lease_ms=5", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let response = s
        .client
        .get(format!("{}/v1/runtime/commands/stream", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut frames = Frames {
        response,
        buffer: String::new(),
    };
    s.supervisor.submit(item(4)).await.unwrap();
    let spawn = frames.next_command().await;
    assert_eq!(spawn["op"], "spawn");
    assert!(spawn["lease"].is_u64() && spawn["lease_expires_ms"].is_u64());
    let ok = json!({"ok": {"session": spawn["session"]}, "lease": spawn["lease"]});
    assert_eq!(s.answer(&spawn, ok).await, 204);
    let assign = frames.next_command().await;
    assert_eq!(assign["op"], "assign");
    assert_eq!(s.answer(&assign, json!({"ok": {}})).await, 204);
    s.wait_for("session start", |e| {
        matches!(e, FleetEvent::SessionStarted { .. })
    })
    .await;
}

#[actix::test]
async fn a_command_stream_holds_at_most_max_outstanding_and_the_rest_go_to_other_consumers() {
    let s = Served::start(Policy::default(), fast());
    let response = s
        .client
        .get(format!(
            "{}/v1/runtime/commands/stream?lease_ms=600000&max_outstanding=2",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut frames = Frames {
        response,
        buffer: String::new(),
    };
    for id in 1..=5 {
        s.supervisor.submit(item(id)).await.unwrap();
    }
    // The stream's reader takes two and then answers nothing.
    let held = [frames.next_command().await, frames.next_command().await];
    // Every other spawn goes to a poller, though the stream stays open and its buffers have
    // room: it holds two already.
    let mut polled = Vec::new();
    while polled.len() < 3 {
        let c = s.next_command(600_000).await;
        assert_eq!(c["op"], "spawn", "{c}");
        polled.push(c["id"].as_u64().unwrap());
    }
    for h in &held {
        assert!(!polled.contains(&h["id"].as_u64().unwrap()), "{h}");
    }
    // Once one of the stream's commands is answered, it takes the next one queued.
    let answered = json!({"ok": {"session": held[0]["session"]}, "lease": held[0]["lease"]});
    assert_eq!(s.answer(&held[0], answered).await, 204);
    let next = frames.next_command().await;
    assert_eq!(next["op"], "assign", "the answered spawn's assign: {next}");
    let bad = s
        .client
        .get(format!(
            "{}/v1/runtime/commands/stream?max_outstanding=0",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

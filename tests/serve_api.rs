//! `baton serve`'s HTTP interface, in process: a real server on 127.0.0.1:0 (`serve::bind`)
//! over a supervisor on a `MemoryRuntime`, driven with reqwest. No sleeping: tests wait for the
//! fleet's events.

use std::sync::Arc;
use std::time::Duration;

use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::serve::events::EventHub;
use baton::serve::guard::Token;
use baton::serve::metrics::Metrics;
use baton::serve::{self, Parts, ServeConfig};
use baton::{AgentType, FleetEvent, SessionId, Supervisor, SupervisorHandle, WorkItem, WorkItemId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const TOKEN: &str = "test-token-0123456789";

/// What the handlers share, over `supervisor` (no journal, no command queue).
fn parts(supervisor: &SupervisorHandle) -> Parts {
    Parts {
        supervisor: supervisor.clone(),
        store: None,
        commands: None,
        events: EventHub::new(supervisor),
        metrics: Metrics::new(),
        cluster: None,
    }
}

/// A served fleet: the server's base URL, the supervisor behind it and its events.
struct Served {
    base: String,
    client: reqwest::Client,
    supervisor: SupervisorHandle,
    events: UnboundedReceiver<FleetEvent>,
    server: actix_web::dev::ServerHandle,
}

impl Served {
    /// Agent types `coder` and `writer` (1,000-token windows), bodies capped at 4 KiB.
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = Arc::new(MemoryRuntime::new(MemoryConfig::default()));
        let builder = Supervisor::builder(runtime)
            .agent_type(AgentType::new("coder", 1000))
            .agent_type(AgentType::new("writer", 1000));
        let events = builder.subscribe();
        let supervisor = builder.start();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: 4096,
            workers: 1,
            ..ServeConfig::new(Token::new(TOKEN).unwrap())
        };
        let (addr, server) = serve::bind(&config, parts(&supervisor)).unwrap();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            supervisor,
            events,
            server: handle,
        }
    }

    /// Submits a work item and waits for its session; returns the session's id.
    async fn session_for(&mut self, id: u64, agent_type: &str) -> u64 {
        let item = WorkItem {
            id: WorkItemId(id),
            agent_type: agent_type.into(),
            text: format!("work item {id}"),
        };
        self.supervisor.submit(item).await.unwrap();
        match self
            .wait_for(
                |e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == id),
            )
            .await
        {
            FleetEvent::SessionStarted { session, .. } => session.0,
            _ => unreachable!(),
        }
    }

    /// Waits (up to 10 s) for an event matching `pred`.
    async fn wait_for(&mut self, pred: impl Fn(&FleetEvent) -> bool) -> FleetEvent {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = self.events.recv().await.expect("the fleet runs");
                if pred(&e) {
                    return e;
                }
            }
        })
        .await
        .expect("the event arrives")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(
            self.client
                .get(self.url(path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(
            self.client
                .post(self.url(path))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn stop(self) {
        self.server.stop(false).await;
        self.supervisor.shutdown(Duration::from_secs(5)).await;
    }
}

async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    (status, body)
}

/// An error body's code, checking its shape.
fn code(body: &Value) -> &str {
    assert!(body["message"].is_string(), "{body}");
    body["error"].as_str().unwrap_or_else(|| panic!("{body}"))
}

#[actix_web::test]
async fn sessions_are_listed_by_id_with_each_filter_and_one_shows_its_history() {
    let mut s = Served::start().await;
    let a = s.session_for(1, "coder").await;
    let b = s.session_for(2, "writer").await;
    let (status, _) = s
        .post(&format!("/v1/sessions/{a}/usage"), json!({"used": 500}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let ids = |body: &Value| -> Vec<u64> {
        body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["session"].as_u64().unwrap())
            .collect()
    };
    let (status, all) = s.get("/v1/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), [a, b]);
    assert!(all["sessions"][0].get("history").is_none(), "{all}");
    assert_eq!(ids(&s.get("/v1/sessions?agent_type=writer").await.1), [b]);
    assert_eq!(ids(&s.get("/v1/sessions?min_ratio=0.5").await.1), [a]);
    assert_eq!(
        ids(&s.get("/v1/sessions?min_ratio=0.51").await.1),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids(&s.get("/v1/sessions?phase=normal&agent_type=coder").await.1),
        [a]
    );
    assert_eq!(
        ids(&s.get("/v1/sessions?phase=compacting").await.1),
        Vec::<u64>::new()
    );

    let (status, one) = s.get(&format!("/v1/sessions/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["agent_type"], "coder");
    assert_eq!(one["work_item"], 1);
    assert_eq!(one["phase"], "normal");
    assert_eq!(
        one["usage"],
        json!({"used": 500, "window": 1000, "ratio": 0.5, "source": "reported"})
    );
    assert_eq!(one["history"].as_array().unwrap().len(), 1, "{one}");
    s.stop().await;
}

#[actix_web::test]
async fn bad_session_filters_are_400() {
    let s = Served::start().await;
    for q in [
        "phase=asleep",
        "min_ratio=-1",
        "min_ratio=NaN",
        "min_ratio=lots",
        "colour=red",
    ] {
        let (status, body) = s.get(&format!("/v1/sessions?{q}")).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{q}"
        );
    }
    s.stop().await;
}

#[actix_web::test]
async fn a_usage_report_answers_the_phase_right_after_the_reading() {
    let mut s = Served::start().await;
    let id = s.session_for(1, "coder").await;
    let (status, r) = s
        .post(
            &format!("/v1/sessions/{id}/usage"),
            json!({"used": 100, "source": "estimated"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r, json!({"session": id, "phase": "normal"}));
    let (_, r) = s
        .post(&format!("/v1/sessions/{id}/usage"), json!({"used": 850}))
        .await;
    assert_eq!(r["phase"], "compacting", "{r}");
    s.stop().await;
}

#[actix_web::test]
async fn a_report_over_the_rotation_threshold_starts_a_rotation_and_the_successor_takes_over() {
    let mut s = Served::start().await;
    let id = s.session_for(1, "coder").await;
    let (_, r) = s
        .post(
            &format!("/v1/sessions/{id}/usage"),
            json!({"used": 990, "window": 1000}),
        )
        .await;
    assert_eq!(r["phase"], "rotating", "{r}");
    let successor = match s
        .wait_for(|e| matches!(e, FleetEvent::Rotation(r) if r.old_session == SessionId(id)))
        .await
    {
        FleetEvent::Rotation(r) => r.new_session.expect("a successor").0,
        _ => unreachable!(),
    };
    let (status, gone) = s
        .post(&format!("/v1/sessions/{id}/usage"), json!({"used": 10}))
        .await;
    assert_eq!((status, code(&gone)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, _) = s.get(&format!("/v1/sessions/{successor}")).await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

#[actix_web::test]
async fn a_usage_batch_answers_each_report_in_order_and_a_bad_one_fails_alone() {
    let mut s = Served::start().await;
    let a = s.session_for(1, "coder").await;
    let b = s.session_for(2, "writer").await;
    let (status, r) = s
        .post(
            "/v1/usage",
            json!({"reports": [
                {"session": a, "used": 100},
                {"session": 999, "used": 100},
                {"session": b, "used": 5, "window": 0},
                {"session": b, "used": 300, "source": "modelled"},
                {"session": a, "used": 850},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{r}");
    assert_eq!(results[0], json!({"session": a, "phase": "normal"}));
    assert_eq!(
        (results[1]["session"].as_u64(), &results[1]["error"]),
        (Some(999), &json!("not_found"))
    );
    assert_eq!(
        (results[2]["session"].as_u64(), &results[2]["error"]),
        (Some(b), &json!("bad_request"))
    );
    assert_eq!(results[3], json!({"session": b, "phase": "normal"}));
    assert_eq!(results[4], json!({"session": a, "phase": "compacting"}));
    let (_, shown) = s.get(&format!("/v1/sessions/{b}")).await;
    assert_eq!(shown["usage"]["source"], "modelled");
    s.stop().await;
}

#[actix_web::test]
async fn a_batch_of_more_than_ten_thousand_reports_is_400() {
    let s = Served::start().await;
    // Past the 4 KiB cap of this server, so ask a server with a larger one.
    let reports: Vec<Value> = (0..10_001)
        .map(|_| json!({"session": 1, "used": 1}))
        .collect();
    let body = serde_json::to_vec(&json!({"reports": reports})).unwrap();
    let big = serve_with_cap(&s, 1 << 20).await;
    let r = s
        .client
        .post(format!("{big}/v1/usage"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{body}"
    );
    s.stop().await;
}

/// A second server over the same supervisor with another body cap; returns its base URL.
async fn serve_with_cap(s: &Served, cap: usize) -> String {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: cap,
        workers: 1,
        ..ServeConfig::new(Token::new(TOKEN).unwrap())
    };
    let (addr, server) = serve::bind(&config, parts(&s.supervisor)).unwrap();
    actix_web::rt::spawn(server);
    format!("http://{addr}")
}

#[actix_web::test]
async fn close_and_rotate_are_accepted_with_the_session_and_carried_out() {
    let mut s = Served::start().await;
    let a = s.session_for(1, "coder").await;
    let b = s.session_for(2, "coder").await;
    let (status, r) = s.post(&format!("/v1/sessions/{a}/close"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (r["session"].as_u64(), r["work_item"].as_u64()),
        (Some(a), Some(1))
    );
    s.wait_for(|e| matches!(e, FleetEvent::WorkItemDone { work_item, .. } if work_item.0 == 1))
        .await;

    let (status, r) = s.post(&format!("/v1/sessions/{b}/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(r["session"].as_u64(), Some(b));
    match s
        .wait_for(|e| matches!(e, FleetEvent::Rotation(r) if r.old_session == SessionId(b)))
        .await
    {
        FleetEvent::Rotation(r) => assert_eq!(r.reason.to_string(), "manual"),
        _ => unreachable!(),
    }
    for order in ["close", "rotate"] {
        let (status, body) = s
            .post(&format!("/v1/sessions/{a}/{order}"), json!({}))
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{order}"
        );
    }
    s.stop().await;
}

#[actix_web::test]
async fn requests_without_the_right_bearer_token_are_401_with_a_bearer_challenge() {
    let s = Served::start().await;
    let url = s.url("/v1/sessions");
    let requests = [
        s.client.get(&url),
        s.client.get(&url).bearer_auth("wrong-token-0123456789"),
        s.client
            .get(&url)
            .header("authorization", format!("Basic {TOKEN}")),
        s.client
            .get(&url)
            .header("authorization", format!("bearer{TOKEN}")),
        s.client
            .get(&url)
            .header("authorization", format!("Bearer {TOKEN}x")),
    ];
    for r in requests {
        let r = r.send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let (status, body) = answer(r).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        assert!(!body.to_string().contains(TOKEN));
    }
    // Unknown paths too: nothing is told without the token.
    let r = s.client.get(s.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[actix_web::test]
async fn unknown_ids_and_paths_are_404_and_a_non_numeric_id_is_400() {
    let s = Served::start().await;
    let (status, body) = s.get("/v1/sessions/77").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = s.get("/v1/nothing-here").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    for id in ["abc", "-1", "18446744073709551616", "1.5"] {
        let (status, body) = s.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{id}"
        );
    }
    s.stop().await;
}

#[actix_web::test]
async fn a_known_path_with_another_method_is_405_as_json() {
    let s = Served::start().await;
    let (status, body) = s.get("/v1/usage").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let (status, body) = s.post("/v1/sessions", json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let r = s
        .client
        .put(s.url("/v1/work-items"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let r = s
        .client
        .delete(s.url("/openapi.json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    s.stop().await;
}

#[actix_web::test]
async fn bodies_that_are_malformed_mistyped_or_out_of_range_are_400() {
    let mut s = Served::start().await;
    let id = s.session_for(1, "coder").await;
    let path = s.url(&format!("/v1/sessions/{id}/usage"));
    let bodies = [
        "{\"used\": ",
        "{\"used\": \"many\"}",
        "{\"used\": -1}",
        "{\"used\": 1.5}",
        "{\"used\": 4294967296}",
        "{\"used\": 10, \"window\": 0}",
        "{\"used\": 10, \"source\": \"guessed\"}",
        "{\"used\": 10, \"colour\": \"red\"}",
        "[]",
        "",
    ];
    for body in bodies {
        let r = s
            .client
            .post(&path)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = answer(r).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{body}"
        );
    }
    s.stop().await;
}

#[actix_web::test]
async fn a_body_over_the_cap_is_413_and_a_body_that_is_not_json_is_415() {
    let s = Served::start().await;
    let big = json!({"reports": [], "pad": "x".repeat(5000)});
    let (status, body) = s.post("/v1/usage", big).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let r = s
        .client
        .post(s.url("/v1/usage"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{\"reports\": []}")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    s.stop().await;
}

#[actix_web::test]
async fn the_openapi_document_describes_every_route_with_its_error_bodies() {
    let s = Served::start().await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/openapi.json", "get"),
        ("/v1/sessions", "get"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}/close", "post"),
        ("/v1/sessions/{id}/rotate", "post"),
        ("/v1/sessions/{id}/usage", "post"),
        ("/v1/usage", "post"),
        ("/v1/agent-types", "get"),
        ("/v1/agent-types/{name}", "get"),
        ("/v1/agent-types/{name}", "put"),
        ("/v1/work-items", "get"),
        ("/v1/work-items", "post"),
        ("/v1/work-items/batch", "post"),
        ("/v1/work-items/{id}", "get"),
        ("/v1/work-items/{id}/cancel", "post"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{path} {method} is documented");
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("401"), "{path}: 401");
        for (status, r) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{path} {status}"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    s.stop().await;
}

impl Served {
    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(
            self.client
                .put(self.url(path))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

#[actix_web::test]
async fn a_work_item_is_201_when_new_200_when_retried_and_409_with_other_content() {
    let mut s = Served::start().await;
    let item = json!({"id": 7, "agent_type": "coder", "text": "fix the build"});
    let (status, created) = s.post("/v1/work-items", item.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["id"].as_u64(), &created["text"]),
        (Some(7), &json!("fix the build"))
    );
    s.wait_for(|e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == 7))
        .await;
    let (status, again) = s.post("/v1/work-items", item).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["place"], "live", "{again}");
    assert!(again["session"].is_u64(), "{again}");
    let other = json!({"id": 7, "agent_type": "coder", "text": "fix the tests"});
    let (status, body) = s.post("/v1/work-items", other).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));
    let (status, one) = s.get("/v1/work-items/7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["text"], "fix the build");
    s.stop().await;
}

#[actix_web::test]
async fn a_work_item_of_an_unknown_agent_type_is_404_and_an_empty_one_400() {
    let s = Served::start().await;
    let (status, body) = s
        .post(
            "/v1/work-items",
            json!({"id": 1, "agent_type": "poet", "text": "a sonnet"}),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = s
        .post(
            "/v1/work-items",
            json!({"id": 1, "agent_type": "coder", "text": "  "}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, body) = s.get("/v1/work-items/1").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    s.stop().await;
}

#[actix_web::test]
async fn a_work_item_batch_answers_each_item_in_order() {
    let s = Served::start().await;
    let (status, r) = s
        .post(
            "/v1/work-items/batch",
            json!({"items": [
                {"id": 10, "agent_type": "coder", "text": "one"},
                {"id": 11, "agent_type": "poet", "text": "two"},
                {"id": 10, "agent_type": "coder", "text": "one"},
                {"id": 10, "agent_type": "coder", "text": "other"},
                {"id": 12, "agent_type": "writer", "text": "three"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let statuses: Vec<(u64, &str)> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["id"].as_u64().unwrap(), x["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            (10, "created"),
            (11, "rejected"),
            (10, "exists"),
            (10, "conflict"),
            (12, "created")
        ]
    );
    assert!(r["results"][1]["message"].is_string(), "{r}");
    let (_, listed) = s.get("/v1/work-items?agent_type=writer").await;
    let ids: Vec<_> = listed["work_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .collect();
    assert_eq!(ids, [json!(12)]);
    let (_, limited) = s.get("/v1/work-items?limit=1").await;
    assert_eq!(limited["work_items"].as_array().unwrap().len(), 1);
    let (status, body) = s.get("/v1/work-items?place=elsewhere").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    s.stop().await;
}

#[actix_web::test]
async fn a_batch_of_more_than_a_thousand_work_items_is_400() {
    let s = Served::start().await;
    let big = serve_with_cap(&s, 1 << 20).await;
    let items: Vec<Value> = (0..1001)
        .map(|i| json!({"id": i, "agent_type": "coder", "text": "x"}))
        .collect();
    let r = s
        .client
        .post(format!("{big}/v1/work-items/batch"))
        .bearer_auth(TOKEN)
        .json(&json!({"items": items}))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (_, listed) = s.get("/v1/work-items").await;
    assert_eq!(
        listed["work_items"],
        json!([]),
        "nothing of a refused batch was submitted"
    );
    s.stop().await;
}

#[actix_web::test]
async fn an_agent_type_is_created_201_updated_200_and_conflicts_409_on_anything_but_its_policy() {
    let mut s = Served::start().await;
    let (status, list) = s.get("/v1/agent-types").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = list["agent_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("coder"), json!("writer")]);

    let reviewer = json!({"window": 2000, "model": "m", "policy": {"compact_at": 0.7}});
    let (status, created) = s.put("/v1/agent-types/reviewer", reviewer.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["policy"]["compact_at"], 0.7);
    assert_eq!(
        created["policy"]["rotate_at"], 0.95,
        "absent keys take their defaults"
    );
    let (status, _) = s.put("/v1/agent-types/reviewer", reviewer).await;
    assert_eq!(status, StatusCode::OK);
    let stricter = json!({"window": 2000, "model": "m", "policy": {"compact_at": 0.5}});
    let (status, _) = s.put("/v1/agent-types/reviewer", stricter).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = s.get("/v1/agent-types/reviewer").await;
    assert_eq!(shown["policy"]["compact_at"], 0.5);

    let (status, body) = s
        .put(
            "/v1/agent-types/reviewer",
            json!({"window": 4000, "model": "m"}),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));

    // The new type takes work, under its new policy: 0.6 of its window compacts.
    let (status, _) = s
        .post(
            "/v1/work-items",
            json!({"id": 1, "agent_type": "reviewer", "text": "review"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = match s
        .wait_for(|e| matches!(e, FleetEvent::SessionStarted { work_item, .. } if work_item.0 == 1))
        .await
    {
        FleetEvent::SessionStarted { session, .. } => session.0,
        _ => unreachable!(),
    };
    let (_, r) = s
        .post(&format!("/v1/sessions/{id}/usage"), json!({"used": 1200}))
        .await;
    assert_eq!(r["phase"], "compacting", "{r}");
    s.stop().await;
}

#[actix_web::test]
async fn an_invalid_agent_type_is_400_and_an_unknown_one_404() {
    let s = Served::start().await;
    for body in [
        json!({"window": 0}),
        json!({"window": 1000, "policy": {"compact_at": 0.99}}),
        json!({"window": 1000, "policy": {"compact_now": 0.5}}),
        json!({"window": 1000, "policy": {"history_len": 1_000_000}}),
        json!({"window": 1000, "colour": "red"}),
        json!({"window": "big"}),
    ] {
        let (status, answer) = s.put("/v1/agent-types/x", body.clone()).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{body}"
        );
    }
    let (status, body) = s.get("/v1/agent-types/x").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    s.stop().await;
}

#[actix_web::test]
async fn a_cancelled_work_item_ends_dead_and_a_second_cancel_is_409() {
    let mut s = Served::start().await;
    let session = s.session_for(3, "coder").await;
    let (status, item) = s.post("/v1/work-items/3/cancel", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{item}");
    assert_eq!(
        (&item["place"], &item["reason"]),
        (&json!("dead"), &json!("cancelled"))
    );
    let (_, shown) = s.get("/v1/work-items/3").await;
    assert_eq!(shown["place"], "dead");
    let (status, body) = s.post("/v1/work-items/3/cancel", json!({})).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));
    let (status, body) = s.post("/v1/work-items/99/cancel", json!({})).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    // Its session was closed.
    s.wait_for(|e| {
        matches!(e, FleetEvent::Transition(t) if t.session == SessionId(session) && t.to == baton::Phase::Closed)
    })
    .await;
    s.stop().await;
}

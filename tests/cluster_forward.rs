//! Any node answers for any session: two `baton serve` cluster nodes in this process on a real
//! PostgreSQL, where node a owns every session (b has no room, so it never claims). Writes sent
//! to b are forwarded to a and take effect there; b reads sessions and events from the database;
//! a forwarded request is never forwarded again; a session whose owner has left or cannot be
//! reached is answered 503. A cancel sent to b reaches the item's owner, or cancels it in the
//! pool. An event stream on either node carries every node's events, in `seq` order, each once,
//! and resumes without a gap. A runtime whose test panicked before its nodes left shuts down.

mod cluster_common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use baton::serve::events::EventPage;
use baton::serve::forward::FORWARDED;
use baton::serve::sessions::{PhaseView, SessionList, SessionView};
use baton::serve::work_items::{PlaceView, WorkItemView};
use baton::{FleetEvent, Phase, SessionId, WorkItemId};
use cluster_common::node::{ServedNode, serve_node};
use cluster_common::stream::{Frame, Stream, done, published, seqs_and_kinds};
use cluster_common::{TestDb, test_db};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

const TOKEN: &str = "cluster-forward-token-0123456789";
/// Session ids no node has.
const NOBODY: u64 = 424_242;

/// Node a (room for 4 sessions) and node b (no room: it never owns a session).
async fn two_nodes(db: &TestDb, tracker: &TaskTracker) -> (ServedNode, ServedNode) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = serve_node(db, "a", 1, 4, TOKEN, tracker).await;
    let b = serve_node(db, "b", 1_000_000, 0, TOKEN, tracker).await;
    (a, b)
}

async fn leave(mut a: ServedNode, mut b: ServedNode, tracker: TaskTracker) {
    for node in [&mut a, &mut b] {
        if let Some(running) = node.running.take() {
            running.leave().await;
        }
        node.hub.close();
    }
    tracker.close();
    tracker.wait().await;
}

/// The first event of `node` that `pick` takes something from (within 60 s).
async fn until<T>(node: &mut ServedNode, mut pick: impl FnMut(&FleetEvent) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let event = node.events.recv().await.expect("the fleet's events");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
    .expect("the awaited event arrives")
}

/// Submits items `ids` through `via` (into the pool) and waits until `owner` has started a
/// session for each: the sessions, in the order they started.
async fn sessions_for(
    http: &reqwest::Client,
    via: &ServedNode,
    owner: &mut ServedNode,
    ids: &[u64],
) -> Vec<(SessionId, WorkItemId)> {
    for id in ids {
        let res = http
            .post(format!("{}/v1/work-items", via.base))
            .bearer_auth(TOKEN)
            .json(&json!({"id": id, "agent_type": "coder", "text": format!("task {id}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let mut started = Vec::new();
    while started.len() < ids.len() {
        started.push(
            until(owner, |e| match e {
                FleetEvent::SessionStarted {
                    session, work_item, ..
                } => Some((*session, *work_item)),
                _ => None,
            })
            .await,
        );
    }
    started
}

/// POSTs `body` (JSON, if any) to `path` on `node`, with `extra` headers: status and JSON body.
async fn post(
    http: &reqwest::Client,
    node: &ServedNode,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = http.post(format!("{}{path}", node.base)).bearer_auth(TOKEN);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    node: &ServedNode,
    path: &str,
) -> (u16, Option<T>) {
    let res = http
        .get(format!("{}{path}", node.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = if status == 200 {
        Some(res.json().await.unwrap())
    } else {
        None
    };
    (status, body)
}

/// The tokens the owner's supervisor has for `session`'s latest reading.
async fn used_on(owner: &ServedNode, session: SessionId) -> Option<u64> {
    let handle = owner.supervisor.session(session).await?;
    handle.info().await?.usage.map(|u| u.used())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_close_and_rotate_sent_to_a_node_that_does_not_own_the_session_take_effect_on_the_owner()
 {
    let Some(db) = test_db("fwdwrites") else {
        return;
    };
    let tracker = TaskTracker::new();
    let (mut a, b) = two_nodes(&db, &tracker).await;
    let http = reqwest::Client::new();
    let started = sessions_for(&http, &b, &mut a, &[1, 2, 3]).await;
    let [(s1, _), (s2, _), (s3, item3)] = started[..] else {
        panic!("three sessions: {started:?}")
    };
    assert!(
        b.supervisor.session(s1).await.is_none(),
        "b owns no session"
    );

    // A usage report: the owner's answer, and the owner's session has the reading.
    let (status, reading) = post(
        &http,
        &b,
        &format!("/v1/sessions/{}/usage", s1.0),
        Some(json!({"used": 500})),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{reading}");
    assert_eq!(reading["session"], s1.0);
    assert_eq!(reading["phase"], "normal");
    assert_eq!(used_on(&a, s1).await, Some(500));

    // A batch: reports for a's session go on to a, in order; an unknown session fails alone.
    let (status, answer) = post(
        &http,
        &b,
        "/v1/usage",
        Some(json!({"reports": [
            {"session": s1.0, "used": 600},
            {"session": NOBODY, "used": 1},
            {"session": s1.0, "used": 700, "source": "estimated"},
        ]})),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{answer}");
    assert_eq!(results[0]["session"], s1.0);
    assert_eq!(results[0]["phase"], "normal");
    assert_eq!(results[1]["session"], NOBODY);
    assert_eq!(results[1]["error"], "not_found");
    assert_eq!(results[2]["phase"], "normal");
    assert_eq!(used_on(&a, s1).await, Some(700), "the reports ran in order");

    // A rotate: the owner rotates the session.
    let (status, view) = post(
        &http,
        &b,
        &format!("/v1/sessions/{}/rotate", s2.0),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["session"], s2.0);
    until(&mut a, |e| match e {
        FleetEvent::Rotation(r) if r.old_session == s2 => Some(()),
        _ => None,
    })
    .await;

    // A close: the owner closes the session and its work item is done.
    let (status, view) = post(
        &http,
        &b,
        &format!("/v1/sessions/{}/close", s3.0),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["session"], s3.0);
    let done = until(&mut a, |e| match e {
        FleetEvent::WorkItemDone { session, work_item } if *session == s3 => Some(*work_item),
        _ => None,
    })
    .await;
    assert_eq!(done, item3);

    // A session live nowhere: 404, from either node.
    for path in ["usage", "close", "rotate"] {
        let body = (path == "usage").then(|| json!({"used": 1}));
        let (status, err) = post(
            &http,
            &b,
            &format!("/v1/sessions/{NOBODY}/{path}"),
            body,
            &[],
        )
        .await;
        assert_eq!(status, 404, "{path}: {err}");
        assert_eq!(err["error"], "not_found");
    }
    leave(a, b, tracker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_for_sessions_it_does_not_own_from_the_database() {
    let Some(db) = test_db("fwdreads") else {
        return;
    };
    let tracker = TaskTracker::new();
    let (mut a, b) = two_nodes(&db, &tracker).await;
    let http = reqwest::Client::new();
    let started = sessions_for(&http, &b, &mut a, &[7]).await;
    let (s, item) = started[0];
    let (status, _) = post(
        &http,
        &a,
        &format!("/v1/sessions/{}/usage", s.0),
        Some(json!({"used": 500})),
        &[],
    )
    .await;
    assert_eq!(status, 200);

    // On b: the database's row, owned by a, without the readings a keeps in memory.
    let (status, view) = get::<SessionView>(&http, &b, &format!("/v1/sessions/{}", s.0)).await;
    assert_eq!(status, 200);
    let view = view.unwrap();
    assert_eq!(
        (view.session, view.work_item, view.agent_type.as_str()),
        (s.0, item.0, "coder")
    );
    assert_eq!(view.phase, PhaseView::Normal);
    assert_eq!(view.owner, Some(a.epoch.0));
    assert_eq!(view.usage, None);
    let (_, list) = get::<SessionList>(&http, &b, "/v1/sessions").await;
    let listed: Vec<_> = list
        .unwrap()
        .sessions
        .iter()
        .map(|v| (v.session, v.owner))
        .collect();
    assert_eq!(listed, [(s.0, Some(a.epoch.0))]);
    let (_, list) = get::<SessionList>(&http, &b, "/v1/sessions?agent_type=reviewer").await;
    assert!(list.unwrap().sessions.is_empty());
    let (status, _) = get::<Value>(&http, &b, &format!("/v1/sessions/{NOBODY}")).await;
    assert_eq!(status, 404);

    // On a, its owner: its own session, with its readings.
    let (_, own) = get::<SessionView>(&http, &a, &format!("/v1/sessions/{}", s.0)).await;
    let own = own.unwrap();
    assert_eq!(own.owner, Some(a.epoch.0));
    assert_eq!(own.usage.map(|u| u.used), Some(500));
    assert_eq!(own.history.map(|h| h.len()), Some(1));
    let (_, list) = get::<SessionList>(&http, &a, "/v1/sessions?min_ratio=0.5").await;
    assert_eq!(list.unwrap().sessions.len(), 1);

    // b lists a's events from the shared log.
    let (status, page) =
        get::<EventPage>(&http, &b, &format!("/v1/events?session={}&after=0", s.0)).await;
    assert_eq!(status, 200);
    let kinds: Vec<_> = page.unwrap().events.into_iter().map(|e| e.kind).collect();
    assert!(
        kinds.iter().any(|k| k == "session_started"),
        "b lists a's events: {kinds:?}"
    );
    leave(a, b, tracker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_not_forwarded_again_and_an_owner_gone_or_unreachable_is_503() {
    let Some(db) = test_db("fwdloop") else {
        return;
    };
    let tracker = TaskTracker::new();
    let (mut a, b) = two_nodes(&db, &tracker).await;
    let http = reqwest::Client::new();
    let started = sessions_for(&http, &b, &mut a, &[1]).await;
    let s = started[0].0;
    let usage = format!("/v1/sessions/{}/usage", s.0);

    // Marked forwarded to b: b answers as if alone (no such session here), and a never hears
    // of it.
    let to_b = b.epoch.0.to_string();
    let forwarded = [(FORWARDED, to_b.as_str())];
    let (status, err) = post(&http, &b, &usage, Some(json!({"used": 500})), &forwarded).await;
    assert_eq!(status, 404, "{err}");
    // Marked forwarded to another incarnation of b's address (its owner restarted or left):
    // 503, try again, never "no such session".
    let elsewhere = [(FORWARDED, "999999")];
    let (status, err) = post(&http, &b, &usage, Some(json!({"used": 500})), &elsewhere).await;
    assert_eq!(status, 503, "{err}");
    let (status, _) = post(
        &http,
        &b,
        "/v1/usage",
        Some(json!({"reports": [{"session": s.0, "used": 500}]})),
        &elsewhere,
    )
    .await;
    assert_eq!(status, 503);
    let (status, answer) = post(
        &http,
        &b,
        "/v1/usage",
        Some(json!({"reports": [{"session": s.0, "used": 500}]})),
        &forwarded,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"][0]["error"], "not_found", "{answer}");
    assert_eq!(used_on(&a, s).await, None, "a received no reading");

    // The owner's address answers nothing: 503, for one report and in a batch.
    let closed = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let epoch_a = a.epoch.0;
    db.with(move |c| {
        c.execute(
            "UPDATE baton_nodes SET addr = $2 WHERE epoch = $1",
            &[&epoch_a, &nowhere],
        )
        .unwrap()
    });
    let (status, err) = post(&http, &b, &usage, Some(json!({"used": 500})), &[]).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"], "unavailable");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{err}"
    );
    let (status, answer) = post(
        &http,
        &b,
        "/v1/usage",
        Some(json!({"reports": [{"session": s.0, "used": 500}]})),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"][0]["error"], "unavailable", "{answer}");
    assert_eq!(used_on(&a, s).await, None);

    // The owner's row is gone (fenced): 503 for writes; reads still answer from the database.
    db.with(move |c| {
        c.execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&epoch_a])
            .unwrap()
    });
    let (status, err) = post(&http, &b, &format!("/v1/sessions/{}/close", s.0), None, &[]).await;
    assert_eq!(status, 503, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("has left the cluster"),
        "{err}"
    );
    assert!(
        a.supervisor.session(s).await.is_some(),
        "a did not close it"
    );
    let (status, view) = get::<SessionView>(&http, &b, &format!("/v1/sessions/{}", s.0)).await;
    assert_eq!(status, 200);
    assert_eq!(view.unwrap().owner, Some(epoch_a));
    leave(a, b, tracker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_node_that_owns_nothing_carries_the_other_nodes_events_in_seq_order_once_and_resumes_without_a_gap()
 {
    let Some(db) = test_db("fwdstream") else {
        return;
    };
    let tracker = TaskTracker::new();
    let (mut a, b) = two_nodes(&db, &tracker).await;
    let http = reqwest::Client::new();
    // Opened before anything happens: every published event of the test is live for it.
    let mut live_b = Stream::open(&http, &b.base, TOKEN, None).await;
    let mut live_a = Stream::open(&http, &a.base, TOKEN, None).await;

    let started = sessions_for(&http, &b, &mut a, &[1, 2]).await;
    let session_of = |item: u64| {
        started
            .iter()
            .find(|(_, w)| w.0 == item)
            .map(|(s, _)| s.0)
            .unwrap()
    };
    let (status, _) = post(
        &http,
        &b,
        &format!("/v1/sessions/{}/close", session_of(1)),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 202);
    let seen_b = live_b.until(done(1)).await;
    let seen_a = live_a.until(done(1)).await;
    let upto = seen_b.last().unwrap().seq;

    // b, which owns nothing, saw a's sessions start and its item end; both nodes' streams are
    // the shared log's published events exactly: in seq order, none missing, none twice.
    for item in [1, 2] {
        assert!(
            seen_b
                .iter()
                .any(|f| f.kind == "session_started" && f.data["work_item"] == item),
            "b's stream has item {item}'s session_started: {seen_b:?}"
        );
    }
    let log = published(&http, &b.base, TOKEN, 0, upto).await;
    assert_eq!(seqs_and_kinds(&seen_b), log, "b's stream is the log");
    assert_eq!(seqs_and_kinds(&seen_a), log, "a's stream is the log");

    // Resumed after item 1's session_started: the rest of the backlog, then live events, with
    // no gap and no duplicate across the switch.
    let resume_after = seen_b
        .iter()
        .find(|f| f.kind == "session_started")
        .unwrap()
        .seq;
    let mut resumed = Stream::open(&http, &b.base, TOKEN, Some(resume_after)).await;
    let backlog = resumed.until(done(1)).await;
    assert_eq!(
        seqs_and_kinds(&backlog),
        published(&http, &b.base, TOKEN, resume_after, upto).await
    );
    let (status, _) = post(
        &http,
        &b,
        &format!("/v1/sessions/{}/close", session_of(2)),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 202);
    let live = resumed.until(done(2)).await;
    let end = live.last().unwrap().seq;
    assert_eq!(
        seqs_and_kinds(&live),
        published(&http, &b.base, TOKEN, upto, end).await
    );
    assert_eq!(
        seqs_and_kinds(&live_b.until(done(2)).await),
        seqs_and_kinds(&live)
    );

    // A row no baton wrote (unreadable JSON) does not stop the streams: the next events still
    // reach them.
    db.with(|c| {
        c.execute(
            "INSERT INTO events (at, kind, session, payload) VALUES (0, 'session_started', 1, 'not json')",
            &[],
        )
        .unwrap()
    });
    sessions_for(&http, &b, &mut a, &[3]).await;
    let started_3 = |f: &Frame| f.kind == "session_started" && f.data["work_item"] == 3;
    let after_bad = live_b.until(started_3).await;
    assert!(
        after_bad.iter().all(|f| f.data.is_object()),
        "{after_bad:?}"
    );
    live_a.until(started_3).await;
    leave(a, b, tracker).await;
}

/// POSTs a cancel of `item` to `node`.
async fn cancel(
    http: &reqwest::Client,
    node: &ServedNode,
    item: u64,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    post(
        http,
        node,
        &format!("/v1/work-items/{item}/cancel"),
        None,
        extra,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_a_node_that_does_not_hold_the_item_reaches_its_owner_or_cancels_it_in_the_pool()
 {
    let Some(db) = test_db("fwdcancel") else {
        return;
    };
    let tracker = TaskTracker::new();
    let (mut a, b) = two_nodes(&db, &tracker).await;
    let http = reqwest::Client::new();
    let mut stream = Stream::open(&http, &b.base, TOKEN, None).await;
    // a's four places are taken: item 5 stays in the pool (b has no room).
    let started = sessions_for(&http, &b, &mut a, &[1, 2, 3, 4]).await;
    let (status, _) = post(
        &http,
        &b,
        "/v1/work-items",
        Some(json!({"id": 5, "agent_type": "coder", "text": "task 5"})),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let (_, pooled) = get::<WorkItemView>(&http, &b, "/v1/work-items/5").await;
    assert_eq!(pooled.unwrap().place, PlaceView::Queued);

    // In the pool (a is full), cancelled through b: dead in the database, with its event in
    // the log and on the stream.
    let (status, view) = cancel(&http, &b, 5, &[]).await;
    assert_eq!(status, 200, "{view}");
    let view: WorkItemView = serde_json::from_value(view).unwrap();
    assert_eq!(
        (view.id, view.place, view.reason.as_deref()),
        (5, PlaceView::Dead, Some("cancelled"))
    );
    let (_, stored) = get::<WorkItemView>(&http, &a, "/v1/work-items/5").await;
    assert_eq!(stored.unwrap().place, PlaceView::Dead);
    let dead = stream
        .until(|f| f.kind == "dead_letter" && f.data["work_item"] == 5)
        .await;
    assert_eq!(
        dead.last().unwrap().data["payload"]["dead_letter"]["reason"],
        "cancelled"
    );

    // Owned by a, cancelled through b: a closes its session and the item is dead there; the
    // room this frees on a is where the pool's items would go.
    let (s1, _) = started.iter().find(|(_, w)| w.0 == 1).copied().unwrap();
    let (status, view) = cancel(&http, &b, 1, &[]).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["id"].clone(), view["place"].clone()),
        (json!(1), json!("dead"))
    );
    assert_eq!(view["reason"], "cancelled");
    let reason = until(&mut a, |e| match e {
        FleetEvent::DeadLetter { work_item, reason } if work_item.0 == 1 => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "cancelled");
    until(&mut a, |e| match e {
        FleetEvent::Transition(t) if t.session == s1 && t.to == Phase::Closed => Some(()),
        _ => None,
    })
    .await;

    // With the room freed on a, it claims item 6, submitted after item 5, and never item 5.
    let (status, _) = post(
        &http,
        &b,
        "/v1/work-items",
        Some(json!({"id": 6, "agent_type": "coder", "text": "task 6"})),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let next = until(&mut a, |e| match e {
        FleetEvent::SessionStarted { work_item, .. } => Some(*work_item),
        _ => None,
    })
    .await;
    assert_eq!(
        next,
        WorkItemId(6),
        "a claims item 6, not the cancelled item 5"
    );

    // Ended already: 409, from either node; unknown: 404; marked forwarded: b answers alone.
    for node in [&a, &b] {
        for item in [1, 5] {
            let (status, err) = cancel(&http, node, item, &[]).await;
            assert_eq!(status, 409, "{err}");
        }
        let (status, _) = cancel(&http, node, NOBODY, &[]).await;
        assert_eq!(status, 404);
    }
    let to_b = b.epoch.0.to_string();
    let (status, _) = cancel(&http, &b, 2, &[(FORWARDED, to_b.as_str())]).await;
    assert_eq!(status, 404, "a forwarded cancel is not forwarded again");
    // Forwarded to the node the database names as the owner, while its supervisor does not
    // hold the item (the hand-off from a claim): 503, try again.
    let to_a = a.epoch.0.to_string();
    let (status, _) = cancel(&http, &a, NOBODY, &[(FORWARDED, to_a.as_str())]).await;
    assert_eq!(status, 404, "an item no node has is unknown");
    let (_, item2) = get::<WorkItemView>(&http, &b, "/v1/work-items/2").await;
    assert_eq!(item2.unwrap().place, PlaceView::Live);

    // The owner gone (fenced): 503, and the item is left as it is.
    let epoch_a = a.epoch.0;
    db.with(move |c| {
        c.execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&epoch_a])
            .unwrap()
    });
    let (status, err) = cancel(&http, &b, 2, &[]).await;
    assert_eq!(status, 503, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("work item 2 is owned by node"),
        "{err}"
    );
    leave(a, b, tracker).await;
}

#[test]
fn a_runtime_whose_test_panicked_before_its_nodes_left_shuts_down() {
    let Some(db) = test_db("fwdpanic") else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let db = Arc::new(db);
    let in_thread = db.clone();
    std::thread::spawn(move || {
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let tracker = TaskTracker::new();
                let (mut a, b) = two_nodes(&in_thread, &tracker).await;
                let http = reqwest::Client::new();
                sessions_for(&http, &b, &mut a, &[1]).await;
                panic!("this test fails on purpose, before its nodes leave");
            })
        }));
        // Reached only once the runtime has shut down.
        tx.send(failed.is_err()).unwrap();
    });
    let panicked = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the runtime shut down rather than waiting for the nodes' loops");
    assert!(panicked);
}

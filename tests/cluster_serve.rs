//! Two `baton serve` cluster nodes in this process on a real PostgreSQL: work submitted over
//! HTTP to one node goes to the shared pool, both nodes claim from it through their claimers,
//! every item is done exactly once, and either node answers for the whole cluster: its event
//! stream carries both nodes' events, as the shared log holds them.

mod cluster_common;

use std::collections::HashMap;
use std::time::Duration;

use baton::cluster::Epoch;
use baton::serve::cluster::NodeList;
use baton::serve::work_items::{WorkItemBatchAnswer, WorkItemList};
use baton::{FleetEvent, WorkItemId};
use cluster_common::node::{ServedNode, serve_node};
use cluster_common::stream::{Stream, published, seqs_and_kinds};
use cluster_common::{get_json, test_db};
use serde_json::json;
use tokio::sync::mpsc::{self};
use tokio_util::task::TaskTracker;

const TOKEN: &str = "cluster-test-token-0123456789";
const ITEMS: u64 = 60;

/// Closes each session of `node` as it starts (its work is done), on a task of its own (so
/// that no close is abandoned halfway), and sends each item done, with the node's epoch.
fn work(node: &mut ServedNode, done: mpsc::UnboundedSender<(WorkItemId, Epoch)>) {
    let mut events = std::mem::replace(&mut node.events, mpsc::unbounded_channel().1);
    let (supervisor, epoch) = (node.supervisor.clone(), node.epoch);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                FleetEvent::SessionStarted { session, .. } => {
                    supervisor.close(session).await.unwrap();
                }
                FleetEvent::WorkItemDone { work_item, .. } => {
                    let _ = done.send((work_item, epoch));
                }
                _ => {}
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_split_the_pool_and_every_item_is_done_exactly_once() {
    let Some(db) = test_db("serve2") else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tracker = TaskTracker::new();
    let mut a = serve_node(&db, "a", 1, 4, TOKEN, &tracker).await;
    let mut b = serve_node(&db, "b", 1_000_000, 4, TOKEN, &tracker).await;
    let http = reqwest::Client::new();
    let mut streams = [
        Stream::open(&http, &a.base, TOKEN, None).await,
        Stream::open(&http, &b.base, TOKEN, None).await,
    ];

    // Every item submitted to a, in one batch.
    let items: Vec<_> = (1..=ITEMS)
        .map(|id| json!({"id": id, "agent_type": if id % 2 == 0 { "coder" } else { "reviewer" }, "text": format!("task {id}")}))
        .collect();
    let answer: WorkItemBatchAnswer = http
        .post(format!("{}/v1/work-items/batch", a.base))
        .bearer_auth(TOKEN)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer.results.len(), ITEMS as usize);

    let mut done: HashMap<WorkItemId, Vec<Epoch>> = HashMap::new();
    let (tx, mut finished) = mpsc::unbounded_channel();
    work(&mut a, tx.clone());
    work(&mut b, tx);
    tokio::time::timeout(Duration::from_secs(120), async {
        while done.values().map(Vec::len).sum::<usize>() < ITEMS as usize {
            let (id, epoch) = finished.recv().await.expect("the nodes run");
            done.entry(id).or_default().push(epoch);
        }
    })
    .await
    .expect("every item is done");
    assert_eq!(done.len(), ITEMS as usize);
    for (id, by) in &done {
        assert_eq!(by.len(), 1, "item {id} was done by {by:?}");
    }

    // Either node answers for the whole cluster, from the database.
    let list: WorkItemList = get_json(
        &http,
        &format!("{}/v1/work-items?place=done", b.base),
        TOKEN,
    )
    .await;
    a.supervisor.journal().unwrap().flush().await.unwrap();
    b.supervisor.journal().unwrap().flush().await.unwrap();
    let list_ids: Vec<u64> = list.work_items.iter().map(|v| v.id).collect();
    assert_eq!(list_ids, (1..=ITEMS).collect::<Vec<_>>());

    // Both nodes wrote events, and each node's stream is the shared log's published events:
    // both nodes', in seq order, none missing, none twice.
    let log = published(&http, &b.base, TOKEN, 0, u64::MAX).await;
    let last = log.last().expect("events were logged").0;
    for (stream, node) in streams.iter_mut().zip(["a", "b"]) {
        let seen = stream.until(|f| f.seq >= last).await;
        assert_eq!(
            seqs_and_kinds(&seen),
            log,
            "node {node}'s stream is the log"
        );
    }
    let nodes: NodeList = get_json(&http, &format!("{}/v1/cluster/nodes", b.base), TOKEN).await;
    let seen: Vec<_> = nodes
        .nodes
        .iter()
        .map(|n| (n.epoch, n.live, n.this))
        .collect();
    assert_eq!(seen, [(a.epoch.0, true, false), (b.epoch.0, true, true)]);

    // The same id again, on the other node: the same item; other content: a conflict.
    let again = http
        .post(format!("{}/v1/work-items", b.base))
        .bearer_auth(TOKEN)
        .json(&json!({"id": 2, "agent_type": "coder", "text": "task 2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let view: serde_json::Value = again.json().await.unwrap();
    assert_eq!(view["place"], "done");
    let other = http
        .post(format!("{}/v1/work-items", b.base))
        .bearer_auth(TOKEN)
        .json(&json!({"id": 2, "agent_type": "coder", "text": "something else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 409);
    let unknown = http
        .post(format!("{}/v1/work-items", b.base))
        .bearer_auth(TOKEN)
        .json(&json!({"id": 999, "agent_type": "nobody", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // A clean leave ends the lease at once: the other node sees it expired (its sweeper stopped
    // first, so that it does not adopt a before the check).
    b.running.as_ref().unwrap().stop_taking_work();
    a.running.take().unwrap().leave().await;
    let (epoch_a, epoch_b) = (a.epoch, b.epoch);
    let expired = db.with(move |c| baton::cluster::sweep::expired(c, epoch_b).unwrap());
    assert_eq!(expired, [epoch_a]);
    b.running.take().unwrap().leave().await;
    tracker.close();
    tracker.wait().await;
}

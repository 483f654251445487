//! Nodes, leases and epochs against a real PostgreSQL: joining, heartbeats, being lost, the
//! sweeper's lock and who counts as expired.

mod cluster_common;

use std::time::Duration;

use baton::cluster::node::{self, Lost};
use baton::cluster::{Epoch, sweep};
use cluster_common::{off_runtime, test_db};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The database's now, in milliseconds.
fn db_now(c: &mut postgres::Client) -> i64 {
    c.query_one(&format!("SELECT {}", baton::cluster::DB_NOW), &[])
        .unwrap()
        .get(0)
}

fn lease_until(c: &mut postgres::Client, epoch: Epoch) -> i64 {
    c.query_one(
        "SELECT lease_until FROM baton_nodes WHERE epoch = $1",
        &[&epoch.0],
    )
    .unwrap()
    .get(0)
}

#[test]
fn nodes_join_with_new_increasing_epochs_and_a_lease_of_the_ttl_by_the_database_clock() {
    let Some(db) = test_db("join") else { return };
    db.with(|c| {
        let before = db_now(c);
        let a = node::join(c, "a", Some("http://a:7070"), Duration::from_secs(10)).unwrap();
        let b = node::join(c, "a", None, Duration::from_secs(10)).unwrap();
        let after = db_now(c);
        assert!(b > a, "{a} then {b}");
        let lease = lease_until(c, a);
        assert!(
            (before + 10_000..=after + 10_000).contains(&lease),
            "{before} {lease} {after}"
        );
        let (rows, now) = node::list(c).unwrap();
        assert!(now >= after);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].epoch, a.0);
        assert_eq!(rows[0].addr.as_deref(), Some("http://a:7070"));
        assert_eq!(rows[1].addr, None);
        assert!((before..=after).contains(&rows[0].started_at));
    });
}

#[test]
fn a_heartbeat_renews_the_lease_and_a_node_whose_row_is_gone_is_told_it_is_fenced() {
    let Some(db) = test_db("heartbeat") else {
        return;
    };
    db.with(|c| {
        let me = node::join(c, "me", None, Duration::ZERO).unwrap();
        let stale = lease_until(c, me);
        assert!(node::heartbeat(c, me, Duration::from_secs(60)).unwrap());
        assert!(lease_until(c, me) >= stale + 60_000);
        c.execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&me.0])
            .unwrap();
        assert!(!node::heartbeat(c, me, Duration::from_secs(60)).unwrap());
    });
}

#[test]
fn a_clean_stop_expires_the_lease_at_once() {
    let Some(db) = test_db("expire") else { return };
    db.with(|c| {
        let me = node::join(c, "me", None, Duration::from_secs(60)).unwrap();
        let other = node::join(c, "other", None, Duration::from_secs(60)).unwrap();
        assert!(sweep::expired(c, other).unwrap().is_empty());
        node::expire(c, me).unwrap();
        assert_eq!(sweep::expired(c, other).unwrap(), [me]);
    });
}

#[test]
fn the_sweeper_never_counts_itself_and_sees_only_leases_past_the_database_now() {
    let Some(db) = test_db("expired") else { return };
    db.with(|c| {
        let live = node::join(c, "live", None, Duration::from_secs(60)).unwrap();
        let dead = node::join(c, "dead", None, Duration::ZERO).unwrap();
        let me = node::join(c, "me", None, Duration::ZERO).unwrap();
        // A lease of 0 ends at the instant it was set; the database's clock has moved on.
        c.execute(
            "UPDATE baton_nodes SET lease_until = lease_until - 1 WHERE epoch IN ($1, $2)",
            &[&dead.0, &me.0],
        )
        .unwrap();
        assert_eq!(sweep::expired(c, me).unwrap(), [dead]);
        assert_eq!(sweep::expired(c, live).unwrap(), [dead, me]);
    });
}

#[test]
fn the_sweeper_lock_is_held_by_one_connection_at_a_time_and_freed_with_it() {
    let Some(db) = test_db("sweeplock") else {
        return;
    };
    let (mut a, mut b) = (db.client(), db.client());
    off_runtime(move || {
        assert!(sweep::try_lock(&mut a).unwrap());
        assert!(!sweep::try_lock(&mut b).unwrap());
        assert!(!sweep::try_lock(&mut b).unwrap());
        // Unlocked explicitly: the other takes it.
        assert!(sweep::unlock(&mut a).unwrap());
        assert!(sweep::try_lock(&mut b).unwrap());
        assert!(!sweep::try_lock(&mut a).unwrap());
        // The holder's connection goes away (a killed node): the lock goes with it.
        drop(b);
        let mut taken = false;
        for _ in 0..200 {
            // The server notices the closed connection at its own pace: polled, not slept on.
            if sweep::try_lock(&mut a).unwrap() {
                taken = true;
                break;
            }
            std::thread::yield_now();
        }
        assert!(taken, "the lock was not freed with its connection");
    });
}

#[test]
fn a_sweep_holds_the_lock_without_stacking_it_and_a_new_connection_tries_afresh() {
    let Some(db) = test_db("sweephold") else {
        return;
    };
    let (mut a, mut b) = (db.client(), db.client());
    off_runtime(move || {
        assert!(sweep::hold(&mut a).unwrap());
        assert!(sweep::hold(&mut a).unwrap());
        assert!(!sweep::hold(&mut b).unwrap());
        // Held once however many sweeps asked: one unlock frees it.
        assert!(sweep::unlock(&mut a).unwrap());
        assert!(sweep::hold(&mut b).unwrap());
        assert!(!sweep::hold(&mut a).unwrap());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_node_whose_row_is_deleted_is_lost_as_fenced() {
    let Some(db) = test_db("lostfenced") else {
        return;
    };
    let me = db.with(|c| node::join(c, "me", None, Duration::from_secs(3)).unwrap());
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let node = node::spawn_heartbeat(
        &db.url,
        me,
        Duration::from_millis(300),
        None,
        &tracker,
        stop.clone(),
    );
    assert!(!node.is_lost());
    // It keeps its lease while it heartbeats: wait for a renewal past the first lease.
    let first = db.with(|c| lease_until(c, me));
    let renewed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = db.with(|c| lease_until(c, me));
            if now != first {
                return now;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a heartbeat renews the lease");
    assert!(renewed > 0);
    db.with(|c| {
        c.execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&me.0])
            .unwrap()
    });
    let lost = tokio::time::timeout(Duration::from_secs(20), node.lost())
        .await
        .expect("the node learns it is fenced");
    assert_eq!(lost, Lost::Fenced);
    assert!(node.is_lost());
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_the_database_for_a_whole_ttl_is_lost_as_expired() {
    // Port 1 on loopback refuses at once: every heartbeat fails.
    let tracker = TaskTracker::new();
    let node = node::spawn_heartbeat(
        "postgres://baton@127.0.0.1:1/baton",
        Epoch(7),
        Duration::from_millis(150),
        None,
        &tracker,
        CancellationToken::new(),
    );
    let lost = tokio::time::timeout(Duration::from_secs(20), node.lost())
        .await
        .expect("the node gives itself up");
    assert_eq!(lost, Lost::Expired);
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_heartbeat_ends_its_task_and_the_node_is_not_lost() {
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let node = node::spawn_heartbeat(
        "postgres://baton@127.0.0.1:1/baton",
        Epoch(7),
        Duration::from_secs(3600),
        None,
        &tracker,
        stop.clone(),
    );
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    assert!(!node.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_journal_failed_stops_heartbeating_and_is_lost() {
    let Some(db) = test_db("journalfailed") else {
        return;
    };
    let (me, other) = db.with(|c| {
        (
            node::join(c, "me", None, Duration::from_millis(300)).unwrap(),
            node::join(c, "other", None, Duration::from_secs(30)).unwrap(),
        )
    });
    // A journal fenced by the other row: its next write fails it, while the node's own row
    // (the heartbeat's) stays.
    let url = db.pg_url();
    let journal = off_runtime(move || {
        baton::Journal::open_postgres(
            &url,
            baton::JournalOptions::default(),
            baton::journal::PgOptions { epoch: Some(other) },
        )
        .unwrap()
    });
    let tracker = TaskTracker::new();
    let node = node::spawn_heartbeat(
        &db.url,
        me,
        Duration::from_millis(300),
        Some(journal.clone()),
        &tracker,
        CancellationToken::new(),
    );
    db.with(|c| {
        c.execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&other.0])
            .unwrap()
    });
    // A supervisor's first write on that journal is refused, and fails it.
    let runtime = baton::runtime::memory::MemoryRuntime::new(Default::default());
    let supervisor = baton::Supervisor::builder(std::sync::Arc::new(runtime))
        .agent_type(baton::AgentType::new("coder", 1000))
        .journal(journal.clone())
        .unwrap()
        .start();
    let item = baton::WorkItem {
        id: baton::WorkItemId(1),
        agent_type: "coder".into(),
        text: "task".into(),
    };
    assert!(supervisor.submit(item).await.is_err());
    assert!(journal.failure().is_some());
    let lost = tokio::time::timeout(Duration::from_secs(20), node.lost())
        .await
        .expect("the node gives itself up");
    assert_eq!(lost, Lost::JournalFailed);
    // It stopped heartbeating: its task has ended (without the stop token being cancelled),
    // and its lease is left to run out.
    tracker.close();
    tokio::time::timeout(Duration::from_secs(20), tracker.wait())
        .await
        .expect("the heartbeat task ends once the node is lost");
    let (lease, now) = db.with(|c| (lease_until(c, me), db_now(c)));
    assert!(
        lease <= now + 300,
        "the lease was renewed after the node was lost"
    );
}

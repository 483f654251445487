//! The shared pool against a real PostgreSQL: submissions, claims (`FOR UPDATE SKIP LOCKED`,
//! fenced), and two nodes claiming at once.

mod cluster_common;

use std::collections::HashSet;
use std::time::Duration;

use baton::cluster::pool::{self, Pooled};
use baton::cluster::{ClusterError, node};
use baton::{WorkItem, WorkItemId};
use cluster_common::test_db;

fn item(id: u64, agent_type: &str) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: agent_type.into(),
        text: format!("task {id}"),
    }
}

fn ids(items: &[WorkItem]) -> Vec<u64> {
    items.iter().map(|i| i.id.0).collect()
}

#[test]
fn a_submission_waits_in_the_pool_once_and_the_same_id_answers_the_first() {
    let Some(db) = test_db("submit") else { return };
    db.with(|c| {
        assert_eq!(pool::submit(c, &item(1, "a")).unwrap(), Pooled::Inserted);
        let again = WorkItem {
            text: "other".into(),
            ..item(1, "b")
        };
        assert_eq!(
            pool::submit(c, &again).unwrap(),
            Pooled::Exists(item(1, "a"))
        );
        let row = c
            .query_one("SELECT place, owner FROM work_items WHERE id = 1", &[])
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "queued");
        assert_eq!(row.get::<_, Option<i64>>(1), None);
        // Its step is in the log once, as on a single host.
        let kinds: Vec<String> = c
            .query("SELECT kind FROM events WHERE work_item = 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(kinds, ["work_item_submitted"]);
    });
}

#[test]
fn a_submission_notifies_the_pool_channel_at_commit() {
    let Some(db) = test_db("notify") else { return };
    db.with(|c| {
        let mut listener = db.client();
        listener.batch_execute("LISTEN baton_pool").unwrap();
        pool::submit(c, &item(1, "a")).unwrap();
        let mut n = listener.notifications();
        let got = postgres::fallible_iterator::FallibleIterator::next(
            &mut n.timeout_iter(Duration::from_secs(10)),
        )
        .unwrap();
        assert_eq!(
            got.map(|n| n.channel().to_owned()).as_deref(),
            Some("baton_pool")
        );
    });
}

#[test]
fn claims_take_the_oldest_items_of_known_types_up_to_the_room_and_mark_the_owner() {
    let Some(db) = test_db("claim") else { return };
    db.with(|c| {
        let me = node::join(c, "me", None, Duration::from_secs(60)).unwrap();
        for (id, t) in [(5, "a"), (3, "b"), (9, "a"), (1, "a")] {
            pool::submit(c, &item(id, t)).unwrap();
        }
        let a = vec!["a".to_owned()];
        assert_eq!(ids(&pool::claim(c, me, &a, 2).unwrap()), [5, 9]);
        assert_eq!(ids(&pool::claim(c, me, &a, 0).unwrap()), Vec::<u64>::new());
        assert_eq!(ids(&pool::claim(c, me, &a, 9).unwrap()), [1]);
        assert_eq!(ids(&pool::claim(c, me, &a, 9).unwrap()), Vec::<u64>::new());
        let owned: Vec<i64> = c
            .query(
                "SELECT id FROM work_items WHERE owner = $1 ORDER BY id",
                &[&me.0],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(owned, [1, 5, 9]);
        // Given back, it is claimable again, in its first place in the queue.
        assert!(pool::release(c, me, WorkItemId(5)).unwrap());
        assert!(!pool::release(c, me, WorkItemId(5)).unwrap());
        let both = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(ids(&pool::claim(c, me, &both, 9).unwrap()), [5, 3]);
    });
}

#[test]
fn a_fenced_node_claims_nothing_and_leaves_the_pool_as_it_was() {
    let Some(db) = test_db("claimfenced") else {
        return;
    };
    db.with(|c| {
        let me = node::join(c, "me", None, Duration::from_secs(60)).unwrap();
        pool::submit(c, &item(1, "a")).unwrap();
        c.execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&me.0])
            .unwrap();
        let e = pool::claim(c, me, &["a".to_owned()], 5).unwrap_err();
        assert!(
            matches!(e, ClusterError::Fenced(epoch) if epoch == me),
            "{e}"
        );
        let owner: Option<i64> = c
            .query_one("SELECT owner FROM work_items WHERE id = 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(owner, None);
    });
}

#[test]
fn two_nodes_claiming_at_once_never_get_the_same_item_and_together_get_all() {
    let Some(db) = test_db("claimrace") else {
        return;
    };
    const ITEMS: u64 = 600;
    let (a, b) = db.with(|c| {
        for id in 1..=ITEMS {
            pool::submit(c, &item(id, if id % 2 == 0 { "x" } else { "y" })).unwrap();
        }
        (
            node::join(c, "a", None, Duration::from_secs(60)).unwrap(),
            node::join(c, "b", None, Duration::from_secs(60)).unwrap(),
        )
    });
    let types = vec!["x".to_owned(), "y".to_owned()];
    let barrier = std::sync::Barrier::new(2);
    let claimed: Vec<(baton::cluster::Epoch, Vec<u64>)> = std::thread::scope(|s| {
        let runs: Vec<_> = [a, b]
            .into_iter()
            .map(|me| {
                let (types, barrier, mut c) = (&types, &barrier, db.client());
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    loop {
                        let got = pool::claim(&mut c, me, types, 7).unwrap();
                        if got.is_empty() {
                            return (me, mine);
                        }
                        mine.extend(ids(&got));
                    }
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let (first, second): (HashSet<u64>, HashSet<u64>) = (
        claimed[0].1.iter().copied().collect(),
        claimed[1].1.iter().copied().collect(),
    );
    assert_eq!(first.len(), claimed[0].1.len(), "a node got an item twice");
    assert_eq!(second.len(), claimed[1].1.len(), "a node got an item twice");
    assert!(first.is_disjoint(&second), "an item went to both nodes");
    assert_eq!(
        first.len() + second.len(),
        ITEMS as usize,
        "an item was left in the pool"
    );
    // The database agrees with what each node was handed.
    db.with(|c| {
        for (me, mine) in &claimed {
            let n: i64 = c
                .query_one("SELECT count(*) FROM work_items WHERE owner = $1", &[&me.0])
                .unwrap()
                .get(0);
            assert_eq!(n as usize, mine.len());
        }
    });
}

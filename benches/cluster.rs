//! Several nodes on one PostgreSQL: what the shared database costs and allows.
//!
//! Run: `eval "$(bash scripts/postgres.sh start)"` then `cargo bench --bench cluster`
//! (`BATON_PG_URL` names the server; each run works in new databases of its own). Prints, for
//! 1, 2 and 3 nodes (each a supervisor with its own PostgreSQL journal and fencing epoch, on a
//! thread of its own in this process, `BATON_BENCH_SESSIONS` sessions each, default 300):
//!
//! * usage messages per second, all nodes together, when usage crosses a threshold: a burst of
//!   20 rising reports to every session whose last one crosses 80%, timed until every compaction
//!   is recorded (3 records each: the transitions and the compaction). The Normal path writes
//!   nothing, so this is the path the database limits;
//! * rotations per second, all nodes together: every session reports 96% at once, timed until
//!   every rotation record is published (each one waits for its steps to be durable);
//! * per rotation, with one node: rows written (new rows in every table, and `events` rows
//!   alone) and the WAL bytes PostgreSQL wrote (`pg_current_wal_lsn` before and after).
//!
//! The nodes share this machine's cores with PostgreSQL: on a 2-core box the figures show what
//! the database's commit path allows, not what separate hosts would. Under `cargo test
//! --all-targets` (no `--bench` argument) a small smoke version runs, when `BATON_PG_URL` is set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::cluster::{self, ClusterConfig, Epoch};
use baton::journal::{JournalOptions, PgOptions, PgUrl};
use baton::runtime::memory::MemoryRuntime;
use baton::supervisor::SessionHandle;
use baton::{
    AgentType, FleetEvent, Journal, SessionId, Supervisor, SupervisorConfig, UsageSource, WorkItem,
    WorkItemId,
};
use tokio::sync::Barrier;

const MESSAGES_PER_SESSION: u64 = 20;
const WINDOW: u64 = 1_000_000;

/// What one node measured: when each phase started and ended.
struct Phases {
    threshold: (Instant, Instant),
    rotation: (Instant, Instant),
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let Ok(admin) = std::env::var("BATON_PG_URL") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("BATON_PG_URL is not set: scripts/test.sh starts PostgreSQL");
        }
        println!("skipped: BATON_PG_URL is not set (eval \"$(bash scripts/postgres.sh start)\")");
        return;
    };
    let n: usize = std::env::var("BATON_BENCH_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 300 } else { 20 });
    println!("{n} sessions per node; PostgreSQL at {}", redact(&admin));
    println!(
        "{:>5} | {:>22} | {:>13} | {:>11}",
        "nodes", "threshold usage msgs/s", "rotations/s", "per node"
    );
    let mut per_rotation = None;
    for nodes in 1..=3usize {
        let db = Database::create(&admin, &format!("bench_cluster_{nodes}"));
        let phases = run(&db.url, nodes, n);
        let span = |f: fn(&Phases) -> (Instant, Instant)| {
            let s = phases.iter().map(|p| f(p).0).min().unwrap();
            let e = phases.iter().map(|p| f(p).1).max().unwrap();
            e - s
        };
        let total = (nodes * n) as f64;
        let usage = total * MESSAGES_PER_SESSION as f64 / span(|p| p.threshold).as_secs_f64();
        let rotations = total / span(|p| p.rotation).as_secs_f64();
        println!(
            "{:>5} | {:>22.0} | {:>13.0} | {:>11.0}",
            nodes,
            usage,
            rotations,
            rotations / nodes as f64
        );
        if nodes == 1 {
            per_rotation = Some(rotation_cost(&admin, n));
        }
    }
    if let Some((rows, events, wal)) = per_rotation {
        println!(
            "per rotation (1 node): {rows:.1} rows added ({events:.1} of them events), {wal:.0} bytes of WAL"
        );
    }
}

/// Rows and WAL bytes per rotation: one node, `n` sessions started, then only rotations
/// measured.
fn rotation_cost(admin: &str, n: usize) -> (f64, f64, f64) {
    let db = Database::create(admin, "bench_cluster_rotation");
    let url = db.url.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            actix::System::new().block_on(async {
                let mut node = Node::start(&url, 0).await;
                let handles = node.started(n).await;
                node.idle().await;
                let (rows0, events0, wal0) = db_snapshot(&db);
                node.rotate_all(&handles, n).await;
                node.idle().await;
                let (rows1, events1, wal1) = db_snapshot(&db);
                node.stop().await;
                let per = |d: i64| d as f64 / n as f64;
                (per(rows1 - rows0), per(events1 - events0), per(wal1 - wal0))
            })
        })
        .join()
        .expect("the node's thread")
    })
}

/// Rows in the journal's tables, `events` rows, and the WAL position in bytes.
fn db_snapshot(db: &Database) -> (i64, i64, i64) {
    let rows = db.rows();
    let events = db.scalar("SELECT count(*) FROM events");
    let wal = db.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint");
    (rows, events, wal)
}

/// Runs `nodes` nodes on `url`, each on a thread of its own with its own actix system, through
/// the same phases at the same time.
fn run(url: &str, nodes: usize, n: usize) -> Vec<Phases> {
    let barrier = Arc::new(Barrier::new(nodes));
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..nodes)
            .map(|k| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    actix::System::new().block_on(async move {
                        let mut node = Node::start(url, k).await;
                        let handles = node.started(n).await;
                        node.idle().await;
                        barrier.wait().await;
                        let t = Instant::now();
                        let successors = node.rotate_all(&handles, n).await;
                        let rotation = (t, Instant::now());
                        node.idle().await;
                        barrier.wait().await;
                        let t = Instant::now();
                        node.threshold_burst(&successors, n).await;
                        let threshold = (t, Instant::now());
                        node.stop().await;
                        Phases {
                            threshold,
                            rotation,
                        }
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a node's thread"))
            .collect()
    })
}

/// One node: a supervisor over a memory runtime, with a fenced PostgreSQL journal.
struct Node {
    supervisor: baton::SupervisorHandle,
    runtime: Arc<MemoryRuntime>,
    journal: Journal,
    events: tokio::sync::mpsc::UnboundedReceiver<FleetEvent>,
    index: usize,
}

impl Node {
    async fn start(url: &str, index: usize) -> Node {
        let config = ClusterConfig {
            url: url.to_owned(),
            name: format!("bench-{index}"),
            advertise: None,
            ttl: Duration::from_secs(60),
            sweep_every: Duration::from_secs(60),
            max_sessions: 1 << 20,
        };
        let epoch: Epoch = cluster::join(&config).await.expect("join");
        let pg = PgUrl::parse(url).expect("a PostgreSQL URL");
        let journal = std::thread::spawn(move || {
            Journal::open_postgres(
                &pg,
                JournalOptions::default(),
                PgOptions { epoch: Some(epoch) },
            )
        })
        .join()
        .expect("open")
        .expect("the journal opens");
        let runtime = Arc::new(
            MemoryRuntime::default().numbering_from(SessionId(((index as u64) << 32) + 1)),
        );
        let builder = Supervisor::builder(runtime.clone())
            .config(SupervisorConfig {
                max_sessions: 1 << 20,
                max_concurrent_compactions: 1 << 20,
                ..SupervisorConfig::default()
            })
            .agent_type(AgentType::new("bench", WINDOW))
            .journal(journal.clone())
            .expect("the journal");
        let events = builder.subscribe();
        Node {
            supervisor: builder.start(),
            runtime,
            journal,
            events,
            index,
        }
    }

    /// Submits `n` items and waits for their sessions.
    async fn started(&mut self, n: usize) -> Vec<SessionHandle> {
        for i in 0..n as u64 {
            let item = WorkItem {
                id: WorkItemId(((self.index as u64) << 32) + i + 1),
                agent_type: "bench".into(),
                text: String::new(),
            };
            self.supervisor.submit(item).await.expect("submit");
        }
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            if let Some(FleetEvent::SessionStarted { session, .. }) = self.events.recv().await {
                ids.push(session);
            }
        }
        self.handles(&ids).await
    }

    async fn handles(&self, ids: &[SessionId]) -> Vec<SessionHandle> {
        let mut handles = Vec::with_capacity(ids.len());
        for id in ids {
            handles.push(self.supervisor.session(*id).await.expect("a live session"));
        }
        handles
    }

    async fn idle(&self) {
        self.journal.flush().await.expect("flush");
    }

    /// Every session reports 96% at once; waits for every rotation. The successors.
    async fn rotate_all(&mut self, handles: &[SessionHandle], n: usize) -> Vec<SessionId> {
        for h in handles {
            h.report_usage(960_000, None, UsageSource::Reported);
        }
        let mut successors = Vec::with_capacity(n);
        while successors.len() < n {
            if let Some(FleetEvent::Rotation(r)) = self.events.recv().await {
                assert!(r.success, "rotation failed: {:?}", r.error);
                successors.push(r.new_session.expect("a successor"));
            }
        }
        successors
    }

    /// A rising burst to every session whose last report crosses 80%; waits for every
    /// compaction.
    async fn threshold_burst(&mut self, ids: &[SessionId], n: usize) {
        let handles = self.handles(ids).await;
        for id in ids {
            self.runtime.grow(*id, 850_000).expect("grow");
        }
        for round in 0..MESSAGES_PER_SESSION {
            let used = if round + 1 == MESSAGES_PER_SESSION {
                850_000
            } else {
                500_000 + round * 1_000
            };
            for h in &handles {
                h.report_usage(used, None, UsageSource::Reported);
            }
        }
        let mut compactions = 0;
        while compactions < n {
            if let Some(FleetEvent::Compaction(_)) = self.events.recv().await {
                compactions += 1;
            }
        }
    }

    async fn stop(self) {
        self.supervisor.shutdown(Duration::from_secs(60)).await;
    }
}

/// A database of its own on the server `admin` names, dropped at the end.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin: &str, name: &str) -> Database {
        let name = format!("{name}_{}", std::process::id());
        let mut c = connect(admin);
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .expect("drop a leftover database");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the bench's database");
        let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
        let head = &base[..base.rfind('/').expect("a database in the URL")];
        let url = if query.is_empty() {
            format!("{head}/{name}")
        } else {
            format!("{head}/{name}?{query}")
        };
        Database {
            admin: admin.to_owned(),
            name,
            url,
        }
    }

    fn scalar(&self, sql: &str) -> i64 {
        let sql = sql.to_owned();
        let url = self.url.clone();
        std::thread::spawn(move || connect(&url).query_one(&sql, &[]).expect("query").get(0))
            .join()
            .expect("query thread")
    }

    /// Rows in every table of the journal's schema.
    fn rows(&self) -> i64 {
        self.scalar(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rotations)
                  + (SELECT count(*) FROM sessions) + (SELECT count(*) FROM work_items)
                  + (SELECT count(*) FROM compactions)",
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let _ = connect(&admin)
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        })
        .join();
    }
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect to BATON_PG_URL")
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

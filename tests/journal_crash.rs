//! Crash tests: a child process runs a journaled fleet and is killed with SIGKILL, at each step
//! of a rotation and of a compaction, then at random moments; a restarted child recovers from
//! the journal and finishes the work, and the journal and the agents are checked.
//!
//! The child is this test binary itself, re-run with `--exact` on
//! [`crash_child_runs_the_workload_to_completion`] and told where to stop through the
//! environment. The agents live in a file ([`FileRuntime`]), as real agents live outside baton:
//! the killed process's agents, spawn keys and histories are still there for the next one.
//!
//! Stopping "at a step" means: the child reaches the point (a journal commit of that step is
//! durable, or a runtime call has taken effect and is about to return), prints a marker, and
//! parks the thread that got there; the parent then kills it with SIGKILL. Nothing after the
//! point runs, and nothing is flushed or unwound.
//!
//! After recovery (checked by the child, before it continues the work) every work item is in
//! exactly one place, the journal agrees with the supervisor, no rotation is left unfinished,
//! and every agent the runtime has open belongs to a live session. At the end (checked by the
//! parent, from the files) every item is done, every rotation finished with exactly one
//! successor and one record, each session's transitions are numbered without gap or
//! duplicate, each compaction that took effect has its record, and no agent is left open.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::journal::{Filter, JournalOptions, JournalTarget, SessionState, WorkItemPlace};
use baton::record::RotationStep;
use baton::{
    AgentType, FleetEvent, Journal, Phase, Place, SessionId, Supervisor, SupervisorConfig,
    SupervisorError, SupervisorHandle, UsageSource, WorkItem, WorkItemId,
};
use support::file_runtime::{FileRuntime, State};
use support::stores::{self, Store};
use tokio::sync::watch;

/// The test that doubles as the child process.
const CHILD: &str = "crash_child_runs_the_workload_to_completion";
const ITEMS: u64 = 4;
/// Each item is closed (done) after this many rotations.
const ROTATIONS_PER_ITEM: usize = 2;
/// The file where the child appends each work item the event stream reported done.
const REPORTED: &str = "reported";

// ===== The child =====

/// Where the child stops: the `n`-th time it reaches `point`.
struct CrashPoint {
    /// The point and the occurrence to stop at; none for a run to the end.
    target: Option<(String, u32)>,
    /// How often each point was reached so far.
    seen: Mutex<HashMap<String, u32>>,
}

impl CrashPoint {
    fn hit(&self, point: &str) {
        let Some((name, n)) = &self.target else {
            return;
        };
        if point != name {
            return;
        }
        let count = {
            let mut seen = self.seen.lock().unwrap();
            let c = seen.entry(point.to_string()).or_default();
            *c += 1;
            *c
        };
        if count == *n {
            let mut out = std::io::stdout().lock();
            writeln!(out, "CRASHPOINT {point} {n}").unwrap();
            out.flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

fn item(id: u64) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: "sonnet".into(),
        text: format!("work item {id}: make the parser accept trailing commas"),
    }
}

/// Run by the parent as the child process (`BATON_CRASH_DIR` set); run alone, it is the
/// baseline: the same workload, uninterrupted, in a fresh directory, passes every check.
#[test]
fn crash_child_runs_the_workload_to_completion() {
    match std::env::var_os("BATON_CRASH_DIR") {
        Some(dir) => {
            let target = std::env::var("BATON_CRASH_AT").ok().map(|at| {
                let (name, n) = at.rsplit_once(':').expect("point:n");
                (name.to_string(), n.parse().expect("a count"))
            });
            run_child(Path::new(&dir), target);
        }
        None => {
            let dir = tempfile::tempdir().unwrap();
            run_child(dir.path(), None);
            check_files(dir.path());
        }
    }
}

/// The child's journal: the PostgreSQL database the parent named (`BATON_CRASH_JOURNAL`), or
/// the file in its directory.
fn child_target(dir: &Path) -> JournalTarget {
    match std::env::var("BATON_CRASH_JOURNAL") {
        Ok(url) => url.parse().expect("the parent's journal URL"),
        Err(_) => JournalTarget::File(dir.join("baton.db")),
    }
}

fn run_child(dir: &Path, target: Option<(String, u32)>) {
    let crash = Arc::new(CrashPoint {
        target,
        seen: Mutex::default(),
    });
    actix::System::new().block_on(workload(dir, crash));
}

async fn workload(dir: &Path, crash: Arc<CrashPoint>) {
    let at_runtime = crash.clone();
    let runtime = Arc::new(FileRuntime::open(
        dir.join("runtime.json"),
        Arc::new(move |point: &str| at_runtime.hit(point)),
    ));
    let at_commit = crash.clone();
    // Bumped after every journal commit: every change of the fleet's state is journaled, so
    // the driver waits for the next commit instead of polling on a timer.
    let commits = Arc::new(watch::Sender::new(0u64));
    let committed = commits.clone();
    let options = JournalOptions {
        on_commit: Some(Arc::new(move |labels: &[&'static str]| {
            for label in labels {
                at_commit.hit(label);
            }
            committed.send_modify(|n| *n += 1);
        })),
        ..JournalOptions::default()
    };
    let journal = Journal::open_target(&child_target(dir), options).unwrap();
    let config = SupervisorConfig {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        ..SupervisorConfig::default()
    };
    let builder = Supervisor::builder(runtime.clone())
        .config(config)
        .agent_type(AgentType::new("sonnet", 1000))
        .journal(journal.clone())
        .unwrap();
    // What the event stream reported done, appended to a file as it arrives (a kill loses
    // nothing written).
    let mut events = builder.subscribe();
    let reported = dir.join(REPORTED);
    actix::spawn(async move {
        while let Some(e) = events.recv().await {
            if let FleetEvent::WorkItemDone { work_item, .. } = e {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&reported)
                    .unwrap();
                writeln!(f, "{}", work_item.0).unwrap();
            }
        }
    });
    let sup = builder.start();

    // Recovery (if the journal holds anything) runs as the supervisor starts.
    settle(&sup, &commits).await;
    check_running(&sup, &runtime, &journal, "after recovery").await;

    for i in 1..=ITEMS {
        match sup.submit(item(i)).await {
            Ok(()) | Err(SupervisorError::DuplicateWorkItem(_)) => {}
            Err(e) => panic!("submit: {e}"),
        }
    }
    drive(&sup, &runtime, &journal, &commits).await;
    settle(&sup, &commits).await;
    check_running(&sup, &runtime, &journal, "at the end").await;
    sup.shutdown(Duration::from_secs(10)).await;
}

/// Waits (until `deadline`) for a journal commit after the receiver was last marked.
async fn next_commit(commits: &mut watch::Receiver<u64>, deadline: Instant, what: &str) {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, commits.changed()).await {
        Ok(changed) => changed.expect("the journal's hook lives as long as the workload"),
        Err(_) => panic!("{what}"),
    }
}

/// Waits until nothing is under way: no start, rotation or close in flight. Each start,
/// rotation and close ends with a journal commit (an event, a record, a confirmed close), after
/// the supervisor's state changed: the inventory is asked again after each commit, never on a
/// timer.
async fn settle(sup: &SupervisorHandle, commits: &watch::Sender<u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = commits.subscribe();
    loop {
        // Marked before asking: a commit from here on wakes the wait below.
        seen.borrow_and_update();
        let inv = sup.inventory().await.unwrap();
        let moving = inv
            .items
            .iter()
            .any(|(_, p)| matches!(p, Place::Starting | Place::Rotating(_)));
        if inv.in_flight == 0 && !moving {
            return;
        }
        next_commit(
            &mut seen,
            deadline,
            &format!("the fleet never settled: {inv:?}"),
        )
        .await;
    }
}

/// Drives every live session: compact it once, rotate it, and close it (the item is done) once
/// its item has rotated `ROTATIONS_PER_ITEM` times. Each round either ends the work or starts
/// or awaits something that commits (a report's compaction or rotation, a close, a start under
/// way), so the next round waits for the next commit.
async fn drive(
    sup: &SupervisorHandle,
    runtime: &FileRuntime,
    journal: &Journal,
    commits: &watch::Sender<u64>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = commits.subscribe();
    loop {
        // Marked before looking: a commit from here on wakes the wait at the end.
        seen.borrow_and_update();
        let inv = sup.inventory().await.unwrap();
        if inv.items.len() as u64 == ITEMS
            && inv.items.iter().all(|(_, p)| matches!(p, Place::Done(_)))
        {
            return;
        }
        let waiting = format!("the workload never finished: {inv:?}");
        let rotations = journal
            .read(|v| v.rotations(&Filter::default()))
            .await
            .unwrap();
        let mut done: HashMap<WorkItemId, usize> = HashMap::new();
        for r in rotations.iter().filter(|r| r.step == RotationStep::Done) {
            *done.entry(r.work_item).or_default() += 1;
        }
        for (session, work_item, _) in inv.sessions {
            let Some(handle) = sup.session(session).await else {
                continue;
            };
            let Some(info) = handle.info().await else {
                continue;
            };
            if info.phase != Phase::Normal {
                continue;
            }
            if done.get(&work_item).copied().unwrap_or(0) >= ROTATIONS_PER_ITEM {
                let _ = sup.close(session).await;
                continue;
            }
            let used = if info.compactions == 0 { 850 } else { 960 };
            if runtime.grow_to(session, used).is_ok() {
                let _ = sup
                    .report_usage(session, used, None, UsageSource::Reported)
                    .await;
            }
        }
        next_commit(&mut seen, deadline, &waiting).await;
    }
}

/// The checks that need the running supervisor.
async fn check_running(
    sup: &SupervisorHandle,
    runtime: &FileRuntime,
    journal: &Journal,
    when: &str,
) {
    let inv = sup.inventory().await.unwrap();
    // Every item in exactly one place; registry and places agree.
    let mut holders = HashMap::new();
    for (session, item, _) in &inv.sessions {
        assert!(
            holders.insert(*item, *session).is_none(),
            "{when}: {item} held twice"
        );
        let place = &inv.items.iter().find(|(id, _)| id == item).unwrap().1;
        assert_eq!(
            place,
            &Place::Live(*session),
            "{when}: {session} holds {item}"
        );
    }
    for (id, place) in &inv.items {
        match place {
            Place::Live(s) => assert_eq!(holders.get(id), Some(s), "{when}: {id}"),
            Place::Queued => assert!(inv.queue.contains(id), "{when}: {id} queued, not in queue"),
            Place::Done(_) | Place::Dead(_) => assert!(!holders.contains_key(id)),
            other => panic!("{when}: {id} is still {other:?}"),
        }
    }
    // Every agent the runtime has open belongs to a live session: none leaked.
    let live: Vec<SessionId> = inv.sessions.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        runtime.state().open_sessions(),
        live,
        "{when}: open agents vs live sessions"
    );
    // The journal agrees with the supervisor, and holds no unfinished rotation.
    journal.flush().await.unwrap();
    let (items, rotations) = journal
        .read(|v| {
            Ok((
                v.work_items(&Filter::default())?,
                v.rotations(&Filter::default())?,
            ))
        })
        .await
        .unwrap();
    for (id, place) in &inv.items {
        let row = items
            .iter()
            .find(|r| r.work_item == *id)
            .expect("journaled item");
        let (expected, session) = match place {
            Place::Queued => (WorkItemPlace::Queued, None),
            Place::Live(s) => (WorkItemPlace::Live, Some(*s)),
            Place::Done(s) => (WorkItemPlace::Done, Some(*s)),
            Place::Dead(_) => (WorkItemPlace::Dead, None),
            other => panic!("{other:?}"),
        };
        assert_eq!(row.place, expected, "{when}: journal place of {id}");
        if session.is_some() || expected == WorkItemPlace::Queued {
            // A queued item has no session; a held or finished one has its own.
            assert_eq!(row.session, session, "{when}: journal holder of {id}");
        }
    }
    let open: Vec<_> = rotations.iter().filter(|r| !r.step.is_final()).collect();
    assert!(open.is_empty(), "{when}: unfinished rotations {open:?}");
}

// ===== The checks on the files =====

/// The checks on what the killed and restarted processes left behind.
fn check_files(dir: &Path) {
    let agents = State::load(&dir.join("runtime.json"));
    let journal = stores::reader(dir);
    let v = journal.view();
    let all = Filter::default();
    let items = v.work_items(&all).unwrap();
    let sessions = v.sessions(&all).unwrap();
    let rotations = v.rotations(&all).unwrap();
    let compactions = v.compactions(&all).unwrap();
    let events = v.events(&all).unwrap();

    assert_eq!(items.len() as u64, ITEMS);
    for i in &items {
        assert_eq!(i.place, WorkItemPlace::Done, "{i:?}");
    }
    assert!(
        agents.open_sessions().is_empty(),
        "agents left open: {:?}",
        agents.open_sessions()
    );

    // Every rotation finished; a done one has exactly one successor and one record.
    let mut started: HashMap<u64, Vec<u64>> = HashMap::new(); // rotation -> spawn keys
    let mut per_kind: HashMap<(String, u64), usize> = HashMap::new();
    // (A rotation resumed by several restarts has a `recovered` event per restart.)
    for e in events.iter().filter(|e| e.kind != "recovered") {
        if let Some(r) = e.rotation {
            *per_kind.entry((e.kind.clone(), r.0)).or_default() += 1;
            if e.kind == "rotation_started" {
                started
                    .entry(r.0)
                    .or_default()
                    .push(e.payload["spawn_key"].as_u64().unwrap());
            }
        }
    }
    for ((kind, r), n) in &per_kind {
        assert_eq!(*n, 1, "rotation {r}: {n} {kind} events");
    }
    for r in &rotations {
        assert!(r.step.is_final(), "unfinished rotation {r:?}");
        assert_eq!(per_kind.get(&("rotation".into(), r.rotation.0)), Some(&1));
        if r.step != RotationStep::Done {
            continue;
        }
        let new = r.new_session.expect("a done rotation has a successor");
        let successors: Vec<_> = sessions
            .iter()
            .filter(|s| s.rotation == Some(r.rotation))
            .collect();
        assert_eq!(
            successors.len(),
            1,
            "rotation {:?}: successors {successors:?}",
            r.rotation
        );
        assert_eq!(successors[0].session, new);
        assert_eq!(successors[0].predecessor, Some(r.old_session));
        let key = started[&r.rotation.0][0];
        let spawned_with_key = agents.sessions.values().filter(|s| s.key == key).count();
        assert_eq!(
            spawned_with_key, 1,
            "rotation {:?}: agents spawned with its key",
            r.rotation
        );
        let sim = &agents.sessions[&new.0];
        assert_eq!(sim.item.as_ref().map(|i| i.id), Some(r.work_item));
        assert!(
            sim.handoff.is_some(),
            "the successor started from a handoff"
        );
    }
    let done_per_item = |id: WorkItemId| {
        rotations
            .iter()
            .filter(|r| r.work_item == id && r.step == RotationStep::Done)
            .count()
    };
    for i in &items {
        assert!(done_per_item(i.work_item) >= ROTATIONS_PER_ITEM, "{i:?}");
    }

    // Every agent that was given work is a session the journal knows.
    let known: std::collections::HashSet<u64> = sessions.iter().map(|s| s.session.0).collect();
    for (id, sim) in &agents.sessions {
        if sim.item.is_some() {
            assert!(
                known.contains(id),
                "agent {id} worked on {:?} unrecorded",
                sim.item
            );
        }
    }

    // Transitions: numbered 1, 2, 3, ... per session, no gap, no duplicate.
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut entered_compacting: HashMap<u64, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "transition") {
        let t = &e.payload["transition"];
        let session = t["session"].as_u64().unwrap();
        seqs.entry(session)
            .or_default()
            .push(t["seq"].as_u64().unwrap());
        if t["to"] == "Compacting" {
            *entered_compacting.entry(session).or_default() += 1;
        }
    }
    for (session, s) in &seqs {
        let expected: Vec<u64> = (1..=s.len() as u64).collect();
        assert_eq!(s, &expected, "transitions of s{session}");
    }

    // Sessions and items: each start, finish and crash recorded once, none missing.
    let count = |kind: &str, key: fn(&baton::journal::EventRow) -> Option<u64>| {
        let mut n: HashMap<u64, usize> = HashMap::new();
        for e in events.iter().filter(|e| e.kind == kind) {
            *n.entry(key(e).expect("the event names its subject"))
                .or_default() += 1;
        }
        n
    };
    let announced = count("session_started", |e| e.session.map(|s| s.0));
    let crashed = count("crashed", |e| e.session.map(|s| s.0));
    let finished = count("work_item_done", |e| e.work_item.map(|w| w.0));
    for s in &sessions {
        let id = s.session.0;
        let n = announced.get(&id).copied().unwrap_or(0);
        assert!(n <= 1, "s{id}: {n} session_started events");
        if seqs.contains_key(&id) {
            assert_eq!(
                n, 1,
                "s{id} ran (it has transitions) but was never announced"
            );
        }
        assert!(
            crashed.get(&id).copied().unwrap_or(0) <= 1,
            "s{id} crashed twice"
        );
        assert_eq!(s.state, SessionState::Closed, "s{id} left open: {s:?}");
    }
    for i in &items {
        assert_eq!(
            finished.get(&i.work_item.0),
            Some(&1),
            "{}: work_item_done events",
            i.work_item
        );
    }
    // A requeue puts an item back in the queue: the next one comes after a session took it.
    let mut queued_again: HashMap<u64, bool> = HashMap::new();
    for e in &events {
        let Some(w) = e.work_item else { continue };
        match e.kind.as_str() {
            "work_item_requeued" => {
                let twice = queued_again.insert(w.0, true).unwrap_or(false);
                assert!(!twice, "{w} requeued twice without a start between: {e:?}");
            }
            "session_started" => {
                queued_again.insert(w.0, false);
            }
            _ => {}
        }
    }

    // Compactions: each one that took effect at the runtime has its record; one that a crash
    // interrupted is recorded as such; none is recorded twice.
    let mut ok: HashMap<u64, u32> = HashMap::new();
    let mut interrupted: HashMap<u64, u32> = HashMap::new();
    let mut records: HashMap<u64, usize> = HashMap::new();
    for c in &compactions {
        let s = c.record.session.0;
        *records.entry(s).or_default() += 1;
        if c.record.success {
            *ok.entry(s).or_default() += 1;
        } else if c
            .record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("interrupted"))
        {
            *interrupted.entry(s).or_default() += 1;
        }
    }
    for (id, sim) in &agents.sessions {
        let (ok, cut) = (
            ok.get(id).copied().unwrap_or(0),
            interrupted.get(id).copied().unwrap_or(0),
        );
        assert!(
            ok <= sim.replaced && sim.replaced <= ok + cut,
            "s{id}: {} histories replaced, {ok} records, {cut} interrupted",
            sim.replaced
        );
    }
    for (s, n) in &records {
        assert!(
            *n <= entered_compacting.get(s).copied().unwrap_or(0),
            "s{s}: {n} compaction records for fewer compactions"
        );
    }
}

// ===== The parent =====

/// A child process and the lines it prints.
struct Run {
    /// The process (killed on drop).
    child: Child,
    /// Its standard output, line by line (where the crash marker appears).
    lines: mpsc::Receiver<String>,
    /// Its standard error, for failure messages.
    stderr: Arc<Mutex<String>>,
}

fn spawn_child(dir: &Path, at: Option<&str>) -> Run {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", CHILD, "--nocapture", "--test-threads=1"])
        .env("BATON_CRASH_DIR", dir)
        .env_remove("BATON_CRASH_AT")
        .env_remove("BATON_CRASH_JOURNAL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(at) = at {
        cmd.env("BATON_CRASH_AT", at);
    }
    if let JournalTarget::Postgres(url) = stores::target(dir) {
        cmd.env("BATON_CRASH_JOURNAL", url.expose());
    }
    let mut child = cmd.spawn().expect("the test binary runs");
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let err = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    Run {
        child,
        lines,
        stderr,
    }
}

impl Drop for Run {
    /// A parent that fails half-way must not leave a parked child behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// Waits for the crash marker, then SIGKILLs the child. Panics if the child ends first.
    fn kill_at_marker(mut self, at: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("CRASHPOINT") => break,
                Ok(_) => {}
                // Its standard output closed: the child ended.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!(
                        "the child ended ({status}) without reaching {at}; stderr:\n{}",
                        self.stderr.lock().unwrap()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{at} was never reached"),
            }
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Kills the child after `delay` unless it finished before; returns whether it was killed.
    fn kill_after(mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                // Its standard output closed: the child ended before the moment.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    assert!(
                        status.success(),
                        "child failed:\n{}",
                        self.stderr.lock().unwrap()
                    );
                    return false;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        true
    }

    /// Waits for the child to finish; it must succeed (its own checks passed).
    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "child failed ({status}); stderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }
}

fn fresh_dir(store: &Store) -> (stores::TestDir, PathBuf) {
    let dir = store.dir();
    let path = dir.path().to_owned();
    (dir, path)
}

/// Every point of a rotation and of a compaction, by the name the child knows it: journal
/// commits (the step is durable, nothing after it has happened) and runtime calls (the call
/// took effect at the runtime, baton has not heard back). The first occurrences of `spawn` and
/// `assign` are work items' starts, which come before any rotation: the kills at a rotation's
/// own spawn and assign are the next test's.
const POINTS: &[&str] = &[
    // Rotation, in order.
    "transition_to_rotating",
    "rotation_started",
    "summarise_handoff",
    "rotation_handoff",
    "spawn",
    "rotation_successor",
    "assign",
    "close",
    "rotation_done",
    // Compaction, in order.
    "transition_to_compacting",
    "summarise_compaction",
    "replace_history",
    "compaction",
    // Start of a work item.
    "work_item_submitted",
    "session_started",
];

fn a_fleet_killed_at_any_step_of_a_rotation_or_a_compaction_recovers_to_completion(store: &Store) {
    for point in POINTS {
        // The second occurrence: the fleet is mid-way, with history behind it.
        for n in [1, 2] {
            let at = format!("{point}:{n}");
            eprintln!("killed at {at}");
            let (_keep, dir) = fresh_dir(store);
            spawn_child(&dir, Some(&at)).kill_at_marker(&at);
            spawn_child(&dir, None).finish();
            check_files(&dir);
        }
    }
}

/// A rotation open when the child was killed, with the spawn key its intent recorded.
fn open_rotations(dir: &Path) -> Vec<(baton::journal::RotationRow, u64)> {
    let reader = stores::reader(dir);
    let v = reader.view();
    let all = Filter::default();
    let keys: HashMap<u64, u64> = v
        .events(&all)
        .unwrap()
        .iter()
        .filter(|e| e.kind == "rotation_started")
        .map(|e| {
            (
                e.rotation.unwrap().0,
                e.payload["spawn_key"].as_u64().unwrap(),
            )
        })
        .collect();
    v.rotations(&all)
        .unwrap()
        .into_iter()
        .filter(|r| !r.step.is_final())
        .map(|r| {
            let key = keys[&r.rotation.0];
            (r, key)
        })
        .collect()
}

fn a_rotation_killed_at_its_successor_s_spawn_or_assign_adopts_it_through_its_key(store: &Store) {
    // The first ITEMS spawns and assigns are the items' starts (all four start before any
    // session is driven); occurrences ITEMS+1 and ITEMS+2 are rotations'. Each kill is checked
    // to have hit a rotation at the expected step.
    for (point, step) in [
        ("spawn", RotationStep::Handoff),
        ("assign", RotationStep::Spawned),
    ] {
        for n in [ITEMS + 1, ITEMS + 2] {
            let at = format!("{point}:{n}");
            eprintln!("killed at {at}");
            let (_keep, dir) = fresh_dir(store);
            spawn_child(&dir, Some(&at)).kill_at_marker(&at);
            // The runtime made the successor (spawn) or gave it the item (assign); the journal
            // has not heard back.
            let agents = State::load(&dir.join("runtime.json"));
            let hit = open_rotations(&dir).into_iter().find_map(|(r, key)| {
                let successor = *agents.spawned.get(&key)?;
                let sim = &agents.sessions[&successor];
                let assigned = sim.item.as_ref().map(|i| i.id) == Some(r.work_item);
                let expected = match point {
                    "spawn" => !assigned && r.new_session.is_none(),
                    _ => assigned && r.new_session == Some(SessionId(successor)),
                };
                (r.step == step && expected).then_some((r.rotation, key, successor))
            });
            let (rotation, key, successor) =
                hit.unwrap_or_else(|| panic!("{at} did not stop a rotation at its {point}"));
            // baton gives a restarted runtime a first session id above every id the journal
            // holds: a successor recorded only in its rotation (killed at its assign) included.
            let next = stores::journal(&dir).next_session_id().unwrap();
            if point == "assign" {
                assert!(next.0 > successor, "{at}: next id {next} vs s{successor}");
            }

            spawn_child(&dir, None).finish();
            check_files(&dir);
            let agents = State::load(&dir.join("runtime.json"));
            let reader = stores::reader(&dir);
            let rotations = reader.view().rotations(&Filter::default()).unwrap();
            let r = rotations.iter().find(|r| r.rotation == rotation).unwrap();
            assert_eq!(r.step, RotationStep::Done, "{at}: {r:?}");
            assert_eq!(
                r.new_session,
                Some(SessionId(successor)),
                "{at}: the successor spawned before the kill was adopted"
            );
            assert_eq!(
                agents.sessions.values().filter(|s| s.key == key).count(),
                1,
                "{at}: one successor for the rotation"
            );
            let spawn_calls = agents.spawn_calls[&key];
            match point {
                // Resumed from its handoff: spawned again with its key, and given the same one.
                "spawn" => assert_eq!(spawn_calls, 2, "{at}"),
                // Resumed from its successor: not spawned again, assigned again.
                _ => {
                    assert_eq!(spawn_calls, 1, "{at}");
                    assert_eq!(agents.sessions[&successor].assigns, 2, "{at}");
                }
            }
        }
    }
}

fn a_fleet_killed_at_random_moments_recovers_to_completion(store: &Store) {
    // Bounded and seeded: BATON_CRASH_RUNS fleets (default 8), each killed up to 3 times, at
    // moments drawn from BATON_CRASH_SEED (default 0xBA70).
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (runs, seed) = (env("BATON_CRASH_RUNS", 8), env("BATON_CRASH_SEED", 0xBA70));
    eprintln!("seed {seed}, {runs} runs");
    let mut rng = fastrand::Rng::with_seed(seed);
    // How long an uninterrupted run takes here, to spread the kills over it.
    let (_keep, dir) = fresh_dir(store);
    let t = Instant::now();
    spawn_child(&dir, None).finish();
    let span = t.elapsed();
    let mut kills = 0;
    for _ in 0..runs {
        let (_keep, dir) = fresh_dir(store);
        for _ in 0..3 {
            let delay = span.mul_f64(rng.f64() * 1.2);
            if spawn_child(&dir, None).kill_after(delay) {
                kills += 1;
            }
        }
        spawn_child(&dir, None).finish();
        check_files(&dir);
    }
    assert!(kills > 0, "no run was ever killed");
}

/// The work items the children's event streams reported done, in order, duplicates kept.
fn reported(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join(REPORTED))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn an_item_done_is_durable_before_it_is_reported_so_a_kill_never_redoes_it(store: &Store) {
    for n in [1, 2, 3] {
        // Killed after the n-th `WorkItemDone` committed and before it was delivered.
        let at = format!("work_item_done:{n}");
        eprintln!("killed at {at}");
        let (_keep, dir) = fresh_dir(store);
        spawn_child(&dir, Some(&at)).kill_at_marker(&at);
        let durable: Vec<u64> = stores::reader(&dir)
            .view()
            .work_items(&Filter::default())
            .unwrap()
            .into_iter()
            .filter(|i| i.place == WorkItemPlace::Done)
            .map(|i| i.work_item.0)
            .collect();
        let seen = reported(&dir);
        assert!(
            seen.iter().all(|w| durable.contains(w)),
            "{at}: reported {seen:?}, durable {durable:?}"
        );
        assert!(
            seen.len() < durable.len(),
            "{at}: the last done was durable and never reported: reported {seen:?}, durable {durable:?}"
        );

        spawn_child(&dir, None).finish();
        check_files(&dir);
        // No item was reported done twice, by the killed run and the restarted one together:
        // an item the first reported (or made durable) is never done again.
        let mut all = reported(&dir);
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all.len(),
            count,
            "{at}: an item was done twice: {:?}",
            reported(&dir)
        );
    }
}

on_both_stores!(
    a_fleet_killed_at_any_step_of_a_rotation_or_a_compaction_recovers_to_completion,
    a_rotation_killed_at_its_successor_s_spawn_or_assign_adopts_it_through_its_key,
    a_fleet_killed_at_random_moments_recovers_to_completion,
    an_item_done_is_durable_before_it_is_reported_so_a_kill_never_redoes_it,
);

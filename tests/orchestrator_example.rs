//! The orchestrator example (`examples/orchestrator.rs`), SIGKILLed mid-run and restarted on its
//! journal, finishes every work item exactly once.
//!
//! The child is this test binary re-run with `--exact` on [`CHILD`]: it runs the example's own
//! `run` (the file is included here as a module) on a multi-thread tokio runtime, as the
//! example's `main` does, and prints the example's lines.

#[allow(dead_code, clippy::all)]
#[path = "../examples/orchestrator.rs"]
mod orchestrator;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use baton::JournalReader;
use baton::journal::{Filter, WorkItemPlace};

/// The test that doubles as the child process.
const CHILD: &str = "orchestrator_child_runs_the_example";
const ITEMS: u64 = 12;

#[test]
fn orchestrator_child_runs_the_example() {
    let Some(dir) = std::env::var_os("BATON_ORCHESTRATOR_DIR") else {
        // Run alone: one uninterrupted run finishes everything.
        let dir = tempfile::tempdir().unwrap();
        let finished = run_example(&dir.path().join("orchestrator.db"));
        assert_eq!(finished.len() as u64, ITEMS);
        return;
    };
    run_example(&Path::new(&dir).join("orchestrator.db"));
}

fn run_example(path: &Path) -> Vec<baton::WorkItemId> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(orchestrator::run(path, ITEMS))
        .unwrap()
}

/// Runs the child; with `kill_after_done = Some(k)`, SIGKILLs it once it has printed `k` items
/// done. Returns the items it printed done.
fn child(dir: &Path, kill_after_done: Option<usize>) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD, "--nocapture", "--test-threads=1"])
        .env("BATON_ORCHESTRATOR_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut done = Vec::new();
    for line in out.lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("done ") {
            done.push(rest.split(' ').next().unwrap().to_string());
            if Some(done.len()) == kill_after_done {
                child.kill().unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    if kill_after_done.is_none() {
        assert!(status.success(), "the restarted orchestrator failed");
    }
    done
}

#[test]
fn the_orchestrator_killed_mid_run_and_restarted_finishes_every_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = child(dir.path(), Some(3));
    assert_eq!(first.len(), 3);
    let second = child(dir.path(), None);
    // No item the killed run reported done was done again.
    for item in &second {
        assert!(!first.contains(item), "{item} done by both runs");
    }

    let reader = JournalReader::open(dir.path().join("orchestrator.db")).unwrap();
    let v = reader.view();
    let items = v.work_items(&Filter::default()).unwrap();
    assert_eq!(items.len() as u64, ITEMS);
    for i in &items {
        assert_eq!(i.place, WorkItemPlace::Done, "{i:?}");
    }
    let mut done: HashMap<u64, usize> = HashMap::new();
    for e in v.events(&Filter::default()).unwrap() {
        if e.kind == "work_item_done" {
            *done.entry(e.work_item.unwrap().0).or_default() += 1;
        }
    }
    assert_eq!(done.len() as u64, ITEMS);
    assert!(
        done.values().all(|n| *n == 1),
        "each item done exactly once: {done:?}"
    );
}

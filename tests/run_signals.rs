//! `baton run` under SIGINT and SIGTERM, sent to the real binary: the first signal stops new
//! work, lets the turns under way finish, prints the report and exits 130 or 143; a second ends
//! it at once; the journal is consistent either way, and a run on it continues. No sleep: the
//! test waits for the stub to receive requests and for the child's own lines.

mod support;

use std::time::Duration;

use support::cli::{baton_measured, baton_spawn, stderr, stdout, stub_run_args};
use support::stub::{Fault, Stub};

fn run_args(items: &str, endpoint: &str, extra: &[&str]) -> Vec<String> {
    let mut args = stub_run_args(
        items,
        endpoint,
        &["--agent-type", "a:4096", "--sessions", "2"],
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn three_items(dir: &tempfile::TempDir) -> String {
    let items = dir.path().join("items");
    std::fs::write(&items, "Fix one\nFix two\nFix three\n").unwrap();
    items.to_str().unwrap().to_owned()
}

async fn stopped_by(signal: libc::c_int) -> (std::process::Output, Stub, tempfile::TempDir) {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    // The first two turns are under way when the signal comes; they finish after it.
    stub.script([
        Fault::Slow(Duration::from_millis(1500)),
        Fault::Slow(Duration::from_millis(1500)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let items = three_items(&dir);
    let journal = dir.path().join("run.db");
    let args = run_args(
        &items,
        &stub.base_url(),
        &["--journal", journal.to_str().unwrap(), "--json"],
    );
    let mut child = baton_spawn(&args);
    stub.wait_for_chat_requests(2).await;
    child.signal(signal);
    let output = tokio::task::spawn_blocking(move || {
        child.wait_for_stderr("finishing the turns under way");
        child.finish()
    })
    .await
    .unwrap();
    (output, stub, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sigint_finishes_the_turns_under_way_reports_and_exits_130() {
    let (o, stub, dir) = stopped_by(libc::SIGINT).await;
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(
        report["outcomes"]["done"], 2,
        "the turns under way finished: {report}"
    );
    assert_eq!(report["outcomes"]["unfinished"], 1, "{report}");
    assert_eq!(
        stub.chat_requests().len(),
        2,
        "no new turn after the signal"
    );

    // The same items on the same journal: the run continues with the third item only.
    let items = dir.path().join("items");
    let journal = dir.path().join("run.db");
    let args = run_args(
        items.to_str().unwrap(),
        &stub.base_url(),
        &["--journal", journal.to_str().unwrap(), "--json"],
    );
    let m = tokio::task::spawn_blocking(move || baton_measured(&args, None, &[]))
        .await
        .unwrap();
    assert_eq!(m.output.status.code(), Some(0), "{}", stderr(&m.output));
    let report: serde_json::Value = serde_json::from_str(stdout(&m.output).trim()).unwrap();
    assert_eq!(report["resumed"]["already_ended"], 2, "{report}");
    assert_eq!(report["outcomes"]["done"], 3, "{report}");
    assert_eq!(
        stub.chat_requests().len(),
        3,
        "only the third item was taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sigterm_reports_and_exits_143() {
    let (o, _stub, _dir) = stopped_by(libc::SIGTERM).await;
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_at_once_and_leaves_a_readable_journal() {
    let stub = Stub::start().await;
    // A reply that would take ten minutes: only the second signal can end the run.
    stub.script([Fault::Slow(Duration::from_secs(600))]);
    let dir = tempfile::tempdir().unwrap();
    let items = three_items(&dir);
    let journal = dir.path().join("run.db");
    let journal = journal.to_str().unwrap().to_owned();
    let args = run_args(&items, &stub.base_url(), &["--journal", &journal]);
    let mut child = baton_spawn(&args);
    stub.wait_for_chat_requests(1).await;
    child.signal(libc::SIGINT);
    let o = tokio::task::spawn_blocking(move || {
        child.wait_for_stderr("send it again to stop at once");
        child.signal(libc::SIGINT);
        child.finish()
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("again: stopping at once"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty(), "no report: {}", stdout(&o));
    let log = baton_measured(&["log".into(), journal, "items".into()], None, &[]);
    assert_eq!(log.output.status.code(), Some(0), "{}", stderr(&log.output));
    let listed = stdout(&log.output);
    assert!(
        listed.contains("w1") && listed.contains("w2") && listed.contains("w3"),
        "{listed}"
    );
}

#[test]
fn a_first_sigint_stops_a_simulation_as_its_duration_would_and_exits_130() {
    // A fleet that would run for minutes; -vv says when the signal handlers are in place.
    let args: Vec<String> = [
        "simulate",
        "--sessions",
        "50",
        "--work-items",
        "100000",
        "--turns",
        "1000..1000",
        "--json",
        "-vv",
    ]
    .map(str::to_owned)
    .into();
    let mut child = baton_spawn(&args);
    child.wait_for_stderr("SIGINT and SIGTERM now stop the fleet gracefully");
    child.signal(libc::SIGINT);
    child.wait_for_stderr("baton: SIGINT:");
    let o = child.finish();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let said = err
        .lines()
        .find(|l| l.contains("baton: SIGINT:"))
        .unwrap()
        .to_owned();
    assert!(
        said.contains("as when --duration is up") && !said.contains("--grace"),
        "simulate has no --grace: {said}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert!(report["unfinished"].as_u64().unwrap() > 0, "{report}");
}

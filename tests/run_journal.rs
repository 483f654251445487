//! `baton run --journal`: the run leaves a journal `baton log` reads, and running it again on
//! the same journal continues instead of starting over (other work items are refused).

mod support;

use support::cli::{Measured, baton_measured, stderr, stdout, stub_run_args};
use support::stub::Stub;

async fn baton(args: Vec<String>) -> Measured {
    tokio::task::spawn_blocking(move || baton_measured(&args, None, &[]))
        .await
        .unwrap()
}

fn run_args(items: &str, journal: &str, endpoint: &str) -> Vec<String> {
    let extra = ["--agent-type", "a:4096", "--journal", journal, "--json"];
    stub_run_args(items, endpoint, &extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_run_is_listed_by_log_and_a_second_run_takes_nothing_again() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items");
    std::fs::write(&items, "Fix the lexer\nFix the parser\n").unwrap();
    let journal = dir.path().join("run.db");
    let (items, journal) = (items.to_str().unwrap(), journal.to_str().unwrap());
    let m = baton(run_args(items, journal, &stub.base_url())).await;
    assert_eq!(m.output.status.code(), Some(0), "{}", stderr(&m.output));
    let first: serde_json::Value = serde_json::from_str(stdout(&m.output).trim()).unwrap();
    assert_eq!(first["resumed"], serde_json::Value::Null, "a new journal");
    assert_eq!(stub.chat_requests().len(), 2);

    let log = baton(vec!["log".into(), journal.into(), "items".into()]).await;
    assert_eq!(log.output.status.code(), Some(0), "{}", stderr(&log.output));
    let listed = stdout(&log.output);
    assert!(
        listed.contains("w1") && listed.contains("w2") && listed.matches("done").count() == 2,
        "{listed}"
    );

    let m = baton(run_args(items, journal, &stub.base_url())).await;
    assert_eq!(m.output.status.code(), Some(0), "{}", stderr(&m.output));
    let second: serde_json::Value = serde_json::from_str(stdout(&m.output).trim()).unwrap();
    assert_eq!(second["resumed"]["already_ended"], 2, "{second}");
    assert_eq!(second["outcomes"]["done"], 2, "{second}");
    assert_eq!(stub.chat_requests().len(), 2, "nothing was taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_work_items_on_the_same_journal_are_refused_naming_the_difference() {
    let stub = Stub::start().await;
    stub.reply_text("DONE");
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items");
    std::fs::write(&items, "Fix the lexer\nFix the parser\n").unwrap();
    let journal = dir.path().join("run.db");
    let (items_s, journal_s) = (items.to_str().unwrap(), journal.to_str().unwrap());
    let m = baton(run_args(items_s, journal_s, &stub.base_url())).await;
    assert_eq!(m.output.status.code(), Some(0), "{}", stderr(&m.output));
    std::fs::write(&items, "Fix the lexer\nFix the printer\n").unwrap();
    let m = baton(run_args(items_s, journal_s, &stub.base_url())).await;
    let err = stderr(&m.output);
    assert_eq!(m.output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("was written by a run of other work items (work item w2's text differs: \"Fix the printer\" in ITEMS, \"Fix the parser\" in the journal)"),
        "{err}"
    );
    assert_eq!(
        stub.chat_requests().len(),
        2,
        "nothing was sent for the refused run"
    );
}

#[test]
fn a_journaled_simulation_is_listed_by_log_and_its_journal_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("sim.db");
    let journal = journal.to_str().unwrap();
    let args: Vec<String> = [
        "simulate",
        "--sessions",
        "5",
        "--work-items",
        "8",
        "--turns",
        "5..10",
        "--failure-rate",
        "0",
        "--journal",
        journal,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let m = baton_measured(&args, None, &[]);
    assert_eq!(m.output.status.code(), Some(0), "{}", stderr(&m.output));
    let log = baton_measured(&["log".into(), journal.into(), "items".into()], None, &[]);
    assert_eq!(log.output.status.code(), Some(0), "{}", stderr(&log.output));
    assert_eq!(
        stdout(&log.output).matches(" done ").count(),
        8,
        "{}",
        stdout(&log.output)
    );
    let again = baton_measured(&args, None, &[]);
    assert_eq!(again.output.status.code(), Some(1));
    assert!(
        stderr(&again.output).contains("already holds work items"),
        "{}",
        stderr(&again.output)
    );
}

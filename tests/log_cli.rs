//! `baton log`, run as a user would, on a journal written by a real supervisor.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton::journal::{JournalOptions, JournalTarget};
use baton::runtime::memory::{MemoryConfig, MemoryRuntime};
use baton::{FleetEvent, Journal, Supervisor, UsageSource};
use support::cli::{baton, stderr, stdout};
use support::fleet::{agent, item};
use support::stores::{self, Store};

/// A journal of a small fleet: item 1 (sonnet) compacts once then rotates at 96%; item 2
/// (glm) is closed, done.
fn write_journal(path: &Path) {
    write_journal_at(&JournalTarget::File(path.to_owned()));
}

/// [`write_journal`] at `target`.
fn write_journal_at(target: &JournalTarget) {
    let target = target.clone();
    actix::System::new().block_on(async move {
        let runtime = Arc::new(MemoryRuntime::new(MemoryConfig {
            base_tokens: 100,
            ..MemoryConfig::default()
        }));
        let sup = Supervisor::builder(runtime.clone())
            .agent_type(agent("sonnet"))
            .agent_type(agent("glm"))
            .journal(Journal::open_target(&target, JournalOptions::default()).unwrap())
            .unwrap()
            .start();
        let mut events = sup.subscribe();
        sup.submit(item(1, "sonnet")).await.unwrap();
        sup.submit(item(2, "glm")).await.unwrap();
        let mut sessions = Vec::new();
        while sessions.len() < 2 {
            if let Some(FleetEvent::SessionStarted { session, .. }) = events.recv().await {
                sessions.push(session);
            }
        }
        let report = |s, used: u64| {
            let (sup, runtime) = (sup.clone(), runtime.clone());
            async move {
                let now = runtime.session(s).unwrap().used;
                runtime.grow(s, used.saturating_sub(now)).unwrap();
                sup.report_usage(s, used, None, UsageSource::Reported)
                    .await
                    .unwrap();
            }
        };
        report(sessions[0], 850).await;
        while !matches!(events.recv().await, Some(FleetEvent::Compaction(_))) {}
        report(sessions[0], 960).await;
        while !matches!(events.recv().await, Some(FleetEvent::Rotation(_))) {}
        sup.close(sessions[1]).await.unwrap();
        while !matches!(events.recv().await, Some(FleetEvent::WorkItemDone { .. })) {}
        sup.shutdown(Duration::from_secs(5)).await;
    });
}

fn journal() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    write_journal(&path);
    (dir, path.to_string_lossy().into_owned())
}

/// [`journal`] in `store`: the directory (and database) to keep, and what `baton log` is given.
fn journal_in(store: &Store) -> (stores::TestDir, String) {
    let dir = store.dir();
    let target = stores::target(dir.path());
    write_journal_at(&target);
    let arg = match &target {
        JournalTarget::File(path) => path.to_string_lossy().into_owned(),
        JournalTarget::Postgres(url) => url.expose().to_owned(),
    };
    (dir, arg)
}

/// The password in `baton log`'s argument, if any: it must appear in no output.
fn secret(arg: &str) -> Option<&str> {
    let userinfo = arg.strip_prefix("postgres://")?.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p)
}

fn log_lists_rotations_sessions_compactions_items_and_events_as_tables(store: &Store) {
    let (_dir, path) = journal_in(store);
    let o = baton(&["log", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    if let Some(secret) = secret(&path) {
        let bad = baton(&["log", &path.replace("/baton_", "/missing_")]);
        assert!(!bad.status.success());
        for text in [out.as_str(), &stderr(&o), &stdout(&bad), &stderr(&bad)] {
            assert!(!text.contains(secret), "the password was shown: {text}");
        }
    }
    assert!(out.contains("s1 → s3"), "{out}");
    assert!(
        out.contains("threshold") && out.contains("960 (96.0%)"),
        "{out}"
    );
    assert!(out.contains("1 rotations"), "{out}");

    let out = stdout(&baton(&["log", &path, "sessions"]));
    assert!(out.contains("rotated") && out.contains("done"), "{out}");
    assert!(out.contains("3 sessions"), "{out}");

    let out = stdout(&baton(&["log", &path, "compactions"]));
    assert!(
        out.contains("850 (85.0%)") && out.contains("1 compactions"),
        "{out}"
    );

    let out = stdout(&baton(&["log", &path, "items"]));
    assert!(out.contains("done") && out.contains("queued"), "{out}");

    let out = stdout(&baton(&["log", &path, "events", "--work-item", "1"]));
    for kind in [
        "rotation_started",
        "rotation_handoff",
        "rotation_successor",
        "rotation ",
    ] {
        assert!(out.contains(kind), "{kind}: {out}");
    }
}

fn log_filters_by_session_item_agent_type_reason_and_time(store: &Store) {
    let (_dir, path) = journal_in(store);
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let o = baton(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let glm = lines(&["log", &path, "sessions", "--json", "--agent-type", "glm"]);
    assert_eq!(glm.len(), 1);
    assert_eq!(glm[0]["session"], 2);
    assert_eq!(glm[0]["end_reason"], "done");
    let successor = lines(&["log", &path, "rotations", "--json", "--session", "3"]);
    assert_eq!(
        successor.len(),
        1,
        "a rotation lists under its successor too"
    );
    assert_eq!(successor[0]["record"]["reason"], "threshold");
    assert!(lines(&["log", &path, "--json", "--reason", "manual"]).is_empty());
    assert_eq!(
        lines(&["log", &path, "--json", "--reason", "threshold"]).len(),
        1
    );
    // On the event log, --reason keeps the events of those rotations and nothing else.
    let kinds: Vec<String> = lines(&["log", &path, "events", "--json", "--reason", "threshold"])
        .iter()
        .map(|e| {
            assert_eq!(e["rotation"], 1, "{e}");
            e["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "rotation_started",
            "rotation_handoff",
            "rotation_successor",
            "rotation"
        ]
    );
    assert!(lines(&["log", &path, "events", "--json", "--reason", "manual"]).is_empty());
    let item2 = lines(&["log", &path, "compactions", "--json", "--work-item", "2"]);
    assert!(item2.is_empty());
    assert_eq!(
        lines(&["log", &path, "compactions", "--json", "--since", "1h"]).len(),
        1
    );
    assert!(
        lines(&[
            "log",
            &path,
            "compactions",
            "--json",
            "--until",
            "2000-01-01"
        ])
        .is_empty()
    );
    assert_eq!(
        lines(&["log", &path, "events", "--json", "--limit", "2"]).len(),
        2
    );
    let o = baton(&["log", &path, "--since", "2026-13-01"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a time"), "{}", stderr(&o));
}

#[test]
fn log_export_writes_every_record_as_json_lines_with_its_type() {
    let (dir, path) = journal();
    let out = dir.path().join("export.jsonl");
    let o = baton(&["log", &path, "--export", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(v["type"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(counts["work_item"], 2);
    assert_eq!(counts["session"], 3);
    assert_eq!(counts["rotation"], 1);
    assert_eq!(counts["compaction"], 1);
    assert!(counts["event"] > 10);
    assert!(
        text.starts_with(r#"{"type":"work_item","work_item":1,"#),
        "{text}"
    );
}

#[test]
fn log_refuses_missing_corrupt_foreign_and_newer_files_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    let notes = p("notes.txt");
    std::fs::write(&notes, "not a database\n".repeat(100)).unwrap();
    let foreign = p("app.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); PRAGMA application_id = 42;")
        .unwrap();
    let newer = p("newer.db");
    drop(Journal::open(&newer).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    // A journal whose pages past the first (the header and the schema) are damaged.
    let corrupt = p("corrupt.db");
    {
        let journal = Journal::open(&corrupt).unwrap();
        for _ in 0..300 {
            journal.record(&FleetEvent::RuntimeWarning {
                session: baton::SessionId(1),
                error: "the agent did not answer in time".repeat(4),
            });
        }
    }
    let mut bytes = std::fs::read(&corrupt).unwrap();
    assert!(bytes.len() > 4 * 4096, "{} bytes", bytes.len());
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    // A baton journal from before schema version 1.
    let older = p("older.db");
    {
        let c = rusqlite::Connection::open(&older).unwrap();
        c.execute_batch("CREATE TABLE work_items (id INTEGER PRIMARY KEY);")
            .unwrap();
        c.pragma_update(None, "application_id", baton::journal::APPLICATION_ID)
            .unwrap();
    }
    for (file, expected) in [
        (p("missing.db"), "no journal at"),
        (notes, "is not a SQLite database"),
        (
            foreign,
            "not a baton journal (application_id 0x0000002a, 1 tables)",
        ),
        (newer, "schema version 99, newer than this baton's 1"),
        (corrupt, "is corrupt"),
        (
            older,
            "schema version 0, older than this baton's 1: open it once for writing",
        ),
    ] {
        let o = baton(&["log", &file]);
        assert!(!o.status.success(), "{file}");
        assert!(stderr(&o).contains(expected), "{file}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    assert!(
        !dir.path().join("missing.db").exists(),
        "log never creates a journal"
    );
}

#[test]
fn log_flag_values_it_cannot_use_are_usage_errors_naming_the_flag() {
    for (args, flag) in [
        (&["--limit", "9223372036854775808"][..], "--limit"),
        (&["--limit=-1"][..], "--limit"),
        (&["--since", "2026-13-01"][..], "--since"),
        (&["--until", "99999999999999999999d"][..], "--until"),
        (&["--reason", "boredom"][..], "--reason"),
        (&["sessions", "--reason", "manual"][..], "--reason"),
    ] {
        // Checked before the journal is opened: the file need not exist.
        let o = baton(&[&["log", "missing.db"][..], args].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("datatype mismatch"), "{}", stderr(&o));
    }
}

#[test]
fn log_on_a_directory_says_it_is_not_a_journal_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = baton(&["log", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a journal file"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("disk I/O error"), "{}", stderr(&o));
}

/// The names of the files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(unix)]
#[test]
fn log_reads_a_journal_in_a_read_only_directory_and_leaves_no_file_beside_it() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = journal();
    let before = files_in(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    for what in ["rotations", "sessions", "compactions", "items", "events"] {
        let o = baton(&["log", &path, what]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
    }
    let o = baton(&["log", &path, "--export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(files_in(dir.path()), before);
    assert!(
        !before
            .iter()
            .any(|f| f.ends_with("-shm") || f.ends_with("-wal"))
    );
}

#[test]
fn log_names_the_table_row_and_column_of_a_damaged_row() {
    let (_dir, path) = journal();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE sessions SET transitions = 'lots' WHERE id = 2", [])
        .unwrap();
    let o = baton(&["log", &path, "sessions"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sessions row 2: column transitions"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty(), "no half listing");
    // The other listings still read.
    assert!(baton(&["log", &path, "rotations"]).status.success());
}

#[cfg(unix)]
#[test]
fn log_export_never_writes_over_the_journal_or_its_side_files() {
    let (dir, path) = journal();
    let original = std::fs::read(&path).unwrap();
    let alias = dir.path().join("alias.db");
    std::fs::hard_link(&path, &alias).unwrap();
    let dotted = format!("{}/./baton.db", dir.path().display());
    let wal = format!("{path}-wal");
    for target in [
        path.as_str(),
        dotted.as_str(),
        alias.to_str().unwrap(),
        wal.as_str(),
    ] {
        let o = baton(&["log", &path, "--export", "-o", target]);
        assert_eq!(o.status.code(), Some(2), "refused usage: {target}");
        assert!(stderr(&o).contains("refusing"), "{target}: {}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        original,
        "the journal is intact"
    );
    assert!(!Path::new(&wal).exists());
    // An existing output is replaced whole, and no temporary file is left.
    let out = dir.path().join("export.jsonl");
    std::fs::write(&out, "stale line\n".repeat(100_000)).unwrap();
    let o = baton(&["log", &path, "--export", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with(r#"{"type":"work_item""#) && !text.contains("stale line"));
    assert!(
        !files_in(dir.path()).iter().any(|f| f.ends_with(".tmp")),
        "{:?}",
        files_in(dir.path())
    );
    // `-o -` is standard output.
    let o = baton(&["log", &path, "--json", "-o", "-"]);
    assert!(o.status.success() && stdout(&o).contains("threshold"));
}

#[test]
fn log_tables_and_errors_escape_control_characters_from_the_journal() {
    let (_dir, path) = journal();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE rotations SET agent_type = 'son\u{1b}]0;pwned\u{7}net\u{1b}[2J' WHERE id = 1",
        [],
    )
    .unwrap();
    let o = baton(&["log", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains('\u{1b}'), "{}", stdout(&o));
    assert!(stdout(&o).contains("son\\u{1b}]0;pwned"), "{}", stdout(&o));
    c.execute_batch(
        "PRAGMA ignore_check_constraints = ON;
         UPDATE rotations SET step = 'sp\u{1b}[2Jun' WHERE id = 1;",
    )
    .unwrap();
    drop(c);
    let o = baton(&["log", &path]);
    assert!(!o.status.success());
    let error = stderr(&o)
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("rotations row 1: column step"), "{error}");
    assert!(error.contains("sp\\u{1b}[2Jun"), "{error}");
    assert!(!error.contains('\u{1b}'), "{error}");
}

on_both_stores!(
    log_lists_rotations_sessions_compactions_items_and_events_as_tables,
    log_filters_by_session_item_agent_type_reason_and_time,
);

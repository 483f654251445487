//! The journal on its own: files, group commit, idempotent steps, failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::test_store::{TestStore, on_both_stores};
use super::*;
use crate::machine::{EventKind, Phase, TransitionRecord};
use crate::policy::RotationReason;
use crate::record::{CompactionRecord, FleetEvent, RotationId, RotationRecord};
use crate::usage::Usage;
use crate::vocab::{Handoff, SessionId, SpawnKey, WorkItem, WorkItemId};

fn block<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn item(id: u64) -> WorkItem {
    WorkItem {
        id: WorkItemId(id),
        agent_type: "sonnet".into(),
        text: format!("work item {id}"),
    }
}

fn started(session: u64, item: u64) -> FleetEvent {
    FleetEvent::SessionStarted {
        session: SessionId(session),
        agent_type: "sonnet".into(),
        work_item: WorkItemId(item),
    }
}

fn transition(session: u64, seq: u64, from: Phase, to: Phase, used: u64) -> FleetEvent {
    FleetEvent::Transition(TransitionRecord {
        seq,
        session: SessionId(session),
        from,
        to,
        cause: EventKind::Usage,
        usage: Some(Usage::reported(used, 1000).unwrap()),
        reason: (to == Phase::Rotating).then_some(RotationReason::Threshold),
    })
}

fn intent() -> RotationIntent {
    RotationIntent {
        rotation: RotationId(1),
        work_item: WorkItemId(7),
        old_session: SessionId(1),
        agent_type: "sonnet".into(),
        reason: RotationReason::Threshold,
        before: Some(Usage::reported(960, 1000).unwrap()),
        compactions: 1,
        spawn_n: 2,
        spawn_key: SpawnKey(u64::MAX - 5),
    }
}

fn handoff() -> Handoff {
    Handoff {
        text: "carry on with the parser".into(),
        tokens: 84,
        fallback: false,
    }
}

fn record() -> RotationRecord {
    RotationRecord {
        rotation: RotationId(1),
        old_session: SessionId(1),
        new_session: Some(SessionId(2)),
        agent_type: "sonnet".into(),
        work_item: WorkItemId(7),
        reason: RotationReason::Threshold,
        before_tokens: 960,
        before_percent: 96.0,
        compactions: 1,
        handoff_tokens: 84,
        handoff_fallback: false,
        attempts: 2,
        duration: Duration::from_millis(12),
        success: true,
        error: None,
    }
}

fn compaction() -> CompactionRecord {
    let before = Usage::reported(850, 1000).unwrap();
    let after = Usage::reported(450, 1000).unwrap();
    CompactionRecord {
        session: SessionId(1),
        agent_type: "sonnet".into(),
        work_item: WorkItemId(7),
        before_tokens: before.used(),
        before_percent: before.percent(),
        after_tokens: after.used(),
        after_percent: after.percent(),
        tokens_freed: 400,
        reduction_percent: 47.1,
        within_target: true,
        sufficient: true,
        summary_tokens: 350,
        duration: Duration::from_millis(30),
        success: true,
        error: None,
    }
}

/// Every row of every table, as text, for comparisons.
type Dump = BTreeMap<String, Vec<Vec<String>>>;

fn dump(conn: &dyn db::Db) -> Dump {
    let mut out = Dump::new();
    for table in [
        "work_items",
        "sessions",
        "rotations",
        "compactions",
        "events",
    ] {
        let rows = conn
            .query(&format!("SELECT * FROM {table} ORDER BY 1"), &[])
            .unwrap();
        let rows = rows
            .rows
            .into_iter()
            .map(|r| {
                r.0.into_iter()
                    .map(|v| match v {
                        db::Val::Null => "NULL".to_string(),
                        db::Val::Int(v) => v.to_string(),
                        db::Val::Real(v) => v.to_string(),
                        db::Val::Text(t) => t,
                        db::Val::Blob(_) => "<blob>".to_string(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.insert(table.to_string(), rows);
    }
    out
}

fn snapshot(j: &Journal) -> Dump {
    j.read_blocking(|conn, _| Ok(dump(conn))).unwrap()
}

/// The records of one rotation, in the order a supervisor writes them.
fn rotation_steps() -> Vec<Write> {
    vec![
        Write::Op(Op::Submitted(item(7))),
        Write::Event(started(1, 7)),
        Write::Event(transition(1, 1, Phase::Normal, Phase::Compacting, 850)),
        Write::Event(FleetEvent::Compaction(compaction())),
        Write::Event(transition(1, 2, Phase::Compacting, Phase::Normal, 450)),
        Write::Event(transition(1, 3, Phase::Normal, Phase::Rotating, 960)),
        Write::Op(Op::RotationIntent(intent())),
        Write::Op(Op::RotationHandoff {
            rotation: RotationId(1),
            handoff: handoff(),
        }),
        Write::Op(Op::RotationSuccessor {
            rotation: RotationId(1),
            session: SessionId(2),
        }),
        Write::Op(Op::RotationDone {
            record: record(),
            handoff: handoff(),
        }),
        Write::Event(started(2, 7)),
        Write::Event(FleetEvent::Rotation(record())),
    ]
}

fn send(j: &Journal, w: Write) {
    match w {
        Write::Event(e) => j.record(&e),
        Write::Op(op) => j.note(op),
    }
}

fn sync(j: &Journal) {
    block(j.flush()).unwrap();
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn a_new_journal_file_is_owner_only_and_marked_as_baton_s() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let j = Journal::open(&path).unwrap();
    j.note(Op::Submitted(item(1)));
    sync(&j);
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("baton.db-wal");
    assert_eq!(mode(&wal), 0o600, "SQLite gives the WAL the file's mode");
    assert_eq!(mode(&dir.path().join("baton.db-lock")), 0o600);
    let conn = Connection::open(&path).unwrap();
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(
        (app, version, mode.as_str()),
        (APPLICATION_ID, SCHEMA_VERSION, "wal")
    );
    let sync_mode: i64 = j
        .read_blocking(|c, _| {
            Ok(c.sqlite()
                .unwrap()
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap())
        })
        .unwrap();
    assert_eq!(sync_mode, 2, "synchronous=FULL");
}

#[test]
fn a_reopened_journal_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        let j = Journal::open(&path).unwrap();
        for w in rotation_steps() {
            send(&j, w);
        }
        // Dropping the last handle commits what was sent and stops the writer.
    }
    let j = Journal::open(&path).unwrap();
    let rotations = block(j.read(|v| v.rotations(&Filter::default()))).unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].step, crate::record::RotationStep::Done);
    let reader = JournalReader::open(&path).unwrap();
    assert_eq!(
        reader.view().rotations(&Filter::default()).unwrap(),
        rotations
    );
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let first = Journal::open(&path).unwrap();
    let second = Journal::open(&path).unwrap_err();
    assert!(matches!(second, JournalError::InUse { .. }), "{second}");
    drop(first);
    Journal::open(&path).expect("free again once the first is gone");
}

fn records_sent_together_share_one_commit(store: &TestStore) {
    let j = store.open();
    // Hold the writer until every record is queued.
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let j = j.clone();
        std::thread::spawn(move || {
            j.read_blocking(move |_, _| {
                held_tx.send(()).unwrap();
                gate_rx.recv().unwrap();
                Ok(())
            })
        })
    };
    held_rx.recv().unwrap();
    let before = j.stats();
    j.note(Op::Submitted(item(1)));
    j.record(&started(1, 1));
    for seq in 1..=1000 {
        let (from, to) = if seq % 2 == 1 {
            (Phase::Normal, Phase::Compacting)
        } else {
            (Phase::Compacting, Phase::Normal)
        };
        j.record(&transition(1, seq, from, to, 800));
    }
    gate_tx.send(()).unwrap();
    holder.join().unwrap().unwrap();
    sync(&j);
    let after = j.stats();
    assert_eq!(after.records - before.records, 1002);
    assert_eq!(
        after.commits - before.commits,
        1,
        "one transaction, one fsync"
    );
    let sessions = block(j.read(|v| v.sessions(&Filter::default()))).unwrap();
    assert_eq!(sessions[0].transitions, 1000);
}

fn each_rotation_step_applied_twice_changes_nothing_the_second_time(store: &TestStore) {
    let j = store.open();
    for w in rotation_steps() {
        let dup = w.clone();
        send(&j, w);
        sync(&j);
        let once = snapshot(&j);
        if matches!(dup, Write::Op(_)) || matches!(dup, Write::Event(FleetEvent::Rotation(_))) {
            send(&j, dup.clone());
            sync(&j);
            assert_eq!(snapshot(&j), once, "{dup:?} applied twice");
        }
    }
    let events = block(j.read(|v| v.events(&Filter::default()))).unwrap();
    let rotation_events = events.iter().filter(|e| e.kind == "rotation").count();
    assert_eq!(
        rotation_events, 1,
        "the bus's copy of the record is the same row"
    );
}

fn a_done_rotation_whose_record_a_crash_kept_out_of_the_log_is_left_for_recovery_to_publish(
    store: &TestStore,
) {
    let j = store.open();
    let steps = rotation_steps();
    let (until_done, rest) = steps.split_at(10);
    assert!(matches!(
        until_done.last(),
        Some(Write::Op(Op::RotationDone { .. }))
    ));
    for w in until_done.iter().cloned() {
        send(&j, w);
    }
    let pending = j.read_blocking(recovery::load).unwrap().unannounced;
    assert_eq!(
        pending,
        vec![record()],
        "step 4 is durable, its event is not logged"
    );
    for w in rest.iter().cloned() {
        send(&j, w);
    }
    let state = j.read_blocking(recovery::load).unwrap();
    assert!(
        state.unannounced.is_empty(),
        "the published record is logged"
    );
}

fn a_delivered_event_is_numbered_by_its_row_in_the_log(store: &TestStore) {
    let j = store.open();
    let bus = crate::record::EventBus::default().with_journal(j.clone());
    let mut rx = bus.subscribe_sequenced();
    for w in rotation_steps() {
        match w {
            Write::Event(e) => bus.publish(e),
            Write::Op(op) => j.note(op),
        }
    }
    // A duplicate of a logged event is not delivered to sequenced subscribers again.
    bus.publish(FleetEvent::Rotation(record()));
    sync(&j);
    let rows = block(j.read(|v| v.events(&Filter::default()))).unwrap();
    let logged: Vec<(u64, Option<FleetEvent>)> = rows
        .iter()
        .filter_map(|r| r.event().map(|e| (r.seq, Some(e))))
        .collect();
    let mut delivered = Vec::new();
    while let Ok(s) = rx.try_recv() {
        delivered.push((s.seq, Some(s.event)));
    }
    assert_eq!(delivered, logged);
}

fn a_rotation_is_recorded_step_by_step(store: &TestStore) {
    let j = store.open();
    for w in rotation_steps() {
        send(&j, w);
    }
    let (items, sessions, rotations, compactions, events) = block(j.read(|v| {
        let all = Filter::default();
        Ok((
            v.work_items(&all)?,
            v.sessions(&all)?,
            v.rotations(&all)?,
            v.compactions(&all)?,
            v.events(&all)?,
        ))
    }))
    .unwrap();
    #[derive(serde::Serialize)]
    struct Contents {
        work_items: Vec<WorkItemRow>,
        sessions: Vec<SessionRow>,
        rotations: Vec<RotationRow>,
        compactions: Vec<CompactionRow>,
        events: Vec<EventRow>,
    }
    let contents = Contents {
        work_items: items,
        sessions,
        rotations,
        compactions,
        events,
    };
    snapshot_settings().bind(|| {
        insta::assert_yaml_snapshot!("journal_a_rotation_is_recorded_step_by_step", contents)
    });
}

/// The project's snapshot settings (top-level `snapshots/`), with times and durations redacted
/// (absent times stay absent).
pub(crate) fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    for field in [
        "at",
        "started_at",
        "ended_at",
        "finished_at",
        "submitted_at",
        "updated_at",
    ] {
        settings.add_redaction(
            &format!(".**.{field}"),
            insta::dynamic_redaction(|value, _| {
                if value.is_nil() {
                    value
                } else {
                    "[time]".into()
                }
            }),
        );
    }
    settings.add_redaction(".**.duration", "[duration]");
    settings
}

fn a_record_that_fails_alone_is_dropped_without_its_batch(store: &TestStore) {
    let j = store.open();
    j.note(Op::Submitted(item(1)));
    // A completion without an intent is refused, alone.
    let refused = block(j.commit(Op::RotationDone {
        record: record(),
        handoff: handoff(),
    }))
    .unwrap_err();
    assert!(matches!(refused, JournalError::BadRecord(_)), "{refused}");
    j.note(Op::Submitted(item(2)));
    sync(&j);
    let items = block(j.read(|v| v.work_items(&Filter::default()))).unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        j.failure().is_none(),
        "a bad record does not stop the journal"
    );
    let rotations = block(j.read(|v| v.rotations(&Filter::default()))).unwrap();
    assert!(
        rotations.is_empty(),
        "nothing of the refused record was written"
    );
}

#[test]
fn a_full_disk_rolls_the_batch_back_whole_and_stops_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let options = JournalOptions {
        max_bytes: Some(64 * 1024),
        ..JournalOptions::default()
    };
    let j = Journal::open_with(&path, options).unwrap();
    let big = "x".repeat(2000);
    let mut stored = 0;
    let error = loop {
        // Each step is its own transaction: commit waits for it.
        let mut it = item(stored + 1);
        it.text = big.clone();
        match block(j.commit(Op::Submitted(it))) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "the cap never bit");
    };
    assert!(matches!(error, JournalError::DiskFull { .. }), "{error}");
    assert!(error.to_string().contains("disk is full"), "{error}");
    assert_eq!(j.failure(), Some(error.clone()));
    // Later writes are refused with the original cause, and nothing partial was left.
    let later = block(j.commit(Op::Submitted(item(5000)))).unwrap_err();
    assert_eq!(later, JournalError::Failed(Box::new(error)));
    drop(j);
    let reader = JournalReader::open(&path).unwrap();
    let items = reader.view().work_items(&Filter::default()).unwrap();
    assert_eq!(
        items.len() as u64,
        stored,
        "every acknowledged item, and no other"
    );
    let events = reader.view().events(&Filter::default()).unwrap();
    assert_eq!(events.len() as u64, stored, "no event without its item");
}

#[test]
fn files_that_are_not_journals_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("notes.txt");
    std::fs::write(&garbage, "these are my notes, not a database\n".repeat(200)).unwrap();
    let before = std::fs::read(&garbage).unwrap();
    let e = Journal::open(&garbage).unwrap_err();
    assert!(matches!(e, JournalError::NotADatabase { .. }), "{e}");
    let e = JournalReader::open(&garbage).unwrap_err();
    assert!(matches!(e, JournalError::NotADatabase { .. }), "{e}");
    assert_eq!(std::fs::read(&garbage).unwrap(), before);
    assert!(!dir.path().join("notes.txt-lock").exists());

    let foreign = dir.path().join("app.db");
    {
        let c = Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO accounts VALUES (1, 'ada');")
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let e = Journal::open(&foreign).unwrap_err();
    assert!(
        matches!(
            e,
            JournalError::Foreign {
                application_id: 0,
                tables: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not a baton journal"), "{e}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);

    let newer = dir.path().join("newer.db");
    drop(Journal::open(&newer).unwrap());
    {
        let c = Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    for e in [
        Journal::open(&newer).unwrap_err(),
        JournalReader::open(&newer).unwrap_err(),
    ] {
        assert_eq!(
            e,
            JournalError::NewerSchema {
                path: newer.clone(),
                found: SCHEMA_VERSION + 1,
                supported: SCHEMA_VERSION
            }
        );
    }
    assert_eq!(std::fs::read(&newer).unwrap(), before);

    let missing = dir.path().join("missing.db");
    assert_eq!(
        JournalReader::open(&missing).unwrap_err(),
        JournalError::Missing(missing.clone())
    );
    assert!(!missing.exists(), "reading never creates a journal");
}

/// A closed journal file in `dir` holding 300 submitted items (more than one page).
fn journal_of_300_items(dir: &Path) -> PathBuf {
    let path = dir.join("baton.db");
    let j = Journal::open(&path).unwrap();
    for i in 1..=300 {
        j.note(Op::Submitted(item(i)));
    }
    path
}

#[test]
fn a_damaged_journal_reports_corruption_instead_of_wrong_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_of_300_items(dir.path());
    // Checkpointed and closed: the data is in the main file. Scribble over its pages (not the
    // header).
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192);
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = JournalReader::open(&path)
        .and_then(|r| r.view().work_items(&Filter::default()).map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

fn filters_narrow_every_listing(store: &TestStore) {
    let j = store.open();
    for w in rotation_steps() {
        send(&j, w);
    }
    j.note(Op::Submitted(WorkItem {
        id: WorkItemId(8),
        agent_type: "glm".into(),
        text: "other".into(),
    }));
    j.record(&FleetEvent::SessionStarted {
        session: SessionId(3),
        agent_type: "glm".into(),
        work_item: WorkItemId(8),
    });
    let check = block(j.read(|v| {
        let by = |f: Filter| f;
        let s2 = by(Filter {
            session: Some(SessionId(2)),
            ..Filter::default()
        });
        let glm = by(Filter {
            agent_type: Some("glm".into()),
            ..Filter::default()
        });
        let manual = by(Filter {
            reason: Some(RotationReason::Manual),
            ..Filter::default()
        });
        let future = by(Filter {
            since: Some(Timestamp(i64::MAX / 2)),
            ..Filter::default()
        });
        let last = by(Filter {
            limit: Some(2),
            ..Filter::default()
        });
        Ok((
            v.rotations(&s2)?.len(),
            v.sessions(&glm)?
                .iter()
                .map(|s| s.session.0)
                .collect::<Vec<_>>(),
            v.rotations(&manual)?.len(),
            v.compactions(&future)?.len(),
            v.events(&last)?
                .iter()
                .map(|e| e.kind.clone())
                .collect::<Vec<_>>(),
            v.work_items(&glm)?.len(),
        ))
    }))
    .unwrap();
    assert_eq!(check.0, 1, "a rotation lists under its new session too");
    assert_eq!(check.1, vec![3]);
    assert_eq!(check.2, 0);
    assert_eq!(check.3, 0);
    assert_eq!(
        check.4,
        vec!["work_item_submitted", "session_started"],
        "the latest, oldest first"
    );
    assert_eq!(check.5, 1);
}

fn the_hook_sees_each_commit_before_its_waiters_are_answered(store: &TestStore) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let options = JournalOptions {
        on_commit: Some(Arc::new(move |labels: &[&'static str]| {
            hook_seen.lock().unwrap().push(labels.to_vec());
        })),
        ..JournalOptions::default()
    };
    let j = store.open_with(options);
    block(j.commit(Op::Submitted(item(7)))).unwrap();
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &vec!["work_item_submitted"]
    );
    j.record(&started(1, 7));
    j.record(&transition(1, 1, Phase::Normal, Phase::Compacting, 850));
    block(j.commit(Op::RotationIntent(intent()))).unwrap();
    let all: Vec<&str> = seen.lock().unwrap().concat();
    assert_eq!(
        all,
        vec![
            "work_item_submitted",
            "session_started",
            "transition_to_compacting",
            "rotation_started"
        ]
    );
}

#[test]
fn only_a_record_s_own_fault_lets_the_journal_go_on() {
    use rusqlite::ffi;
    let fatal = |code: i32| {
        let e = rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        JournalError::sqlite(&e, std::path::Path::new("baton.db")).is_fatal()
    };
    for code in [
        ffi::SQLITE_CONSTRAINT,
        ffi::SQLITE_CONSTRAINT_CHECK,
        ffi::SQLITE_CONSTRAINT_TRIGGER,
        ffi::SQLITE_TOOBIG,
        ffi::SQLITE_MISMATCH,
    ] {
        assert!(!fatal(code), "code {code} loses only its record");
    }
    for code in [
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_CORRUPT,
        ffi::SQLITE_FULL,
        ffi::SQLITE_NOMEM,
        ffi::SQLITE_READONLY,
        ffi::SQLITE_BUSY,
        ffi::SQLITE_LOCKED,
        ffi::SQLITE_CANTOPEN,
        ffi::SQLITE_NOTADB,
        ffi::SQLITE_ERROR,
        ffi::SQLITE_INTERNAL,
        ffi::SQLITE_PROTOCOL,
    ] {
        assert!(fatal(code), "code {code} stops the journal");
    }
    assert!(!JournalError::BadRecord("x".into()).is_fatal());
}

/// A trigger on `work_items` that runs `body` when item 13 is inserted: a way to make one
/// record's statement fail as SQLite would.
fn fail_item_13(j: &Journal, body: &'static str) {
    j.read_blocking(move |c, _| {
        c.sqlite()
            .unwrap()
            .execute_batch(&format!(
                "CREATE TEMP TRIGGER fail13 BEFORE INSERT ON work_items WHEN NEW.id = 13
             BEGIN {body}; END"
            ))
            .unwrap();
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_refused_statement_drops_its_record_but_any_other_sqlite_failure_stops_the_journal() {
    let j = Journal::in_memory().unwrap();
    fail_item_13(&j, "SELECT RAISE(ABORT, 'refused by a constraint')");
    j.note(Op::Submitted(item(12)));
    let refused = block(j.commit(Op::Submitted(item(13)))).unwrap_err();
    assert!(matches!(refused, JournalError::Refused { .. }), "{refused}");
    block(j.commit(Op::Submitted(item(14)))).unwrap();
    assert!(j.failure().is_none());
    let ids: Vec<u64> = block(j.read(|v| v.work_items(&Filter::default())))
        .unwrap()
        .iter()
        .map(|i| i.work_item.0)
        .collect();
    assert_eq!(ids, vec![12, 14]);

    // A failure that is not the record's own (here: malformed JSON inside SQLite, a generic
    // SQLITE_ERROR) rolls the batch back and stops the journal.
    let j = Journal::in_memory().unwrap();
    fail_item_13(&j, "SELECT json('{not json')");
    block(j.commit(Op::Submitted(item(12)))).unwrap();
    let error = block(j.commit(Op::Submitted(item(13)))).unwrap_err();
    assert!(matches!(error, JournalError::Sqlite { .. }), "{error}");
    assert_eq!(j.failure(), Some(error.clone()));
    let later = block(j.commit(Op::Submitted(item(14)))).unwrap_err();
    assert_eq!(later, JournalError::Failed(Box::new(error)));
}

/// The work item's place, session, pending spawn key, reason and queue position.
fn item_row(j: &Journal, id: u64) -> (String, Option<i64>, Option<i64>, Option<String>, i64) {
    j.read_blocking(move |c, _| {
        let r = c
            .query_opt(
                "SELECT place, session, pending_spawn_key, reason, queue_seq FROM work_items
                 WHERE id = ?1",
                &[db::Val::Int(id as i64)],
            )
            .unwrap()
            .unwrap();
        Ok((
            r.get(0).unwrap(),
            r.get(1).unwrap(),
            r.get(2).unwrap(),
            r.get(3).unwrap(),
            r.get(4).unwrap(),
        ))
    })
    .unwrap()
}

fn an_abandoned_spawn_is_recorded_closed_and_its_key_is_no_longer_pending(store: &TestStore) {
    let j = store.open();
    j.note(Op::Submitted(item(7)));
    j.note(Op::Spawning {
        work_item: WorkItemId(7),
        n: 1,
        key: SpawnKey(99),
        attempts: 0,
    });
    sync(&j);
    assert_eq!(item_row(&j, 7).2, Some(99));
    // The start gave up on session 5 (shutdown), and requeued the item.
    j.note(Op::SpawnAbandoned {
        work_item: WorkItemId(7),
        session: SessionId(5),
    });
    j.record(&FleetEvent::WorkItemRequeued {
        work_item: WorkItemId(7),
        reason: "shutting down".into(),
    });
    sync(&j);
    let state = j.read_blocking(recovery::load).unwrap();
    let stored = &state.items[0];
    assert_eq!(stored.pending_key, None, "a restart does not reuse the key");
    assert_eq!(
        state.unreleased,
        vec![SessionId(5)],
        "until the runtime confirms the close, a restart closes the session again"
    );
    let sessions = block(j.read(|v| v.sessions(&Filter::default()))).unwrap();
    assert_eq!(
        (sessions[0].state, sessions[0].end_reason),
        (SessionState::Closed, Some(EndReason::StartAbandoned))
    );
    j.note(Op::Released {
        session: SessionId(5),
    });
    sync(&j);
    assert!(
        j.read_blocking(recovery::load)
            .unwrap()
            .unreleased
            .is_empty()
    );
}

/// A failed rotation's record for the rotation of [`intent`], at its handoff step.
fn failed_record() -> RotationRecord {
    RotationRecord {
        new_session: None,
        success: false,
        error: Some("spawn failed".into()),
        ..record()
    }
}

fn a_failed_rotation_requeues_its_item_with_its_handoff_in_the_same_transaction(store: &TestStore) {
    let j = store.open();
    for w in rotation_steps().into_iter().take(8) {
        send(&j, w); // up to the handoff
    }
    j.note(Op::Submitted(item(8))); // queued after item 7
    sync(&j);
    assert_eq!(item_row(&j, 7).0, "rotating");
    let before = j.stats();
    j.record(&FleetEvent::Rotation(failed_record()));
    sync(&j);
    assert_eq!(j.stats().commits - before.commits, 1);
    let (place, session, _, reason, seq) = item_row(&j, 7);
    assert_eq!((place.as_str(), session), ("queued", None));
    assert_eq!(reason.as_deref(), Some("rotation failed: spawn failed"));
    assert!(seq > item_row(&j, 8).4, "at the end of the queue");
    let items = block(j.read(|v| v.work_items(&Filter::default()))).unwrap();
    assert_eq!(items[0].handoff, Some(handoff()));
    let sessions = block(j.read(|v| v.sessions(&Filter::default()))).unwrap();
    assert_eq!(sessions[0].end_reason, Some(EndReason::RotationFailed));

    // The supervisor's requeue that follows, and any duplicate, change nothing.
    let once = snapshot(&j);
    for _ in 0..2 {
        j.record(&FleetEvent::WorkItemRequeued {
            work_item: WorkItemId(7),
            reason: "rotation failed: spawn failed".into(),
        });
        sync(&j);
        let mut now = snapshot(&j);
        // Only the event log grows.
        now.insert("events".into(), once["events"].clone());
        assert_eq!(now, once);
    }
}

#[test]
fn a_journal_damaged_past_its_first_page_is_refused_at_open_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_of_300_items(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page);
    // One page in the middle: the header and the schema (page 1) are intact.
    for b in &mut bytes[2 * page..3 * page] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = Journal::open(&path).unwrap_err();
    assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("is corrupt"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
    // Without the check the damage goes unseen at open.
    let unchecked = JournalOptions {
        check_at_open: false,
        ..JournalOptions::default()
    };
    drop(Journal::open_with(&path, unchecked).expect("opens without the check"));
}

#[test]
fn a_reader_asks_for_an_older_journal_to_be_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE work_items (id INTEGER PRIMARY KEY);")
            .unwrap();
        c.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
    }
    // A baton journal at version 0: older than this build's.
    let e = JournalReader::open(&path).unwrap_err();
    assert_eq!(
        e,
        JournalError::OlderSchema {
            path: path.clone(),
            found: 0,
            supported: SCHEMA_VERSION
        }
    );
    assert!(e.to_string().contains("open it once for writing"), "{e}");
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
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn a_reader_opens_a_closed_journal_read_only_and_creates_no_file_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_of_300_items(dir.path());
    let before = files_in(dir.path());
    assert!(!before.iter().any(|f| f.ends_with("-wal")), "{before:?}");
    // A read-only directory (root ignores the mode; then the file list below is the check).
    set_mode(dir.path(), 0o555);
    let reader = JournalReader::open(&path).unwrap();
    let query::ReaderConn::Sqlite(conn) = &reader.conn else {
        panic!("a file is read with SQLite")
    };
    assert!(conn.is_readonly(rusqlite::MAIN_DB).unwrap());
    assert!(
        reader.unlocked.is_some(),
        "no writer's records: opened immutable"
    );
    assert_eq!(
        reader.view().work_items(&Filter::default()).unwrap().len(),
        300
    );
    assert_eq!(
        files_in(dir.path()),
        before,
        "nothing created while reading"
    );
    drop(reader);
    set_mode(dir.path(), 0o755);
    assert_eq!(files_in(dir.path()), before, "nothing left behind");
}

#[test]
fn a_reader_beside_a_live_writer_reads_its_records_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let j = Journal::open(&path).unwrap();
    j.note(Op::Submitted(item(1)));
    sync(&j);
    let before = files_in(dir.path());
    assert!(before.contains(&"baton.db-wal".to_string()), "{before:?}");
    let reader = JournalReader::open(&path).unwrap();
    let query::ReaderConn::Sqlite(conn) = &reader.conn else {
        panic!("a file is read with SQLite")
    };
    assert!(conn.is_readonly(rusqlite::MAIN_DB).unwrap());
    assert!(
        reader.unlocked.is_none(),
        "records in the WAL: read through locks"
    );
    assert_eq!(
        reader.view().work_items(&Filter::default()).unwrap().len(),
        1
    );
    // It sees what the writer commits after it opened.
    j.note(Op::Submitted(item(2)));
    sync(&j);
    assert_eq!(
        reader.view().work_items(&Filter::default()).unwrap().len(),
        2
    );
    drop(reader);
    assert_eq!(files_in(dir.path()), before);
}

#[test]
fn a_reader_refuses_a_wal_without_its_index_and_says_what_it_needs() {
    let live = tempfile::tempdir().unwrap();
    let path = live.path().join("baton.db");
    let j = Journal::open(&path).unwrap();
    j.note(Op::Submitted(item(1)));
    sync(&j);
    // A copy of the journal and its WAL, without the -shm index.
    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join("baton.db");
    std::fs::copy(&path, &copied).unwrap();
    std::fs::copy(
        live.path().join("baton.db-wal"),
        copy.path().join("baton.db-wal"),
    )
    .unwrap();
    let before = files_in(copy.path());
    let e = JournalReader::open(&copied).unwrap_err();
    assert!(matches!(e, JournalError::NeedsIndex { .. }), "{e}");
    assert!(e.to_string().contains("baton.db-shm"), "{e}");
    assert!(
        e.to_string().contains("open the journal once for writing"),
        "{e}"
    );
    assert_eq!(files_in(copy.path()), before, "no index created");
    drop(j);
}

#[test]
fn a_writer_starting_under_a_reader_without_locks_makes_its_next_query_fail_as_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_of_300_items(dir.path());
    let reader = JournalReader::open(&path).unwrap();
    assert!(reader.unlocked.is_some());
    assert_eq!(
        reader.view().work_items(&Filter::default()).unwrap().len(),
        300
    );
    let j = Journal::open(&path).unwrap();
    j.note(Op::Submitted(item(301)));
    sync(&j);
    let e = reader.view().work_items(&Filter::default()).unwrap_err();
    assert_eq!(e, JournalError::Changed(path.clone()));
    // A new reader reads through the writer's locks and sees everything.
    let again = JournalReader::open(&path).unwrap();
    assert_eq!(
        again.view().work_items(&Filter::default()).unwrap().len(),
        301
    );
}

#[test]
fn a_directory_is_refused_as_not_a_journal_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = JournalReader::open(dir.path()).unwrap_err();
    assert_eq!(e, JournalError::NotAFile(dir.path().to_owned()));
    assert!(e.to_string().contains("is not a journal file"), "{e}");
}

#[test]
fn a_negative_schema_version_is_refused_by_the_writer_and_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    drop(Journal::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", -1)
        .unwrap();
    let expected = JournalError::UnknownSchema {
        path: path.clone(),
        found: -1,
    };
    assert_eq!(JournalReader::open(&path).unwrap_err(), expected);
    assert_eq!(Journal::open(&path).unwrap_err(), expected);
    let version: i32 = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, -1, "left as it was");
}

#[test]
fn a_damaged_row_is_named_by_its_table_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_of_300_items(dir.path());
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE work_items SET attempts = 'many' WHERE id = 17", [])
        .unwrap();
    let e = JournalReader::open(&path)
        .unwrap()
        .view()
        .work_items(&Filter::default())
        .unwrap_err();
    assert!(
        matches!(&e, JournalError::BadRow { table: "work_items", row: 17, message } if message.starts_with("column attempts: ")),
        "{e}"
    );
}

#[test]
fn a_limit_beyond_sqlite_s_integers_is_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_of_300_items(dir.path());
    let reader = JournalReader::open(&path).unwrap();
    let all = Filter {
        limit: Some(usize::MAX),
        ..Filter::default()
    };
    assert_eq!(reader.view().work_items(&all).unwrap().len(), 300);
}

/// `value` written through SQL and read back, with the text SQLite holds.
fn through_sql<T: Into<db::Val> + db::FromVal>(value: T) -> (String, T) {
    let c = Connection::open_in_memory().unwrap();
    let r = (&c as &dyn db::Db)
        .query_opt("SELECT ?1, ?1", &[value.into()])
        .unwrap()
        .unwrap();
    (r.get(0).unwrap(), r.get(1).unwrap())
}

#[test]
fn journal_states_are_stored_by_their_names_and_read_back_as_themselves() {
    use crate::record::RotationStep;
    use schema::{EndReason as E, SessionState as S, WorkItemPlace as W};
    let places = [W::Queued, W::Live, W::Rotating, W::Done, W::Dead];
    let names: Vec<String> = places
        .map(through_sql)
        .iter()
        .map(|(n, p)| {
            assert_eq!(n, &p.to_string());
            n.clone()
        })
        .collect();
    // The names the schema's CHECK constraint allows.
    assert_eq!(names, ["queued", "live", "rotating", "done", "dead"]);
    for s in [S::Live, S::Rotating, S::Closed] {
        assert_eq!(through_sql(s).1, s);
    }
    assert_eq!(through_sql(S::Rotating).0, "rotating");
    for e in [
        E::Rotated,
        E::Closed,
        E::Done,
        E::RotationFailed,
        E::Crashed,
        E::Lost,
        E::StartAbandoned,
    ] {
        assert_eq!(through_sql(e).1, e);
    }
    assert_eq!(through_sql(E::StartAbandoned).0, "start_abandoned");
    for p in [
        Phase::Normal,
        Phase::Compacting,
        Phase::Rotating,
        Phase::Closed,
    ] {
        let (name, back) = through_sql(p);
        assert_eq!((name, back), (format!("{p:?}"), p));
    }
    for step in [
        RotationStep::Intent,
        RotationStep::Handoff,
        RotationStep::Spawned,
        RotationStep::Done,
        RotationStep::Failed,
    ] {
        assert_eq!(through_sql(step), (step.as_str().to_string(), step));
    }
    for r in [
        RotationReason::Threshold,
        RotationReason::InsufficientCompaction,
        RotationReason::CompactionFailed,
        RotationReason::CompactionBudget,
        RotationReason::Manual,
        RotationReason::Overflow,
    ] {
        assert_eq!(through_sql(r), (r.as_str().to_string(), r));
    }
}

#[test]
fn an_unknown_stored_state_is_a_conversion_error_quoting_it_escaped() {
    let c = Connection::open_in_memory().unwrap();
    let c: &dyn db::Db = &c;
    let e = c
        .query_opt("SELECT 'wandering\u{1b}[2J'", &[])
        .unwrap()
        .unwrap()
        .get::<schema::WorkItemPlace>(0)
        .unwrap_err();
    assert!(
        e.message
            .contains(r#""wandering\u{1b}[2J" is not a work item place"#),
        "{e:?}"
    );
    let e = c
        .query_opt("SELECT 3", &[])
        .unwrap()
        .unwrap()
        .get::<Phase>(0)
        .unwrap_err();
    assert_eq!(e.message, "an integer value of the wrong type");
}

/// A closed journal's bytes with every kind of row recovery reads: a queued item, a live
/// session compacting with its reading, an unfinished rotation at its handoff step, and a
/// closed session not yet released.
fn unfinished_journal() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        let j = Journal::open(&path).unwrap();
        for w in rotation_steps().into_iter().take(8) {
            send(&j, w);
        }
        send(&j, Write::Op(Op::Submitted(item(8))));
        send(&j, Write::Event(started(3, 8)));
        send(
            &j,
            Write::Event(transition(3, 1, Phase::Normal, Phase::Compacting, 850)),
        );
        send(&j, Write::Op(Op::Submitted(item(9))));
        send(
            &j,
            Write::Op(Op::SpawnAbandoned {
                work_item: WorkItemId(9),
                session: SessionId(4),
            }),
        );
    }
    std::fs::read(&path).unwrap()
}

#[test]
fn recovery_reads_every_kind_of_unfinished_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    std::fs::write(&path, unfinished_journal()).unwrap();
    let state = recovery::load(&Connection::open(&path).unwrap(), &path).unwrap();
    assert_eq!(state.items.len(), 3);
    assert_eq!(state.rotations.len(), 1);
    assert_eq!(
        state.rotations[0].step,
        crate::record::RotationStep::Handoff
    );
    let compacting: Vec<_> = state.sessions.iter().map(|s| (s.id.0, s.phase)).collect();
    assert_eq!(compacting, [(1, Phase::Rotating), (3, Phase::Compacting)]);
    assert!(state.sessions[1].compacting_from.is_some());
    assert_eq!(state.unreleased, [SessionId(4)]);
}

/// Any SQLite value, extremes and control characters weighted in.
fn any_sql_value() -> impl proptest::strategy::Strategy<Value = rusqlite::types::Value> {
    use proptest::prelude::*;
    use rusqlite::types::Value;
    prop_oneof![
        Just(Value::Null),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), any::<i64>()]
            .prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        prop_oneof![
            any::<String>(),
            Just("\u{1b}[2J{\"rotation\":1}".to_string()),
            Just("Compacting".to_string()),
            Just("queued".to_string()),
            Just("spawned".to_string()),
        ]
        .prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// A restarting supervisor reads what a damaged journal holds as a typed error naming the
    /// row, or as the row (when the damage still reads), never a panic.
    #[test]
    fn recovery_from_a_damaged_row_names_its_table_or_reads_it(
        table in 0..3usize,
        column in 0..16usize,
        value in any_sql_value(),
    ) {
        let table = ["work_items", "sessions", "rotations"][table];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        std::fs::write(&path, unfinished_journal_bytes()).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA ignore_check_constraints = ON").unwrap();
        let columns: Vec<String> = conn
            .prepare(&format!("SELECT * FROM {table}"))
            .unwrap()
            .column_names()
            .map(str::to_owned)
            .collect();
        let name = &columns[column % columns.len()];
        // SQLite may refuse the damage (a NULL in a NOT NULL column): then nothing changed.
        let _ = conn.execute(&format!("UPDATE {table} SET {name} = ?1"), [value]);
        match recovery::load(&conn, &path) {
            Ok(_) => {}
            Err(JournalError::BadRow { table: bad, .. }) => proptest::prop_assert_eq!(bad, table),
            Err(e) => proptest::prop_assert!(false, "{table}.{name}: {e}"),
        }
    }
}

/// [`unfinished_journal`], made once.
fn unfinished_journal_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(unfinished_journal)
}

fn each_commit_s_duration_and_size_reach_the_observer_and_the_stats(store: &TestStore) {
    let j = store.open();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    j.on_commit(move |took, records| sink.lock().unwrap().push((took, records)));
    let before = j.stats();
    for w in rotation_steps() {
        send(&j, w);
        sync(&j);
    }
    let after = j.stats();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, after.commits - before.commits);
    assert_eq!(
        seen.iter().map(|(_, n)| *n as u64).sum::<u64>(),
        after.records - before.records
    );
    assert_eq!(
        seen.iter().map(|(d, _)| *d).sum::<Duration>(),
        after.commit_time - before.commit_time
    );
    assert_eq!(
        seen.len(),
        rotation_steps().len(),
        "one commit per synced record"
    );
}

on_both_stores!(
    records_sent_together_share_one_commit,
    each_rotation_step_applied_twice_changes_nothing_the_second_time,
    a_done_rotation_whose_record_a_crash_kept_out_of_the_log_is_left_for_recovery_to_publish,
    a_delivered_event_is_numbered_by_its_row_in_the_log,
    a_rotation_is_recorded_step_by_step,
    a_record_that_fails_alone_is_dropped_without_its_batch,
    filters_narrow_every_listing,
    the_hook_sees_each_commit_before_its_waiters_are_answered,
    an_abandoned_spawn_is_recorded_closed_and_its_key_is_no_longer_pending,
    a_failed_rotation_requeues_its_item_with_its_handoff_in_the_same_transaction,
    each_commit_s_duration_and_size_reach_the_observer_and_the_stats,
);

/// What only the PostgreSQL store does: fencing, ownership and adoption, `seq` order across
/// writers, the schema shared by nodes, and the password kept out of every message.
mod postgres_only {
    use super::*;
    use crate::journal::test_store::TestDb;

    /// A PostgreSQL journal without an epoch (a single host), on `db`.
    fn single_host(db: &TestDb) -> Journal {
        Journal::open_postgres(&db.url, JournalOptions::default(), PgOptions::default()).unwrap()
    }

    /// A node joins: its row in `baton_nodes` and its epoch (the schema must exist).
    fn join(db: &TestDb, name: &str) -> Epoch {
        let row = db
            .client()
            .query_one(
                "INSERT INTO baton_nodes (epoch, name, lease_until, started_at)
                 VALUES (nextval('baton_epochs'), $1, 0, 0) RETURNING epoch",
                &[&name],
            )
            .unwrap();
        Epoch(row.get(0))
    }

    /// A node's journal.
    fn node(db: &TestDb, epoch: Epoch) -> Journal {
        Journal::open_postgres(
            &db.url,
            JournalOptions::default(),
            PgOptions { epoch: Some(epoch) },
        )
        .unwrap()
    }

    /// `(table, id, owner)` of every owned row, in order.
    fn owners(db: &TestDb) -> Vec<(String, i64, Option<i64>)> {
        let mut c = db.client();
        let mut out = Vec::new();
        for table in ["work_items", "sessions", "rotations"] {
            for r in c
                .query(&format!("SELECT id, owner FROM {table} ORDER BY id"), &[])
                .unwrap()
            {
                out.push((table.to_string(), r.get(0), r.get(1)));
            }
        }
        out
    }

    /// The parts of a recovery state a supervisor acts on, comparable.
    fn comparable(s: &recovery::RecoveryState) -> String {
        let items: Vec<_> = s
            .items
            .iter()
            .filter(|i| {
                !matches!(
                    i.place,
                    recovery::StoredPlace::Done | recovery::StoredPlace::Dead
                )
            })
            .collect();
        format!(
            "{items:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            s.rotations, s.sessions, s.unreleased, s.unannounced
        )
    }

    /// Unfinished work of every kind, and finished work beside it: item 7 rotating at its
    /// handoff, item 8 live and compacting, item 9's abandoned spawn (closed, not released),
    /// item 10 done with its session closed and released, item 11 queued.
    fn unfinished_work(j: &Journal) {
        for w in rotation_steps().into_iter().take(8) {
            send(j, w);
        }
        send(j, Write::Op(Op::Submitted(item(8))));
        send(j, Write::Event(started(3, 8)));
        send(
            j,
            Write::Event(transition(3, 1, Phase::Normal, Phase::Compacting, 850)),
        );
        send(j, Write::Op(Op::Submitted(item(9))));
        send(
            j,
            Write::Op(Op::SpawnAbandoned {
                work_item: WorkItemId(9),
                session: SessionId(4),
            }),
        );
        send(j, Write::Op(Op::Submitted(item(10))));
        send(j, Write::Event(started(5, 10)));
        send(
            j,
            Write::Event(transition(5, 1, Phase::Normal, Phase::Closed, 100)),
        );
        send(
            j,
            Write::Event(FleetEvent::WorkItemDone {
                work_item: WorkItemId(10),
                session: SessionId(5),
            }),
        );
        send(
            j,
            Write::Op(Op::Released {
                session: SessionId(5),
            }),
        );
        send(j, Write::Op(Op::Submitted(item(11))));
        sync(j);
    }

    #[test]
    fn a_node_whose_row_is_gone_is_fenced_and_its_journal_fails() {
        let Some(db) = TestDb::create() else { return };
        drop(single_host(&db));
        let epoch = join(&db, "a");
        let j = node(&db, epoch);
        block(j.commit(Op::Submitted(item(1)))).unwrap();
        assert_eq!(
            owners(&db),
            [("work_items".to_string(), 1, Some(epoch.0))],
            "rows the node creates are its own"
        );
        // Another connection removes the node's row, as the sweeper does.
        db.client()
            .execute("DELETE FROM baton_nodes WHERE epoch = $1", &[&epoch.0])
            .unwrap();
        let refused = block(j.commit(Op::Submitted(item(2)))).unwrap_err();
        assert_eq!(refused, JournalError::Fenced { epoch: epoch.0 });
        assert_eq!(j.failure(), Some(refused.clone()));
        let later = block(j.commit(Op::Submitted(item(3)))).unwrap_err();
        assert_eq!(later, JournalError::Failed(Box::new(refused)));
        let ids: Vec<i64> = owners(&db).iter().map(|(_, id, _)| *id).collect();
        assert_eq!(ids, [1], "nothing written after the fence");
    }

    #[test]
    fn recovery_with_an_epoch_reads_only_its_rows_and_numbers_rotations_from_it() {
        let Some(db) = TestDb::create() else { return };
        drop(single_host(&db));
        let a = join(&db, "a");
        let ja = node(&db, a);
        unfinished_work(&ja);
        let b = join(&db, "b");
        let jb = node(&db, b);
        let fresh = jb.read_blocking(recovery::load).unwrap();
        assert!(fresh.is_empty(), "a new epoch recovers nothing");
        assert_eq!(fresh.last_rotation, (b.0 as u64) << 32);
        let own = ja.read_blocking(recovery::load).unwrap();
        assert_eq!(own.rotations.len(), 1);
        assert_eq!(
            own.last_rotation,
            (a.0 as u64) << 32,
            "rotation 1 is not in the epoch's range"
        );
        // A single host reads every row.
        let all = single_host(&db).read_blocking(recovery::load).unwrap();
        assert_eq!(comparable(&all), comparable(&own));
        assert_eq!(all.last_rotation, 1);
    }

    #[test]
    fn adopting_moves_exactly_the_unfinished_rows_and_recovers_as_a_restart_would() {
        let Some(db) = TestDb::create() else { return };
        drop(single_host(&db));
        let a = join(&db, "a");
        let ja = node(&db, a);
        unfinished_work(&ja);
        // What a restart of node a would recover.
        let restart = ja.read_blocking(recovery::load).unwrap();
        let b = join(&db, "b");
        let jb = node(&db, b);
        block(jb.commit(Op::Submitted(item(20)))).unwrap();
        let adopted = jb.adopt(a).unwrap();
        assert_eq!(comparable(&adopted.0), comparable(&restart));
        assert_eq!(
            (
                adopted.work_items(),
                adopted.sessions(),
                adopted.rotations()
            ),
            (4, 2, 1)
        );
        let (a, b) = (Some(a.0), Some(b.0));
        assert_eq!(
            owners(&db),
            [
                ("work_items".to_string(), 7, b),
                ("work_items".to_string(), 8, b),
                ("work_items".to_string(), 9, b),
                ("work_items".to_string(), 10, a), // done: stays
                ("work_items".to_string(), 11, b),
                ("work_items".to_string(), 20, b),
                ("sessions".to_string(), 1, b),  // rotating
                ("sessions".to_string(), 3, b),  // live
                ("sessions".to_string(), 4, b),  // closed, not released
                ("sessions".to_string(), 5, a),  // closed and released: stays
                ("rotations".to_string(), 1, b), // at its handoff
            ]
        );
        // Node b restarting now recovers the adopted work and its own.
        let after = jb.read_blocking(recovery::load).unwrap();
        let ids: Vec<u64> = after.items.iter().map(|i| i.item.id.0).collect();
        assert_eq!(ids, [7, 8, 9, 11, 20]);
        assert_eq!(
            format!(
                "{:?}{:?}{:?}",
                after.rotations, after.sessions, after.unreleased
            ),
            format!(
                "{:?}{:?}{:?}",
                restart.rotations, restart.sessions, restart.unreleased
            )
        );
        // The dead node is fenced: its row is gone.
        let refused = block(ja.commit(Op::Submitted(item(30)))).unwrap_err();
        assert_eq!(refused, JournalError::Fenced { epoch: a.unwrap() });
        assert!(jb.failure().is_none());
        // The outbox names each event's writer, and the adoption bounds the dead node's events:
        // every one of them is at or below the adoption's `last_seq`, and b wrote after it.
        block(jb.commit(Op::Submitted(item(21)))).unwrap();
        let mut c = db.client();
        let adoption = c
            .query_one(
                "SELECT by_epoch, last_seq FROM baton_adoptions WHERE dead = $1",
                &[&a],
            )
            .unwrap();
        assert_eq!(adoption.get::<_, i64>(0), b.unwrap());
        let last_seq: i64 = adoption.get(1);
        let owners_by_seq: Vec<(i64, Option<i64>)> = c
            .query("SELECT seq, owner FROM events ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(owners_by_seq.iter().any(|&(_, o)| o == a));
        assert!(
            owners_by_seq
                .iter()
                .all(|&(seq, o)| o != a || seq <= last_seq)
        );
        assert_eq!(
            owners_by_seq.last().map(|&(seq, o)| (seq > last_seq, o)),
            Some((true, b))
        );
    }

    #[test]
    fn only_a_clustered_postgresql_journal_adopts() {
        let memory = Journal::in_memory().unwrap();
        assert!(matches!(
            memory.adopt(Epoch(1)),
            Err(JournalError::NotClustered(_))
        ));
        assert!(memory.failure().is_none());
        let Some(db) = TestDb::create() else { return };
        let j = single_host(&db);
        assert!(matches!(
            j.adopt(Epoch(1)),
            Err(JournalError::NotClustered(_))
        ));
    }

    #[test]
    fn seq_order_is_commit_order_across_writers() {
        let Some(db) = TestDb::create() else { return };
        let writers: Vec<Journal> = (0..2).map(|_| single_host(&db)).collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A reader pages by seq while both write: it must miss nothing.
        let reader = {
            let target = JournalTarget::Postgres(db.url.clone());
            let done = done.clone();
            std::thread::spawn(move || {
                let reader = JournalReader::open_target(&target).unwrap();
                let mut seen = Vec::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let page = reader
                        .view()
                        .events(&Filter {
                            after: seen.last().copied(),
                            ..Filter::default()
                        })
                        .unwrap();
                    seen.extend(page.iter().map(|e| e.seq));
                    if finished {
                        return seen;
                    }
                }
            })
        };
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(w, j)| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for k in 0..300u64 {
                        j.note(Op::Submitted(item(1 + w as u64 * 1000 + k)));
                        if k % 7 == 0 {
                            sync(&j);
                        }
                    }
                    sync(&j);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.join().unwrap();
        let all: Vec<u64> = block(writers[0].read(|v| v.events(&Filter::default())))
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(all.len(), 600);
        assert_eq!(seen, all, "a reader paging by seq saw every row");
    }

    #[test]
    fn nodes_starting_together_create_the_schema_once() {
        let Some(db) = TestDb::create() else { return };
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    Journal::open_postgres(&url, JournalOptions::default(), PgOptions::default())
                        .map(drop)
                })
            })
            .collect();
        for o in opened {
            o.join().unwrap().unwrap();
        }
        let version: i64 = db
            .client()
            .query_one(
                "SELECT value FROM baton_meta WHERE key = 'schema_version'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(version, i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn a_newer_schema_is_refused_by_the_writer_and_the_reader() {
        let Some(db) = TestDb::create() else { return };
        drop(single_host(&db));
        db.client()
            .execute(
                "UPDATE baton_meta SET value = 99 WHERE key = 'schema_version'",
                &[],
            )
            .unwrap();
        let e = Journal::open_postgres(&db.url, JournalOptions::default(), PgOptions::default())
            .unwrap_err();
        assert!(
            matches!(e, JournalError::NewerSchema { found: 99, .. }),
            "{e}"
        );
        let e = JournalReader::open_target(&JournalTarget::Postgres(db.url.clone())).unwrap_err();
        assert!(
            matches!(e, JournalError::NewerSchema { found: 99, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_url_s_password_appears_in_no_display_debug_or_error() {
        let secret = "pa55-w0rd-s3cret";
        let target: JournalTarget = format!(
            "postgres://baton:{secret}@127.0.0.1:1/baton?password={secret}&sslmode=disable"
        )
        .parse()
        .unwrap();
        let shown = [format!("{target}"), format!("{target:?}")];
        for text in &shown {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("baton:***@127.0.0.1:1/baton"), "{text}");
        }
        // Nothing listens on port 1: the error names the place, not the secret.
        let JournalTarget::Postgres(url) = &target else {
            panic!("a URL")
        };
        let e = Journal::open_postgres(url, JournalOptions::default(), PgOptions::default())
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
        // A URL the client refuses.
        let e =
            JournalTarget::parse(&format!("postgresql://baton:{secret}@host:port/db")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
        assert!(
            matches!(JournalTarget::parse("baton.db"), Ok(JournalTarget::File(_))),
            "anything else is a file"
        );
        // Unescaped `/` and `@` in a password, and a URL without one.
        let odd = "s/cr@t";
        let shown = target::redact(&format!("postgres://baton:{odd}@db.example:5432/baton"));
        assert_eq!(shown, "postgres://baton:***@db.example:5432/baton");
        let plain = "postgresql://baton@db.example/baton?sslmode=disable";
        assert_eq!(target::redact(plain), plain);
        // A wrong password, against a real server.
        let Ok(real) = std::env::var("BATON_PG_URL") else {
            return;
        };
        let at = real.rfind('@').unwrap();
        let colon = real[..at].rfind(':').unwrap();
        let wrong = format!("{}{secret}{}", &real[..=colon], &real[at..]);
        let e = Journal::open_postgres(
            &PgUrl::parse(&wrong).unwrap(),
            JournalOptions::default(),
            PgOptions::default(),
        )
        .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains(secret), "{text}");
        assert!(matches!(e, JournalError::Postgres { .. }), "{text}");
    }
}

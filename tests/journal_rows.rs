//! Damaged journal rows, written straight through SQL: wrong types, NULLs, huge and negative
//! numbers, control characters, broken or hostile JSON, unknown states. `JournalReader` and
//! `baton log` must answer with a typed error naming the damaged table (or read the row, when
//! it still makes sense), never panic, and never put a control character on a terminal (tables
//! escape them; JSON Lines write them as `\uXXXX`).

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use baton::journal::{Filter, JournalView};
use baton::{
    CompactionRecord, EventKind, FleetEvent, Journal, JournalError, JournalReader, Phase,
    RotationId, RotationReason, RotationRecord, SessionId, TransitionRecord, Usage, WorkItemId,
};
use proptest::prelude::*;
use rusqlite::types::Value;
use support::cli::{baton, stderr, stdout};

/// The tables, in the order the strategies pick them.
const TABLES: [&str; 5] = [
    "work_items",
    "sessions",
    "rotations",
    "compactions",
    "events",
];

/// A journal with a row in every table, written through the journal itself (a work item
/// row is added by SQL: only a supervisor submits items). Its bytes, made once.
fn base_journal() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        {
            let j = Journal::open(&path).unwrap();
            let usage = |used| Usage::reported(used, 1000).unwrap();
            j.record(&FleetEvent::SessionStarted {
                session: SessionId(1),
                agent_type: "sonnet".into(),
                work_item: WorkItemId(1),
            });
            j.record(&FleetEvent::Transition(TransitionRecord {
                seq: 1,
                session: SessionId(1),
                from: Phase::Normal,
                to: Phase::Compacting,
                cause: EventKind::Usage,
                usage: Some(usage(850)),
                reason: None,
            }));
            j.record(&FleetEvent::Compaction(CompactionRecord {
                session: SessionId(1),
                agent_type: "sonnet".into(),
                work_item: WorkItemId(1),
                before_tokens: 850,
                before_percent: 85.0,
                after_tokens: 450,
                after_percent: 45.0,
                tokens_freed: 400,
                reduction_percent: 47.1,
                within_target: true,
                sufficient: true,
                summary_tokens: 350,
                duration: Duration::from_millis(30),
                success: true,
                error: None,
            }));
            j.record(&FleetEvent::Rotation(RotationRecord {
                rotation: RotationId(1),
                old_session: SessionId(1),
                new_session: None,
                agent_type: "sonnet".into(),
                work_item: WorkItemId(1),
                reason: RotationReason::CompactionBudget,
                before_tokens: 960,
                before_percent: 96.0,
                compactions: 1,
                handoff_tokens: 0,
                handoff_fallback: false,
                attempts: 1,
                duration: Duration::from_millis(12),
                success: false,
                error: Some("budget spent".into()),
            }));
        }
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "INSERT INTO work_items (id, agent_type, text, place, session, attempts, spawns,
                     epoch, queue_seq, handoff, reason, submitted_at, updated_at)
                 VALUES (1, 'sonnet', 'parse the logs', 'live', 1, 0, 1, 1, 1,
                     '{\"text\":\"carry on\",\"tokens\":3,\"fallback\":false}', NULL, 0, 0);",
            )
            .unwrap();
        std::fs::read(&path).unwrap()
    })
}

/// Any SQLite value, extremes weighted in.
fn sql_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(-1i64),
            Just(0i64),
            any::<i64>()
        ]
        .prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        text().prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Blob),
    ]
}

/// Text with control characters and terminal escapes weighted in.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("\u{1b}]0;pwned\u{7}\u{1b}[2J".to_string()),
        Just("\u{9b}31m\u{202e}".to_string()),
        // The names of states, so that some damaged rows still read.
        prop::sample::select(vec![
            "queued",
            "live",
            "rotating",
            "done",
            "dead",
            "closed",
            "Normal",
            "Compacting",
            "intent",
            "spawned",
            "failed",
            "threshold",
            "manual",
            "lost",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Any JSON scalar, extremes weighted in.
fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(u64::MAX)),
        any::<f64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(1e300)),
        text().prop_map(serde_json::Value::from),
    ]
}

/// What happens to one column of the row.
#[derive(Debug, Clone)]
enum Damage {
    /// Replaced by this value.
    Value(Value),
    /// Its JSON kept, with these leaves (in document order) replaced.
    Leaves(Vec<Option<serde_json::Value>>),
    /// Its JSON cut to this many bytes.
    Truncated(usize),
}

fn damage() -> impl Strategy<Value = Option<Damage>> {
    prop::option::weighted(
        0.3,
        prop_oneof![
            2 => sql_value().prop_map(Damage::Value),
            2 => prop::collection::vec(prop::option::weighted(0.3, json_scalar()), 24)
                .prop_map(Damage::Leaves),
            1 => (0usize..200).prop_map(Damage::Truncated),
        ],
    )
}

/// Replaces the leaves of `v` in document order, taking one from `with` per leaf.
fn replace_leaves(
    v: &mut serde_json::Value,
    with: &mut impl Iterator<Item = Option<serde_json::Value>>,
) {
    match v {
        serde_json::Value::Object(m) => m.values_mut().for_each(|v| replace_leaves(v, with)),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| replace_leaves(v, with)),
        leaf => {
            if let Some(Some(new)) = with.next() {
                *leaf = new;
            }
        }
    }
}

fn apply(value: Value, damage: &Damage) -> Value {
    match (damage, value) {
        (Damage::Value(v), _) => v.clone(),
        (Damage::Leaves(leaves), Value::Text(t)) => match serde_json::from_str(&t) {
            Ok(mut json) => {
                replace_leaves(&mut json, &mut leaves.iter().cloned());
                Value::Text(json.to_string())
            }
            Err(_) => Value::Text(t),
        },
        (Damage::Truncated(n), Value::Text(t)) => {
            let cut = (0..=(*n).min(t.len()))
                .rev()
                .find(|i| t.is_char_boundary(*i))
                .unwrap_or(0);
            Value::Text(t[..cut].to_owned())
        }
        (_, v) => v,
    }
}

/// A copy of the base journal in a new directory, with the first row of `table` damaged
/// (written back whole, the schema's CHECK constraints off). A damage SQLite itself refuses
/// (a NULL where the schema says NOT NULL) leaves that row as it was.
fn damaged_journal(table: &str, damages: &[Option<Damage>]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    std::fs::write(&path, base_journal()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} LIMIT 1"))
        .unwrap();
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let row: Vec<Value> = stmt
        .query_row([], |r| {
            (0..columns.len()).map(|i| r.get::<_, Value>(i)).collect()
        })
        .unwrap();
    drop(stmt);
    let values: Vec<Value> = row
        .into_iter()
        .zip(damages.iter().chain(std::iter::repeat(&None)))
        .map(|(v, d)| match d {
            Some(d) => apply(v, d),
            None => v,
        })
        .collect();
    let placeholders = vec!["?"; columns.len()].join(", ");
    // The first column is the row's id: replacing the row keeps one row per table.
    let _refused_by_sqlite = conn.execute(
        &format!(
            "INSERT OR REPLACE INTO {table} ({}) VALUES ({placeholders})",
            columns.join(", ")
        ),
        rusqlite::params_from_iter(values),
    );
    drop(conn);
    // Back to the state a closed journal has: no WAL beside it.
    assert!(!Path::new(&format!("{}-wal", path.display())).exists());
    (dir, path)
}

/// Every listing, with no filter and with each filter that joins other tables.
fn listings(v: &JournalView<'_>) -> Vec<(&'static str, Result<usize, JournalError>)> {
    let filters = [
        Filter::default(),
        Filter {
            session: Some(SessionId(1)),
            agent_type: Some("sonnet".into()),
            reason: Some(RotationReason::CompactionBudget),
            limit: Some(1),
            ..Filter::default()
        },
    ];
    let mut out = Vec::new();
    for f in &filters {
        out.push(("work_items", v.work_items(f).map(|r| r.len())));
        out.push(("sessions", v.sessions(f).map(|r| r.len())));
        out.push(("rotations", v.rotations(f).map(|r| r.len())));
        out.push(("compactions", v.compactions(f).map(|r| r.len())));
        out.push(("events", v.events(f).map(|r| r.len())));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_row_is_read_or_refused_naming_its_table_and_every_other_table_still_reads(
        table in 0..TABLES.len(),
        damages in prop::collection::vec(damage(), 16),
    ) {
        let table = TABLES[table];
        let (_dir, path) = damaged_journal(table, &damages);
        let reader = JournalReader::open(&path).unwrap();
        for (listed, result) in listings(&reader.view()) {
            match result {
                Ok(_) => {}
                Err(JournalError::BadRow { table: bad, .. }) if bad == table && listed == table => {}
                Err(e) => prop_assert!(false, "{listed} with {table} damaged: {e}"),
            }
        }
    }
}

proptest! {
    // Each case runs the binary six times.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn baton_log_on_a_damaged_row_lists_or_fails_naming_it_and_prints_no_control_character(
        table in 0..TABLES.len(),
        damages in prop::collection::vec(damage(), 16),
    ) {
        let table = TABLES[table];
        let (_dir, path) = damaged_journal(table, &damages);
        let path = path.to_str().unwrap();
        for args in [
            &["rotations"][..],
            &["sessions"],
            &["compactions"],
            &["items"],
            &["events"],
            &["--export"],
        ] {
            let o = baton(&[&["log", path][..], args].concat());
            let (out, err) = (stdout(&o), stderr(&o));
            match o.status.code() {
                Some(0) => {
                    prop_assert!(
                        !out.chars().any(|c| c.is_control() && c != '\n'),
                        "{args:?}: {out:?}"
                    );
                    if args == ["--export"] {
                        for line in out.lines() {
                            prop_assert!(
                                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                                "{line}"
                            );
                        }
                    }
                }
                Some(1) => {
                    let error = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
                    prop_assert!(
                        error.contains(&format!("bad row in the journal: {table} row ")),
                        "{args:?} with {table} damaged: {err}"
                    );
                    prop_assert!(!error.chars().any(char::is_control), "{error:?}");
                    prop_assert!(out.is_empty(), "no half listing: {out}");
                }
                other => prop_assert!(false, "{args:?}: exit {other:?}: {err}"),
            }
        }
    }
}

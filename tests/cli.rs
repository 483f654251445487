//! The `baton` command line, run as a user would.

use std::path::Path;

#[path = "support/cli.rs"]
mod cli;

use cli::{baton, stderr, stdout};

const SERIES: &str = "tests/data/deepseek-pydicom-901.jsonl";

#[test]
fn replay_prints_a_table() {
    let o = baton(&["replay", SERIES, "--window", "8192"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("61 calls, window 8192 tokens"), "{out}");
    assert!(out.contains("compaction_budget -> session 2"), "{out}");
    assert!(out.contains("sessions 2, compactions 5"), "{out}");
}

#[test]
fn replay_json_has_the_documented_shape() {
    let o = baton(&["replay", SERIES, SERIES, "--window", "8192", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one object per trace");
    let r = &lines[0];
    assert_eq!(r["trace"], "deepseek-pydicom-901.jsonl");
    assert_eq!(r["calls"], 61);
    assert_eq!(r["window"], 8192);
    let events = r["events"].as_array().unwrap();
    assert_eq!(events[0]["call"], 10);
    assert_eq!(events[0]["kind"], "compaction");
    assert_eq!(events[0]["session"], 1);
    assert!(events[0]["reduction"].as_f64().unwrap() > 0.4);
    assert!(events[0].get("reason").is_none());
    let rot = events.iter().find(|e| e["kind"] == "rotation").unwrap();
    assert_eq!(rot["reason"], "compaction_budget");
    assert_eq!(rot["successor"], 2);
    assert_eq!(r["totals"]["rotations"], 1);
}

#[test]
fn policy_flags_reach_the_policy() {
    let o = baton(&[
        "replay",
        SERIES,
        "--window",
        "8192",
        "--json",
        "--max-compactions",
        "0",
    ]);
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["totals"]["compactions"], 0);
    let o = baton(&["replay", SERIES, "--window", "8192", "--compact-at", "0.97"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("compact_at (0.97) must be below rotate_at (0.95)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn errors_name_the_file_and_exit_non_zero() {
    let o = baton(&["replay", "no/such/trace.json", "--window", "100"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no/such/trace.json: cannot read"),
        "{}",
        stderr(&o)
    );

    let o = baton(&["replay", SERIES]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--window"), "{}", stderr(&o));

    let o = baton(&["replay", "Cargo.toml", "--window", "100"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Cargo.toml: unknown trace format"),
        "{}",
        stderr(&o)
    );

    let o = baton(&["replay", SERIES, "--window", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--window"), "{}", stderr(&o));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(SERIES).exists());
}

#[test]
fn help_explains_the_replay_model() {
    let o = baton(&["replay", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("--summary-tokens") && out.contains("base + S"),
        "{out}"
    );
}

#[test]
fn simulate_prints_a_reproducible_report() {
    let args = [
        "simulate",
        "--sessions",
        "60",
        "--work-items",
        "120",
        "--turns",
        "10..40",
        "--json",
    ];
    let a = baton(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    let r: serde_json::Value = serde_json::from_str(stdout(&a).trim()).unwrap();
    assert_eq!(r["work_items"], 120);
    assert_eq!(
        r["done"].as_u64().unwrap() + r["dead_letters"].as_u64().unwrap(),
        120
    );
    assert!(r["compactions"]["count"].as_u64().unwrap() > 0);
    let b: serde_json::Value = serde_json::from_str(stdout(&baton(&args)).trim()).unwrap();
    for key in [
        "done",
        "dead_letters",
        "sessions_started",
        "compactions",
        "rotations",
        "usage_messages",
    ] {
        assert_eq!(
            r[key], b[key],
            "{key} differs between two runs with the same seed"
        );
    }
    let table = baton(&[
        "simulate",
        "--sessions",
        "20",
        "--work-items",
        "20",
        "--turns",
        "5..10",
    ]);
    assert!(table.status.success());
    assert!(
        stdout(&table).contains("work items done"),
        "{}",
        stdout(&table)
    );
}

#[test]
fn simulate_rejects_bad_flags() {
    for (args, want) in [
        (&["simulate", "--agent-types", "sonnet"][..], "NAME:WINDOW"),
        (
            &["simulate", "--agent-types", "sonnet:0"][..],
            "window of at least 1",
        ),
        (&["simulate", "--turns", "9..3"][..], "MIN <= MAX"),
        (&["simulate", "--failure-rate", "1.5"][..], "failure rate"),
        (
            &["simulate", "--compact-at", "0.99"][..],
            "must be below rotate_at",
        ),
        (&["simulate", "--duration", "soon"][..], "soon"),
    ] {
        let o = baton(args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
}

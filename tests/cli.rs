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

/// Replays the series with a window of 8,192 tokens and `extra` flags, as JSON; the run must
/// succeed.
fn replay_json(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["replay", SERIES, "--window", "8192", "--json"];
    args.extend_from_slice(extra);
    let o = baton(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

/// The first call's prompt_tokens in the series: the base every compaction falls back to.
fn series_base() -> u64 {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SERIES)).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["prompt_tokens"].as_u64().unwrap()
}

#[test]
fn policy_flags_reach_the_policy() {
    let r = replay_json(&["--max-compactions", "0"]);
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
fn rotate_at_flag_moves_the_rotation() {
    let default = replay_json(&[]);
    let first = &default["events"][0];
    assert_eq!(first["kind"], "compaction", "{default}");
    // The first compaction happened at 82.5% (6,755 tokens): a rotate_at below that turns it
    // into a threshold rotation at the same call.
    let r = replay_json(&["--rotate-at", "0.82"]);
    let e = &r["events"][0];
    assert_eq!(e["call"], first["call"]);
    assert_eq!(e["kind"], "rotation", "{r}");
    assert_eq!(e["reason"], "threshold");
    assert_eq!(e["before"], first["before"]);
}

#[test]
fn min_reduction_flag_makes_a_compaction_insufficient() {
    let default = replay_json(&[]);
    let first = &default["events"][0];
    let freed = first["reduction"].as_f64().unwrap();
    assert!(freed < 0.6, "{default}");
    // Asking for more than the first compaction freed: it is measured, then the session
    // rotates at the same call.
    let r = replay_json(&["--min-reduction", "0.6"]);
    let events = r["events"].as_array().unwrap();
    assert_eq!(events[0]["kind"], "compaction", "{r}");
    assert_eq!(events[0]["call"], first["call"]);
    assert_eq!(events[1]["kind"], "rotation", "{r}");
    assert_eq!(events[1]["call"], first["call"]);
    assert_eq!(events[1]["reason"], "insufficient_compaction");
}

#[test]
fn summary_tokens_flag_sets_the_size_after_a_compaction() {
    let base = series_base();
    let default = replay_json(&[]);
    assert_eq!(default["events"][0]["after"], base + 2000, "{default}");
    let r = replay_json(&["--summary-tokens", "500"]);
    let e = &r["events"][0];
    assert_eq!(e["kind"], "compaction", "{r}");
    assert_eq!(e["after"], base + 500);
}

#[test]
fn errors_name_the_file_and_exit_non_zero() {
    let o = baton(&["replay", "no/such/trace.json", "--window", "8192"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no/such/trace.json: cannot read"),
        "{}",
        stderr(&o)
    );

    let o = baton(&["replay", SERIES]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--window"), "{}", stderr(&o));

    let o = baton(&["replay", "Cargo.toml", "--window", "8192"]);
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
    assert!(stdout(&table).contains("work items"), "{}", stdout(&table));
}

#[test]
fn simulate_rejects_bad_flags() {
    for (args, want) in [
        (&["simulate", "--agent-types", "sonnet"][..], "NAME:WINDOW"),
        (
            &["simulate", "--agent-types", "sonnet:0"][..],
            "window of 1 to 4294967295 tokens",
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

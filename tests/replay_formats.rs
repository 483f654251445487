//! `baton replay` over every trace format, and `--chart`, run as a user would.

#[path = "support/cli.rs"]
mod cli;

use cli::{baton, stderr, stdout};

/// Every sample format in one command line: one report per trace (the OpenHands output file
/// holds two instances with usage), each with the documented JSON shape.
#[test]
fn replay_reads_every_format_in_one_run() {
    let o = baton(&[
        "replay",
        "tests/data/traces/openhands-events.json",
        "tests/data/traces/openhands-output.jsonl",
        "tests/data/traces/codex-rollout.jsonl",
        "tests/data/traces/claude-code.jsonl",
        "tests/data/traces/swe-agent.traj",
        "tests/data/deepseek-pydicom-901.jsonl",
        "--window",
        "8192",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reports: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["trace"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "openhands-events.json",
            "sample__repo-1",
            "sample__repo-2",
            "codex-rollout.jsonl",
            "claude-code.jsonl",
            "swe-agent.traj",
            "deepseek-pydicom-901.jsonl"
        ]
    );
    for r in &reports {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "calls",
                "events",
                "model",
                "source",
                "totals",
                "trace",
                "untrusted",
                "window",
                "window_source"
            ],
            "{r}"
        );
        assert_eq!(r["window_source"], "user", "--window always wins");
        // SWE-agent records totals only: baton counted its figures itself.
        let want = if r["trace"] == "swe-agent.traj" {
            "estimated"
        } else {
            "reported"
        };
        assert_eq!(r["source"], want, "{r}");
        assert_eq!(r["totals"]["untrusted_figures"], 0, "{r}");
    }
    let models: Vec<&serde_json::Value> = reports.iter().map(|r| &r["model"]).collect();
    assert_eq!(models[0], "claude-sample", "OpenHands model_response.model");
    assert_eq!(models[1], "sample-model", "OpenHands llm_config.model");
    assert_eq!(models[3], "gpt-5-codex", "Codex turn_context");
    assert_eq!(models[4], "claude-sonnet-4-5", "Claude Code message.model");
    assert!(models[6].is_null(), "a plain series names no model");
    // The Claude Code session's prompts (15k tokens and up) are past 95% of an 8k window.
    let claude = &reports[4];
    assert_eq!(claude["events"][0]["kind"], "rotation");
}

/// Without --window, a trace that records its own window (Codex) is replayed against it.
#[test]
fn a_recorded_window_is_used_when_none_is_given() {
    let o = baton(&["replay", "tests/data/traces/codex-rollout.jsonl", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["window"], 272_000);
}

/// Without --window, a trace that records no window but names a well-known model (Claude Code's
/// `message.model`) is replayed against baton's table for that model, and says so.
#[test]
fn a_known_model_gives_the_window_when_the_trace_has_none() {
    let path = "tests/data/traces/claude-code.jsonl";
    let o = baton(&["replay", path, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let table = baton::provider::known_window("claude-sonnet-4-5").unwrap();
    assert_eq!(r["model"], "claude-sonnet-4-5");
    assert_eq!(r["window"], table.tokens);
    assert_eq!(r["window_source"], "known_model");
    let o = baton(&["replay", path]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("baton's table for claude-sonnet-4-5"),
        "{}",
        stdout(&o)
    );
    // The user's window still wins.
    let o = baton(&["replay", path, "--window", "8192", "--json"]);
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (r["window"].as_u64(), &r["window_source"]),
        (Some(8192), &"user".into())
    );
}

/// The CSV sample records an Ollama cache hit (prompt_tokens 0) at call 3: the replay flags it
/// in the table and in --json, and still replays the figures as recorded.
#[test]
fn an_untrustworthy_figure_is_flagged_in_the_table_and_the_json() {
    let path = "tests/data/traces/series.csv";
    let o = baton(&["replay", path, "--window", "4096", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["totals"]["untrusted_figures"], 1, "{r}");
    assert_eq!(r["untrusted"][0]["call"], 3);
    assert_eq!(r["untrusted"][0]["why"]["kind"], "zero_prompt");
    assert_eq!(r["calls"], 4);
    let o = baton(&["replay", path, "--window", "4096"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("warning: 1 untrustworthy figure(s), first at call 3 (prompt_tokens 0)"),
        "{out}"
    );
}

/// The own-made mini-swe-agent sample replays end to end and names its model.
#[test]
fn the_mini_swe_agent_sample_replays() {
    let o = baton(&[
        "replay",
        "tests/data/traces/mini-swe-agent.traj.json",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["trace"], "sample__repo-901");
    assert_eq!(r["calls"], 3);
    assert_eq!(r["model"], "deepseek-chat");
    assert_eq!(r["window_source"], "known_model");
    assert_eq!(r["source"], "reported");
}

/// `--chart` writes one SVG with a panel per trace: the context line, both thresholds, and a
/// marker per compaction (circle) and rotation (triangle).
#[test]
fn chart_draws_each_trace_with_thresholds_and_event_markers() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("replay.svg");
    let o = baton(&[
        "replay",
        "tests/data/deepseek-pydicom-901.jsonl",
        "tests/data/traces/openhands-events.json",
        "--window",
        "8192",
        "--chart",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "an SVG document");
    for label in [
        "deepseek-pydicom-901.jsonl: 61 calls, window 8,192, 5 compactions, 1 rotation",
        "openhands-events.json: 3 calls, window 8,192, 0 compactions, 0 rotations",
        "compact at 80%",
        "rotate at 95%",
        "modelled context",
    ] {
        assert!(text.contains(label), "missing {label:?}");
    }
    // Five compaction markers plus one in each panel's legend; one rotation triangle plus two
    // legend triangles.
    assert_eq!(text.matches("<circle").count(), 5 + 2);
    let triangles = text.matches("<polygon").count();
    assert_eq!(triangles, 1 + 2, "rotation markers");
}

#[test]
fn chart_to_an_unwritable_path_is_an_error() {
    let o = baton(&[
        "replay",
        "tests/data/deepseek-pydicom-901.jsonl",
        "--window",
        "8192",
        "--chart",
        "/nonexistent/dir/chart.svg",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("chart"), "{}", stderr(&o));
}

/// The per-call series behind the chart agrees with the report: one entry per call, a drop
/// exactly at the calls with events, and the context that triggered each event.
#[test]
fn modelled_series_matches_the_report() {
    use baton::replay::{ReplayOptions, replay, replay_with_series};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/deepseek-pydicom-901.jsonl");
    let t = &baton::trace::read_path(&path).unwrap()[0];
    let opts = ReplayOptions {
        window: Some(8192),
        ..ReplayOptions::default()
    };
    let (report, series) = replay_with_series(t, &opts).unwrap();
    assert_eq!(report, replay(t, &opts).unwrap(), "same report as replay()");
    assert_eq!(series.len(), t.calls.len());
    assert!(series.iter().enumerate().all(|(i, c)| c.call == i + 1));
    let dropped: Vec<usize> = series
        .iter()
        .filter(|c| c.after.is_some())
        .map(|c| c.call)
        .collect();
    let mut event_calls: Vec<usize> = report.events.iter().map(|e| e.call).collect();
    event_calls.dedup();
    assert_eq!(dropped, event_calls);
    for e in &report.events {
        let c = &series[e.call - 1];
        assert_eq!(
            (c.used, c.after, c.session),
            (e.before, Some(e.after), e.session)
        );
    }
    assert_eq!(
        series.iter().map(|c| c.used).max(),
        Some(report.totals.peak_used)
    );
    // Before the first event the series is the trace itself.
    assert_eq!(series[0].used, t.calls[0].context());
}

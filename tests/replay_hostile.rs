//! `baton replay` against hostile input, run as a user would: an endless file, escape sequences
//! in a trace's names, and a chart aimed at its own trace. Memory is asserted from the child's
//! peak resident size (the kernel's high-water mark, `VmHWM`), not from timing.

use std::io::Write;
use std::path::Path;

#[path = "support/cli.rs"]
mod cli;

use cli::{baton, baton_measured, stderr, stdout};

const MIB: u64 = 1 << 20;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `replay /dev/zero` used to reach 6.4 GB in 10 s. Now it stops at the cap (256 MiB by
/// default, lower when asked) with an error that says how to raise it, its memory bounded by
/// the cap.
#[test]
fn an_endless_trace_is_refused_at_the_cap_with_bounded_memory() {
    let m = baton_measured(
        &args(&[
            "replay",
            "/dev/zero",
            "--window",
            "8192",
            "--max-trace-bytes",
            "8388608",
        ]),
        None,
        &[],
    );
    let err = stderr(&m.output);
    assert_eq!(m.output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "/dev/zero: larger than the 8388608-byte limit; raise it with --max-trace-bytes"
        ),
        "{err}"
    );
    assert!(
        m.peak_rss_bytes < 64 * MIB,
        "peak {} MiB",
        m.peak_rss_bytes / MIB
    );

    let m = baton_measured(
        &args(&["replay", "/dev/zero", "--window", "8192"]),
        None,
        &[],
    );
    assert_eq!(m.output.status.code(), Some(1));
    assert!(
        stderr(&m.output).contains("268435456-byte limit"),
        "{}",
        stderr(&m.output)
    );
    assert!(
        m.peak_rss_bytes < 640 * MIB,
        "peak {} MiB",
        m.peak_rss_bytes / MIB
    );
}

/// An endless standard input is capped the same way.
#[test]
fn an_endless_standard_input_is_refused_at_the_cap() {
    let m = baton_measured(
        &args(&[
            "replay",
            "-",
            "--window",
            "8192",
            "--max-trace-bytes",
            "1048576",
        ]),
        Some(vec![b' '; 3 << 20]),
        &[],
    );
    assert_eq!(m.output.status.code(), Some(1));
    assert!(
        stderr(&m.output).contains("-: larger than the 1048576-byte limit"),
        "{}",
        stderr(&m.output)
    );
    assert!(
        m.peak_rss_bytes < 64 * MIB,
        "peak {} MiB",
        m.peak_rss_bytes / MIB
    );
}

/// An OpenHands instance whose id sets the window title and clears the screen, and whose model
/// name carries a C1 control, with a zero prompt (a warning naming the trace) and no window.
fn hostile_instance(with_window: bool) -> String {
    let window = if with_window {
        ", \"context_window\": 100000"
    } else {
        ""
    };
    format!(
        "{{\"instance_id\": \"evil\\u001b]0;pwned\\u0007\\u001b[2J\\u009b31m\", \"metadata\": {{\"llm_config\": {{\"model\": \"m\\u001b[5m\\u009b\"}}}}, \"history\": [], \"metrics\": {{\"token_usages\": [{{\"prompt_tokens\": 1000, \"completion_tokens\": 5{window}}}, {{\"prompt_tokens\": 0, \"completion_tokens\": 5{window}}}]}}}}\n"
    )
}

/// No byte of a terminal control sequence reaches stdout or stderr raw.
fn assert_inert(what: &str, text: &str) {
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{9b}') && !text.contains('\u{7}'),
        "{what} carries raw control characters: {text:?}"
    );
}

#[test]
fn escape_sequences_in_a_traces_names_are_escaped_in_tables_logs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("output.jsonl");
    std::fs::write(&path, hostile_instance(true)).unwrap();
    let p = path.to_str().unwrap();

    // The table and the warning about the zero prompt, which name the trace.
    let o = baton(&["replay", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_inert("the table", &stdout(&o));
    assert_inert("the log", &stderr(&o));
    assert!(
        stdout(&o).contains("evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("untrustworthy"), "{}", stderr(&o));

    // JSON escapes them its own way, and stays exact for programs.
    let o = baton(&["replay", p, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_inert("the JSON", &stdout(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["trace"], "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m");
    assert_eq!(r["model"], "m\u{1b}[5m\u{9b}");

    // An error naming the trace and its model (no window known for it).
    std::fs::write(&path, hostile_instance(false)).unwrap();
    let o = baton(&["replay", p]);
    assert_eq!(o.status.code(), Some(1));
    assert_inert("the error", &stderr(&o));
    assert!(
        stderr(&o).contains("does not record its context window"),
        "{}",
        stderr(&o)
    );
}

/// `baton replay T --chart T` used to replace the trace with an SVG. Now it is refused (by
/// inode: a hard link is caught too), the trace is left whole, and a chart elsewhere is written
/// whole with no temporary file left beside it.
#[test]
fn a_chart_over_its_own_trace_is_refused_and_the_trace_kept() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let original = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/deepseek-pydicom-901.jsonl"),
    )
    .unwrap();
    std::fs::write(&trace, &original).unwrap();
    let alias = dir.path().join("alias.svg");
    std::fs::hard_link(&trace, &alias).unwrap();
    for target in [&trace, &alias] {
        let o = baton(&[
            "replay",
            trace.to_str().unwrap(),
            "--window",
            "8192",
            "--chart",
            target.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("refusing to overwrite an input"),
            "{}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty(), "refused before any work");
        assert_eq!(
            std::fs::read(&trace).unwrap(),
            original,
            "the trace is intact"
        );
    }

    let chart = dir.path().join("chart.svg");
    let o = baton(&[
        "replay",
        trace.to_str().unwrap(),
        "--window",
        "8192",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "a whole SVG"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["alias.svg", "chart.svg", "t.jsonl"],
        "no temporary file left"
    );
    std::io::stdout().flush().unwrap();
}

//! `baton replay` at the edges a user meets: several traces with one missing, standard input,
//! a byte-order mark, a closed pipe, flag errors and their exit code, and log output that is
//! plain text when it is not a terminal.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

#[path = "support/cli.rs"]
mod cli;

use cli::{baton, stderr, stdout};

const SERIES: &str = "tests/data/deepseek-pydicom-901.jsonl";

/// Runs `baton` with `args`, feeding `input` on standard input.
fn baton_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn a_missing_trace_between_good_ones_is_reported_and_the_rest_replayed() {
    let o = baton(&[
        "replay",
        SERIES,
        "no/such.jsonl",
        SERIES,
        "--window",
        "8192",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2, "both good traces reported");
    let err = stderr(&o);
    assert!(err.contains("error: no/such.jsonl: cannot read"), "{err}");
}

#[test]
fn dash_reads_a_trace_from_standard_input() {
    let series = std::fs::read(series_path()).unwrap();
    let o = baton_with_stdin(&["replay", "-", "--window", "8192", "--json"], &series);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (r["trace"].as_str(), r["calls"].as_u64()),
        (Some("stdin"), Some(61))
    );
}

fn series_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SERIES)
}

#[test]
fn a_byte_order_mark_does_not_hide_json_lines() {
    let mut input = "\u{feff}".as_bytes().to_vec();
    input.extend(b"{\"prompt_tokens\": 1000, \"completion_tokens\": 10}\n");
    input.extend(b"{\"prompt_tokens\": 1200, \"completion_tokens\": 10}\n");
    let o = baton_with_stdin(&["replay", "-", "--window", "8192"], &input);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("stdin: 2 calls"), "{}", stdout(&o));
}

#[test]
fn a_closed_standard_output_ends_quietly_with_success() {
    // Enough tables to fill any pipe buffer, read one line of.
    let mut args = vec!["replay"];
    args.extend(std::iter::repeat_n(SERIES, 400));
    args.extend(["--window", "8192"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("61 calls"), "{first}");
    // The reader is gone (dropped above): `| head -1`.
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Broken pipe"), "{}", stderr(&o));
}

#[test]
fn flag_errors_exit_2_and_name_the_flag() {
    for (args, want) in [
        (
            &["replay", SERIES, "--window", "4294967296"][..],
            "--window",
        ),
        (&["replay", SERIES, "--window", "0"][..], "--window"),
        (
            &[
                "replay",
                SERIES,
                "--window",
                "4096",
                "--summary-tokens",
                "4096",
            ][..],
            "--summary-tokens (4096) must be below --window (4096)",
        ),
        (&["replay", SERIES, "--compact-at", "0.99"][..], "rotate_at"),
        (&["replay", SERIES, "--chart", SERIES][..], "--chart"),
        (
            &["replay", SERIES, "--max-trace-bytes", "0"][..],
            "--max-trace-bytes",
        ),
    ] {
        let o = baton(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("call 1"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn an_absurd_figure_is_an_error_as_written() {
    let o = baton_with_stdin(
        &["replay", "-", "--window", "8192"],
        b"prompt_tokens,completion_tokens\n1e300,5\n",
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("prompt_tokens = 1e300 tokens"), "{err}");
    assert!(!err.contains("18446744073709551615"), "{err}");
}

#[test]
fn log_lines_are_plain_text_when_stderr_is_not_a_terminal() {
    // A zero prompt: one warning about untrustworthy figures, at the default level.
    let o = baton_with_stdin(
        &["replay", "-", "--window", "8192"],
        b"prompt_tokens,completion_tokens\n1000,5\n0,5\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("WARN") && err.contains("untrustworthy"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "no ANSI colour: {err:?}");
}

#[test]
fn a_trace_over_a_small_window_warns_once_on_stderr() {
    let mut input = b"prompt_tokens,completion_tokens\n".to_vec();
    for i in 0..20_000 {
        writeln!(input, "{},100", 3000 + i % 7).unwrap();
    }
    let o = baton_with_stdin(&["replay", "-", "--window", "2500"], &input);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{}", &err[..err.len().min(1500)]);
    assert!(
        err.contains("exceeds the window") && err.contains("count=20000"),
        "{err}"
    );
}

#[test]
fn a_trace_over_the_size_limit_is_refused_naming_the_flag() {
    let o = baton(&[
        "replay",
        SERIES,
        "--window",
        "8192",
        "--max-trace-bytes",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("larger than the 1000-byte limit; raise it with --max-trace-bytes"),
        "{}",
        stderr(&o)
    );
}

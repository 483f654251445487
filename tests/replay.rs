//! `baton::replay` over real and hand-made traces: which calls compact and rotate, and why.

mod support;

use std::path::Path;
use std::sync::Arc;

use baton::provider::{Distrust, WindowSource, known_window};
use baton::replay::{ReplayError, ReplayEventKind, ReplayOptions, replay};
use baton::trace::{self, Call, Format, Trace, TraceError};
use baton::{Policy, RotationReason, UsageSource};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn series(calls: &[(u64, u64)]) -> Trace {
    Trace {
        name: "hand-made".into(),
        format: Format::SeriesJsonl,
        calls: calls
            .iter()
            .map(|&(prompt_tokens, completion_tokens)| Call {
                prompt_tokens,
                completion_tokens,
            })
            .collect(),
        window: None,
        model: None,
    }
}

fn opts(window: u64) -> ReplayOptions {
    ReplayOptions {
        window: Some(window),
        ..ReplayOptions::default()
    }
}

fn kinds(r: &baton::replay::ReplayReport) -> Vec<(usize, ReplayEventKind, Option<RotationReason>)> {
    r.events
        .iter()
        .map(|e| (e.call, e.kind, e.reason))
        .collect()
}

/// The committed series is the real DeepSeek trajectory's per-call usage, number for number.
#[test]
fn committed_series_matches_the_real_trajectory() {
    let real = trace::read_path(&data("real/pydicom__pydicom-901.traj.json")).unwrap();
    let ours = trace::read_path(&data("deepseek-pydicom-901.jsonl")).unwrap();
    assert_eq!(real[0].format, Format::MiniSweAgent);
    assert_eq!(real[0].name, "pydicom__pydicom-901");
    assert_eq!(real[0].calls.len(), 61);
    assert_eq!(real[0].calls, ours[0].calls);
}

/// Replaying the real DeepSeek trace at an 8k window: three compactions, each when the modelled
/// context first reaches 80%; then the budget is spent, so the fourth crossing rotates; the
/// successor compacts twice more.
#[test]
fn deepseek_trace_at_8k_compacts_then_rotates_on_budget() {
    let t = &trace::read_path(&data("deepseek-pydicom-901.jsonl")).unwrap()[0];
    let r = replay(t, &opts(8192)).unwrap();
    use ReplayEventKind::*;
    assert_eq!(
        kinds(&r),
        vec![
            (10, Compaction, None),
            (20, Compaction, None),
            (30, Compaction, None),
            (38, Rotation, Some(RotationReason::CompactionBudget)),
            (50, Compaction, None),
            (57, Compaction, None),
        ]
    );
    // Call 10's context is 6,501 + 254; call 9's (6,042 + 341 = 77.9%) stayed below 80%.
    assert_eq!(r.events[0].before, 6755);
    // Every compaction and rotation leaves base + S = 1,560 + 2,000.
    assert!(r.events.iter().all(|e| e.after == 3560));
    assert_eq!(r.events[3].session, 1);
    assert_eq!(r.events[3].successor, Some(2));
    assert_eq!(r.events[4].session, 2);
    assert_eq!(
        (r.totals.sessions, r.totals.compactions, r.totals.rotations),
        (2, 5, 1)
    );
}

/// An independent check of the modelling rule: every event fires at the first call whose
/// modelled context crosses a threshold, and no call in between crosses one.
#[test]
fn events_fire_exactly_where_the_modelled_context_crosses_a_threshold() {
    let t = &trace::read_path(&data("deepseek-pydicom-901.jsonl")).unwrap()[0];
    for window in [6000u64, 8192, 10_000, 12_000, 16_384, 24_000] {
        let r = replay(t, &opts(window)).unwrap();
        let after = t.calls[0].prompt_tokens + 2000;
        let mut anchor: Option<(u64, u64)> = None;
        let mut events = r.events.iter().peekable();
        for (i, c) in t.calls.iter().enumerate() {
            let used = c.context();
            let modelled = anchor.map_or(used, |(k, a)| (used + a).saturating_sub(k));
            let crossing = modelled as f64 / window as f64 >= 0.80;
            let fired = events.peek().is_some_and(|e| e.call == i + 1);
            assert_eq!(
                crossing,
                fired,
                "window {window}, call {}: modelled {modelled}",
                i + 1
            );
            while events.peek().is_some_and(|e| e.call == i + 1) {
                events.next();
                anchor = Some((used, after));
            }
        }
    }
}

#[test]
fn rotates_at_95_percent_without_compacting() {
    let o = ReplayOptions {
        summary_tokens: 100,
        ..opts(1000)
    };
    let r = replay(&series(&[(100, 10), (500, 10), (955, 10), (980, 5)]), &o).unwrap();
    assert_eq!(
        kinds(&r),
        vec![(
            3,
            ReplayEventKind::Rotation,
            Some(RotationReason::Threshold)
        )]
    );
    assert_eq!((r.events[0].before, r.events[0].after), (965, 200));
    // The successor starts at base + S = 200 and grows by what the trace recorded (985 - 965).
    assert_eq!(r.totals.sessions, 2);
    assert_eq!(r.totals.peak_used, 965);
}

#[test]
fn insufficient_compaction_compacts_and_rotates_at_the_same_call() {
    // base 700 + S 200 = 900 is still above compact_at: the compaction is insufficient.
    let o = ReplayOptions {
        summary_tokens: 200,
        ..opts(1000)
    };
    let r = replay(&series(&[(700, 10), (790, 20), (800, 10)]), &o).unwrap();
    use ReplayEventKind::*;
    // The successor starts at 900 too, so its first call (810 - 810 + 900) is at 90% again:
    // a work item whose floor exceeds the window keeps rotating.
    let insufficient = Some(RotationReason::InsufficientCompaction);
    assert_eq!(
        kinds(&r),
        vec![
            (2, Compaction, None),
            (2, Rotation, insufficient),
            (3, Compaction, None),
            (3, Rotation, insufficient)
        ]
    );
    assert_eq!(
        r.events[1].before, 900,
        "the rotation starts from the compacted size"
    );
    assert_eq!(r.totals.sessions, 3);
}

#[test]
fn policy_flags_change_the_events() {
    let t = &trace::read_path(&data("deepseek-pydicom-901.jsonl")).unwrap()[0];
    let strict = ReplayOptions {
        policy: Arc::new(
            Policy::builder()
                .compact_at(0.5)
                .rotate_at(0.6)
                .max_compactions(0)
                .build()
                .unwrap(),
        ),
        ..opts(8192)
    };
    let r = replay(t, &strict).unwrap();
    assert!(r.totals.compactions == 0 && r.totals.rotations > 0);
    // With no compactions allowed, a crossing of 50% rotates on budget, or on threshold when a
    // single call jumps past 60%.
    let budget = r.totals.rotations_by_reason[&RotationReason::CompactionBudget];
    let threshold = r
        .totals
        .rotations_by_reason
        .get(&RotationReason::Threshold)
        .copied()
        .unwrap_or(0);
    assert!(budget > 0);
    assert_eq!(budget + threshold, r.totals.rotations);
}

#[test]
fn a_trace_without_a_window_needs_one() {
    let err = replay(&series(&[(1, 1)]), &ReplayOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--window"), "{err}");
}

fn with_model(mut t: Trace, model: &str, window: Option<u64>) -> Trace {
    t.model = Some(model.into());
    t.window = window;
    t
}

#[test]
fn a_known_model_gives_the_window_when_none_is_given_or_recorded() {
    let t = with_model(series(&[(1000, 10)]), "claude-sonnet-4-5", None);
    let r = replay(&t, &ReplayOptions::default()).unwrap();
    let table = known_window("claude-sonnet-4-5").unwrap();
    assert_eq!(r.window, table.tokens);
    assert_eq!(r.window_source, WindowSource::KnownModel);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
}

#[test]
fn the_trace_window_beats_the_table_and_the_user_beats_both() {
    let t = with_model(series(&[(1000, 10)]), "claude-sonnet-4-5", Some(50_000));
    let r = replay(&t, &ReplayOptions::default()).unwrap();
    assert_eq!((r.window, r.window_source), (50_000, WindowSource::Trace));
    let r = replay(&t, &opts(8192)).unwrap();
    assert_eq!((r.window, r.window_source), (8192, WindowSource::User));
}

#[test]
fn an_unknown_model_without_a_window_still_needs_one() {
    let t = with_model(series(&[(1000, 10)]), "my-local-finetune", None);
    let err = replay(&t, &ReplayOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("--window") && msg.contains("my-local-finetune"),
        "{msg}"
    );
}

#[test]
fn the_report_carries_the_source_of_the_formats_figures() {
    let r = replay(&series(&[(1000, 10)]), &opts(8192)).unwrap();
    assert_eq!(r.source, UsageSource::Reported);
    let mut swe = series(&[(1000, 10)]);
    swe.format = Format::SweAgent;
    let r = replay(&swe, &opts(8192)).unwrap();
    assert_eq!(r.source, UsageSource::Estimated);
}

/// mini-swe-agent only appends to its history, so there the live tracker's rule applies.
#[test]
fn untrustworthy_figures_are_flagged_counted_and_logged() {
    let (logs, _guard) = support::capture_logs();
    // Call 3 reports a zero prompt (a cache hit), call 5 a prompt below call 4's while the
    // conversation only grew; call 6 is back above the last trusted figure.
    let mut t = series(&[
        (1000, 10),
        (1200, 10),
        (0, 10),
        (1500, 10),
        (300, 10),
        (1700, 10),
    ]);
    t.format = Format::MiniSweAgent;
    let r = replay(&t, &opts(100_000)).unwrap();
    let flagged: Vec<(usize, Distrust)> = r.untrusted.iter().map(|u| (u.call, u.why)).collect();
    assert_eq!(
        flagged,
        [
            (3, Distrust::ZeroPrompt),
            (
                5,
                Distrust::Fell {
                    previous: 1500,
                    reported: 300
                }
            )
        ]
    );
    assert_eq!(r.totals.untrusted_figures, 2);
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warning = text
        .lines()
        .find(|l| l.contains("untrustworthy usage figures"))
        .unwrap_or_else(|| panic!("no warning in:\n{text}"));
    assert!(
        warning.contains("WARN") && warning.contains("count=2"),
        "{warning}"
    );
    // The rule is the tracker's: the same figures judged live give the same verdicts.
    let mut last = None;
    let mut live = Vec::new();
    for (i, c) in t.calls.iter().enumerate() {
        match Distrust::judge(Some(c.prompt_tokens), last, last.is_some()) {
            None => last = Some(c.prompt_tokens),
            Some(why) => live.push((i + 1, why)),
        }
    }
    assert_eq!(live, flagged);
    let clean = replay(&series(&[(1000, 10), (1200, 10)]), &opts(100_000)).unwrap();
    assert!(clean.untrusted.is_empty());
}

/// Agents that prune their own context (and series of unknown origin) are judged only on what
/// cannot be true: a falling prompt is not flagged, a zero prompt and a context over the window
/// are.
#[test]
fn a_falling_prompt_is_not_flagged_where_the_agent_prunes_its_context() {
    let t = series(&[
        (1000, 10),
        (1500, 10),
        (900, 10),
        (0, 10),
        (1200, 10),
        (9000, 10),
    ]);
    for format in [
        Format::SeriesJsonl,
        Format::CodexRollout,
        Format::ClaudeCode,
        Format::OpenHandsOutput,
    ] {
        let recorded = Trace {
            format,
            window: Some(5000),
            ..t.clone()
        };
        // Judged against the recorded window, not the user's.
        let r = replay(&recorded, &opts(8000)).unwrap();
        let flagged: Vec<(usize, Distrust)> = r.untrusted.iter().map(|u| (u.call, u.why)).collect();
        assert_eq!(
            flagged,
            [
                (4, Distrust::ZeroPrompt),
                (
                    6,
                    Distrust::OverWindow {
                        window: 5000,
                        reported: 9010
                    }
                )
            ],
            "{format}"
        );
    }
}

/// Running totals passed off as per-call figures (each step the next call's whole prompt) are
/// flagged from the second call on; an uneven real conversation is not.
#[test]
fn running_totals_passed_off_as_per_call_figures_are_flagged() {
    let per_call = [3000u64, 3400, 3900, 4100, 4800];
    let mut sum = 0;
    let totals: Vec<(u64, u64)> = per_call
        .iter()
        .map(|p| {
            sum += p;
            (sum, 50)
        })
        .collect();
    let r = replay(&series(&totals), &opts(1_000_000)).unwrap();
    let calls: Vec<usize> = r.untrusted.iter().map(|u| u.call).collect();
    assert_eq!(calls, [2, 3, 4, 5]);
    assert_eq!(
        r.untrusted[0].why,
        Distrust::Cumulative {
            previous: 3000,
            reported: 6400
        }
    );
    let real = series(&[(3000, 50), (3400, 50), (7000, 50), (7300, 50), (9000, 50)]);
    assert!(
        replay(&real, &opts(1_000_000))
            .unwrap()
            .untrusted
            .is_empty()
    );
}

/// A Codex rollout of our own making (`tests/data/traces/codex-pruning-rollout.jsonl`, written
/// for baton) that prunes its context five times, as Codex does under its `truncation_policy`:
/// the prompt falls while the conversation grows. None of its figures is flagged, although the
/// live tracker's rule would flag the falls.
#[test]
fn a_codex_rollout_that_prunes_its_context_has_no_untrustworthy_figure() {
    let t = &trace::read_path(&data("traces/codex-pruning-rollout.jsonl")).unwrap()[0];
    assert_eq!(
        (t.format, t.calls.len(), t.window),
        (Format::CodexRollout, 40, Some(272_000))
    );
    let falls = t
        .calls
        .windows(2)
        .filter(|w| w[1].prompt_tokens < w[0].prompt_tokens)
        .count();
    assert_eq!(falls, 5, "the rollout prunes five times");
    let mut last = None;
    let live_rule_flags = t
        .calls
        .iter()
        .filter(
            |c| match Distrust::judge(Some(c.prompt_tokens), last, last.is_some()) {
                None => {
                    last = Some(c.prompt_tokens);
                    false
                }
                Some(_) => true,
            },
        )
        .count();
    assert!(live_rule_flags >= 5, "the live rule would cry wolf here");
    let r = replay(t, &ReplayOptions::default()).unwrap();
    assert!(r.untrusted.is_empty(), "{:?}", r.untrusted);
    assert_eq!(r.totals.untrusted_figures, 0);
}

/// A trace whose every call is over a small window rotates at every call; the machine's
/// per-event warning is not repeated for each of them: the replay says it once.
#[test]
fn a_trace_over_a_small_window_warns_once_not_once_per_session() {
    use tracing_subscriber::util::SubscriberInitExt;
    // What `baton replay` logs by default: warnings and errors.
    let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = logs.clone();
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .finish()
        .set_default();
    let calls: Vec<(u64, u64)> = (0..2000).map(|i| (3000 + i, 100)).collect();
    let r = replay(&series(&calls), &opts(2500)).unwrap();
    assert!(r.totals.rotations > 1000);
    assert_eq!(
        (r.totals.over_window, r.totals.untrusted_figures),
        (2000, 0)
    );
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warnings = text.lines().filter(|l| l.contains("WARN")).count();
    assert_eq!(warnings, 1, "{}", &text[..text.len().min(2000)]);
}

/// A `Write` into a shared buffer, for a subscriber at a chosen level.
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A window no usage can be measured against is the window's fault, not call 1's.
#[test]
fn an_absurd_window_is_refused_as_the_window() {
    let err = replay(&series(&[(1000, 10)]), &opts(1 << 32)).unwrap_err();
    assert!(
        matches!(
            err,
            ReplayError::BadWindow {
                window: 4_294_967_296,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("call"), "{err}");
}

#[test]
fn a_summary_not_below_the_window_is_refused_before_any_call() {
    let err = replay(
        &series(&[(1000, 10)]),
        &ReplayOptions {
            summary_tokens: 4096,
            ..opts(4096)
        },
    )
    .unwrap_err();
    assert!(matches!(err, ReplayError::SummaryTooLarge { .. }), "{err}");
}

fn parse(text: &str) -> Result<Vec<Trace>, TraceError> {
    trace::parse(Path::new("t.txt"), "t", text.as_bytes())
}

#[test]
fn reads_series_as_jsonl_and_csv() {
    let j = parse("{\"prompt_tokens\": 10, \"completion_tokens\": 2, \"window\": 100}\n\n{\"prompt_tokens\": 20, \"completion_tokens\": 3}\n").unwrap();
    assert_eq!(j[0].format, Format::SeriesJsonl);
    assert_eq!(j[0].window, Some(100));
    assert_eq!(j[0].calls[1].context(), 23);
    let c = parse("step,prompt_tokens,completion_tokens\n1,10,2\n2, 20 ,3\n").unwrap();
    assert_eq!(c[0].format, Format::SeriesCsv);
    assert_eq!(c[0].calls, j[0].calls);
}

#[test]
fn broken_files_get_errors_that_say_where() {
    let cases: &[(&str, &str)] = &[
        ("", "no model calls"),
        ("   \n", "no model calls"),
        (
            "{\"messages\": [{\"role\": \"assistant\", \"extra\": {\"response\": {\"usage\": {\"prompt_tokens\": 5",
            "line 1",
        ),
        (
            "{\"prompt_tokens\": 1, \"completion_tokens\": 1}\n{\"prompt_tokens\": -4, \"completion_tokens\": 1}\n",
            "line 2",
        ),
        (
            "{\"prompt_tokens\": 1, \"completion_tokens\": 1}\n{\"prompt_tokens\": 1.5, \"completion_tokens\": 1}\n",
            "not a whole",
        ),
        (
            "{\"prompt_tokens\": 1, \"completion_tokens\": 1}\n{\"prompt_tokens\": \"many\", \"completion_tokens\": 1}\n",
            "line 2",
        ),
        (
            "{\"prompt_tokens\": 1, \"completion_tokens\": 1}\n{\"prompt_tokens\": 1}\n",
            "expected both",
        ),
        ("prompt_tokens,completion_tokens\n1,2\nx,3\n", "line 3"),
        ("prompt_tokens,completion_tokens\n", "no model calls"),
        ("hello world\n", "unknown trace format"),
        ("[1, 2, 3]", "unknown trace format"),
        ("{\"info\": {}}", "without a messages list"),
        (
            "{\"messages\": [{\"role\": \"assistant\"}]}",
            "without extra.response.usage",
        ),
        ("{\"messages\": [{\"role\": \"user\"}]}", "no model calls"),
    ];
    for (text, want) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(err.starts_with("t.txt"), "the error names the file: {err}");
    }
    let unknown = parse("hello").unwrap_err().to_string();
    assert!(
        unknown.contains("mini-swe-agent") && unknown.contains("CSV"),
        "lists the formats tried: {unknown}"
    );
}

#[test]
fn missing_and_binary_files_are_errors() {
    let err = trace::read_path(Path::new("/nonexistent/trace.json")).unwrap_err();
    assert!(matches!(err, TraceError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/trace.json"));
    let bin = trace::parse(Path::new("b"), "b", &[0xff, 0xfe, 0x00]).unwrap_err();
    assert!(bin.to_string().contains("not UTF-8"));
}

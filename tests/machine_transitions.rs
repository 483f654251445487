//! Every transition of the session machine, pinned by an insta YAML snapshot of its log.
//!
//! Each test feeds a sequence of inputs to a fresh machine (window 1,000 tokens, default
//! policy) and snapshots, per input: the phase after it, the transitions, effects and compaction
//! measure it produced, whether it was ignored, or the error that refused it.

mod support;

use std::sync::Arc;

use baton::{
    Event, MachineError, Phase, Policy, RotationReason, SessionId, SessionMachine, Step, Usage,
    UsageSource,
};
use serde::Serialize;

/// One input to the machine, as the test writes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
enum Input {
    /// A reading of `used` tokens out of `window`, given as raw figures.
    Usage { used: u64, window: u64 },
    /// Any other event.
    Event(Event),
}

fn usage(used: u64) -> Input {
    Input::Usage { used, window: 1000 }
}

fn ev(e: Event) -> Input {
    Input::Event(e)
}

/// One line of the log.
#[derive(Serialize)]
struct Entry {
    input: Input,
    phase: Phase,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Step(Step),
    Rejected(String),
}

fn run_with(policy: Policy, inputs: &[Input]) -> Vec<Entry> {
    let mut m = SessionMachine::new(SessionId(1), Arc::new(policy));
    inputs
        .iter()
        .map(|input| {
            let r: Result<Step, MachineError> = match input {
                Input::Usage { used, window } => {
                    m.report_usage(*used, *window, UsageSource::Reported)
                }
                Input::Event(e) => m.handle(e),
            };
            Entry {
                input: input.clone(),
                phase: m.phase(),
                outcome: match r {
                    Ok(step) => Outcome::Step(step),
                    Err(e) => Outcome::Rejected(e.to_string()),
                },
            }
        })
        .collect()
}

fn run(inputs: &[Input]) -> Vec<Entry> {
    run_with(Policy::default(), inputs)
}

macro_rules! pin {
    ($name:literal, $log:expr) => {
        support::snapshot_settings().bind(|| insta::assert_yaml_snapshot!($name, $log))
    };
}

fn compacted(after: u64) -> Input {
    ev(Event::Compacted {
        after,
        summary_tokens: 150,
    })
}

#[test]
fn stays_normal_below_compact_at() {
    let log = run(&[usage(100), usage(500), usage(799)]);
    assert!(log.iter().all(|e| e.phase == Phase::Normal));
    pin!("stays_normal_below_compact_at", log);
}

#[test]
fn boundary_79_9_percent_continues() {
    let log = run(&[usage(799)]);
    assert_eq!(log[0].phase, Phase::Normal);
    pin!("boundary_79_9_percent_continues", log);
}

#[test]
fn boundary_80_0_percent_compacts() {
    let log = run(&[usage(800)]);
    assert_eq!(log[0].phase, Phase::Compacting);
    pin!("boundary_80_0_percent_compacts", log);
}

#[test]
fn boundary_94_9_percent_compacts() {
    let log = run(&[usage(949)]);
    assert_eq!(log[0].phase, Phase::Compacting);
    pin!("boundary_94_9_percent_compacts", log);
}

#[test]
fn boundary_95_0_percent_rotates() {
    let log = run(&[usage(950)]);
    assert_eq!(log[0].phase, Phase::Rotating);
    pin!("boundary_95_0_percent_rotates", log);
}

#[test]
fn sufficient_compaction_returns_to_normal() {
    let log = run(&[usage(850), compacted(450), usage(500)]);
    assert_eq!(log[1].phase, Phase::Normal);
    pin!("sufficient_compaction_returns_to_normal", log);
}

#[test]
fn rotates_when_compaction_frees_too_little() {
    // 850 -> 750 frees 11.8%, below min_reduction (20%).
    let log = run(&[usage(850), compacted(750)]);
    assert_eq!(log[1].phase, Phase::Rotating);
    pin!("rotates_when_compaction_frees_too_little", log);
}

#[test]
fn rotates_when_compaction_leaves_usage_at_compact_at() {
    // 900 -> 800 frees 11.1%, enough for min_reduction (5%), but leaves usage at exactly 80%:
    // a session must end strictly below compact_at to stay.
    let policy = Policy::builder().min_reduction(0.05).build().unwrap();
    let log = run_with(policy, &[usage(900), compacted(800)]);
    assert_eq!(log[0].phase, Phase::Compacting);
    assert_eq!(log[1].phase, Phase::Rotating);
    let Outcome::Step(step) = &log[1].outcome else {
        panic!("the compaction result was refused");
    };
    let measure = step.compaction.expect("the compaction was measured");
    assert!(
        measure.reduction > 0.11 && !measure.sufficient,
        "{measure:?}"
    );
    assert_eq!(
        step.transitions[0].reason,
        Some(RotationReason::InsufficientCompaction)
    );
    pin!("rotates_when_compaction_leaves_usage_at_compact_at", log);
}

#[test]
fn rotates_when_compaction_fails() {
    let log = run(&[
        usage(820),
        ev(Event::CompactionFailed {
            error: "summariser timed out after 120s".into(),
        }),
    ]);
    assert_eq!(log[1].phase, Phase::Rotating);
    pin!("rotates_when_compaction_fails", log);
}

#[test]
fn rotates_when_usage_reaches_rotate_at_during_compaction() {
    let log = run(&[usage(810), usage(900), usage(960), compacted(300)]);
    assert_eq!(log[1].phase, Phase::Compacting);
    assert_eq!(log[2].phase, Phase::Rotating);
    pin!(
        "rotates_when_usage_reaches_rotate_at_during_compaction",
        log
    );
}

#[test]
fn rotates_when_compaction_budget_is_spent() {
    let policy = Policy::builder().max_compactions(1).build().unwrap();
    let log = run_with(
        policy,
        &[usage(800), compacted(300), usage(790), usage(805)],
    );
    assert_eq!(log[3].phase, Phase::Rotating);
    pin!("rotates_when_compaction_budget_is_spent", log);
}

#[test]
fn handed_over_closes_the_rotating_session() {
    let log = run(&[
        usage(970),
        usage(980),
        ev(Event::HandedOver {
            successor: SessionId(2),
        }),
    ]);
    assert_eq!(log[2].phase, Phase::Closed);
    pin!("handed_over_closes_the_rotating_session", log);
}

#[test]
fn rotation_failure_closes_the_session() {
    let policy = Arc::new(Policy::default());
    let mut m = SessionMachine::new(SessionId(1), policy.clone());
    m.report_usage(960, 1000, UsageSource::Reported).unwrap();
    let step = m
        .handle(&Event::RotationFailed {
            error: "spawn failed 3 times".into(),
        })
        .unwrap();
    assert_eq!(m.phase(), Phase::Closed);
    assert_eq!(step.rotation_error.as_deref(), Some("spawn failed 3 times"));
    assert_eq!(m.session().rotation_error(), Some("spawn failed 3 times"));

    let log = run(&[
        usage(960),
        ev(Event::RotationFailed {
            error: "spawn failed 3 times".into(),
        }),
    ]);
    assert_eq!(log[1].phase, Phase::Closed);
    pin!("rotation_failure_closes_the_session", log);
}

#[test]
fn a_late_rotation_failure_on_a_closed_session_is_not_recorded() {
    let mut m = SessionMachine::new(SessionId(1), Arc::new(Policy::default()));
    m.handle(&Event::Close).unwrap();
    let step = m
        .handle(&Event::RotationFailed {
            error: "late".into(),
        })
        .unwrap();
    assert!(step.ignored);
    assert_eq!(step.rotation_error, None);
    assert_eq!(m.session().rotation_error(), None);
}

#[test]
fn manual_rotation_from_normal() {
    let log = run(&[usage(100), ev(Event::Rotate), ev(Event::Rotate)]);
    assert_eq!(log[1].phase, Phase::Rotating);
    pin!("manual_rotation_from_normal", log);
}

fn overflow(prompt: Option<u64>, window: Option<u64>) -> Input {
    ev(Event::Overflow { prompt, window })
}

#[test]
fn overflow_rotates_from_normal_with_the_servers_figures() {
    // 600 of 1,000 by the last report, but the server refused a 1,200-token prompt against its
    // 1,024-token window: the machine rotates, and its reading is the server's.
    let log = run(&[usage(600), overflow(Some(1200), Some(1024)), usage(650)]);
    assert_eq!(log[1].phase, Phase::Rotating);
    let Outcome::Step(step) = &log[1].outcome else {
        panic!("the overflow was refused");
    };
    let t = &step.transitions[0];
    assert_eq!(t.reason, Some(RotationReason::Overflow));
    let u = t.usage.expect("the server's figures are the reading");
    assert_eq!(
        (u.used(), u.window(), u.source()),
        (1200, 1024, UsageSource::Reported)
    );
    pin!("overflow_rotates_from_normal_with_the_servers_figures", log);
}

#[test]
fn overflow_without_a_window_is_measured_against_the_last_reading() {
    let log = run(&[usage(300), overflow(Some(1100), None)]);
    let Outcome::Step(step) = &log[1].outcome else {
        panic!("the overflow was refused");
    };
    let u = step.transitions[0].usage.unwrap();
    assert_eq!((u.used(), u.window()), (1100, 1000));
    pin!(
        "overflow_without_a_window_is_measured_against_the_last_reading",
        log
    );
}

#[test]
fn overflow_without_figures_rotates_on_the_last_reading() {
    // No prompt count: the session still rotates, for overflow, on what it knew. Before any
    // reading, it rotates with none.
    let log = run(&[usage(300), overflow(None, Some(1024))]);
    let Outcome::Step(step) = &log[1].outcome else {
        panic!("the overflow was refused");
    };
    assert_eq!(step.transitions[0].reason, Some(RotationReason::Overflow));
    assert_eq!(step.transitions[0].usage.map(|u| u.used()), Some(300));
    let bare = run(&[overflow(None, None)]);
    assert_eq!(bare[0].phase, Phase::Rotating);
    pin!(
        "overflow_without_figures_rotates_on_the_last_reading",
        (log, bare)
    );
}

#[test]
fn overflow_during_compaction_rotates_and_the_late_result_is_ignored() {
    let log = run(&[usage(850), overflow(Some(1010), Some(1000)), compacted(300)]);
    assert_eq!(log[0].phase, Phase::Compacting);
    assert_eq!(log[1].phase, Phase::Rotating);
    assert_eq!(log[2].phase, Phase::Rotating);
    let Outcome::Step(late) = &log[2].outcome else {
        panic!("the late result was refused");
    };
    assert!(late.ignored && late.compaction.is_none());
    pin!(
        "overflow_during_compaction_rotates_and_the_late_result_is_ignored",
        log
    );
}

#[test]
fn overflow_while_rotating_or_closed_changes_nothing() {
    let log = run(&[
        usage(960),
        overflow(Some(1100), Some(1000)),
        ev(Event::Close),
        overflow(Some(1100), Some(1000)),
    ]);
    assert_eq!(log[1].phase, Phase::Rotating);
    assert_eq!(log[3].phase, Phase::Closed);
    for i in [1, 3] {
        let Outcome::Step(step) = &log[i].outcome else {
            panic!("the overflow was refused");
        };
        assert!(step.ignored && step.transitions.is_empty() && step.effects.is_empty());
    }
    pin!("overflow_while_rotating_or_closed_changes_nothing", log);
}

#[test]
fn overflow_with_bad_figures_is_rejected_without_state_change() {
    let log = run(&[
        usage(100),
        overflow(Some(1200), Some(0)),
        overflow(Some(Usage::MAX_TOKENS + 1), Some(1000)),
        overflow(Some(10), Some(Usage::MAX_TOKENS + 1)),
    ]);
    assert!(log.iter().all(|e| e.phase == Phase::Normal));
    assert!(
        log[1..]
            .iter()
            .all(|e| matches!(e.outcome, Outcome::Rejected(_)))
    );
    pin!(
        "overflow_with_bad_figures_is_rejected_without_state_change",
        log
    );
}

#[test]
fn close_from_normal() {
    let log = run(&[usage(100), ev(Event::Close)]);
    assert_eq!(log[1].phase, Phase::Closed);
    pin!("close_from_normal", log);
}

#[test]
fn close_from_compacting() {
    let log = run(&[usage(850), ev(Event::Close)]);
    assert_eq!(log[1].phase, Phase::Closed);
    pin!("close_from_compacting", log);
}

#[test]
fn close_from_rotating() {
    let log = run(&[usage(990), ev(Event::Close)]);
    assert_eq!(log[1].phase, Phase::Closed);
    pin!("close_from_rotating", log);
}

#[test]
fn closed_ignores_everything() {
    let log = run(&[
        ev(Event::Close),
        usage(990),
        compacted(100),
        ev(Event::CompactionFailed {
            error: "late".into(),
        }),
        ev(Event::Rotate),
        overflow(Some(1100), Some(1000)),
        ev(Event::HandedOver {
            successor: SessionId(9),
        }),
        ev(Event::RotationFailed {
            error: "late".into(),
        }),
        ev(Event::Close),
    ]);
    assert!(log[1..].iter().all(|e| e.phase == Phase::Closed));
    pin!("closed_ignores_everything", log);
}

#[test]
fn late_compacted_after_rotation_is_ignored() {
    let log = run(&[usage(850), usage(960), compacted(200)]);
    assert_eq!(log[2].phase, Phase::Rotating);
    pin!("late_compacted_after_rotation_is_ignored", log);
}

#[test]
fn zero_window_is_rejected_without_state_change() {
    let log = run(&[
        usage(850),
        Input::Usage {
            used: 990,
            window: 0,
        },
        Input::Usage {
            used: Usage::MAX_TOKENS + 1,
            window: 1000,
        },
        ev(Event::Compacted {
            after: u64::MAX,
            summary_tokens: 1,
        }),
        ev(Event::HandedOver {
            successor: SessionId(1),
        }),
    ]);
    assert!(log.iter().all(|e| e.phase == Phase::Compacting));
    pin!("zero_window_is_rejected_without_state_change", log);
}

#[test]
fn usage_over_the_window_rotates() {
    let (logs, _guard) = support::capture_logs();
    let log = run(&[usage(1500)]);
    assert_eq!(log[0].phase, Phase::Rotating);
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warning = text
        .lines()
        .find(|l| l.contains("usage exceeds the window"))
        .unwrap_or_else(|| panic!("no over-window warning in:\n{text}"));
    assert!(
        warning.contains("WARN")
            && warning.contains("used=1500")
            && warning.contains("window=1000"),
        "{warning}"
    );
    pin!("usage_over_the_window_rotates", log);
}

#[test]
fn usage_within_the_window_does_not_warn() {
    let (logs, _guard) = support::capture_logs();
    run(&[usage(1000)]);
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("usage exceeds the window"), "{text}");
}

#[test]
fn history_is_bounded_by_policy() {
    let policy = Policy::builder().history_len(3).build().unwrap();
    let mut m = SessionMachine::new(SessionId(7), Arc::new(policy));
    for used in [10, 20, 30, 40, 50] {
        m.report_usage(used, 1000, UsageSource::Estimated).unwrap();
    }
    let kept: Vec<u64> = m.session().history().map(|u| u.used()).collect();
    assert_eq!(kept, vec![30, 40, 50]);
    assert_eq!(
        m.session().last_usage().unwrap().source(),
        UsageSource::Estimated
    );
}

#[test]
fn the_compactions_start_and_the_rotations_reason_live_only_in_their_states() {
    let mut m = SessionMachine::new(SessionId(1), Arc::new(Policy::default()));
    assert_eq!((m.compacting_from(), m.rotation_reason()), (None, None));
    m.report_usage(850, 1000, UsageSource::Reported).unwrap();
    assert_eq!(
        m.compacting_from(),
        Some(Usage::reported(850, 1000).unwrap())
    );
    assert_eq!(m.rotation_reason(), None);
    m.report_usage(900, 1000, UsageSource::Estimated).unwrap();
    // A later reading does not move the compaction's start.
    assert_eq!(m.compacting_from().map(|u| u.used()), Some(850));
    m.handle(&Event::Compacted {
        after: 800,
        summary_tokens: 100,
    })
    .unwrap();
    assert_eq!(m.compacting_from(), None);
    assert_eq!(
        m.rotation_reason(),
        Some(RotationReason::InsufficientCompaction)
    );
    m.handle(&Event::HandedOver {
        successor: SessionId(2),
    })
    .unwrap();
    assert_eq!((m.compacting_from(), m.rotation_reason()), (None, None));
    assert_eq!(m.session().successor(), Some(SessionId(2)));
}

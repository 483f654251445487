//! Fleet scenarios on the real supervisor and session actors over a `MemoryRuntime`, each
//! pinned by an insta snapshot of the event log (durations redacted; session ids are
//! deterministic, handed out by the runtime from 1).
//!
//! Every scenario but the sharded one runs on paused tokio time, and each waits for the events
//! it pins (or for a quiet inventory) before pinning them: never for a quiet spell.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use baton::runtime::memory::{Fault, FaultKind, MemoryConfig, RuntimeOp};
use baton::{
    CrashOutcome, EventKind, FleetEvent, Phase, Place, Policy, RotationReason, SupervisorConfig,
};
use support::fleet::{
    DoomedPolls, Harness, agent, check_invariants, count, entered, item, pause_clock,
};

fn pin(name: &str, log: &[FleetEvent]) {
    pin_redacted(name, log, &[]);
}

/// Pins the log with durations (and any `extra` selectors, for figures that depend on timing)
/// redacted.
fn pin_redacted(name: &str, log: &[FleetEvent], extra: &[&str]) {
    let mut settings = support::snapshot_settings();
    settings.add_redaction(".**.duration", "[duration]");
    for selector in extra {
        settings.add_redaction(selector, "[timing-dependent]");
    }
    settings.bind(|| insta::assert_yaml_snapshot!(name, log));
}

fn memory() -> MemoryConfig {
    MemoryConfig {
        base_tokens: 100,
        ..MemoryConfig::default()
    }
}

fn latency(op: RuntimeOp, ms: u64) -> MemoryConfig {
    MemoryConfig {
        latency: HashMap::from([(op, Duration::from_millis(ms))]),
        ..memory()
    }
}

fn fault(op: RuntimeOp, calls: std::ops::RangeInclusive<u64>, kind: FaultKind) -> Fault {
    Fault { op, calls, kind }
}

fn fast_config() -> SupervisorConfig {
    SupervisorConfig {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        ..SupervisorConfig::default()
    }
}

fn rotation(e: &FleetEvent) -> bool {
    matches!(e, FleetEvent::Rotation(_))
}

fn compaction(e: &FleetEvent) -> bool {
    matches!(e, FleetEvent::Compaction(_))
}

#[actix::test]
async fn compacts_at_80_percent_and_returns_to_normal() {
    pause_clock();
    let mut h = Harness::start(fast_config(), memory(), vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 850).await;
    let FleetEvent::Compaction(c) = h.wait_for("compaction", compaction).await else {
        unreachable!()
    };
    assert!(c.success && c.sufficient);
    assert!(c.after_tokens < c.before_tokens);
    h.wait_for("back to normal", entered(s, Phase::Normal))
        .await;
    let sessions = h.supervisor.sessions().await;
    assert_eq!(sessions[0].phase, Phase::Normal);
    assert_eq!(sessions[0].compactions, 1);
    assert_eq!(
        h.runtime.session(s).unwrap().used,
        c.after_tokens,
        "the runtime holds the summary only"
    );
    pin("fleet_compacts_at_80_percent_and_returns_to_normal", &h.log);
}

#[actix::test]
async fn rotates_at_95_percent_into_a_successor_of_the_same_type() {
    pause_clock();
    let mut h = Harness::start(fast_config(), memory(), vec![agent("sonnet"), agent("glm")]);
    h.supervisor.submit(item(1, "glm")).await.unwrap();
    let old = h.started(1).await;
    h.report(old, 960).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success);
    assert_eq!(r.reason, RotationReason::Threshold);
    assert_eq!((r.before_tokens, r.before_percent), (960, 96.0));
    let new = r.new_session.unwrap();
    let successor = h.runtime.session(new).unwrap();
    assert_eq!(successor.agent_type, "glm");
    assert_eq!(successor.item.as_ref().unwrap().id.0, 1);
    let handoff = successor.handoff.unwrap();
    assert!(!handoff.fallback && handoff.tokens == r.handoff_tokens);
    assert!(h.runtime.session(old).unwrap().closed);
    h.wait_for("the old session closed", entered(old, Phase::Closed))
        .await;
    assert_eq!(h.place(1).await, Place::Live(new));
    check_invariants(&h.quiet().await, &h.runtime, &h.log);
    pin(
        "fleet_rotates_at_95_percent_into_a_successor_of_the_same_type",
        &h.log,
    );
}

#[actix::test]
async fn usage_rise_during_a_slow_compaction_rotates_at_once() {
    pause_clock();
    let mut h = Harness::start(
        fast_config(),
        latency(RuntimeOp::Summarise, 300),
        vec![agent("sonnet")],
    );
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 850).await;
    h.wait_for(
        "compacting",
        |e| matches!(e, FleetEvent::Transition(t) if t.to == Phase::Compacting),
    )
    .await;
    h.report(s, 960).await;
    // The mailbox kept flowing: the session rotates while the summariser is still busy.
    h.wait_for(
        "rotating",
        |e| matches!(e, FleetEvent::Transition(t) if t.to == Phase::Rotating),
    )
    .await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success && r.reason == RotationReason::Threshold);
    h.wait_for("the old session closed", entered(s, Phase::Closed))
        .await;
    // The compaction was cancelled: well past the 300 ms its summary would have taken, no
    // history was replaced and nothing was recorded.
    h.elapse(Duration::from_secs(1)).await;
    h.drain();
    assert_eq!(h.runtime.calls(RuntimeOp::ReplaceHistory), 0);
    assert!(!h.log.iter().any(compaction));
    check_invariants(&h.quiet().await, &h.runtime, &h.log);
    pin(
        "fleet_usage_rise_during_a_slow_compaction_rotates_at_once",
        &h.log,
    );
}

#[actix::test]
async fn failed_compaction_rotates() {
    pause_clock();
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Summarise, 1..=1, FaultKind::Permanent)],
        ..memory()
    };
    let mut h = Harness::start(fast_config(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 850).await;
    let FleetEvent::Compaction(c) = h.wait_for("compaction", compaction).await else {
        unreachable!()
    };
    assert!(!c.success && c.error.as_deref().unwrap().contains("injected fault"));
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert_eq!(r.reason, RotationReason::CompactionFailed);
    assert!(
        r.success && !r.handoff_fallback,
        "the handoff summary (2nd call) worked"
    );
    h.wait_for("the old session closed", entered(s, Phase::Closed))
        .await;
    pin("fleet_failed_compaction_rotates", &h.log);
}

#[actix::test]
async fn failed_summary_gives_a_fallback_handoff() {
    pause_clock();
    let mem = MemoryConfig {
        // (A transient failure is retried within the handoff's limit: see tests/handoffs.rs.)
        faults: vec![fault(RuntimeOp::Summarise, 1..=1, FaultKind::Permanent)],
        ..memory()
    };
    let mut h = Harness::start(fast_config(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(7, "sonnet")).await.unwrap();
    let s = h.started(7).await;
    h.report(s, 400).await;
    h.report(s, 970).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success && r.handoff_fallback);
    let handoff = h
        .runtime
        .session(r.new_session.unwrap())
        .unwrap()
        .handoff
        .unwrap();
    assert!(handoff.fallback);
    assert!(
        handoff.text.contains("work item 7: fix the flaky test"),
        "{}",
        handoff.text
    );
    assert!(
        handoff.text.contains("970 of 1000 tokens"),
        "{}",
        handoff.text
    );
    h.wait_for("the old session closed", entered(s, Phase::Closed))
        .await;
    pin("fleet_failed_summary_gives_a_fallback_handoff", &h.log);
}

#[actix::test]
async fn failed_spawn_is_retried_and_succeeds() {
    pause_clock();
    // Spawn call 1 starts the first session; calls 2 and 3 (the rotation's) fail.
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Spawn, 2..=3, FaultKind::Transient)],
        ..memory()
    };
    let mut h = Harness::start(fast_config(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 990).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success);
    assert_eq!(r.attempts, 4, "three spawns and one assign");
    assert_eq!(h.runtime.calls(RuntimeOp::Spawn), 4);
    h.wait_for("the old session closed", entered(s, Phase::Closed))
        .await;
    check_invariants(&h.quiet().await, &h.runtime, &h.log);
    pin("fleet_failed_spawn_is_retried_and_succeeds", &h.log);
}

#[actix::test]
async fn spawns_that_keep_failing_send_the_item_back_to_the_queue() {
    pause_clock();
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Spawn, 2..=u64::MAX, FaultKind::Transient)],
        ..memory()
    };
    let policy = Policy::builder()
        .rotation_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let config = SupervisorConfig {
        max_attempts: 1,
        ..fast_config()
    };
    let mut h = Harness::start(config, mem, vec![agent("sonnet").with_policy(policy)]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 960).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(!r.success && r.new_session.is_none());
    assert!(
        r.error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        r.error
    );
    assert!(
        r.attempts >= 2,
        "spawn was retried within the timeout: {}",
        r.attempts
    );
    h.wait_for("requeue", |e| {
        matches!(e, FleetEvent::WorkItemRequeued { .. })
    })
    .await;
    // The old session closed; the item went back to the queue, then its restart failed too
    // and, at one attempt, it went to dead letter.
    h.wait_for("dead letter", |e| {
        matches!(e, FleetEvent::DeadLetter { .. })
    })
    .await;
    assert!(h.runtime.session(s).unwrap().closed);
    assert!(matches!(h.place(1).await, Place::Dead(_)));
    h.wait_until("the old session closed", |log| {
        log.iter().any(entered(s, Phase::Closed))
    })
    .await;
    check_invariants(&h.quiet().await, &h.runtime, &h.log);
    // How many retries fit in the timeout depends on timing (and jitter).
    pin_redacted(
        "fleet_spawns_that_keep_failing_send_the_item_back_to_the_queue",
        &h.log,
        &[".**.attempts"],
    );
}

#[actix::test]
async fn failed_close_is_not_fatal() {
    pause_clock();
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Close, 1..=1, FaultKind::Permanent)],
        ..memory()
    };
    let mut h = Harness::start(fast_config(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 955).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success);
    h.wait_until("the close warning and the old session closed", |log| {
        log.iter().any(entered(s, Phase::Closed))
            && log
                .iter()
                .any(|e| matches!(e, FleetEvent::RuntimeWarning { session, .. } if *session == s))
    })
    .await;
    assert_eq!(h.place(1).await, Place::Live(r.new_session.unwrap()));
    pin("fleet_failed_close_is_not_fatal", &h.log);
}

#[actix::test]
async fn panicking_session_is_restarted_within_budget_then_escalates() {
    pause_clock();
    // Every compaction panics inside the session's runtime future.
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Summarise, 1..=u64::MAX, FaultKind::Panic)],
        ..memory()
    };
    let config = SupervisorConfig {
        restart_budget: baton::supervisor::Budget {
            count: 1,
            period: Duration::from_secs(60),
        },
        max_attempts: 5,
        ..fast_config()
    };
    let mut h = Harness::start(config, mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let first = h.started(1).await;
    h.report(first, 850).await;
    let crash = h
        .wait_for("first crash", |e| matches!(e, FleetEvent::Crashed { .. }))
        .await;
    assert!(matches!(
        crash,
        FleetEvent::Crashed {
            outcome: CrashOutcome::Restarted,
            ..
        }
    ));
    let second = h.started(1).await;
    assert_ne!(first, second);
    h.report(second, 850).await;
    let crash = h
        .wait_for("second crash", |e| matches!(e, FleetEvent::Crashed { .. }))
        .await;
    assert!(matches!(
        crash,
        FleetEvent::Crashed {
            outcome: CrashOutcome::Requeued,
            ..
        }
    ));
    h.wait_for("halt", |e| matches!(e, FleetEvent::AgentTypeHalted { .. }))
        .await;
    h.wait_for("requeue", |e| {
        matches!(e, FleetEvent::WorkItemRequeued { .. })
    })
    .await;
    // No session of the halted type is started: the item waits in the queue.
    let inv = h.quiet().await;
    assert_eq!(h.place(1).await, Place::Queued);
    assert!(h.supervisor.sessions().await.is_empty());
    check_invariants(&inv, &h.runtime, &h.log);
    pin(
        "fleet_panicking_session_is_restarted_within_budget_then_escalates",
        &h.log,
    );
}

#[actix::test]
async fn compaction_cap_is_never_exceeded() {
    pause_clock();
    let config = SupervisorConfig {
        max_concurrent_compactions: 2,
        ..fast_config()
    };
    let mut h = Harness::start(
        config,
        latency(RuntimeOp::Summarise, 30),
        vec![agent("sonnet")],
    );
    let mut sessions = Vec::new();
    for i in 1..=10 {
        h.supervisor.submit(item(i, "sonnet")).await.unwrap();
        sessions.push(h.started(i).await);
    }
    for s in &sessions {
        h.report(*s, 850).await;
    }
    for _ in 0..10 {
        h.wait_for("compaction", compaction).await;
    }
    assert_eq!(
        h.runtime.peak_concurrent_summaries(),
        2,
        "the cap was reached and never exceeded"
    );
    assert!(
        h.log
            .iter()
            .all(|e| !matches!(e, FleetEvent::Compaction(c) if !c.success))
    );
    h.wait_until("every session back to normal", |log| {
        sessions
            .iter()
            .all(|s| log.iter().any(entered(*s, Phase::Normal)))
    })
    .await;
    check_invariants(&h.quiet().await, &h.runtime, &h.log);
    // Which of two compactions that share a slot finishes first is up to the timer, so the
    // log is pinned session by session (each session's events keep their order).
    let mut by_session = h.log.clone();
    by_session.sort_by_key(session_of);
    pin("fleet_compaction_cap_is_never_exceeded", &by_session);
}

/// The session an event is about (the old session, for a rotation).
fn session_of(e: &FleetEvent) -> Option<baton::SessionId> {
    match e {
        FleetEvent::SessionStarted { session, .. }
        | FleetEvent::Crashed { session, .. }
        | FleetEvent::WorkItemDone { session, .. }
        | FleetEvent::RuntimeWarning { session, .. } => Some(*session),
        FleetEvent::Transition(t) => Some(t.session),
        FleetEvent::Compaction(c) => Some(c.session),
        FleetEvent::Rotation(r) => Some(r.old_session),
        FleetEvent::Rejected { session, .. } => *session,
        _ => None,
    }
}

#[actix::test]
async fn rotation_handoff_summaries_share_the_compaction_cap() {
    pause_clock();
    let config = SupervisorConfig {
        max_concurrent_compactions: 2,
        ..fast_config()
    };
    let mut h = Harness::start(
        config,
        latency(RuntimeOp::Summarise, 40),
        vec![agent("sonnet")],
    );
    let mut sessions = Vec::new();
    for i in 1..=8 {
        h.supervisor.submit(item(i, "sonnet")).await.unwrap();
        sessions.push(h.started(i).await);
    }
    // Half compact, half rotate, all at once: six summaries wanted, two slots.
    for (n, s) in sessions.iter().enumerate() {
        h.report(*s, if n % 2 == 0 { 850 } else { 960 }).await;
    }
    let (mut compactions, mut rotations) = (0, 0);
    while compactions < 4 || rotations < 4 {
        match h
            .wait_for("compaction or rotation", |e| compaction(e) || rotation(e))
            .await
        {
            FleetEvent::Compaction(c) => {
                assert!(c.success, "{c:?}");
                compactions += 1;
            }
            FleetEvent::Rotation(r) => {
                assert!(r.success && !r.handoff_fallback, "{r:?}");
                rotations += 1;
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(
        h.runtime.peak_concurrent_summaries(),
        2,
        "handoff summaries wait for a slot like compactions"
    );
    h.wait_until("every session back to normal or closed", |log| {
        sessions.iter().enumerate().all(|(n, s)| {
            let phase = if n % 2 == 0 {
                Phase::Normal
            } else {
                Phase::Closed
            };
            log.iter().any(entered(*s, phase))
        })
    })
    .await;
    check_invariants(&h.quiet().await, &h.runtime, &h.log);
}

#[actix::test]
async fn a_panicking_runtime_call_fails_that_call_and_the_fleet_goes_on() {
    pause_clock();
    // The first spawn (a start) panics, then the handoff summary and the successor's spawn
    // (a rotation) panic: each counts as a permanent failure of that call.
    let mem = MemoryConfig {
        faults: vec![
            fault(RuntimeOp::Spawn, 1..=1, FaultKind::Panic),
            fault(RuntimeOp::Spawn, 3..=3, FaultKind::Panic),
            fault(RuntimeOp::Summarise, 1..=1, FaultKind::Panic),
        ],
        ..memory()
    };
    let mut h = Harness::start(fast_config(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let FleetEvent::WorkItemRequeued { reason, .. } = h
        .wait_for("requeue", |e| {
            matches!(e, FleetEvent::WorkItemRequeued { .. })
        })
        .await
    else {
        unreachable!()
    };
    assert!(reason.contains("the runtime panicked"), "{reason}");
    let first = h.started(1).await;
    h.report(first, 960).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(!r.success && r.handoff_fallback, "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("the runtime panicked"),
        "{r:?}"
    );
    // The item went back to the queue with the fallback handoff, and a new session took it.
    let second = h.started(1).await;
    let handoff = h.runtime.session(second).unwrap().handoff.unwrap();
    assert!(handoff.fallback && handoff.text.contains("the runtime panicked"));
    h.wait_until("the first session closed", |log| {
        log.iter().any(entered(first, Phase::Closed))
    })
    .await;
    let inv = h.quiet().await;
    assert_eq!(h.place(1).await, Place::Live(second));
    assert!(h.runtime.session(first).unwrap().closed);
    check_invariants(&inv, &h.runtime, &h.log);
    pin(
        "fleet_a_panicking_runtime_call_fails_that_call_and_the_fleet_goes_on",
        &h.log,
    );
}

#[actix::test]
async fn a_session_that_crashes_while_rotating_is_reported_and_the_rotation_goes_on() {
    pause_clock();
    let inner = std::sync::Arc::new(baton::MemoryRuntime::new(latency(
        RuntimeOp::Summarise,
        200,
    )));
    let outer = std::sync::Arc::new(DoomedPolls {
        inner: inner.clone(),
        doomed: Default::default(),
    });
    let config = SupervisorConfig {
        poll_interval: Some(Duration::from_millis(5)),
        restart_budget: baton::supervisor::Budget {
            count: 1,
            period: Duration::from_secs(60),
        },
        ..fast_config()
    };
    let mut h = Harness::start_wrapped(config, inner, outer.clone(), vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let old = h.started(1).await;
    h.report(old, 960).await;
    h.wait_for(
        "rotating",
        |e| matches!(e, FleetEvent::Transition(t) if t.to == Phase::Rotating),
    )
    .await;
    // The handoff summary takes 200 ms; meanwhile the old session's next poll panics.
    outer.doomed.lock().unwrap().insert(old);
    let crash = h
        .wait_for("crash", |e| matches!(e, FleetEvent::Crashed { .. }))
        .await;
    assert_eq!(
        crash,
        FleetEvent::Crashed {
            session: old,
            work_item: baton::WorkItemId(1),
            outcome: CrashOutcome::RotationContinues,
        }
    );
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success, "{r:?}");
    let inv = h.quiet().await;
    assert_eq!(h.place(1).await, Place::Live(r.new_session.unwrap()));
    assert!(
        !h.log
            .iter()
            .any(|e| matches!(e, FleetEvent::AgentTypeHalted { .. })),
        "one crash is within the budget"
    );
    assert!(h.runtime.session(old).unwrap().closed);
    // The crashed actor could not be told `HandedOver`: leave its rotation out of the check
    // that every successful rotation was handed over.
    let log: Vec<_> = h
        .log
        .iter()
        .filter(|e| !matches!(e, FleetEvent::Rotation(r) if r.old_session == old))
        .cloned()
        .collect();
    check_invariants(&inv, &h.runtime, &log);
}

#[actix::test]
async fn a_halted_agent_type_does_not_rotate_and_its_item_waits() {
    pause_clock();
    // No restarts allowed: the first crash halts the type.
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Summarise, 1..=1, FaultKind::Panic)],
        ..memory()
    };
    let config = SupervisorConfig {
        restart_budget: baton::supervisor::Budget {
            count: 0,
            period: Duration::from_secs(60),
        },
        ..fast_config()
    };
    let mut h = Harness::start(config, mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let crashing = h.started(1).await;
    h.supervisor.submit(item(2, "sonnet")).await.unwrap();
    let other = h.started(2).await;
    h.report(crashing, 850).await;
    h.wait_for("halt", |e| matches!(e, FleetEvent::AgentTypeHalted { .. }))
        .await;
    h.report(other, 960).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(!r.success && r.new_session.is_none());
    assert!(r.error.as_deref().unwrap().contains("halted"), "{r:?}");
    h.wait_until("the rotating session closed", |log| {
        log.iter().any(entered(other, Phase::Closed))
    })
    .await;
    let inv = h.quiet().await;
    assert_eq!(h.place(2).await, Place::Queued);
    assert!(
        h.runtime.open_sessions().is_empty(),
        "no successor was spawned"
    );
    assert_eq!(h.runtime.calls(RuntimeOp::Spawn), 2);
    check_invariants(&inv, &h.runtime, &h.log);
    pin(
        "fleet_a_halted_agent_type_does_not_rotate_and_its_item_waits",
        &h.log,
    );
}

#[actix::test]
async fn work_item_that_keeps_rotating_lands_in_dead_letter() {
    pause_clock();
    let config = SupervisorConfig {
        rotation_budget: baton::supervisor::Budget {
            count: 2,
            period: Duration::from_secs(600),
        },
        ..fast_config()
    };
    let mut h = Harness::start(config, memory(), vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    // Each successor is immediately over the window again (its floor exceeds the window).
    let mut last = None;
    for _ in 0..3 {
        let s = h.started(1).await;
        h.report(s, 999).await;
        last = Some(s);
    }
    let last = last.unwrap();
    let dead = h
        .wait_for("dead letter", |e| {
            matches!(e, FleetEvent::DeadLetter { .. })
        })
        .await;
    let FleetEvent::DeadLetter { reason, .. } = dead else {
        unreachable!()
    };
    assert!(reason.contains("rotation budget"), "{reason}");
    h.wait_until("the last session closed", |log| {
        log.iter().any(entered(last, Phase::Closed))
    })
    .await;
    let inv = h.quiet().await;
    assert!(matches!(h.place(1).await, Place::Dead(_)));
    assert!(h.runtime.open_sessions().is_empty());
    check_invariants(&inv, &h.runtime, &h.log);
    pin(
        "fleet_work_item_that_keeps_rotating_lands_in_dead_letter",
        &h.log,
    );
}

#[actix::test]
async fn graceful_shutdown_closes_everything() {
    pause_clock();
    let mut h = Harness::start(fast_config(), memory(), vec![agent("sonnet")]);
    for i in 1..=3 {
        h.supervisor.submit(item(i, "sonnet")).await.unwrap();
        h.started(i).await;
    }
    let report = h.supervisor.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean && report.remaining == 0, "{report:?}");
    h.wait_until("three closes and three requeues", |log| {
        count(
            log,
            |e| matches!(e, FleetEvent::Transition(t) if t.to == Phase::Closed),
        ) == 3
            && count(log, |e| matches!(e, FleetEvent::WorkItemRequeued { .. })) == 3
    })
    .await;
    assert!(h.runtime.open_sessions().is_empty());
    let closed = h
        .log
        .iter()
        .filter(|e| matches!(e, FleetEvent::Transition(t) if t.to == Phase::Closed && t.cause == EventKind::Close))
        .count();
    assert_eq!(closed, 3);
    assert_eq!(
        h.log
            .iter()
            .filter(|e| matches!(e, FleetEvent::WorkItemRequeued { .. }))
            .count(),
        3,
        "work items held at shutdown go back to the queue, not to done"
    );
    assert!(h.supervisor.submit(item(9, "sonnet")).await.is_err());
    pin("fleet_graceful_shutdown_closes_everything", &h.log);
}

#[actix::test]
async fn closing_a_session_finishes_its_work_item_and_starts_the_next() {
    pause_clock();
    let config = SupervisorConfig {
        max_sessions: 1,
        ..fast_config()
    };
    let mut h = Harness::start(config, memory(), vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    h.supervisor.submit(item(2, "sonnet")).await.unwrap();
    let s1 = h.started(1).await;
    assert_eq!(
        h.place(2).await,
        Place::Queued,
        "max_sessions holds item 2 back"
    );
    h.supervisor.close(s1).await.unwrap();
    h.started(2).await;
    assert_eq!(h.place(1).await, Place::Done(s1));
    assert!(h.runtime.session(s1).unwrap().closed);
}

#[actix::test]
async fn manual_rotation_and_bad_input() {
    pause_clock();
    let mut h = Harness::start(fast_config(), memory(), vec![agent("sonnet")]);
    assert!(
        h.supervisor.submit(item(1, "opus")).await.is_err(),
        "unknown agent type"
    );
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    assert!(
        h.supervisor.submit(item(1, "sonnet")).await.is_err(),
        "duplicate id"
    );
    let s = h.started(1).await;
    // A zero window is refused and changes nothing.
    h.supervisor
        .report_usage(s, 10, Some(0), baton::UsageSource::Reported)
        .await
        .unwrap();
    h.wait_for("rejection", |e| matches!(e, FleetEvent::Rejected { .. }))
        .await;
    assert!(
        h.supervisor
            .report_usage(
                baton::SessionId(999),
                10,
                None,
                baton::UsageSource::Reported
            )
            .await
            .is_err()
    );
    assert_eq!(h.supervisor.sessions().await[0].phase, Phase::Normal);
    h.supervisor.rotate(s).await.unwrap();
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert_eq!(r.reason, RotationReason::Manual);
    let direct = h.supervisor.session(r.new_session.unwrap()).await.unwrap();
    direct.report_usage(850, None, baton::UsageSource::Estimated);
    h.wait_for("compaction", compaction).await;
}

#[actix::test]
async fn polling_reports_usage_without_the_orchestrator() {
    pause_clock();
    let config = SupervisorConfig {
        poll_interval: Some(Duration::from_millis(10)),
        ..fast_config()
    };
    let mut h = Harness::start(config, memory(), vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    // The agent's context grows; nobody reports it: the session polls the runtime.
    h.runtime.grow(s, 800).unwrap();
    let FleetEvent::Compaction(c) = h.wait_for("compaction", compaction).await else {
        unreachable!()
    };
    assert!(c.success && c.before_tokens >= 800);
}

#[actix::test]
async fn polling_stops_for_the_cool_down_after_five_failures() {
    pause_clock();
    let config = SupervisorConfig {
        poll_interval: Some(Duration::from_millis(5)),
        ..fast_config()
    };
    let mem = MemoryConfig {
        faults: vec![fault(RuntimeOp::Usage, 1..=u64::MAX, FaultKind::Transient)],
        ..memory()
    };
    let mut h = Harness::start(config, mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    h.started(1).await;
    // Five failed polls (5 ms apart) opened the breaker; the next trial comes only after its
    // 30 s cool-down, then fails and opens it again.
    h.elapse(Duration::from_secs(29)).await;
    assert_eq!(h.runtime.calls(RuntimeOp::Usage), 5);
    assert_eq!(h.supervisor.sessions().await[0].phase, Phase::Normal);
    h.elapse(Duration::from_secs(2)).await;
    assert_eq!(
        h.runtime.calls(RuntimeOp::Usage),
        6,
        "one trial after the cool-down"
    );
    h.elapse(Duration::from_secs(20)).await;
    assert_eq!(
        h.runtime.calls(RuntimeOp::Usage),
        6,
        "open again after the trial"
    );
}

#[actix::test]
async fn readings_sent_through_a_session_handle_are_coalesced_to_the_newest() {
    pause_clock();
    let mut h = Harness::start(fast_config(), memory(), vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    let direct = h.supervisor.session(s).await.unwrap();
    // A burst the session cannot keep up with: only the newest reading matters.
    for used in 100..=700 {
        direct.report_usage(used, None, baton::UsageSource::Reported);
    }
    let info = direct.info().await.unwrap();
    let seen: Vec<u64> = info.history.iter().map(|u| u.used()).collect();
    assert_eq!(
        seen,
        vec![700],
        "601 reports, one dispatch, of the newest reading"
    );
    assert_eq!(info.phase, Phase::Normal);
    // A crossing in the burst still acts; a bad figure still goes through validation.
    direct.report_usage(650, None, baton::UsageSource::Reported);
    direct.report_usage(860, None, baton::UsageSource::Reported);
    h.wait_for("compaction", compaction).await;
    direct.report_usage(10, Some(0), baton::UsageSource::Reported);
    h.wait_for("rejection", |e| matches!(e, FleetEvent::Rejected { .. }))
        .await;
}

#[actix::test]
async fn readings_from_another_thread_wake_sharded_sessions() {
    let config = SupervisorConfig {
        shards: 2,
        max_sessions: 200,
        ..fast_config()
    };
    let mut h = Harness::start(config, memory(), vec![agent("sonnet")]);
    for i in 1..=200 {
        h.supervisor.submit(item(i, "sonnet")).await.unwrap();
    }
    let mut handles = Vec::new();
    for i in 1..=200 {
        let s = h.started(i).await;
        handles.push(h.supervisor.session(s).await.unwrap());
    }
    assert!(
        handles.iter().all(|d| d.shard.is_some()),
        "sessions run on the shards, not on this thread"
    );
    // Reports from this thread wake sessions running on the two shard threads.
    for used in (100..=500).step_by(100) {
        for d in &handles {
            d.report_usage(used, None, baton::UsageSource::Reported);
        }
        tokio::task::yield_now().await;
    }
    for d in &handles {
        let info = d.info().await.unwrap();
        assert_eq!(
            info.usage.map(|u| u.used()),
            Some(500),
            "{:?}",
            info.session
        );
        assert_eq!(info.phase, Phase::Normal);
    }
    // Every other session crosses 80%: each of those, and only those, compacts.
    for d in handles.iter().step_by(2) {
        d.report_usage(850, None, baton::UsageSource::Reported);
    }
    let mut compacted = std::collections::BTreeSet::new();
    while compacted.len() < 100 {
        if let FleetEvent::Compaction(c) = h.wait_for("compaction", compaction).await {
            assert!(c.success);
            compacted.insert(c.session);
        }
    }
    let crossed: std::collections::BTreeSet<_> =
        handles.iter().step_by(2).map(|d| d.session).collect();
    assert_eq!(compacted, crossed);
}

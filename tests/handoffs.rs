//! Handoffs: a transient failure of the handoff summary is retried within the rotation's
//! deadline, and every handoff, the fallback included, is capped at the policy's
//! `handoff_share` of the successor's window (default 25%).

mod support;

use std::time::Duration;

use baton::runtime::memory::{Fault, FaultKind, MemoryConfig, RuntimeOp, SummaryModel};
use baton::{FleetEvent, Policy, SupervisorConfig};
use support::fleet::{Harness, agent, item};

fn fast() -> SupervisorConfig {
    SupervisorConfig {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        ..SupervisorConfig::default()
    }
}

fn rotation(e: &FleetEvent) -> bool {
    matches!(e, FleetEvent::Rotation(_))
}

#[actix::test]
async fn a_transient_handoff_summary_failure_is_retried_not_replaced_by_the_fallback() {
    let mem = MemoryConfig {
        base_tokens: 100,
        faults: vec![Fault {
            op: RuntimeOp::Summarise,
            calls: 1..=2,
            kind: FaultKind::Transient,
        }],
        ..MemoryConfig::default()
    };
    let mut h = Harness::start(fast(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 970).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success, "{r:?}");
    assert!(!r.handoff_fallback, "the third try summarised: {r:?}");
    assert_eq!(h.runtime.calls(RuntimeOp::Summarise), 3);
    let handoff = h.runtime.session(r.new_session.unwrap()).unwrap().handoff;
    assert!(!handoff.unwrap().fallback);
}

#[actix::test]
async fn a_handoff_summary_bigger_than_the_share_is_cut_to_a_quarter_of_the_window() {
    // Every summary is at least 600 tokens of a 1,000-token window.
    let mem = MemoryConfig {
        base_tokens: 100,
        summary: SummaryModel {
            min_tokens: 600,
            max_tokens: 900,
            ..SummaryModel::default()
        },
        ..MemoryConfig::default()
    };
    let mut h = Harness::start(fast(), mem, vec![agent("sonnet")]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 970).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success && !r.handoff_fallback, "{r:?}");
    assert_eq!(r.handoff_tokens, 250, "25% of 1,000: {r:?}");
    let handoff = h
        .runtime
        .session(r.new_session.unwrap())
        .unwrap()
        .handoff
        .unwrap();
    assert_eq!(handoff.tokens, 250);
    assert!(handoff.text.contains("cut by baton"), "{}", handoff.text);
}

#[actix::test]
async fn a_fallback_handoff_is_capped_at_the_policy_s_share_too() {
    // The summary fails for good, so baton writes the fallback; a share of 5% of 1,000 tokens
    // is less than the fallback's own text.
    let mem = MemoryConfig {
        base_tokens: 100,
        faults: vec![Fault {
            op: RuntimeOp::Summarise,
            calls: 1..=u64::MAX,
            kind: FaultKind::Permanent,
        }],
        ..MemoryConfig::default()
    };
    let policy = Policy::builder().handoff_share(0.05).build().unwrap();
    let mut h = Harness::start(fast(), mem, vec![agent("sonnet").with_policy(policy)]);
    h.supervisor.submit(item(1, "sonnet")).await.unwrap();
    let s = h.started(1).await;
    h.report(s, 970).await;
    let FleetEvent::Rotation(r) = h.wait_for("rotation", rotation).await else {
        unreachable!()
    };
    assert!(r.success && r.handoff_fallback, "{r:?}");
    assert_eq!(r.handoff_tokens, 50, "{r:?}");
    let handoff = h
        .runtime
        .session(r.new_session.unwrap())
        .unwrap()
        .handoff
        .unwrap();
    assert!(handoff.fallback && handoff.tokens == 50);
    assert!(
        handoff.text.starts_with("Handoff written by baton"),
        "the beginning is kept: {}",
        handoff.text
    );
}

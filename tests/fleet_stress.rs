//! A fleet of 10,000 sessions under a few hundred thousand usage messages with 1% of runtime
//! calls failing at random: afterwards every work item is in exactly one place, and every
//! compaction and rotation that took effect has exactly one record.
//!
//! The sessions run on two shard threads, so the clock is real; nothing waits for a quiet
//! spell: the test waits for every first start; after each round, until every session has
//! handled that round's reading (it answers an inspection, and readings are handled first);
//! and at the end, until the inventory shows a quiet fleet.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use baton::runtime::memory::{MemoryConfig, RuntimeOp};
use baton::supervisor::SessionHandle;
use baton::{AgentType, FleetEvent, Place, SessionId, SupervisorConfig, UsageSource, WorkItemId};
use support::fleet::{Harness, check_invariants, count, item};

const ITEMS: u64 = 10_000;
const ROUNDS: usize = 30;

#[actix::test]
async fn ten_thousand_sessions_keep_every_work_item_and_record() {
    let config = SupervisorConfig {
        max_sessions: ITEMS as usize,
        max_attempts: 1_000,
        shards: 2,
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(4),
        ..SupervisorConfig::default()
    };
    // Summaries take a little while, so that compactions and rotations' handoff summaries
    // overlap and the fleet-wide cap on them is really tested.
    let memory = MemoryConfig {
        base_tokens: 300,
        random_failures: Some((0.01, 42)),
        latency: HashMap::from([(RuntimeOp::Summarise, Duration::from_millis(2))]),
        ..MemoryConfig::default()
    };
    let agents = vec![
        AgentType::new("small", 8_000),
        AgentType::new("large", 32_000),
    ];
    let mut h = Harness::start(config, memory, agents);
    for i in 1..=ITEMS {
        let kind = if i % 3 == 0 { "large" } else { "small" };
        h.supervisor.submit(item(i, kind)).await.unwrap();
    }
    h.wait_until("every item's first session", |log| {
        count(log, |e| matches!(e, FleetEvent::SessionStarted { .. })) == ITEMS as usize
    })
    .await;

    // Follow which session holds which item, from the event stream.
    let mut holder: HashMap<WorkItemId, SessionId> = HashMap::new();
    let mut handles: HashMap<SessionId, SessionHandle> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sent = 0usize;
    for round in 0..ROUNDS {
        // Successors started since the last round take over their items' reports.
        h.drain();
        for e in &h.log[..] {
            if let FleetEvent::SessionStarted {
                session, work_item, ..
            } = e
            {
                holder.insert(*work_item, *session);
            }
        }
        for (&item, &session) in &holder {
            // Mostly small steps; now and then a large tool output jumps past 95%.
            let step = if rng.u32(0..100) < 3 {
                rng.u64(4_000..9_000)
            } else {
                rng.u64(50..900)
            };
            let Ok(usage) = h.runtime.grow(session, step) else {
                continue; // closed meanwhile
            };
            // A session that stopped meanwhile answers UnknownSession: that is fine here.
            let _ = h
                .supervisor
                .report_usage(session, usage.used(), None, UsageSource::Reported)
                .await;
            sent += 1;
            let _ = item;
        }
        if round == ROUNDS - 5 {
            // Some work finishes.
            for (_, &session) in holder.iter().filter(|(i, _)| i.0 % 10 == 0) {
                let _ = h.supervisor.close(session).await;
            }
        }
        // The round's barrier: every live session has handled its reading.
        for &session in holder.values() {
            if !handles.contains_key(&session)
                && let Some(handle) = h.supervisor.session(session).await
            {
                handles.insert(session, handle);
            }
            if let Some(handle) = handles.get(&session) {
                let _ = handle.info().await;
            }
        }
    }
    // Then wait for what the last readings set off to finish.
    let inv = h.quiet().await;
    assert_eq!(inv.in_flight, 0, "runtime work still in flight");
    assert_eq!(inv.items.len(), ITEMS as usize);
    check_invariants(&inv, &h.runtime, &h.log);

    let count = |f: fn(&FleetEvent) -> bool| h.log.iter().filter(|e| f(e)).count();
    let compactions = count(|e| matches!(e, FleetEvent::Compaction(c) if c.success));
    let failed_compactions = count(|e| matches!(e, FleetEvent::Compaction(c) if !c.success));
    let rotations = count(|e| matches!(e, FleetEvent::Rotation(r) if r.success));
    let done = inv
        .items
        .iter()
        .filter(|(_, p)| matches!(p, Place::Done(_)))
        .count();
    eprintln!(
        "stress: {sent} usage messages, {compactions} compactions ({failed_compactions} failed), {rotations} rotations, {done} done, peak summaries {}",
        h.runtime.peak_concurrent_summaries()
    );
    assert!(
        sent >= 250_000,
        "a few hundred thousand usage messages ({sent})"
    );
    let threshold = count(
        |e| matches!(e, FleetEvent::Rotation(r) if r.reason == baton::RotationReason::Threshold),
    );
    assert!(
        compactions > 1_000 && threshold > 100 && failed_compactions > 0,
        "the run exercised every path"
    );
    let other_reasons = count(
        |e| matches!(e, FleetEvent::Rotation(r) if r.success && r.reason != baton::RotationReason::Threshold),
    );
    assert!(
        other_reasons > 0,
        "rotations after compactions too ({rotations} rotations, {threshold} at the threshold)"
    );
    assert!(done >= 900, "closed sessions finished their items ({done})");
    assert_eq!(
        h.runtime.peak_concurrent_summaries(),
        8,
        "summaries reached the default cap of 8 and never exceeded it"
    );
}

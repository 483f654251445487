//! `baton::simulate` in CI: a few thousand sessions on two threads, with its invariants.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use baton::simulate::{Recorded, SimulationConfig, SimulationError, run_recorded};
use baton::{FleetEvent, Place, Usage, WorkItemId};
use support::fleet::check_invariants;

fn config(seed: u64) -> SimulationConfig {
    SimulationConfig {
        sessions: 2_000,
        work_items: 3_000,
        seed,
        turns: (20, 120),
        shards: 2,
        ..SimulationConfig::default()
    }
}

/// A small, failure-heavy fleet: a fifth of runtime calls fail, so handoff summaries fail and
/// baton writes fallback handoffs (from the error and the last compaction summary) often.
fn stormy(seed: u64) -> SimulationConfig {
    SimulationConfig {
        sessions: 400,
        work_items: 600,
        agent_types: vec![("small".into(), 8_192), ("mid".into(), 16_000)],
        failure_rate: 0.2,
        seed,
        turns: (40, 120),
        shards: 2,
        ..SimulationConfig::default()
    }
}

/// Every rotation of each work item, in order, with every figure a seed decides.
fn rotations_by_item(events: &[FleetEvent]) -> BTreeMap<WorkItemId, Vec<String>> {
    let mut by_item: BTreeMap<WorkItemId, Vec<String>> = BTreeMap::new();
    for e in events {
        if let FleetEvent::Rotation(r) = e {
            by_item.entry(r.work_item).or_default().push(format!(
                "{:?} before {} handoff {} fallback {} attempts {} success {}",
                r.reason,
                r.before_tokens,
                r.handoff_tokens,
                r.handoff_fallback,
                r.attempts,
                r.success
            ));
        }
    }
    by_item
}

/// The handoff text each session of each work item started from, in start order: a fallback
/// handoff quotes the injected error and the last compaction summary, so any figure in them
/// that thread timing decides (a fleet-wide call count, a session id) shows here.
fn handoffs_by_item(run: &Recorded) -> BTreeMap<WorkItemId, Vec<Option<String>>> {
    let mut by_item: BTreeMap<WorkItemId, Vec<Option<String>>> = BTreeMap::new();
    for e in &run.events {
        if let FleetEvent::SessionStarted {
            session, work_item, ..
        } = e
        {
            let sim = run
                .runtime
                .session(*session)
                .expect("a started session exists");
            by_item
                .entry(*work_item)
                .or_default()
                .push(sim.handoff.map(|h| h.text));
        }
    }
    by_item
}

#[actix::test]
async fn simulation_accounts_for_every_work_item_and_effect() {
    let run = run_recorded(&config(42), |_| {}).await.unwrap();
    let r = &run.report;
    assert_eq!(r.done + r.dead_letters + r.unfinished, r.work_items);
    assert_eq!(r.unfinished, 0, "no duration limit: everything finishes");
    assert!(
        r.compactions.count > 1_000 && r.rotations.values().sum::<u64>() > 100,
        "{r:?}"
    );
    assert!(r.compactions.failed > 0, "1% failures were injected");
    let inventory = run
        .inventory
        .as_ref()
        .expect("no duration: the inventory is taken");
    check_invariants(inventory, &run.runtime, &run.events);
    // Each item, one by one: it ended exactly once, and where the inventory says it is.
    let mut ends: HashMap<WorkItemId, Vec<&FleetEvent>> = HashMap::new();
    for e in &run.events {
        if let FleetEvent::WorkItemDone { work_item, .. }
        | FleetEvent::DeadLetter { work_item, .. } = e
        {
            ends.entry(*work_item).or_default().push(e);
        }
    }
    assert_eq!(inventory.items.len() as u64, r.work_items);
    for (id, place) in &inventory.items {
        let end = ends.get(id).map_or(&[][..], |v| &v[..]);
        match (end, place) {
            ([FleetEvent::WorkItemDone { session, .. }], Place::Done(s)) => assert_eq!(session, s),
            ([FleetEvent::DeadLetter { .. }], Place::Dead(_)) => {}
            _ => panic!("item {id} is {place:?} after {end:?}"),
        }
    }
    let replaced: u32 = run
        .runtime
        .sessions()
        .iter()
        .map(|(_, s)| s.compactions)
        .sum();
    assert_eq!(
        u64::from(replaced),
        r.compactions.count,
        "one record per history replaced"
    );
}

#[actix::test]
async fn the_same_seed_gives_the_same_totals() {
    let a = run_recorded(&config(7), |_| {}).await.unwrap().report;
    let b = run_recorded(&config(7), |_| {}).await.unwrap().report;
    assert_eq!(a.totals(), b.totals());
    let c = run_recorded(&config(8), |_| {}).await.unwrap().report;
    assert_ne!(a.totals(), c.totals(), "another seed, another run");
}

#[actix::test]
async fn the_same_seed_gives_the_same_rotations_in_a_failure_storm() {
    let a = run_recorded(&stormy(11), |_| {}).await.unwrap();
    let b = run_recorded(&stormy(11), |_| {}).await.unwrap();
    let r = &a.report;
    // Transient handoff failures are retried within the rotation's limit, so the storm's
    // handoffs rarely fall back now; its retries and failed compactions still decide the rest.
    assert!(
        r.retries > 100 && r.compactions.failed > 100,
        "the storm exercised retries and failures: {r:?}"
    );
    // Handoffs (fallbacks included) carry the injected error and the last compaction summary:
    // their sizes (and so everything after them) must not depend on which thread got there
    // first.
    assert_eq!(rotations_by_item(&a.events), rotations_by_item(&b.events));
    assert_eq!(handoffs_by_item(&a), handoffs_by_item(&b));
    assert_eq!(a.report.totals(), b.report.totals());
    assert_eq!(r.done + r.dead_letters + r.unfinished, r.work_items);
}

#[actix::test]
async fn a_duration_stops_the_run_and_leaves_the_rest_unfinished() {
    let config = SimulationConfig {
        duration: Some(Duration::from_millis(300)),
        turns: (5_000, 5_000),
        ..stormy(3)
    };
    let started = std::time::Instant::now();
    let r = run_recorded(&config, |_| {}).await.unwrap().report;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the run stopped near its duration ({:?})",
        started.elapsed()
    );
    assert!(r.unfinished > 0, "{r:?}");
    assert_eq!(r.done + r.dead_letters + r.unfinished, r.work_items);
}

#[actix::test]
async fn windows_beyond_what_a_reading_can_hold_are_refused() {
    for window in [0, Usage::MAX_TOKENS + 1] {
        let config = SimulationConfig {
            agent_types: vec![("huge".into(), window)],
            ..stormy(1)
        };
        match run_recorded(&config, |_| {}).await {
            Err(SimulationError::Invalid(why)) => {
                assert!(why.contains("\"huge\"") && why.contains("window"), "{why}")
            }
            other => panic!("window {window}: {:?}", other.map(|r| r.report)),
        }
    }
}

/// `baton simulate --duration 2s` on a fleet far too big to finish: the whole run, shutdown
/// included, ends within the duration plus baton's shutdown allowance (1 s, `--help`), with
/// generous slack for a loaded machine and a debug build; the wall time it reports is the
/// run's, not the part after submitting. Before: 7.6-13.6 s for `--duration 5s` at 200k
/// sessions, reporting 0.00003 s.
#[test]
fn a_simulation_ends_within_its_duration_and_the_shutdown_allowance() {
    let args: Vec<String> = [
        "simulate",
        "--sessions",
        "100000",
        "--duration",
        "2s",
        "--json",
    ]
    .map(str::to_owned)
    .into();
    let began = std::time::Instant::now();
    let m = support::cli::baton_measured(&args, None, &[]);
    let measured = began.elapsed().as_secs_f64();
    let err = support::cli::stderr(&m.output);
    assert_eq!(m.output.status.code(), Some(1), "{err}");
    assert!(measured < 2.0 + 1.0 + 10.0, "took {measured:.2} s");
    let report: serde_json::Value =
        serde_json::from_str(support::cli::stdout(&m.output).trim()).unwrap();
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(seconds >= 2.0, "{report}");
    assert!(
        seconds <= measured && measured - seconds < 2.0,
        "reported {seconds:.2} s of a {measured:.2} s run"
    );
}

//! `baton::simulate` in CI: a few thousand sessions on two threads, with its invariants.

mod support;

use baton::simulate::{SimulationConfig, run_recorded};
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
    check_invariants(&run.inventory, &run.runtime, &run.events);
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

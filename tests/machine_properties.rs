//! Properties of the session machine over random event sequences.

use std::sync::Arc;

use baton::{Effect, Event, Phase, Policy, SessionId, SessionMachine, Usage};
use proptest::prelude::*;

/// Any input a session can meet, bad figures included (they arrive as raw readings).
#[derive(Debug, Clone)]
enum Input {
    Reading { used: u64, window: u64 },
    Event(Event),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (0u64..1300, prop_oneof![9 => Just(1000u64), 1 => Just(0u64)])
            .prop_map(|(used, window)| Input::Reading { used, window }),
        1 => Just(Input::Reading { used: u64::MAX, window: 1000 }),
        2 => (0u64..1200, 0u64..400).prop_map(|(after, summary_tokens)| Input::Event(Event::Compacted { after, summary_tokens })),
        1 => Just(Input::Event(Event::CompactionFailed { error: "boom".into() })),
        1 => Just(Input::Event(Event::Rotate)),
        1 => (prop::option::of(0u64..1500), prop::option::of(prop_oneof![9 => Just(1000u64), 1 => Just(0u64)]))
            .prop_map(|(prompt, window)| Input::Event(Event::Overflow { prompt, window })),
        1 => (1u64..4).prop_map(|s| Input::Event(Event::HandedOver { successor: SessionId(s) })),
        1 => Just(Input::Event(Event::RotationFailed { error: "boom".into() })),
        1 => Just(Input::Event(Event::Close)),
    ]
}

/// Runs the inputs and returns a printable log of everything that happened.
fn run(policy: &Arc<Policy>, inputs: &[Input]) -> Vec<String> {
    let mut m = SessionMachine::new(SessionId(1), policy.clone());
    let mut log = Vec::new();
    let mut rotation_requests = 0;
    let mut seq = 0;
    for input in inputs {
        let before = m.phase();
        let transitions_before = m.session().transitions();
        let result = match input {
            Input::Reading { used, window } => {
                m.report_usage(*used, *window, baton::UsageSource::Reported)
            }
            Input::Event(e) => m.handle(e),
        };
        let after = m.phase();
        match result {
            Err(e) => {
                // Bad input changes nothing.
                assert_eq!(before, after, "rejected input changed the state: {e}");
                assert_eq!(m.session().transitions(), transitions_before);
                log.push(format!("rejected {e}"));
            }
            Ok(step) => {
                // Closed is terminal and silent.
                if before == Phase::Closed {
                    assert_eq!(after, Phase::Closed);
                    assert!(step.effects.is_empty() && step.transitions.is_empty());
                }
                // Exactly one record per state change, numbered without gaps.
                assert_eq!(step.transitions.len(), usize::from(before != after));
                for t in &step.transitions {
                    seq += 1;
                    assert_eq!((t.seq, t.from, t.to), (seq, before, after));
                }
                for effect in &step.effects {
                    match effect {
                        Effect::Compact { .. } => {
                            assert_eq!(before, Phase::Normal, "compaction asked from {before:?}")
                        }
                        Effect::RequestRotation { .. } => rotation_requests += 1,
                        Effect::Stop => assert_eq!(after, Phase::Closed),
                    }
                }
                // At most one rotation per session.
                assert!(rotation_requests <= 1, "session asked to rotate twice");
                log.push(format!("{after:?} {step:?}"));
            }
        }
    }
    log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_the_invariants(inputs in prop::collection::vec(input(), 0..40)) {
        let policy = Arc::new(Policy::default());
        let first = run(&policy, &inputs);
        // The same input always gives the same log.
        prop_assert_eq!(first, run(&policy, &inputs));
    }

    #[test]
    fn invariants_hold_under_random_policies(
        inputs in prop::collection::vec(input(), 0..40),
        compact_at in 0.05f64..0.9,
        gap in 0.01f64..0.1,
        max_compactions in 0u32..4,
        history_len in 1usize..20,
    ) {
        let policy = Policy::builder()
            .compact_at(compact_at)
            .rotate_at((compact_at + gap).min(1.0))
            .max_compactions(max_compactions)
            .history_len(history_len)
            .build()
            .unwrap();
        let _ = run(&Arc::new(policy), &inputs);
    }

    #[test]
    fn decide_matches_the_machine_from_normal(used in 0u64..1300) {
        // The pure decision and the machine agree on the first reading.
        let policy = Arc::new(Policy::default());
        let usage = Usage::reported(used, 1000).unwrap();
        let mut m = SessionMachine::new(SessionId(1), policy.clone());
        m.handle(&Event::Usage(usage)).unwrap();
        let want = match policy.decide(&usage, 0) {
            baton::Action::Continue => Phase::Normal,
            baton::Action::Compact => Phase::Compacting,
            baton::Action::Rotate(_) => Phase::Rotating,
        };
        prop_assert_eq!(m.phase(), want);
    }
}

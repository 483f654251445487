//! `GET /metrics` after a known fleet run over a real server: the exposition parses as the
//! Prometheus text format, and the counters, gauges and histograms hold exactly what the run
//! did.

mod serve_common;

use std::collections::BTreeMap;

use baton::runtime::memory::RuntimeOp;
use baton::serve::events::EventsConfig;
use baton::{FleetEvent, UsageSource};
use serve_common::Served;

/// A sample's identity: its name and its labels, sorted.
type Key = (String, BTreeMap<String, String>);

/// Parses the Prometheus text format (0.0.4) strictly: every sample belongs to a family
/// declared by `# TYPE` before it, labels are `name="value"` pairs, values are numbers.
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "declared twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "an unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    labels.insert(k.to_string(), v.expect("a quoted value").to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name);
        assert!(
            types.contains_key(family),
            "a sample without # TYPE: {line}"
        );
        samples.insert((name, labels), value);
    }
    samples
}

fn get(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .get(&(name.to_string(), labels))
        .copied()
        .unwrap_or_else(|| {
            panic!(
                "no sample {name} {:?}",
                samples.keys().filter(|k| k.0 == name).collect::<Vec<_>>()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_compactions_rotations_and_calls_of_a_known_run() {
    let mut served = Served::start(true, &["coder", "writer"], EventsConfig::default()).await;
    // coder: one compaction, one threshold rotation, then done.
    let (_, c2) = served.compact_and_rotate(1, "coder").await;
    served.finish(c2, 1).await;
    // writer: one compaction, one threshold rotation; its successor stays live at 50%.
    let (_, w2) = served.compact_and_rotate(2, "writer").await;
    served.report(w2, 500).await;
    let handle = served.supervisor.session(w2).await.unwrap();
    handle
        .report_usage_and_wait(500, None, UsageSource::Reported)
        .await;
    // Everything the run wrote is committed: the scrape sees every commit.
    let journal = served.supervisor.journal().unwrap().clone();
    journal.flush().await.unwrap();
    let commits = journal.stats().commits;
    assert!(commits > 0);

    let r = served.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = parse(&r.text().await.unwrap());
    // Every event published before the scrape (the scrape counted them all).
    served.drain();

    for agent in ["coder", "writer"] {
        let compacted = [("agent_type", agent), ("outcome", "success")];
        assert_eq!(
            get(&m, "baton_compactions_total", &compacted),
            1.0,
            "{agent}"
        );
        let rotated = [
            ("agent_type", agent),
            ("outcome", "success"),
            ("reason", "threshold"),
        ];
        assert_eq!(get(&m, "baton_rotations_total", &rotated), 1.0, "{agent}");
        let reductions = [("agent_type", agent)];
        assert_eq!(
            get(&m, "baton_compaction_reduction_ratio_count", &reductions),
            1.0
        );
    }
    // The reductions and summary tokens the events reported, exactly.
    let (mut reduction, mut summary, mut handoff) = (0.0, 0u64, 0u64);
    for e in &served.seen {
        match &e.event {
            FleetEvent::Compaction(c) if c.agent_type.as_ref() == "coder" => {
                reduction = c.reduction_percent / 100.0;
                summary += c.summary_tokens;
            }
            FleetEvent::Compaction(c) => summary += c.summary_tokens,
            FleetEvent::Rotation(r) if !r.handoff_fallback => handoff += r.handoff_tokens,
            _ => {}
        }
    }
    assert!(summary > 0 && handoff > 0, "the run summarised");
    let coder = [("agent_type", "coder")];
    assert!((get(&m, "baton_compaction_reduction_ratio_sum", &coder) - reduction).abs() < 1e-9);
    assert_eq!(
        get(
            &m,
            "baton_summary_tokens_total",
            &[("purpose", "compaction")]
        ),
        summary as f64
    );
    assert_eq!(
        get(&m, "baton_summary_tokens_total", &[("purpose", "handoff")]),
        handoff as f64
    );
    assert_eq!(get(&m, "baton_dead_letters_total", &[]), 0.0);
    assert_eq!(get(&m, "baton_queue_depth", &[]), 0.0);

    // Sampled now: one live writer session, normal, at 0.5.
    let live = [("agent_type", "writer"), ("phase", "normal")];
    assert_eq!(get(&m, "baton_sessions", &live), 1.0);
    assert!(
        !m.keys()
            .any(|(n, l)| n == "baton_sessions" && l["agent_type"] == "coder")
    );
    let writer = [("agent_type", "writer")];
    assert_eq!(get(&m, "baton_session_usage_ratio_count", &writer), 1.0);
    assert_eq!(get(&m, "baton_session_usage_ratio_sum", &writer), 0.5);
    assert_eq!(
        get(
            &m,
            "baton_session_usage_ratio_bucket",
            &[("agent_type", "writer"), ("le", "0.4")]
        ),
        0.0
    );
    assert_eq!(
        get(
            &m,
            "baton_session_usage_ratio_bucket",
            &[("agent_type", "writer"), ("le", "0.5")]
        ),
        1.0
    );

    // Every runtime call was timed, by operation.
    for (op, name) in [
        (RuntimeOp::Spawn, "spawn"),
        (RuntimeOp::Assign, "assign"),
        (RuntimeOp::Summarise, "summarise"),
        (RuntimeOp::ReplaceHistory, "replace_history"),
        (RuntimeOp::Close, "close"),
    ] {
        let calls = served.runtime.calls(op);
        assert!(calls > 0, "{name}");
        let labels = [("op", name), ("outcome", "ok")];
        assert_eq!(
            get(&m, "baton_runtime_call_duration_seconds_count", &labels),
            calls as f64,
            "{name}"
        );
    }
    assert_eq!(served.runtime.calls(RuntimeOp::Spawn), 4);
    assert_eq!(
        get(&m, "baton_journal_commit_duration_seconds_count", &[]),
        commits as f64,
        "every commit timed"
    );
    assert!(get(&m, "baton_journal_commit_duration_seconds_sum", &[]) > 0.0);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token() {
    let served = Served::start(false, &["coder"], EventsConfig::default()).await;
    let r = served
        .http
        .get(format!("{}/metrics", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    served.stop().await;
}

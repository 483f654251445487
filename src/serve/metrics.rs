//! `GET /metrics`: the fleet in the Prometheus text format (version 0.0.4), through
//! prometheus-client.
//!
//! Two sources feed it:
//!
//! * the fleet's event stream, for what happened: compactions and their reductions, rotations
//!   by reason, dead letters, summary tokens. [`Metrics::new`] takes a subscription (made from
//!   the builder, before the supervisor starts, it misses nothing); a task drains it as events
//!   arrive, and every scrape drains it too before answering, so a scrape counts every event
//!   published before it began;
//! * the supervisor, sampled at each scrape, for what is: live sessions by agent type and
//!   phase, their usage ratios, the queue's depth.
//!
//! Runtime call latency comes from [`MeteredRuntime`], a wrapper around the agent runtime; the
//! journal's commit latency from the journal's commit observer ([`Metrics::time_commits_of`]).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `baton_sessions` | gauge | `agent_type`, `phase` |
//! | `baton_session_usage_ratio` | histogram (live sessions, at scrape) | `agent_type` |
//! | `baton_compactions_total` | counter | `agent_type`, `outcome` (`success`, `failure`) |
//! | `baton_compaction_reduction_ratio` | histogram (successful compactions) | `agent_type` |
//! | `baton_rotations_total` | counter | `agent_type`, `reason`, `outcome` |
//! | `baton_runtime_call_duration_seconds` | histogram | `op`, `outcome` (`ok`, `error`) |
//! | `baton_queue_depth` | gauge | |
//! | `baton_dead_letters_total` | counter | |
//! | `baton_journal_commit_duration_seconds` | histogram | |
//! | `baton_summary_tokens_total` | counter | `purpose` (`compaction`, `handoff`) |

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use async_trait::async_trait;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc::UnboundedReceiver;
use utoipa::OpenApi;

use super::error::{ApiError, ErrorBody};
use crate::journal::Journal;
use crate::machine::Phase;
use crate::record::FleetEvent;
use crate::runtime::{AgentRuntime, RuntimeError};
use crate::supervisor::SupervisorHandle;
use crate::usage::Usage;
use crate::vocab::{AgentType, Handoff, SessionId, SpawnKey, Summary, SummaryPurpose, WorkItem};

/// Labels: an agent type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    agent_type: String,
}

/// Labels: an agent type and a phase.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    agent_type: String,
    phase: String,
}

/// Labels: an agent type and whether it worked.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    agent_type: String,
    outcome: &'static str,
}

/// Labels of a rotation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    agent_type: String,
    reason: &'static str,
    outcome: &'static str,
}

/// Labels of a runtime call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    outcome: &'static str,
}

/// Labels of summary tokens.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabels {
    purpose: &'static str,
}

/// A histogram family whose histograms share one set of buckets.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Usage ratios: tenths, with the default thresholds (0.8, 0.95) on bucket edges.
fn ratio_histogram() -> Histogram {
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0])
}

/// Reductions of compactions: tenths.
fn reduction_histogram() -> Histogram {
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

/// Latencies: 1 ms to about 33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The live sessions' usage ratios as of the last scrape, encoded as a histogram (a
/// distribution now, not a count since start).
#[derive(Debug)]
struct UsageRatios(Mutex<Histograms<TypeLabels>>);

impl Collector for UsageRatios {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = self.0.lock().expect("lock");
        let metric = encoder.encode_descriptor(
            "baton_session_usage_ratio",
            "Usage ratio (used / window) of the live sessions at this scrape, by agent type.",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// What the event stream feeds.
struct FromEvents {
    compactions: Family<OutcomeLabels, Counter>,
    reductions: Histograms<TypeLabels>,
    rotations: Family<RotationLabels, Counter>,
    dead_letters: Counter,
    summary_tokens: Family<PurposeLabels, Counter>,
}

impl FromEvents {
    fn apply(&self, event: &FleetEvent) {
        match event {
            FleetEvent::Compaction(c) => {
                let outcome = if c.success { "success" } else { "failure" };
                self.compactions
                    .get_or_create(&OutcomeLabels {
                        agent_type: c.agent_type.to_string(),
                        outcome,
                    })
                    .inc();
                if c.success {
                    self.reductions
                        .get_or_create(&TypeLabels {
                            agent_type: c.agent_type.to_string(),
                        })
                        .observe(c.reduction_percent / 100.0);
                    self.summary_tokens
                        .get_or_create(&PurposeLabels {
                            purpose: "compaction",
                        })
                        .inc_by(c.summary_tokens);
                }
            }
            FleetEvent::Rotation(r) => {
                self.rotations
                    .get_or_create(&RotationLabels {
                        agent_type: r.agent_type.to_string(),
                        reason: r.reason.as_str(),
                        outcome: if r.success { "success" } else { "failure" },
                    })
                    .inc();
                // A fallback handoff was built by baton, not summarised by the agent.
                if !r.handoff_fallback {
                    self.summary_tokens
                        .get_or_create(&PurposeLabels { purpose: "handoff" })
                        .inc_by(r.handoff_tokens);
                }
            }
            FleetEvent::DeadLetter { .. } => {
                self.dead_letters.inc();
            }
            _ => {}
        }
    }
}

/// What every clone of [`Metrics`] shares.
struct Inner {
    registry: Registry,
    events: FromEvents,
    /// The subscription (once [`Metrics::follow`] gave it), drained by the feeding task and by
    /// every scrape.
    feed: Mutex<Option<UnboundedReceiver<FleetEvent>>>,
    sessions: Family<PhaseLabels, Gauge>,
    ratios: Arc<UsageRatios>,
    queue_depth: Gauge,
    runtime_calls: Histograms<CallLabels>,
    journal_commits: Histogram,
    /// One scrape at a time: each clears and refills the sampled gauges.
    scrape: tokio::sync::Mutex<()>,
}

/// The fleet's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Metrics with nothing counted yet. Give them the fleet's events with
    /// [`follow`](Self::follow); wrap the runtime in a [`MeteredRuntime`] for call latencies.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let from = FromEvents {
            compactions: Family::default(),
            reductions: Family::new_with_constructor(reduction_histogram),
            rotations: Family::default(),
            dead_letters: Counter::default(),
            summary_tokens: Family::default(),
        };
        registry.register(
            "baton_compactions",
            "Compactions finished, by agent type and outcome",
            from.compactions.clone(),
        );
        registry.register(
            "baton_compaction_reduction_ratio",
            "Share of the context a successful compaction freed (1 - after/before), by agent type",
            from.reductions.clone(),
        );
        registry.register(
            "baton_rotations",
            "Rotations finished, by agent type, reason and outcome",
            from.rotations.clone(),
        );
        registry.register(
            "baton_dead_letters",
            "Work items given up on",
            from.dead_letters.clone(),
        );
        registry.register(
            "baton_summary_tokens",
            "Tokens of the summaries agents wrote: compaction summaries and handoffs",
            from.summary_tokens.clone(),
        );
        let sessions = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "baton_sessions",
            "Live sessions at this scrape, by agent type and phase",
            sessions.clone(),
        );
        let ratios = Arc::new(UsageRatios(Mutex::new(Family::new_with_constructor(
            ratio_histogram,
        ))));
        registry.register_collector(Box::new(ratios.clone()));
        let queue_depth = Gauge::default();
        registry.register(
            "baton_queue_depth",
            "Work items waiting for a session at this scrape",
            queue_depth.clone(),
        );
        let runtime_calls: Histograms<CallLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "baton_runtime_call_duration_seconds",
            "Agent runtime calls, by operation and outcome",
            runtime_calls.clone(),
        );
        let journal_commits = latency_histogram();
        registry.register(
            "baton_journal_commit_duration_seconds",
            "Journal transactions, from the first record written to the commit",
            journal_commits.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                events: from,
                feed: Mutex::new(None),
                sessions,
                ratios,
                queue_depth,
                runtime_calls,
                journal_commits,
                scrape: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Counts the events of `events`, a subscription to the fleet's events: take it from the
    /// supervisor's builder ([`SupervisorBuilder::subscribe`](crate::supervisor::SupervisorBuilder::subscribe)),
    /// before `start`, to count every event. Then call [`spawn_feed`](Self::spawn_feed).
    pub fn follow(&self, events: UnboundedReceiver<FleetEvent>) {
        *self.inner.feed.lock().expect("lock") = Some(events);
    }

    /// Drains the subscription as events arrive, on the current tokio runtime, until the
    /// fleet's event bus closes. Without it, events are counted at each scrape only (and wait
    /// in the subscription meanwhile).
    pub fn spawn_feed(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            // The lock is held only while polling, never across a wait: a scrape drains in
            // between.
            poll_fn(|cx| {
                let mut feed = inner.feed.lock().expect("lock");
                let Some(rx) = feed.as_mut() else {
                    return Poll::Ready(());
                };
                loop {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(event)) => inner.events.apply(&event),
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
        })
    }

    /// Counts every event waiting in the subscription.
    fn drain(&self) {
        let mut feed = self.inner.feed.lock().expect("lock");
        let Some(rx) = feed.as_mut() else { return };
        while let Ok(event) = rx.try_recv() {
            self.inner.events.apply(&event);
        }
    }

    /// Times every commit of `journal` into `baton_journal_commit_duration_seconds` (through
    /// [`Journal::on_commit`], which this takes over).
    pub fn time_commits_of(&self, journal: &Journal) {
        let commits = self.inner.journal_commits.clone();
        journal.on_commit(move |took, _records| commits.observe(took.as_secs_f64()));
    }

    /// Records one runtime call (what [`MeteredRuntime`] does).
    fn observe_call(&self, op: &'static str, ok: bool, took: Duration) {
        self.inner
            .runtime_calls
            .get_or_create(&CallLabels {
                op,
                outcome: if ok { "ok" } else { "error" },
            })
            .observe(took.as_secs_f64());
    }

    /// The exposition: every event published so far counted, the supervisor sampled now.
    pub async fn render(&self, supervisor: &SupervisorHandle) -> Result<String, ApiError> {
        let _one = self.inner.scrape.lock().await;
        self.drain();
        let live = supervisor.sessions().await;
        let inventory = supervisor.inventory().await?;
        let inner = &self.inner;
        inner.sessions.clear();
        let ratios = Family::new_with_constructor(ratio_histogram as fn() -> Histogram);
        for s in &live {
            inner
                .sessions
                .get_or_create(&PhaseLabels {
                    agent_type: s.agent_type.to_string(),
                    phase: phase_name(s.phase).into(),
                })
                .inc();
            if let Some(u) = s.usage {
                ratios
                    .get_or_create(&TypeLabels {
                        agent_type: s.agent_type.to_string(),
                    })
                    .observe(u.ratio());
            }
        }
        *inner.ratios.0.lock().expect("lock") = ratios;
        inner
            .queue_depth
            .set(i64::try_from(inventory.queue.len()).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &inner.registry)
            .map_err(|_| ApiError::new(super::error::ErrorCode::Internal, "metrics encoding"))?;
        Ok(out)
    }
}

/// A phase as a label value.
fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Normal => "normal",
        Phase::Compacting => "compacting",
        Phase::Rotating => "rotating",
        Phase::Closed => "closed",
    }
}

/// An [`AgentRuntime`] that times every call of the one it wraps into
/// `baton_runtime_call_duration_seconds`, and otherwise changes nothing.
pub struct MeteredRuntime {
    inner: Arc<dyn AgentRuntime>,
    metrics: Metrics,
}

impl MeteredRuntime {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn AgentRuntime>, metrics: &Metrics) -> Self {
        Self {
            inner,
            metrics: metrics.clone(),
        }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        let start = Instant::now();
        let result = call.await;
        self.metrics
            .observe_call(op, result.is_ok(), start.elapsed());
        result
    }
}

#[async_trait]
impl AgentRuntime for MeteredRuntime {
    async fn summarise(
        &self,
        session: SessionId,
        purpose: SummaryPurpose,
    ) -> Result<Summary, RuntimeError> {
        self.timed("summarise", self.inner.summarise(session, purpose))
            .await
    }

    async fn replace_history(
        &self,
        session: SessionId,
        summary: &Summary,
    ) -> Result<u64, RuntimeError> {
        self.timed(
            "replace_history",
            self.inner.replace_history(session, summary),
        )
        .await
    }

    async fn close(&self, session: SessionId) -> Result<(), RuntimeError> {
        self.timed("close", self.inner.close(session)).await
    }

    async fn spawn(&self, agent: &AgentType, key: SpawnKey) -> Result<SessionId, RuntimeError> {
        self.timed("spawn", self.inner.spawn(agent, key)).await
    }

    async fn assign(
        &self,
        session: SessionId,
        item: &WorkItem,
        handoff: Option<&Handoff>,
    ) -> Result<(), RuntimeError> {
        self.timed("assign", self.inner.assign(session, item, handoff))
            .await
    }

    async fn usage(&self, session: SessionId) -> Result<Usage, RuntimeError> {
        self.timed("usage", self.inner.usage(session)).await
    }
}

/// The fleet's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 503, description = "The supervisor is shutting down", body = ErrorBody)
    )
)]
async fn metrics(
    metrics: web::Data<Metrics>,
    supervisor: web::Data<SupervisorHandle>,
) -> Result<HttpResponse, ApiError> {
    let text = metrics.render(&supervisor).await?;
    Ok(HttpResponse::Ok()
        .content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
        .body(text))
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(metrics))]
pub struct MetricsApi;

/// Registers `GET /metrics` over `metrics` (the supervisor is the app's own data).
pub fn configure(cfg: &mut web::ServiceConfig, m: &Metrics) {
    cfg.app_data(web::Data::new(m.clone()))
        .route("/metrics", web::get().to(metrics));
}

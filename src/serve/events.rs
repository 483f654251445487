//! Events over HTTP: the journal's event log as a paged list (`GET /v1/events`), and every
//! event as it becomes durable as a server-sent events stream (`GET /v1/events/stream`) that
//! resumes from the journal.
//!
//! # The stream
//!
//! One [`EventHub`] per server subscribes to the supervisor's sequenced events
//! ([`SupervisorHandle::subscribe_sequenced`]) and fans them out over a bounded
//! [`tokio::sync::broadcast`] channel: every open stream shares the one buffer, so many streams
//! cost little and none can make the server hold more than [`EventsConfig::buffer`] events.
//!
//! A stream opened without a position starts with the next live event. A stream that resumes
//! (`Last-Event-ID: N`, or `?after=N`; `?after=0` replays the whole log) sends every event with
//! a sequence number above `N` exactly once, in order:
//!
//! 1. it subscribes to the hub first;
//! 2. it reads the journal's log after `N` a page at a time (an event is committed to the
//!    journal before the hub sees it, so whatever the hub delivered before the subscription is
//!    in the log), subscribing afresh before each page so that a long backlog never lags the
//!    subscription;
//! 3. it then forwards the live events numbered above the last one it sent, skipping those
//!    the backlog held already.
//!
//! A client that reads too slowly to keep up with the live events (it is more than
//! [`EventsConfig::buffer`] events behind) is not buffered for: its stream ends with a comment
//! saying so, and the client reconnects with `Last-Event-ID`, which replays what it missed
//! from the journal. Without a journal there is nothing to replay: a resumed stream starts with
//! the next live event.
//!
//! # On a cluster node
//!
//! The list reads the shared log (every node's events) on connections of its own
//! ([`EventReaders`]), and so does the stream: a hub made with [`EventHub::cluster`] does not
//! publish the local supervisor's events. A thread of its own (`baton-events-feed`) does
//! `LISTEN baton_events` on a connection of its own and, at each notification (and at least
//! every [`FEED_FALLBACK`], for a notification missed while it reconnected), reads the rows above
//! the last one it published from the shared log, in `seq` order, and publishes them. Every
//! transaction that writes events takes the events lock until it commits, so `seq` order is
//! commit order across the nodes: a read of `seq > last` never skips a row that commits later.
//! So every stream on every node carries every node's events, in `seq` order, each once, and
//! the backlog and the live part read the same log.
//!
//! Only published events (the library's [`FleetEvent`]s) are streamed; the paged list also
//! holds the supervisor's own steps (`work_item_submitted`, `rotation_started`, ...) as
//! `baton log` shows them, which is why sequence numbers on the stream can skip.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::cluster::EventReaders;
use super::error::{ApiError, ErrorBody};
use super::sse;
use crate::cluster::ClusterError;
use crate::journal::{
    EventRow, Filter, JournalError, JournalReader, JournalTarget, PgUrl, Timestamp,
};
use crate::policy::RotationReason;
use crate::record::{FleetEvent, Sequenced};
use crate::supervisor::SupervisorHandle;
use crate::vocab::{SessionId, WorkItemId};

/// One event of the log or the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Its sequence number: its row in the journal's event log (without a journal, its count
    /// on the fleet's event bus). Rises strictly; may skip.
    pub seq: u64,
    /// When it was recorded (RFC 3339, UTC, milliseconds).
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The event's kind (`session_started`, `transition`, `compaction`, `rotation`, ...), or,
    /// in the list only, a supervisor step (`work_item_submitted`, `rotation_started`, ...).
    pub kind: String,
    /// The session it is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// The work item it is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_item: Option<u64>,
    /// The record: the library's `FleetEvent` JSON (`{"KIND": {...}}`), or a step's record.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl Event {
    /// The event a journal row holds.
    pub fn from_row(row: EventRow) -> Self {
        Self {
            seq: row.seq,
            at: row.at,
            kind: row.kind,
            session: row.session.map(|s| s.0),
            work_item: row.work_item.map(|w| w.0),
            payload: row.payload,
        }
    }
}

/// A page of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// The `after` for the next page: the last listed event's `seq` (the request's own `after`
    /// when none was listed).
    pub next_after: u64,
}

/// How the event routes behave; the defaults suit production.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Live events held for streams at most (shared by all of them); a stream further behind
    /// than this is ended.
    pub buffer: usize,
    /// Rows read from the journal at a time while a stream catches up.
    pub page: usize,
    /// How often an idle stream sends a comment line, so that proxies keep it open.
    pub keep_alive: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            buffer: 4096,
            page: 500,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Closed sessions remembered for the work item of their late events (a close that failed at
/// the runtime is reported after the session closed).
const CLOSED_REMEMBERED: usize = 4096;

/// The fan-out of live events to every open stream. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    /// Shared by every clone and by the forwarding thread (weakly).
    inner: Arc<HubInner>,
}

struct HubInner {
    /// Where live events are offered to streams.
    tx: broadcast::Sender<Arc<Event>>,
    /// The fleet (its journal is the backlog).
    supervisor: SupervisorHandle,
    /// The routes' settings.
    config: EventsConfig,
    /// Cancelled by [`EventHub::close`]: every stream ends.
    closed: CancellationToken,
    /// On a cluster node: the shared log's readers, for the streams' backlogs.
    shared: Option<EventReaders>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("streams", &self.inner.tx.receiver_count())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl EventHub {
    /// A hub over `supervisor`'s events with the default [`EventsConfig`].
    pub fn new(supervisor: &SupervisorHandle) -> Self {
        Self::with_config(supervisor, EventsConfig::default())
    }

    /// A hub over `supervisor`'s events. It subscribes now and forwards from a thread of its
    /// own (`baton-events`), so it needs no async runtime; the thread ends with the fleet's
    /// event bus or with the last clone of the hub.
    pub fn with_config(supervisor: &SupervisorHandle, config: EventsConfig) -> Self {
        let inner = HubInner::new(supervisor, config, None);
        let rx = supervisor.subscribe_sequenced();
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("baton-events".into())
            .spawn(move || forward(rx, weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the event stream's thread could not start");
        }
        Self { inner }
    }

    /// A hub for a node of a cluster whose database is at `url`: its streams carry every node's
    /// events, read from the shared log (see the module's notes), and not the local
    /// supervisor's as it publishes them (they reach the log, and come back from it, like any
    /// node's). Connects now, from a thread of its own (`baton-events-feed`), and fails if the
    /// database cannot be reached; later failures are retried. The thread ends with
    /// [`close`](Self::close) or with the last clone of the hub.
    pub fn cluster(
        supervisor: &SupervisorHandle,
        url: &str,
        config: EventsConfig,
    ) -> Result<Self, ClusterError> {
        let target = JournalTarget::Postgres(PgUrl::parse(url).map_err(ClusterError::Journal)?);
        let shared = EventReaders::new(url, SHARED_READERS).map_err(ClusterError::Journal)?;
        let inner = HubInner::new(supervisor, config, Some(shared));
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        let (weak, url, page) = (Arc::downgrade(&inner), url.to_owned(), inner.config.page);
        std::thread::Builder::new()
            .name("baton-events-feed".into())
            .spawn(move || {
                let feed = match Feed::start(url, target, page) {
                    Ok(feed) => {
                        let _ = started_tx.send(Ok(()));
                        feed
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                feed.run(&weak);
            })
            .map_err(|e| ClusterError::Task(e.to_string()))?;
        started
            .recv()
            .map_err(|_| ClusterError::Task("the event feed's thread ended at start".into()))??;
        Ok(Self { inner })
    }

    /// Ends every open stream (at shutdown, so that the server need not wait for them).
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// Up to `limit` log rows that match `filter`: the first ones with `seq > after`, or
    /// without `after` the latest ones (oldest first either way), read with a
    /// [`JournalReader`] for a journal file (the writer is not disturbed) or through the
    /// journal for one in memory. `None` without a journal.
    async fn log(
        &self,
        mut filter: Filter,
        after: Option<u64>,
        limit: usize,
    ) -> Option<Result<Vec<EventRow>, JournalError>> {
        filter.after = after;
        filter.limit = Some(limit);
        if let Some(shared) = &self.inner.shared {
            return Some(shared.events(filter).await);
        }
        let journal = self.inner.supervisor.journal()?.clone();
        let Some(path) = journal.path().map(|p| p.to_path_buf()) else {
            return Some(journal.read(move |v| v.events(&filter)).await);
        };
        let read = tokio::task::spawn_blocking(move || {
            // A reader opened between two commits may see the file change under it: it says
            // so, and a new one reads consistently.
            let mut tries = 0;
            loop {
                tries += 1;
                match JournalReader::open(&path).and_then(|r| r.view().events(&filter)) {
                    Err(JournalError::Changed(_)) if tries < 5 => continue,
                    other => return other,
                }
            }
        })
        .await;
        Some(read.unwrap_or(Err(JournalError::Closed)))
    }
}

impl HubInner {
    fn new(
        supervisor: &SupervisorHandle,
        mut config: EventsConfig,
        shared: Option<EventReaders>,
    ) -> Arc<Self> {
        config.buffer = config.buffer.max(1);
        config.page = config.page.clamp(1, MAX_LIMIT);
        let (tx, _) = broadcast::channel(config.buffer);
        Arc::new(Self {
            tx,
            supervisor: supervisor.clone(),
            config,
            closed: CancellationToken::new(),
            shared,
        })
    }

    /// Whether the hub is closed.
    fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// Connections a cluster hub reads streams' backlogs on, at most.
const SHARED_READERS: usize = 4;

/// The channel every transaction that writes events notifies (at its commit).
pub const EVENTS_CHANNEL: &str = "baton_events";

/// A cluster hub's feed reads the shared log at least this often, notified or not: a
/// notification sent while its `LISTEN` connection was being opened again is not lost for long.
pub const FEED_FALLBACK: Duration = Duration::from_secs(1);

/// How long the feed waits for a notification before it looks whether the hub is gone.
const FEED_TICK: Duration = Duration::from_millis(250);

/// How long opening one of the feed's connections may take.
const FEED_CONNECT: Duration = Duration::from_secs(5);

/// A cluster hub's feed: the shared log's rows above the last one published, published in `seq`
/// order, each once.
struct Feed {
    /// The database, for the `LISTEN` connection.
    url: String,
    /// The database, for the reader.
    target: JournalTarget,
    /// `LISTEN baton_events`; `None` while it must be opened again.
    listener: Option<postgres::Client>,
    /// Reads the log; `None` while it must be opened again.
    reader: Option<JournalReader>,
    /// The last `seq` published (or, at start, the log's last when the feed started).
    last: u64,
    /// Rows read at a time.
    page: usize,
}

impl Feed {
    /// Listens, then notes where the log ends: what commits later is published.
    fn start(url: String, target: JournalTarget, page: usize) -> Result<Self, ClusterError> {
        let listener = Self::listen(&url)?;
        let reader = JournalReader::open_target(&target).map_err(ClusterError::Journal)?;
        let latest = reader
            .view()
            .events(&Filter {
                limit: Some(1),
                ..Filter::default()
            })
            .map_err(ClusterError::Journal)?;
        Ok(Self {
            url,
            target,
            listener: Some(listener),
            reader: Some(reader),
            last: latest.last().map_or(0, |r| r.seq),
            page,
        })
    }

    /// A connection that listens on [`EVENTS_CHANNEL`].
    fn listen(url: &str) -> Result<postgres::Client, ClusterError> {
        let mut client = crate::cluster::connect(url, FEED_CONNECT)?;
        client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}"))?;
        Ok(client)
    }

    /// Publishes what the log holds above `last`, a page at a time, until it is read to its end.
    fn catch_up(&mut self, hub: &HubInner) -> Result<(), JournalError> {
        if self.reader.is_none() {
            self.reader = Some(JournalReader::open_target(&self.target)?);
        }
        let reader = self.reader.as_ref().expect("opened above");
        loop {
            let read = reader.view().events(&Filter {
                after: Some(self.last),
                limit: Some(self.page),
                ..Filter::default()
            });
            let rows = match read {
                // A row no baton wrote: logged and stepped over, so that it cannot stop every
                // node's streams (the rows before it in this page come again at the next read).
                Err(JournalError::BadRow {
                    table: "events",
                    row,
                    message,
                }) if row > 0 && row as u64 > self.last => {
                    tracing::error!(seq = row, %message, "an unreadable event in the shared log; the streams skip it");
                    publish_before(reader, &mut self.last, row as u64, hub)?;
                    self.last = row as u64;
                    continue;
                }
                other => other?,
            };
            let n = rows.len();
            for row in rows {
                publish(hub, &mut self.last, row);
            }
            if n < self.page {
                return Ok(());
            }
        }
    }

    /// Waits up to [`FEED_TICK`] for a notification: whether one came (all pending ones are
    /// taken). A failed connection is dropped, to be opened again.
    fn notified(&mut self) -> bool {
        let Some(client) = self.listener.as_mut() else {
            return false;
        };
        let next = {
            let mut notifications = client.notifications();
            let mut it = notifications.timeout_iter(FEED_TICK);
            postgres::fallible_iterator::FallibleIterator::next(&mut it).map(|n| n.is_some())
        };
        match next {
            Ok(true) => {
                // Those sent meanwhile are covered by the one read.
                let mut notifications = client.notifications();
                let mut pending = notifications.iter();
                while let Ok(Some(_)) =
                    postgres::fallible_iterator::FallibleIterator::next(&mut pending)
                {
                }
                true
            }
            Ok(false) if client.is_closed() => {
                tracing::warn!("the event feed's connection closed; reconnecting");
                self.listener = None;
                false
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "the event feed's connection failed; reconnecting");
                self.listener = None;
                false
            }
        }
    }

    /// Feeds `hub` until it is closed or gone.
    fn run(mut self, hub: &Weak<HubInner>) {
        let mut read_at = std::time::Instant::now();
        let mut due = false;
        loop {
            // The hub is held only while publishing: the feed never keeps it alive.
            match hub.upgrade() {
                Some(h) if !h.is_closed() => {
                    if due || read_at.elapsed() >= FEED_FALLBACK {
                        read_at = std::time::Instant::now();
                        due = false;
                        if let Err(e) = self.catch_up(&h) {
                            tracing::warn!(error = %e, last = self.last, "the event feed could not read the shared log; retrying");
                            self.reader = None;
                        }
                    }
                }
                _ => return,
            }
            if self.listener.is_none() {
                match Self::listen(&self.url) {
                    Ok(client) => {
                        self.listener = Some(client);
                        // What was notified while it was away is read now.
                        due = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the event feed cannot listen; retrying");
                        std::thread::sleep(FEED_FALLBACK);
                    }
                }
                continue;
            }
            due |= self.notified();
        }
    }
}

/// The forwarding thread: numbers in, [`Event`]s out to the broadcast, until the bus or the
/// hub is gone.
fn forward(mut rx: tokio::sync::mpsc::UnboundedReceiver<Sequenced>, hub: Weak<HubInner>) {
    let mut subjects = Subjects::default();
    while let Some(sequenced) = rx.blocking_recv() {
        let Some(hub) = hub.upgrade() else { return };
        let event = subjects.event(sequenced);
        // No stream open: nothing to do (the journal keeps it).
        let _ = hub.tx.send(Arc::new(event));
    }
}

/// Which work item each session holds, for the events that name only the session (as the
/// journal's log fills in from its tables).
#[derive(Default)]
struct Subjects {
    /// Live sessions and recently closed ones.
    items: HashMap<SessionId, WorkItemId>,
    /// Closed sessions, oldest first, forgotten past [`CLOSED_REMEMBERED`].
    closed: VecDeque<SessionId>,
}

impl Subjects {
    /// The [`Event`] of a live event.
    fn event(&mut self, s: Sequenced) -> Event {
        let (session, work_item) = match &s.event {
            FleetEvent::SessionStarted {
                session, work_item, ..
            } => {
                self.items.insert(*session, *work_item);
                (Some(*session), Some(*work_item))
            }
            FleetEvent::Transition(t) => {
                let item = self.items.get(&t.session).copied();
                if t.to == crate::machine::Phase::Closed {
                    self.closed.push_back(t.session);
                    if self.closed.len() > CLOSED_REMEMBERED
                        && let Some(old) = self.closed.pop_front()
                    {
                        self.items.remove(&old);
                    }
                }
                (Some(t.session), item)
            }
            FleetEvent::RuntimeWarning { session, .. } => {
                (Some(*session), self.items.get(session).copied())
            }
            FleetEvent::Compaction(c) => (Some(c.session), Some(c.work_item)),
            FleetEvent::Rotation(r) => (Some(r.old_session), Some(r.work_item)),
            FleetEvent::Crashed {
                session, work_item, ..
            }
            | FleetEvent::WorkItemDone { session, work_item } => (Some(*session), Some(*work_item)),
            FleetEvent::WorkItemRequeued { work_item, .. }
            | FleetEvent::DeadLetter { work_item, .. } => (None, Some(*work_item)),
            FleetEvent::Recovered { work_item, outcome } => {
                use crate::record::RecoveryOutcome as R;
                let session = match outcome {
                    R::Queued => None,
                    R::Requeued { session } | R::RotationResumed { session, .. } => Some(*session),
                };
                (session, Some(*work_item))
            }
            FleetEvent::Rejected { session, .. } => (*session, None),
            FleetEvent::AgentTypeHalted { .. } | FleetEvent::JournalFailed { .. } => (None, None),
        };
        let payload = serde_json::to_value(&s.event).unwrap_or(serde_json::Value::Null);
        // Externally tagged: the payload's one key is the kind.
        let kind = payload
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        Event {
            seq: s.seq,
            at: s.at,
            kind,
            session: session.map(|s| s.0),
            work_item: work_item.map(|w| w.0),
            payload,
        }
    }
}

/// Rows per page at most.
const MAX_LIMIT: usize = 1000;
/// Rows per page when the request does not say.
const DEFAULT_LIMIT: usize = 100;

/// The filters of `GET /v1/events` (those of `baton log`).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only events with a sequence number above this, the first `limit` of them (0: from the
    /// start). Without it, the latest `limit` events.
    pub after: Option<u64>,
    /// Only events about this session.
    pub session: Option<u64>,
    /// Only events about this work item.
    pub work_item: Option<u64>,
    /// Only events about sessions or work items of this agent type.
    pub agent_type: Option<String>,
    /// Only the events of rotations for this reason: `threshold`, `insufficient_compaction`,
    /// `compaction_failed`, `compaction_budget`, `manual` or `overflow`.
    #[param(value_type = Option<String>)]
    pub reason: Option<RotationReason>,
    /// Only events recorded at or after this time: RFC 3339 UTC, `YYYY-MM-DD`, or an age before
    /// now (`90s`, `30m`, `2h`, `7d`), as `baton log` takes it.
    pub since: Option<String>,
    /// Only events recorded at or before this time (the same forms).
    pub until: Option<String>,
    /// Events per page: default 100, at most 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A time filter's value, or 400.
fn time(name: &str, text: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    text.map(|t| {
        Timestamp::parse_or_age(t, Timestamp::now())
            .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
    })
    .transpose()
}

/// The journal's failure as the client sees it.
fn journal_error(e: JournalError) -> ApiError {
    tracing::warn!(error = %e, "reading the event log failed");
    ApiError::unavailable("the journal could not be read")
}

/// The journal's event log, a page at a time, with the filters of `baton log`.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the event log, oldest first", body = EventPage),
        (status = 400, description = "A filter out of range or malformed", body = ErrorBody),
        (status = 409, description = "The server runs without a journal", body = ErrorBody),
        (status = 503, description = "The journal could not be read", body = ErrorBody)
    )
)]
async fn list(
    hub: web::Data<EventHub>,
    readers: Option<web::Data<EventReaders>>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<EventPage>, ApiError> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let filter = Filter {
        session: q.session.map(SessionId),
        work_item: q.work_item.map(WorkItemId),
        agent_type: q.agent_type,
        reason: q.reason,
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
        limit: None,
        after: None,
    };
    let rows = match readers {
        // On a cluster node: the shared log, every node's events, on connections of its own.
        Some(readers) => readers
            .events(Filter {
                after: q.after,
                limit: Some(limit),
                ..filter
            })
            .await
            .map_err(journal_error)?,
        None => hub
            .log(filter, q.after, limit)
            .await
            .ok_or_else(|| ApiError::conflict("the server runs without a journal (--no-journal)"))?
            .map_err(journal_error)?,
    };
    let events: Vec<Event> = rows.into_iter().map(Event::from_row).collect();
    let next_after = events.last().map_or(q.after.unwrap_or(0), |e| e.seq);
    Ok(web::Json(EventPage { events, next_after }))
}

/// Where a stream starts: after the `Last-Event-ID` header's number, else after `?after=`, else
/// with the next live event.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this sequence number (the `Last-Event-ID` header, when sent, wins).
    pub after: Option<u64>,
}

/// Every event as it becomes durable, as server-sent events; resumes with `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence number")
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id:` the sequence number, `event:` the kind, `data:` the Event JSON; a comment line every 15 s", content_type = "text/event-stream", body = Event),
        (status = 400, description = "A malformed Last-Event-ID or after", body = ErrorBody)
    )
)]
async fn stream(
    req: HttpRequest,
    hub: web::Data<EventHub>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a sequence number"))
        })
        .transpose()?;
    let after = header.or(query.after);
    let follow = Follow::new(hub.get_ref().clone(), after);
    let body = futures_util::stream::unfold(follow, |mut f| async move {
        f.next().await.map(|b| (Ok::<_, Infallible>(b), f))
    });
    Ok(HttpResponse::Ok()
        .content_type(sse::CONTENT_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// Where a stream is.
enum Stage {
    /// Reading the journal's log after the last event sent.
    Backlog,
    /// Forwarding live events.
    Live,
    /// Ended.
    Done,
}

/// One open stream's state.
struct Follow {
    /// The fan-out.
    hub: EventHub,
    /// Its subscription.
    rx: broadcast::Receiver<Arc<Event>>,
    /// The last sequence number sent (or the one to resume after).
    last: u64,
    /// Where it is.
    stage: Stage,
    /// Frames ready to send.
    ready: VecDeque<Bytes>,
    /// When to send the next keep-alive.
    keep_alive: tokio::time::Interval,
}

impl Follow {
    /// A stream that resumes after `after`, or (`None`) starts with the next live event.
    fn new(hub: EventHub, after: Option<u64>) -> Self {
        // Subscribed before anything is read: nothing falls between the backlog and the live.
        let rx = hub.inner.tx.subscribe();
        let period = hub.inner.config.keep_alive;
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let logged = hub.inner.shared.is_some() || hub.inner.supervisor.journal().is_some();
        let stage = if after.is_some() && logged {
            Stage::Backlog
        } else {
            Stage::Live
        };
        Self {
            hub,
            rx,
            last: after.unwrap_or(0),
            stage,
            ready: VecDeque::new(),
            keep_alive,
        }
    }

    /// Queues `event` if it is past the last one sent.
    fn push(&mut self, event: &Event) {
        if event.seq <= self.last {
            return;
        }
        self.last = event.seq;
        match serde_json::to_string(event) {
            Ok(data) => self
                .ready
                .push_back(sse::event(event.seq, &event.kind, &data)),
            Err(e) => tracing::error!(seq = event.seq, error = %e, "an event could not be encoded"),
        }
    }

    /// The next frame, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(frame);
            }
            match self.stage {
                Stage::Done => return None,
                Stage::Backlog => self.backlog().await,
                Stage::Live => self.live().await,
            }
        }
    }

    /// Reads one page of the backlog; switches to live when it is empty.
    async fn backlog(&mut self) {
        // A fresh subscription before each page: events the hub delivers from now on are in
        // it, and those it delivered before are in the log, so a long backlog never lags.
        self.rx = self.hub.inner.tx.subscribe();
        let page = self.hub.inner.config.page;
        let read = tokio::select! {
            read = self.hub.log(Filter::default(), Some(self.last), page) => read,
            () = self.hub.inner.closed.cancelled() => {
                self.stage = Stage::Done;
                return;
            }
        };
        match read {
            None => self.stage = Stage::Live,
            Some(Err(e)) => {
                tracing::warn!(error = %e, after = self.last, "an event stream's backlog could not be read");
                self.ready
                    .push_back(sse::comment("the journal could not be read; reconnect"));
                self.stage = Stage::Done;
            }
            Some(Ok(rows)) if rows.is_empty() => self.stage = Stage::Live,
            Some(Ok(rows)) => {
                for row in rows {
                    let seq = row.seq;
                    // Published events only: supervisor steps are in the list, not the stream.
                    if row.event().is_some() {
                        self.push(&Event::from_row(row));
                    }
                    self.last = self.last.max(seq);
                }
            }
        }
    }

    /// Waits for a live event, a keep-alive or the end.
    async fn live(&mut self) {
        tokio::select! {
            got = self.rx.recv() => match got {
                Ok(event) => self.push(&event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, last = self.last, "an event stream fell behind and was ended");
                    self.ready.push_back(sse::comment(&format!(
                        "this stream fell {missed} events behind and ends: reconnect with Last-Event-ID: {}",
                        self.last
                    )));
                    self.stage = Stage::Done;
                }
                Err(RecvError::Closed) => self.stage = Stage::Done,
            },
            _ = self.keep_alive.tick() => self.ready.push_back(sse::comment("keep-alive")),
            () = self.hub.inner.closed.cancelled() => self.stage = Stage::Done,
        }
    }
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(list, stream), components(schemas(Event, EventPage)))]
pub struct EventsApi;

/// Registers `GET /v1/events` and `GET /v1/events/stream` over `hub`.
pub fn configure(cfg: &mut web::ServiceConfig, hub: &EventHub) {
    cfg.app_data(web::Data::new(hub.clone()))
        .route("/v1/events", web::get().to(list))
        .route("/v1/events/stream", web::get().to(stream));
}

/// Publishes the log's rows above `last` and below `bad` one at a time (a page that holds `bad`
/// cannot be read whole), moving `last` on.
fn publish_before(
    reader: &JournalReader,
    last: &mut u64,
    bad: u64,
    hub: &HubInner,
) -> Result<(), JournalError> {
    while *last + 1 < bad {
        let rows = reader.view().events(&Filter {
            after: Some(*last),
            limit: Some(1),
            ..Filter::default()
        })?;
        match rows.into_iter().next() {
            Some(row) if row.seq < bad => publish(hub, last, row),
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Sends `row` to the hub's streams if it is above `last` and a published event (supervisor
/// steps are in the list, not the stream, as the backlog sends them), and moves `last` on.
fn publish(hub: &HubInner, last: &mut u64, row: EventRow) {
    let seq = row.seq;
    if seq > *last && row.event().is_some() {
        // No stream open: nothing to do (the log keeps it).
        let _ = hub.tx.send(Arc::new(Event::from_row(row)));
    }
    *last = (*last).max(seq);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::memory::MemoryRuntime;
    use crate::supervisor::Supervisor;
    use crate::vocab::{AgentType, WorkItem};

    fn fleet() -> SupervisorHandle {
        Supervisor::builder(Arc::new(MemoryRuntime::default()))
            .agent_type(AgentType::new("coder", 1000))
            .start()
    }

    fn work(id: u64) -> WorkItem {
        WorkItem {
            id: WorkItemId(id),
            agent_type: "coder".into(),
            text: format!("item {id}"),
        }
    }

    #[actix::test]
    async fn a_stream_that_falls_further_behind_than_the_buffer_is_ended_with_a_note() {
        let sup = fleet();
        let config = EventsConfig {
            buffer: 2,
            ..EventsConfig::default()
        };
        let hub = EventHub::with_config(&sup, config);
        let mut follow = Follow::new(hub.clone(), Some(0));
        let mut probe = hub.inner.tx.subscribe();
        for id in 1..=3 {
            sup.submit(work(id)).await.unwrap();
        }
        // Until the hub has offered more events than the buffer holds.
        let mut offered = 0;
        while offered < 3 {
            match tokio::time::timeout(Duration::from_secs(10), probe.recv())
                .await
                .expect("the hub forwards events")
            {
                Ok(_) => offered += 1,
                Err(RecvError::Lagged(n)) => offered += n,
                Err(RecvError::Closed) => panic!("the hub closed"),
            }
        }
        let note = follow.next().await.expect("a closing note");
        let note = String::from_utf8_lossy(&note);
        assert!(note.starts_with(": this stream fell"), "{note}");
        assert!(note.contains("Last-Event-ID: 0"), "{note}");
        assert_eq!(follow.next().await, None, "the stream ended");
        sup.shutdown(Duration::from_secs(5)).await;
    }

    #[actix::test]
    async fn an_idle_stream_sends_a_comment_each_keep_alive_period_and_ends_on_close() {
        tokio::time::pause();
        let sup = fleet();
        let hub = EventHub::new(&sup);
        let mut follow = Follow::new(hub.clone(), Some(0));
        let start = tokio::time::Instant::now();
        for n in 1..=2 {
            assert_eq!(follow.next().await, Some(sse::comment("keep-alive")));
            // The timer's millisecond granularity may add one.
            let at = start.elapsed();
            let due = Duration::from_secs(15 * n);
            assert!(at >= due && at <= due + Duration::from_millis(5), "{at:?}");
        }
        hub.close();
        assert_eq!(follow.next().await, None);
        sup.shutdown(Duration::from_secs(5)).await;
    }
}

//! `GET /v1/events/stream` and `GET /v1/events` read over HTTP, for the cluster tests that
//! compare a node's stream with the shared log.

use std::time::Duration;

use baton::FleetEvent;
use baton::serve::events::EventPage;
use serde_json::Value;

/// One event of a stream: its `id:` (the `seq`), its `event:` (the kind) and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub seq: u64,
    pub kind: String,
    pub data: Value,
}

/// Reads server-sent events from `GET /v1/events/stream` on a node.
pub struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    /// Opens the stream at `base` with `token`, resuming after `last_event_id` when given.
    pub async fn open(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> Self {
        let mut req = http
            .get(format!("{base}/v1/events/stream"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped); the wait is bounded as a safety net only.
    pub async fn next(&mut self) -> Frame {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                let (mut seq, mut kind, mut data) = (None, String::new(), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        seq = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if let Some(seq) = seq {
                    let data = serde_json::from_str(&data).unwrap();
                    return Frame { seq, kind, data };
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("the stream sends the awaited event")
                .expect("the stream failed")
                .expect("the stream ended early");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events up to and including the first that `done` accepts.
    pub async fn until(&mut self, done: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let frame = self.next().await;
            let last = done(&frame);
            out.push(frame);
            if last {
                return out;
            }
        }
    }
}

/// Whether `frame` is item `id`'s `work_item_done`.
pub fn done(id: u64) -> impl Fn(&Frame) -> bool {
    move |f| f.kind == "work_item_done" && f.data["work_item"] == id
}

/// The published events (those a stream sends), as `(seq, kind)`, of the shared log with
/// `after < seq <= upto`, read through `GET /v1/events` at `base`.
pub async fn published(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    after: u64,
    upto: u64,
) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut from = after;
    loop {
        let page: EventPage = super::get_json(
            http,
            &format!("{base}/v1/events?after={from}&limit=1000"),
            token,
        )
        .await;
        if page.events.is_empty() {
            return out;
        }
        for e in page.events {
            if e.seq > upto {
                return out;
            }
            if serde_json::from_value::<FleetEvent>(e.payload.clone()).is_ok() {
                out.push((e.seq, e.kind));
            }
        }
        from = page.next_after;
    }
}

/// `(seq, kind)` of each frame.
pub fn seqs_and_kinds(frames: &[Frame]) -> Vec<(u64, String)> {
    frames.iter().map(|f| (f.seq, f.kind.clone())).collect()
}

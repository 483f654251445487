//! `GET /v1/events` and `GET /v1/events/stream` against a real server (127.0.0.1:0) over a
//! `MemoryRuntime` fleet: the stream's ids are the journal's seq, a resumed stream gives every
//! later event once, the paged list filters and pages, and without a journal the list is 409.

mod serve_common;

use baton::serve::events::{EventPage, EventsConfig};
use serve_common::{Frame, Served, SseReader, done, published};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_every_event_in_order_with_the_journal_seq_as_its_id() {
    let mut served = Served::start(true, &["coder"], EventsConfig::default()).await;
    let mut stream = SseReader::open(&served, None, "?after=0").await;
    let (_, successor) = served.compact_and_rotate(1, "coder").await;
    served.finish(successor, 1).await;
    let got = stream.until(done(1)).await;

    let log = published(served.log().await);
    let listed: Vec<(u64, String)> = log.iter().map(|r| (r.seq, r.kind.clone())).collect();
    let streamed: Vec<(u64, String)> = got.iter().map(|(id, k, _)| (*id, k.clone())).collect();
    assert_eq!(
        streamed, listed,
        "the stream is the journal's log of events"
    );
    for ((id, kind, data), row) in got.iter().zip(&log) {
        assert_eq!(data["seq"], *id, "data.seq is the id");
        assert_eq!(data["kind"], kind.as_str());
        assert_eq!(
            data["payload"], row.payload,
            "seq {id}: the payload as logged"
        );
        assert_eq!(data["session"], serde_json::json!(row.session.map(|s| s.0)));
        assert_eq!(
            data["work_item"],
            serde_json::json!(row.work_item.map(|w| w.0))
        );
    }
    assert!(streamed.iter().any(|(_, k)| k == "compaction"));
    assert!(streamed.iter().any(|(_, k)| k == "rotation"));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_with_last_event_id_gives_every_later_event_once() {
    let mut served = Served::start(true, &["coder"], EventsConfig::default()).await;
    let (_, s1) = served.compact_and_rotate(1, "coder").await;
    served.finish(s1, 1).await;
    let log = published(served.log().await);
    let cut = log[3].seq;

    // Resumed from the middle of the backlog; item 2 then runs live.
    let mut by_header = SseReader::open(&served, Some(cut), "").await;
    let mut by_query = SseReader::open(&served, None, &format!("?after={cut}")).await;
    let (_, s2) = served.compact_and_rotate(2, "coder").await;
    served.finish(s2, 2).await;
    let expected: Vec<u64> = published(served.log().await)
        .iter()
        .map(|r| r.seq)
        .filter(|s| *s > cut)
        .collect();
    for stream in [&mut by_header, &mut by_query] {
        let ids: Vec<u64> = stream.until(done(2)).await.iter().map(|e| e.0).collect();
        assert_eq!(ids, expected, "every event after {cut}, once, in order");
    }

    // A client that saw everything resumes to nothing old: the next event it gets is new.
    let last = *expected.last().unwrap();
    // So does a stream opened without a position: it starts with the next live event.
    let mut caught_up = SseReader::open(&served, Some(last), "").await;
    let mut fresh = SseReader::open(&served, None, "").await;
    served
        .supervisor
        .submit(serve_common::item(3, "coder"))
        .await
        .unwrap();
    for stream in [&mut caught_up, &mut fresh] {
        let Some(Frame::Event { id, kind, .. }) = stream.next().await else {
            panic!("an event");
        };
        assert!(id > last, "{id} after {last}");
        assert_eq!(kind, "session_started");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_last_event_id_is_a_400() {
    let served = Served::start(true, &["coder"], EventsConfig::default()).await;
    let r = served
        .get("/v1/events/stream")
        .header("Last-Event-ID", "seven")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    served.stop().await;
}

async fn page(served: &Served, query: &str) -> EventPage {
    let r = served
        .get(&format!("/v1/events{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paged_list_filters_like_baton_log_and_pages_with_next_after() {
    let mut served = Served::start(true, &["coder", "writer"], EventsConfig::default()).await;
    let (old1, s1) = served.compact_and_rotate(1, "coder").await;
    served.finish(s1, 1).await;
    let (_, s2) = served.compact_and_rotate(2, "writer").await;
    served.finish(s2, 2).await;
    let log = served.log().await;

    // Pages of 5 walk the whole log, steps included, each row once.
    let mut after = 0;
    let mut walked = Vec::new();
    loop {
        let p = page(&served, &format!("?limit=5&after={after}")).await;
        assert!(p.events.len() <= 5);
        if p.events.is_empty() {
            assert_eq!(p.next_after, after, "an empty page keeps its place");
            break;
        }
        assert_eq!(p.next_after, p.events.last().unwrap().seq);
        after = p.next_after;
        walked.extend(p.events);
    }
    let seqs: Vec<u64> = walked.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, log.iter().map(|r| r.seq).collect::<Vec<_>>());
    assert!(
        walked.iter().any(|e| e.kind == "work_item_submitted"),
        "steps are listed"
    );

    // Without `after`: the latest `limit` rows, oldest first, as `baton log --limit`.
    let latest = page(&served, "?limit=3").await;
    let tail: Vec<u64> = log[log.len() - 3..].iter().map(|r| r.seq).collect();
    assert_eq!(
        latest.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        tail
    );
    assert_eq!(latest.next_after, *tail.last().unwrap());
    assert_eq!(page(&served, "").await.events.len(), log.len().min(100));

    let by_session = page(&served, &format!("?session={}", old1.0)).await;
    assert!(!by_session.events.is_empty());
    assert!(by_session.events.iter().all(|e| e.session == Some(old1.0)));

    let by_item = page(&served, "?work_item=2").await;
    assert!(!by_item.events.is_empty());
    assert!(by_item.events.iter().all(|e| e.work_item == Some(2)));

    let by_type = page(&served, "?agent_type=writer&limit=1000").await;
    let expected: Vec<u64> = log
        .iter()
        .filter(|r| r.work_item.map(|w| w.0) == Some(2))
        .map(|r| r.seq)
        .collect();
    let typed: Vec<u64> = by_type.events.iter().map(|e| e.seq).collect();
    assert_eq!(typed, expected, "the writer's events are item 2's");

    let threshold = page(&served, "?reason=threshold").await;
    assert!(threshold.events.iter().any(|e| e.kind == "rotation"));
    assert!(
        threshold
            .events
            .iter()
            .all(|e| e.kind.starts_with("rotation") || e.kind == "transition"),
        "{:?}",
        threshold.events
    );
    assert!(page(&served, "?reason=manual").await.events.is_empty());

    assert!(page(&served, "?until=2000-01-01").await.events.is_empty());
    assert_eq!(
        page(&served, "?since=2000-01-01&limit=1000")
            .await
            .events
            .len(),
        log.len()
    );
    // Ages, as `baton log` takes them: everything here was recorded within the last day.
    assert_eq!(
        page(&served, "?since=1d&limit=1000").await.events.len(),
        log.len()
    );
    assert!(page(&served, "?until=1d").await.events.is_empty());

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?since=yesterday",
        "?reason=boredom",
        "?session=-1",
        "?colour=red",
    ] {
        let r = served
            .get(&format!("/v1/events{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{bad}");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_journal_the_list_is_409_and_the_stream_is_live_only() {
    let mut served = Served::start(false, &["coder"], EventsConfig::default()).await;
    let r = served.get("/v1/events").send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "conflict");

    let mut stream = SseReader::open(&served, None, "").await;
    let (_, s1) = served.compact_and_rotate(1, "coder").await;
    served.finish(s1, 1).await;
    let ids: Vec<u64> = stream.until(done(1)).await.iter().map(|e| e.0).collect();
    let seen: Vec<u64> = served.seen.iter().map(|e| e.seq).collect();
    assert_eq!(ids, seen, "numbered from 1 by the bus");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_open_streams_each_get_every_event() {
    let mut served = Served::start(true, &["coder"], EventsConfig::default()).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(SseReader::open(&served, None, "").await);
    }
    assert_eq!(served.hub.streams(), 50);
    let (_, s1) = served.compact_and_rotate(1, "coder").await;
    served.finish(s1, 1).await;
    let expected: Vec<u64> = published(served.log().await)
        .iter()
        .map(|r| r.seq)
        .collect();
    for s in &mut streams {
        let ids: Vec<u64> = s.until(done(1)).await.iter().map(|e| e.0).collect();
        assert_eq!(ids, expected);
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_the_token() {
    let served = Served::start(true, &["coder"], EventsConfig::default()).await;
    let r = served
        .http
        .get(format!("{}/v1/events/stream", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_for_the_live_events_is_ended_and_told_to_resume() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = EventsConfig {
        buffer: 16,
        ..EventsConfig::default()
    };
    let served = Served::start(false, &["coder"], config).await;
    // A client with a tiny receive window that does not read while events pour in.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(served.addr).await.unwrap();
    let request = format!(
        "GET /v1/events/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        served.addr,
        serve_common::TOKEN
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(served.hub.streams(), 1);
    // Rejected readings are events too: far more of them than the socket and the buffer hold.
    for _ in 0..20_000 {
        let unknown = baton::SessionId(u64::MAX);
        let refused = served
            .supervisor
            .report_usage(unknown, 1, None, baton::UsageSource::Reported)
            .await;
        assert!(refused.is_err());
    }
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tcp.read_to_end(&mut rest),
    )
    .await
    .expect("the server ends the stream")
    .unwrap();
    let text = dechunk(&rest);
    let note = text
        .lines()
        .find(|l| l.starts_with(": this stream fell"))
        .expect("a closing note");
    let last: u64 = note.rsplit(' ').next().unwrap().parse().unwrap();
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    // Under load the stream may fall behind before it sent anything: it then names 0, where
    // it started.
    assert_eq!(
        ids.last().copied().unwrap_or(0),
        last,
        "the note names the last id sent: {note}"
    );
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap before the end"
    );
    assert!(ids.len() < 20_000, "it fell behind: {} sent", ids.len());
    served.stop().await;
}

/// The body of a chunked HTTP/1.1 response, from what follows the status code to the end.
fn dechunk(raw: &[u8]) -> String {
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the end of the headers")
        + 4;
    let mut rest = &raw[start..];
    let mut body = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap().trim(), 16)
            .expect("a hex chunk size");
        rest = &rest[line + 2..];
        if size == 0 {
            return String::from_utf8(body).unwrap();
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

//! Two full server instances on one NATS JetStream stream (feature `nats`):
//! cross-instance delivery to WebSocket and SSE clients, one order for
//! everybody, SSE resume on the other instance and after a restart (from
//! JetStream), and recovery from a NATS restart.
//!
//! Needs `TEST_NATS_URL` (skipped with a reason when unset, failed when
//! `EVENT_TEST_REQUIRE_SERVICES=1`); the NATS restart test runs its own
//! `nats-server` process. Every test uses a stream and subject prefix of its
//! own, deleted at the end (also when the test fails).

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use event_core::{Cursor, EventKind};
use event_nats::testing::{PrivateNats, nats_url};
use event_server::testing::{Server, client, next_where};

#[path = "common/stream.rs"]
mod stream;

use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use stream::TestStream;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(20);

/// Job progress events of one test, told apart by their message.
struct Producer {
    job_id: Uuid,
}

impl Producer {
    fn new() -> Producer {
        Producer {
            job_id: Uuid::now_v7(),
        }
    }

    fn event(&self, message: &str) -> Value {
        json!({
            "type": "JobProgress",
            "job_id": self.job_id,
            "progress": message.len() % 101,
            "message": message,
        })
    }

    /// POSTs these messages as one batch to `server`; their event ids.
    async fn publish(&self, server: &Server, messages: &[String]) -> Vec<Uuid> {
        let body = Value::Array(messages.iter().map(|m| self.event(m)).collect());
        let published = server.publish(&body).await;
        published
            .iter()
            .map(|(_, id)| id.parse().unwrap())
            .collect()
    }

    /// POSTs `all` in batches of `size`, one after the other.
    async fn publish_batches(&self, server: &Server, all: &[String], size: usize) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(all.len());
        for batch in all.chunks(size) {
            ids.extend(self.publish(server, batch).await);
        }
        ids
    }

    async fn publish_one(&self, server: &Server, message: &str) -> Uuid {
        self.publish(server, &[message.to_owned()]).await[0]
    }
}

fn messages(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// One SSE frame.
#[derive(Debug, Clone)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl Frame {
    /// The job progress message, in either format.
    fn message(&self) -> String {
        let data: Value = serde_json::from_str(&self.data).unwrap();
        let payload = if data.get("payload").is_some() {
            &data["payload"]
        } else {
            &data
        };
        payload["message"].as_str().unwrap().to_owned()
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<event_core::Bytes>> + Send>>;

/// An SSE client of `/api/v1/events?events=JobProgress`.
struct SseClient {
    body: Body,
    buf: Vec<u8>,
    /// The last event id received (what a browser sends as Last-Event-ID).
    last_id: Option<String>,
}

impl SseClient {
    async fn connect(server: &Server, format: &str, last_event_id: Option<&str>) -> SseClient {
        let url = server.url(&format!(
            "/api/v1/events?events=JobProgress&format={format}"
        ));
        let mut req = client().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE response timed out")
            .unwrap();
        assert_eq!(res.status(), 200);
        let mut sse = SseClient {
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
            last_id: last_event_id.map(str::to_owned),
        };
        // retry, then (with a cursor that cannot be served) resync_required,
        // then the QueueStatus confirmation.
        let retry = sse.frame().await;
        assert!(retry.data.is_empty() && retry.event.is_none(), "{retry:?}");
        let status = sse.frame().await;
        assert!(
            matches!(
                status.event.as_deref(),
                Some("QueueStatus" | "queue.status")
            ),
            "expected the confirmation, got {status:?}"
        );
        sse
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let raw = String::from_utf8(raw).unwrap();
                if raw.starts_with(':') {
                    continue; // keep-alive
                }
                let mut frame = Frame {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in raw.trim_end().split('\n') {
                    if let Some(v) = line.strip_prefix("id: ") {
                        frame.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        frame.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        frame.data.push_str(v);
                    }
                }
                return frame;
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no SSE data within the deadline")
                .expect("SSE stream ended")
                .expect("SSE stream failed");
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next job event: (id, message). Fails on anything else.
    async fn next(&mut self) -> (String, String) {
        let frame = self.frame().await;
        assert!(
            matches!(frame.event.as_deref(), Some("JobProgress" | "job.progress")),
            "expected a job event, got {frame:?}"
        );
        let id = frame.id.clone().expect("event without id");
        self.last_id = Some(id.clone());
        (id, frame.message())
    }

    async fn take(&mut self, n: usize) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client; sees only the flat JSON, so events are told apart by
/// their message.
struct WsClient(WsStream);

impl WsClient {
    async fn connect(server: &Server) -> WsClient {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", server.addr))
                .await
                .unwrap();
        // Subscribed to job progress only; the answer confirms it is in effect.
        ws.send(Message::text(
            json!({"type":"subscribe","events":["JobProgress"]}).to_string(),
        ))
        .await
        .unwrap();
        let mut client = WsClient(ws);
        loop {
            let msg = client.json().await;
            if msg["type"] == "subscribed" {
                break;
            }
        }
        client
    }

    async fn json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("no WebSocket message within the deadline")
                .expect("WebSocket ended")
                .unwrap();
            if let Message::Text(text) = msg {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// The next job progress message.
    async fn next(&mut self) -> String {
        loop {
            let msg = self.json().await;
            if msg["type"] == "JobProgress" {
                return msg["message"].as_str().unwrap().to_owned();
            }
            // The connection confirmation and QueueStatus updates.
            assert_eq!(msg["type"], "QueueStatus", "{msg}");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

/// Waits until `server`'s bus has `event` (all before it, in stream order).
async fn wait_for_event(server: &Server, event: Uuid) {
    tokio::time::timeout(WAIT, async {
        while server.bus.latest(EventKind::JobProgress).map(|e| e.id()) != Some(event) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the event did not reach the instance");
}

#[tokio::test]
async fn event_published_on_a_reaches_ws_and_sse_clients_of_b_once() {
    let Some(url) = nats_url("event_published_on_a_reaches_ws_and_sse_clients_of_b_once") else {
        return;
    };
    let stream = TestStream::new(&url);
    let mut a = stream.instance(1024).await;
    let mut b = stream.instance(1024).await;
    let mut ws_b = WsClient::connect(&b).await;
    let mut sse_b = SseClient::connect(&b, "v1", None).await;
    let mut sse_b_envelope = SseClient::connect(&b, "envelope", None).await;
    let jobs = Producer::new();

    let id = jobs.publish_one(&a, "from-a").await;
    assert_eq!(ws_b.next().await, "from-a");
    let (seq, message) = sse_b.next().await;
    assert_eq!(message, "from-a");
    // The stream sequence is the id, the same on every instance.
    let seq: u64 = seq.parse().unwrap();
    assert_eq!(seq % event_nats::SEQ_STRIDE, 0, "{seq}");
    assert_eq!(
        a.bus.replay_since(&Cursor::Seq(seq - 1)).unwrap()[0].id(),
        id
    );
    assert_eq!(
        sse_b_envelope.next().await,
        (id.to_string(), "from-a".to_owned())
    );

    // Once: the next thing each client gets is the next event.
    jobs.publish_one(&a, "next").await;
    assert_eq!(ws_b.next().await, "next");
    assert_eq!(sse_b.next().await.1, "next");
    assert_eq!(sse_b_envelope.next().await.1, "next");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn thousand_events_from_both_sides_arrive_everywhere_in_one_order() {
    let Some(url) = nats_url("thousand_events_from_both_sides_arrive_everywhere_in_one_order")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let mut a = stream.instance(1024).await;
    let mut b = stream.instance(1024).await;
    let (mut ws_a, mut ws_b) = (WsClient::connect(&a).await, WsClient::connect(&b).await);
    let mut sse_a = SseClient::connect(&a, "v1", None).await;
    let mut sse_b = SseClient::connect(&b, "v1", None).await;
    let jobs = Producer::new();

    // 500 from each side, in batches of 50, both sides at once, while the
    // clients read.
    let (from_a, from_b) = (messages("a", 0..500), messages("b", 0..500));
    let (_, _, ws_a_got, ws_b_got, sse_a_got, sse_b_got) = tokio::join!(
        jobs.publish_batches(&a, &from_a, 50),
        jobs.publish_batches(&b, &from_b, 50),
        ws_a.take(1000),
        ws_b.take(1000),
        sse_a.take(1000),
        sse_b.take(1000),
    );

    // Every event exactly once, at every client.
    let sent: HashSet<&String> = from_a.iter().chain(&from_b).collect();
    let got: HashSet<&String> = ws_a_got.iter().collect();
    assert_eq!(got, sent);
    assert_eq!(ws_a_got.len(), 1000);
    // One order: the same at every client, on both instances and transports,
    // and the same ids on both instances, increasing.
    assert_eq!(ws_b_got, ws_a_got);
    assert_eq!(sse_a_got, sse_b_got);
    let sse_order: Vec<String> = sse_a_got.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(sse_order, ws_a_got);
    let ids: Vec<u64> = sse_a_got
        .iter()
        .map(|(id, _)| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
    // Both sides really interleave into one sequence.
    assert!(ws_a_got[..999].iter().any(|m| m.starts_with("b-")));

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn sse_client_moves_from_a_to_b_with_its_last_event_id_and_misses_nothing() {
    let Some(url) =
        nats_url("sse_client_moves_from_a_to_b_with_its_last_event_id_and_misses_nothing")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let mut a = stream.instance(1024).await;
    let mut b = stream.instance(1024).await;
    let jobs = Producer::new();
    // Both id forms: the sequence (v1) and the event UUID (envelope).
    for format in ["v1", "envelope"] {
        let mut on_a = SseClient::connect(&a, format, None).await;
        // A reference client that stays on B the whole time.
        let mut reference = SseClient::connect(&b, format, None).await;
        let first = messages(&format!("{format}-first"), 0..10);
        jobs.publish(&a, &first[..5]).await;
        jobs.publish(&b, &first[5..]).await;
        let seen = on_a.take(10).await;
        let last_id = on_a.last_id.clone().unwrap();
        drop(on_a); // the client leaves A …

        // … events keep coming from both sides while it is away …
        let missed = messages(&format!("{format}-missed"), 0..20);
        jobs.publish(&a, &missed[..10]).await;
        let last = jobs.publish(&b, &missed[10..]).await;
        wait_for_event(&b, *last.last().unwrap()).await;

        // … and it resumes on B.
        let mut on_b = SseClient::connect(&b, format, Some(&last_id)).await;
        let resumed = on_b.take(20).await;
        let everything = reference.take(30).await;
        assert_eq!(seen, everything[..10], "{format}");
        assert_eq!(
            resumed,
            everything[10..],
            "{format}: gap, duplicate or other order"
        );
        let live = jobs.publish_one(&a, &format!("{format}-live")).await;
        wait_for_event(&b, live).await;
        assert_eq!(on_b.next().await.1, format!("{format}-live"));
    }

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn b_restarted_while_100_events_are_published_resumes_from_jetstream() {
    let Some(url) = nats_url("b_restarted_while_100_events_are_published_resumes_from_jetstream")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    // A small ring on B: after the restart the client's cursor is older.
    let mut a = stream.instance(1024).await;
    let mut b = stream.instance(16).await;
    let jobs = Producer::new();
    let mut on_b = SseClient::connect(&b, "v1", None).await;
    let mut reference = SseClient::connect(&a, "v1", None).await;
    jobs.publish(&a, &messages("before", 0..10)).await;
    on_b.take(10).await;
    let cursor = on_b.last_id.clone().unwrap();

    // B goes down; 100 events are published on A while it restarts.
    b.shutdown().await;
    drop(on_b);
    let during = messages("during", 0..100);
    let (ids, b) = tokio::join!(jobs.publish_batches(&a, &during, 10), stream.instance(16));
    let mut b = b;
    wait_for_event(&b, *ids.last().unwrap()).await;

    // B's ring no longer reaches back to the cursor …
    let seq: u64 = cursor.parse().unwrap();
    assert!(b.bus.replay_since(&Cursor::Seq(seq)).is_err());
    // … JetStream does: replayed, not resync_required (the client would
    // fail on a resync frame where it expects the confirmation).
    let mut resumed = SseClient::connect(&b, "v1", Some(&cursor)).await;
    let got = resumed.take(100).await;
    let expected = {
        reference.take(10).await;
        reference.take(100).await
    };
    assert_eq!(got, expected);
    assert_eq!(
        got.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        during
    );
    // Then live.
    jobs.publish_one(&a, "after").await;
    assert_eq!(resumed.next().await.1, "after");

    a.shutdown().await;
    b.shutdown().await;
}

/// The `nats` component of `/health`, once it reads `want`.
async fn wait_nats_health(server: &Server, want: &str) {
    let http = client();
    let mut last = Value::Null;
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(res) = http.get(server.url("/health")).send().await
                && let Ok(body) = res.json::<Value>().await
            {
                if body["components"]["nats"]["status"] == want {
                    return;
                }
                last = body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "/health never reported nats {want}: {last}"
    );
}

#[tokio::test]
async fn instances_recover_from_a_nats_restart_without_restarting() {
    // Needs only the nats-server binary, but runs with the other NATS tests.
    if nats_url("instances_recover_from_a_nats_restart_without_restarting").is_none() {
        return;
    }
    let mut nats = PrivateNats::start().await;
    let stream = TestStream::new(&nats.url());
    let mut a = stream.instance(1024).await;
    let mut b = stream.instance(1024).await;
    let jobs = Producer::new();
    let (mut ws_a, mut ws_b) = (WsClient::connect(&a).await, WsClient::connect(&b).await);
    let mut sse_b = SseClient::connect(&b, "v1", None).await;
    jobs.publish_one(&a, "before").await;
    assert_eq!(ws_a.next().await, "before");
    assert_eq!(ws_b.next().await, "before");
    assert_eq!(sse_b.next().await.1, "before");
    wait_nats_health(&a, "up").await;

    nats.stop().await;
    wait_nats_health(&a, "degraded").await;
    wait_nats_health(&b, "degraded").await;
    // A still serves its own clients meanwhile (B's miss this one).
    jobs.publish_one(&a, "local-only").await;
    assert_eq!(ws_a.next().await, "local-only");

    nats.restart().await; // same port, same store
    wait_nats_health(&a, "up").await;
    wait_nats_health(&b, "up").await;

    // Both directions work again, and nothing was duplicated.
    jobs.publish_one(&a, "after-a").await;
    let first_on_b = ws_b.next().await;
    assert_eq!(
        first_on_b, "after-a",
        "B got the local-only event or lost one"
    );
    assert_eq!(sse_b.next().await.1, "after-a");
    assert_eq!(ws_a.next().await, "after-a");
    jobs.publish_one(&b, "after-b").await;
    assert_eq!(ws_a.next().await, "after-b");
    assert_eq!(ws_b.next().await, "after-b");
    assert_eq!(sse_b.next().await.1, "after-b");

    a.shutdown().await;
    b.shutdown().await;
    drop(stream); // deleted while this NATS still runs
}

/// The job bridge's periodic `QueueStatus` (issue 23): with two instances
/// on one stream, a client gets one status per tick, not one from each
/// instance. Both instances have a client, so both bridges tick; each puts
/// its tick off while the other's status, which reached its bus through the
/// stream, is younger than the tick. Without that rule A's bus (and so its
/// clients) gets A's statuses and B's: ten within about five ticks.
#[tokio::test]
async fn two_instances_send_their_clients_one_periodic_queue_status_per_tick() {
    let Some(url) = nats_url("two_instances_send_their_clients_one_periodic_queue_status_per_tick")
    else {
        return;
    };
    const TICK_MS: u64 = 500;
    let tick = Duration::from_millis(TICK_MS);
    let stream = TestStream::new(&url);
    let flags = ["--queue-status-tick-ms", &TICK_MS.to_string()];
    let mut a = stream.with_flags(&flags).await;
    let mut b = stream.with_flags(&flags).await;
    // A client on each: a bridge ticks only while its instance has one.
    let _ws_a = WsClient::connect(&a).await;
    let _ws_b = WsClient::connect(&b).await;
    let (mut on_a, mut on_b) = (a.bus.subscribe(), b.bus.subscribe());
    let is_status = |e: &event_core::Event| e.kind() == EventKind::QueueStatus;

    // Eleven statuses on A's bus: spaced a tick apart they span ten ticks
    // (less only if a status took longer than a tick to cross, which makes
    // both instances tick).
    let first = next_where(&mut on_a, is_status).await;
    let started = tokio::time::Instant::now();
    let mut ids = HashSet::from([first.id()]);
    for _ in 0..10 {
        ids.insert(next_where(&mut on_a, is_status).await.id());
    }
    let span = started.elapsed();
    assert!(
        span >= tick * 7,
        "ten periodic statuses came within {span:?} ({:.1} ticks): both instances ticked",
        span.as_secs_f64() / tick.as_secs_f64()
    );
    // They are the cluster's statuses, not A's alone: B's bus has them too
    // (else each instance would tick on its own, one per tick each, and the
    // spacing above would prove nothing).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ids.is_empty() {
        let on_b = tokio::time::timeout_at(deadline, next_where(&mut on_b, is_status))
            .await
            .unwrap_or_else(|_| panic!("{} of A's statuses never reached B", ids.len()));
        ids.remove(&on_b.id());
    }
    a.shutdown().await;
    b.shutdown().await;
}

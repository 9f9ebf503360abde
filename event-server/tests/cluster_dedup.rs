//! Acknowledged publishing and deduplication across instances (feature
//! `nats`): two full server instances on one NATS JetStream stream. The
//! publish API's `202` carries the stream's sequence; a retry that reaches
//! the other instance (same `Idempotency-Key`, or same producer `event_id`)
//! is answered with the original's `seq`/`event_id` and `"duplicate": true`
//! and reaches no client twice; a key reused with another body is `422` on
//! any instance; a publish while NATS is down is `503 nats_unavailable`
//! within `NATS_PUBLISH_TIMEOUT_MS` during the reconnect grace, and
//! delivered on its instance only (`"local_only": true`) after it.
//!
//! Needs `TEST_NATS_URL` (skipped with a reason when unset, failed when
//! `EVENT_TEST_REQUIRE_SERVICES=1`); every test has a stream of its own.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use event_core::Cursor;
use event_nats::testing::{PrivateNats, nats_url};
use event_server::testing::{Server, client};

#[path = "common/stream.rs"]
mod stream;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stream::TestStream;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The longest any single wait may take (the machine is shared).
const WAIT: Duration = Duration::from_secs(30);

fn progress(job: Uuid, message: &str) -> Value {
    json!({"type": "JobProgress", "job_id": job, "progress": 10, "message": message})
}

/// POSTs `body` with an optional `Idempotency-Key`: (status, answer).
async fn post(server: &Server, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = client().post(server.url("/api/v1/events")).json(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("publish answered in time")
        .expect("POST /api/v1/events");
    let status = res.status().as_u16();
    (status, res.json().await.expect("a JSON answer"))
}

/// `(seq, event_id)` of each event of a 202 answer.
fn identities(answer: &Value) -> Vec<(u64, String)> {
    answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().expect("a seq in the 202"),
                e["event_id"].as_str().expect("an event_id").to_owned(),
            )
        })
        .collect()
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client subscribed to job progress.
struct WsClient(WsStream);

impl WsClient {
    async fn connect(server: &Server) -> WsClient {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", server.addr))
                .await
                .unwrap();
        ws.send(Message::text(
            json!({"type":"subscribe","events":["JobProgress"]}).to_string(),
        ))
        .await
        .unwrap();
        let mut client = WsClient(ws);
        while client.json().await["type"] != "subscribed" {}
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
        }
    }

    /// The next `n` job progress messages.
    async fn take(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

/// Waits until the `nats` component of `/health` reads `want`.
async fn wait_nats_health(server: &Server, want: &str) {
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(res) = client().get(server.url("/health")).send().await
                && let Ok(body) = res.json::<Value>().await
                && body["components"]["nats"]["status"] == want
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "/health never reported nats {want}");
}

/// The event at bus sequence `seq` on `server`'s bus.
fn event_at(server: &Server, seq: u64) -> std::sync::Arc<event_core::Event> {
    let events = server.bus.replay_since(&Cursor::Seq(seq - 1)).unwrap();
    let event = events.into_iter().next().expect("the event is in the ring");
    assert_eq!(event.seq(), seq);
    event
}

#[tokio::test]
async fn an_idempotency_key_retried_on_b_is_answered_with_as_original_and_delivered_once() {
    let test = "an_idempotency_key_retried_on_b_is_answered_with_as_original_and_delivered_once";
    let Some(url) = nats_url(test) else {
        return;
    };
    let stream = TestStream::new(&url);
    let mut a = stream.with_flags(&[]).await;
    let mut b = stream.with_flags(&[]).await;
    let (mut ws_a, mut ws_b) = (WsClient::connect(&a).await, WsClient::connect(&b).await);
    let job = Uuid::now_v7();
    let body = json!([progress(job, "first"), progress(job, "second")]);

    let (status, on_a) = post(&a, &body, Some("order-7")).await;
    assert_eq!(status, 202, "{on_a}");
    assert_eq!(on_a.get("duplicate"), None, "{on_a}");
    let original = identities(&on_a);
    // The 202 carries the stream's sequence: stream seq × SEQ_STRIDE, the
    // number the event has on every instance.
    for (seq, id) in &original {
        assert_eq!(seq % event_nats::SEQ_STRIDE, 0, "{seq}");
        assert!(*seq > 0);
        assert_eq!(event_at(&a, *seq).id().to_string(), *id);
    }
    assert_eq!(original[1].0, original[0].0 + event_nats::SEQ_STRIDE);

    // The retry reaches B: recognised through the stream.
    let (status, on_b) = post(&b, &body, Some("order-7")).await;
    assert_eq!(status, 202, "{on_b}");
    assert_eq!(on_b["duplicate"], true, "{on_b}");
    assert_eq!(identities(&on_b), original);
    // And again on A (its own memory).
    let (status, again) = post(&a, &body, Some("order-7")).await;
    assert_eq!((status, again["duplicate"].clone()), (202, json!(true)));
    assert_eq!(identities(&again), original);

    // The key with another body, on an instance that never saw the key:
    // the stream's copy tells the retry from a reuse.
    let mut c = stream.with_flags(&[]).await;
    let other = json!([
        progress(job, "other"),
        progress(job, "second"),
        progress(job, "third")
    ]);
    let (status, reused) = post(&c, &other, Some("order-7")).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"], "idempotency_key_reused");

    // Every client got each event once: after them comes the next event.
    let (status, _) = post(&b, &json!(progress(job, "after")), None).await;
    assert_eq!(status, 202);
    for ws in [&mut ws_a, &mut ws_b] {
        assert_eq!(ws.take(3).await, ["first", "second", "after"]);
    }

    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_producer_event_id_retried_on_b_is_a_duplicate_delivered_once() {
    let test = "a_producer_event_id_retried_on_b_is_a_duplicate_delivered_once";
    let Some(url) = nats_url(test) else {
        return;
    };
    let stream = TestStream::new(&url);
    let mut a = stream.with_flags(&[]).await;
    let mut b = stream.with_flags(&[]).await;
    let (mut ws_a, mut ws_b) = (WsClient::connect(&a).await, WsClient::connect(&b).await);
    let job = Uuid::now_v7();
    let event_id = Uuid::now_v7();
    let mut event = progress(job, "mine");
    event["event_id"] = json!(event_id);

    let (status, on_a) = post(&a, &event, None).await;
    assert_eq!(status, 202, "{on_a}");
    let original = identities(&on_a);
    assert_eq!(
        original[0].1,
        event_id.to_string(),
        "the producer's id is kept"
    );
    assert_eq!(event_at(&a, original[0].0).id(), event_id);

    let (status, on_b) = post(&b, &event, None).await;
    assert_eq!(status, 202, "{on_b}");
    assert_eq!(on_b["duplicate"], true, "{on_b}");
    assert_eq!(identities(&on_b), original);

    // Not a UUIDv7, or twice in one request: refused, nothing published.
    let mut v4 = progress(job, "v4");
    v4["event_id"] = json!(Uuid::new_v4());
    let (status, answer) = post(&a, &v4, None).await;
    assert_eq!(
        (status, answer["error"].clone()),
        (400, json!("invalid_event"))
    );
    let twice = json!([event.clone(), event.clone()]);
    let (status, _) = post(&a, &twice, None).await;
    assert_eq!(status, 400);

    let (status, _) = post(&a, &json!(progress(job, "after")), None).await;
    assert_eq!(status, 202);
    for ws in [&mut ws_a, &mut ws_b] {
        assert_eq!(ws.take(2).await, ["mine", "after"]);
    }

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_producer_event_id_outside_cluster_mode_is_refused() {
    let mut server = Server::start(&[]).await;
    let mut event = progress(Uuid::now_v7(), "x");
    event["event_id"] = json!(Uuid::now_v7());
    let (status, answer) = post(&server, &event, None).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "event_id_unsupported");
    server.shutdown().await;
}

#[tokio::test]
async fn while_nats_is_down_a_publish_is_503_within_the_timeout_then_local_only() {
    let test = "while_nats_is_down_a_publish_is_503_within_the_timeout_then_local_only";
    if nats_url(test).is_none() {
        return;
    }
    let mut nats = PrivateNats::start().await;
    let stream = TestStream::new(&nats.url());
    // Shorter than the 2 s reconnect grace, during which events wait for
    // NATS: a publish made right after NATS went away times out.
    let timeout_ms = 1000u64;
    let mut a = stream
        .with_flags(&["--nats-publish-timeout-ms", &timeout_ms.to_string()])
        .await;
    let mut b = stream.with_flags(&[]).await;
    let (mut ws_a, mut ws_b) = (WsClient::connect(&a).await, WsClient::connect(&b).await);
    let job = Uuid::now_v7();
    let (status, answer) = post(&a, &json!(progress(job, "up")), None).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer.get("local_only"), None);

    nats.stop().await;
    let started = Instant::now();
    let (status, answer) = post(&a, &json!(progress(job, "waited")), Some("k-down")).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "nats_unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(timeout_ms) + Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );

    // Past the grace: delivered on A only, at once, and said so.
    wait_nats_health(&a, "degraded").await;
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let (status, answer) = post(&a, &json!(progress(job, "local")), Some("k-local")).await;
            if status == 202 {
                return answer;
            }
            // Still within the grace.
            assert_eq!(status, 503, "{answer}");
        }
    })
    .await
    .expect("a local-only 202 once the grace ran out");
    assert_eq!(answer["local_only"], true, "{answer}");
    let (seq, _) = identities(&answer)[0].clone();
    assert_ne!(seq % event_nats::SEQ_STRIDE, 0, "a local sequence: {seq}");
    // A's clients get "up", then the events it delivered locally ("waited"
    // too, when its publisher gave up on it, possibly after 503 retries
    // of "local"), ending with "local".
    assert_eq!(ws_a.next().await, "up");
    assert_eq!(ws_b.next().await, "up");
    tokio::time::timeout(WAIT, async { while ws_a.next().await != "local" {} })
        .await
        .expect("A's client got the local-only event");

    // Back: B never got the local-only events; the next is from the stream.
    nats.restart().await;
    wait_nats_health(&a, "up").await;
    wait_nats_health(&b, "up").await;
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let (status, answer) = post(&a, &json!(progress(job, "after")), None).await;
            if status == 202 {
                return answer;
            }
            assert_eq!(status, 503, "{answer}");
        }
    })
    .await
    .expect("publishing works again");
    assert_eq!(answer.get("local_only"), None, "{answer}");
    assert_eq!(identities(&answer)[0].0 % event_nats::SEQ_STRIDE, 0);
    assert_eq!(ws_b.next().await, "after");

    a.shutdown().await;
    b.shutdown().await;
    drop(stream); // deleted while this NATS still runs
}

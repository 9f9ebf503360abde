//! Per-connection stream options through the real host (docs/protocol.md
//! §2, §3): the WebSocket `subscribe` fields `topics`, `filter` and
//! `max_rate`, SSE `?max_rate=`, and the server default `STREAM_MAX_RATE`.

// Helpers outside #[test] functions: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use event_server::testing::{Server, WAIT, client};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a paced consumer may take to receive a whole burst (it is
/// limited to 20 events/s, a second or two; generous for a shared machine,
/// and shorter than the 30 s ping interval, so a pacer that is never woken
/// by its own timer fails here).
const PACED: Duration = Duration::from_secs(20);

async fn ws_connect(server: &Server) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws"))
        .await
        .expect("WebSocket upgrade");
    let first = next_json(&mut ws, WAIT).await;
    assert_eq!(first["type"], "QueueStatus", "the confirmation first");
    ws
}

/// The next text frame as JSON, within `wait`.
async fn next_json(ws: &mut Ws, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {wait:?}"))
            .expect("the WebSocket ended")
            .expect("a WebSocket message");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// Sends a `subscribe` and returns the reply.
async fn subscribe(ws: &mut Ws, message: Value) -> Value {
    send(ws, message).await;
    next_json(ws, WAIT).await
}

/// Publishes `events` through `POST /api/v1/events` (under `topic`, if
/// given).
async fn publish(server: &Server, topic: Option<&str>, events: Value) {
    let path = match topic {
        Some(t) => format!("/api/v1/events?topic={t}"),
        None => "/api/v1/events".to_owned(),
    };
    let res = client()
        .post(server.url(&path))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        202,
        "publish refused: {}",
        res.text().await.unwrap()
    );
}

fn queued(job: Uuid) -> Value {
    json!({"type": "JobQueued", "job_id": job, "job_type": "Embedding"})
}

/// Ten jobs, each queued, started, 20 progress steps (5 … 100) and
/// completed, interleaved round by round: 230 events.
fn job_burst() -> (Vec<Uuid>, Vec<Value>) {
    let jobs: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let mut events: Vec<Value> = jobs.iter().map(|j| queued(*j)).collect();
    events.extend(
        jobs.iter()
            .map(|j| json!({"type": "JobStarted", "job_id": j, "job_type": "Embedding"})),
    );
    for step in 1..=20u8 {
        events.extend(
            jobs.iter()
                .map(|j| json!({"type": "JobProgress", "job_id": j, "progress": step * 5})),
        );
    }
    events.extend(jobs.iter().map(
        |j| json!({"type": "JobCompleted", "job_id": j, "job_type": "Embedding", "duration_ms": 7}),
    ));
    (jobs, events)
}

/// What one consumer received of a [`job_burst`].
#[derive(Default)]
struct Received {
    /// Per job, the kinds and progress values in arrival order.
    per_job: HashMap<String, Vec<String>>,
    events: u64,
    lagged: u64,
    lag_signals: u64,
}

impl Received {
    /// Takes one message of the stream (an event or the lag signal).
    fn take(&mut self, message: &Value) {
        match message["type"].as_str().unwrap() {
            "events.lagged" => {
                let n = message["dropped_count"].as_u64().expect("dropped_count");
                assert!(n > 0, "an empty lag signal: {message}");
                self.lagged += n;
                self.lag_signals += 1;
            }
            kind => {
                let job = message["job_id"].as_str().expect("a job event").to_owned();
                let entry = match kind {
                    "JobProgress" => format!("p{}", message["progress"]),
                    other => other.to_owned(),
                };
                self.per_job.entry(job).or_default().push(entry);
                self.events += 1;
            }
        }
    }

    fn complete(&self, total: u64) -> bool {
        self.events + self.lagged >= total
    }

    /// Every job's last state arrived, in order, and every event is either
    /// received or counted as dropped.
    fn assert_latest_state_of_every_job(&self, jobs: &[Uuid], total: u64) {
        assert_eq!(
            self.events + self.lagged,
            total,
            "received {} + dropped {} must be the {total} published",
            self.events,
            self.lagged
        );
        for job in jobs {
            let seen = &self.per_job[&job.to_string()];
            let n = seen.len();
            assert!(n >= 4, "job {job}: {seen:?}");
            assert_eq!(seen[0], "JobQueued", "job {job}: {seen:?}");
            assert_eq!(seen[1], "JobStarted", "job {job}: {seen:?}");
            assert_eq!(
                &seen[n - 2..],
                ["p100", "JobCompleted"],
                "job {job}: the final progress, then its completion: {seen:?}"
            );
            let progress: Vec<u64> = seen[2..n - 1]
                .iter()
                .map(|p| p.trim_start_matches('p').parse().unwrap())
                .collect();
            assert!(
                progress.windows(2).all(|w| w[0] < w[1]),
                "job {job}: progress in order: {seen:?}"
            );
        }
    }
}

/// Reads `ws` until `total` events are received or counted as dropped.
async fn read_burst(ws: &mut Ws, total: u64) -> Received {
    let deadline = Instant::now() + PACED;
    let mut got = Received::default();
    while !got.complete(total) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = next_json(ws, left).await;
        got.take(&message);
    }
    got
}

#[tokio::test]
async fn ws_subscribe_selects_topics_and_a_filter_and_refuses_bad_ones_with_an_error_reply() {
    let server = Server::start(&[]).await;
    let mut ws = ws_connect(&server).await;

    let reply = subscribe(
        &mut ws,
        json!({"type": "subscribe", "topics": ["gpu.*"], "filter": {"types": ["job.queued", "job.completed"]}}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(
        reply["events"],
        json!(["JobQueued", "JobCompleted"]),
        "{reply}"
    );

    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    publish(&server, Some("billing"), json!([queued(b)])).await;
    publish(
        &server,
        Some("gpu.large"),
        json!([{"type": "JobStarted", "job_id": a, "job_type": "Embedding"}]),
    )
    .await;
    publish(&server, Some("gpu.large"), json!([queued(a)])).await;
    let first = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (first["type"].as_str(), first["job_id"].as_str()),
        (Some("JobQueued"), Some(a.to_string().as_str())),
        "the other topic and the other kind were filtered out: {first}"
    );

    // Bad values: an error reply naming the problem, nothing applied, the
    // connection open.
    let too_many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    for (bad, code, names) in [
        (
            json!({"type": "subscribe", "topics": ["UPPER"]}),
            "invalid_filter",
            "topics",
        ),
        (
            json!({"type": "subscribe", "topics": too_many}),
            "invalid_filter",
            "topics",
        ),
        (
            json!({"type": "subscribe", "topics": [7]}),
            "invalid_filter",
            "topics",
        ),
        (
            json!({"type": "subscribe", "filter": {"colour": "red"}}),
            "invalid_filter",
            "colour",
        ),
        (
            json!({"type": "subscribe", "filter": {"entity_id": "nope"}}),
            "invalid_filter",
            "entity_id",
        ),
        (
            json!({"type": "subscribe", "filter": "x".repeat(5000)}),
            "invalid_filter",
            "4096",
        ),
        (
            json!({"type": "subscribe", "max_rate": "fast"}),
            "invalid_parameter",
            "max_rate",
        ),
        (
            json!({"type": "subscribe", "max_rate": 10_001}),
            "invalid_parameter",
            "max_rate",
        ),
        (
            json!({"type": "subscribe", "events": ["note"], "topics": [""]}),
            "invalid_filter",
            "topics",
        ),
    ] {
        let reply = subscribe(&mut ws, bad.clone()).await;
        assert_eq!(reply["type"], "error", "{bad}: {reply}");
        assert_eq!(reply["error"], code, "{bad}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(names), "{bad}: {message}");
    }
    // The selection is still gpu.* and queued/completed (the `events` of
    // the refused message were not applied either).
    publish(&server, Some("billing"), json!([queued(b)])).await;
    publish(
        &server,
        Some("gpu.small"),
        json!([{"type": "NoteUpdated", "note_id": c, "tags": [], "has_ai_content": false, "has_links": false}]),
    )
    .await;
    publish(
        &server,
        Some("gpu.small"),
        json!([{"type": "JobCompleted", "job_id": c, "job_type": "Embedding"}]),
    )
    .await;
    let next = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (next["type"].as_str(), next["job_id"].as_str()),
        (Some("JobCompleted"), Some(c.to_string().as_str())),
        "{next}"
    );

    // A later `topics` replaces the earlier one; an entity filter narrows.
    let reply = subscribe(
        &mut ws,
        json!({"type": "subscribe", "topics": "billing", "filter": {"entity_id": b}}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(
        reply["events"],
        json!([
            "QueueStatus",
            "JobQueued",
            "JobStarted",
            "JobProgress",
            "JobCompleted",
            "JobFailed",
            "NoteUpdated"
        ]),
        "a filter without kinds allows every kind: {reply}"
    );
    publish(&server, Some("gpu.large"), json!([queued(c)])).await;
    publish(&server, Some("billing"), json!([queued(a)])).await;
    publish(&server, Some("billing"), json!([queued(b)])).await;
    let next = next_json(&mut ws, WAIT).await;
    assert_eq!(next["job_id"], b.to_string(), "{next}");
}

#[tokio::test]
async fn ws_consumers_over_the_server_default_rate_get_every_jobs_latest_state_and_a_lag_count() {
    let server = Server::start(&["--stream-max-rate", "20"]).await;
    let mut paced = ws_connect(&server).await;
    let mut unlimited = ws_connect(&server).await;
    let reply = subscribe(&mut paced, json!({"type": "subscribe", "events": ["job"]})).await;
    assert_eq!(reply["max_rate"], 20, "the server default: {reply}");
    let reply = subscribe(
        &mut unlimited,
        json!({"type": "subscribe", "events": ["job"], "max_rate": 0}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert!(
        reply.get("max_rate").is_none(),
        "0 lifts the limit: {reply}"
    );

    let (jobs, events) = job_burst();
    let total = events.len() as u64;
    publish(&server, None, Value::Array(events)).await;

    let got = read_burst(&mut paced, total).await;
    got.assert_latest_state_of_every_job(&jobs, total);
    assert!(
        got.lagged > 0 && got.events < total,
        "a burst of {total} at 20/s is coalesced: {} received",
        got.events
    );
    // Still connected.
    send(&mut paced, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut paced, WAIT).await["type"], "pong");

    let all = read_burst(&mut unlimited, total).await;
    assert_eq!(all.events, total, "the unlimited consumer gets everything");
    assert_eq!(all.lag_signals, 0);
    all.assert_latest_state_of_every_job(&jobs, total);
}

/// One SSE stream, read frame by frame.
struct Sse {
    body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<event_core::Bytes>> + Send>,
    >,
    buf: String,
}

impl Sse {
    async fn open(server: &Server, query: &str) -> Sse {
        let res = client()
            .get(server.url(&format!("/api/v1/events?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        Sse {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next frame's `event:` name and `data:` as JSON.
    async fn next(&mut self, deadline: Instant) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
                    return (event, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .expect("no SSE frame in time")
                .expect("the stream ended")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn read_burst(&mut self, total: u64) -> Received {
        let deadline = Instant::now() + PACED;
        let mut got = Received::default();
        while !got.complete(total) {
            let (event, data) = self.next(deadline).await;
            if event == "QueueStatus" {
                continue; // the confirmation
            }
            got.take(&data);
        }
        got
    }
}

#[tokio::test]
async fn sse_max_rate_coalesces_to_every_jobs_latest_state_and_counts_the_rest() {
    let server = Server::start(&[]).await;
    for bad in ["fast", "-1", "10001", "1.5"] {
        let res = client()
            .get(server.url(&format!("/api/v1/events?max_rate={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "max_rate={bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_parameter", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("max_rate"),
            "{body}"
        );
    }
    let mut paced = Sse::open(&server, "types=job&max_rate=20").await;
    let mut unlimited = Sse::open(&server, "types=job").await;
    server.wait_connections(2).await;

    let (jobs, events) = job_burst();
    let total = events.len() as u64;
    publish(&server, None, Value::Array(events)).await;

    let got = paced.read_burst(total).await;
    got.assert_latest_state_of_every_job(&jobs, total);
    assert!(
        got.lagged > 0 && got.events < total,
        "{} received",
        got.events
    );
    // Still streaming: a later event arrives.
    let late = Uuid::now_v7();
    publish(&server, None, json!([queued(late)])).await;
    let (event, data) = paced.next(Instant::now() + PACED).await;
    assert_eq!(
        (event.as_str(), data["job_id"].clone()),
        ("JobQueued", json!(late))
    );

    let all = unlimited.read_burst(total).await;
    assert_eq!(all.events, total, "the unlimited stream gets everything");
    assert_eq!(all.lag_signals, 0);
    all.assert_latest_state_of_every_job(&jobs, total);
}

#[tokio::test]
async fn ws_upgrade_max_rate_paces_from_the_first_event_and_bad_values_refuse_the_upgrade() {
    let server = Server::start(&[]).await;
    for (query, param) in [
        ("max_rate=fast", "max_rate"),
        ("max_rate=10001", "max_rate"),
        ("buffer_max_bytes=1024", "buffer_max_bytes"),
        ("buffer_max_bytes=99999999999", "buffer_max_bytes"),
        ("buffer_max_bytes=lots", "buffer_max_bytes"),
    ] {
        let refused =
            tokio_tungstenite::connect_async(server.ws_url(&format!("/api/v1/ws?{query}"))).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 400, "{query}");
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"], "invalid_parameter", "{query}: {body}");
                assert!(body["message"].as_str().unwrap().contains(param), "{body}");
            }
            other => panic!("{query}: expected a 400, got {other:?}"),
        }
    }
    // The lowest budget the server allows is accepted.
    let min = event_core::OutboxLimits::min_bytes_for(event_core::DEFAULT_MAX_EVENT_BYTES);
    let (mut small, _) = tokio_tungstenite::connect_async(
        server.ws_url(&format!("/api/v1/ws?buffer_max_bytes={min}")),
    )
    .await
    .expect("a budget of two largest events is accepted");
    assert_eq!(next_json(&mut small, WAIT).await["type"], "QueueStatus");

    let (mut paced, _) =
        tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws?types=job&max_rate=20"))
            .await
            .unwrap();
    assert_eq!(next_json(&mut paced, WAIT).await["type"], "QueueStatus");
    let (jobs, events) = job_burst();
    let total = events.len() as u64;
    publish(&server, None, Value::Array(events)).await;
    let got = read_burst(&mut paced, total).await;
    got.assert_latest_state_of_every_job(&jobs, total);
    assert!(
        got.lagged > 0 && got.events < total,
        "a burst of {total} at 20/s from the upgrade's max_rate is coalesced: {} received",
        got.events
    );
}

#[tokio::test]
async fn sse_buffer_max_bytes_is_checked_against_the_servers_range() {
    let server = Server::start(&[]).await;
    for bad in ["1024", "99999999999", "lots", "600000&consumer=reader"] {
        let res = client()
            .get(server.url(&format!("/api/v1/events?buffer_max_bytes={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "buffer_max_bytes={bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_parameter", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("buffer_max_bytes")
        );
    }
    let min = event_core::OutboxLimits::min_bytes_for(event_core::DEFAULT_MAX_EVENT_BYTES);
    let mut sse = Sse::open(&server, &format!("types=job&buffer_max_bytes={min}")).await;
    let job = Uuid::now_v7();
    publish(&server, None, json!([queued(job)])).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (event, data) = sse.next(deadline).await;
        if event == "JobQueued" {
            assert_eq!(data["job_id"], json!(job));
            break;
        }
    }
}

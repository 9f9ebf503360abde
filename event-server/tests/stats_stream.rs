//! The dashboard's stats stream through the real host
//! (`GET /api/v1/stats/stream`, event-server/src/dashboard/stats_stream.rs):
//! `stats` frames with the counters of `GET /api/v1/stats`, pushed every
//! `STATS_STREAM_INTERVAL_MS`; they follow publishes and connections; over
//! `STATS_STREAM_MAX` a stream is refused with `503`; a token is needed in
//! token mode; shutdown ends the stream; settings out of range stop the
//! server at start.

// Helpers outside #[test] functions: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use event_server::testing::{Server, WAIT, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

const PATH: &str = "/api/v1/stats/stream";

/// One `stats` frame.
#[derive(Debug)]
struct Frame {
    id: u64,
    event: String,
    data: Value,
}

/// The frames of one open stream.
struct Frames {
    res: reqwest::Response,
    buffer: String,
}

impl Frames {
    /// Opens the stream (with `token`, if any) and checks it is one.
    async fn open(server: &Server, token: Option<&str>) -> Frames {
        let res = open(server, token).await;
        assert_eq!(res.status(), StatusCode::OK, "GET {PATH}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Frames {
            res,
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ended; panics when none
    /// comes within [`WAIT`].
    async fn next(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&text));
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .expect("no stats frame in time")
                .expect("the stream failed");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => {
                    assert!(self.buffer.is_empty(), "a torn frame: {:?}", self.buffer);
                    return None;
                }
            }
        }
    }

    /// The next frame whose data `want` accepts (the stream must not end).
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no frame with {what} in time");
            let frame = self.next().await.expect("the stream ended");
            if want(&frame.data) {
                return frame;
            }
        }
    }
}

async fn open(server: &Server, token: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .get(server.url(PATH))
        .header("accept", "text/event-stream");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

fn parse(text: &str) -> Frame {
    let (mut id, mut event, mut data) = (None, None, None);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => id = Some(value.parse().unwrap()),
            "event" => event = Some(value.to_owned()),
            "data" => {
                assert!(data.is_none(), "one data line per frame: {text:?}");
                data = Some(serde_json::from_str(value).unwrap());
            }
            other => panic!("unexpected field {other:?} in {text:?}"),
        }
    }
    Frame {
        id: id.unwrap_or_else(|| panic!("no id in {text:?}")),
        event: event.unwrap_or_else(|| panic!("no event in {text:?}")),
        data: data.unwrap_or_else(|| panic!("no data in {text:?}")),
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn frames_carry_the_counters_and_follow_publishes_and_connections() {
    let mut server = Server::start(&["--stats-stream-interval-ms", "250"]).await;
    let mut frames = Frames::open(&server, None).await;

    // The first frame: the same object as GET /api/v1/stats.
    let first = frames.next().await.expect("the stream ended");
    assert_eq!(first.event, "stats");
    let stats = first.data;
    assert_eq!(stats["counters"], true, "{stats}");
    for transport in ["ws", "sse", "mcp"] {
        assert_eq!(stats["connections"][transport], 0, "{stats}");
        assert!(stats["delivered"][transport].is_u64(), "{stats}");
    }
    for outcome in ["success", "retry", "failed"] {
        assert!(stats["webhooks"][outcome].is_u64(), "{stats}");
    }
    assert!(stats["dropped"].is_u64() && stats["webhook_queue_depth"].is_u64());
    assert_eq!(
        stats["latency_ms"]["bounds"].as_array().unwrap().len(),
        event_core::metrics::LATENCY_BUCKETS_MS.len()
    );
    let polled: Value = client()
        .get(server.url("/api/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&stats), keys(&polled), "{stats} against {polled}");

    // A publish is counted in a later frame (no other test of this binary
    // publishes NoteUpdated; the metrics are the process's).
    let published = |s: &Value| s["published"]["NoteUpdated"].as_u64().unwrap_or(0);
    let before = published(&stats);
    server
        .publish(
            &json!({"type": "NoteUpdated", "note_id": "0197c0de-5e1a-7a00-8000-00000000000a",
            "tags": [], "has_ai_content": false, "has_links": false}),
        )
        .await;
    let counted = frames
        .until("the publish counted", |s| published(s) > before)
        .await;
    assert!(
        counted.id > first.id,
        "ids grow: {} then {}",
        first.id,
        counted.id
    );

    // A connection appears and goes (these streams are not connections).
    let sse = client()
        .get(server.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    frames
        .until("the SSE client", |s| s["connections"]["sse"] == 1)
        .await;
    drop(sse);
    frames
        .until("the SSE client gone", |s| s["connections"]["sse"] == 0)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_limit_a_stream_is_refused_until_one_goes() {
    let mut server = Server::start(&[
        "--stats-stream-max",
        "2",
        "--stats-stream-interval-ms",
        "250",
    ])
    .await;
    let mut one = Frames::open(&server, None).await;
    let mut two = Frames::open(&server, None).await;
    one.next().await.unwrap();
    two.next().await.unwrap();

    let res = open(&server, None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("STATS_STREAM_MAX"),
        "{body}"
    );
    // Only streams are limited: the counters are still served.
    let res = client()
        .get(server.url("/api/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A reader that goes frees its place (noticed at the next frame written).
    drop(one);
    let deadline = Instant::now() + WAIT;
    let mut three = loop {
        let res = open(&server, None).await;
        if res.status() == StatusCode::OK {
            break Frames {
                res,
                buffer: String::new(),
            };
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the place was never freed");
        two.next().await.unwrap();
    };
    three.next().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn token_mode_needs_a_token() {
    let mut server = Server::start(&[
        "--auth-admin-token",
        "stats-admin-token-0123456789",
        "--auth-client-tokens",
        "stats-client-token-0123456789",
    ])
    .await;
    let res = open(&server, None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = open(&server, Some("not-a-token")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let mut frames = Frames::open(&server, Some("stats-client-token-0123456789")).await;
    assert_eq!(frames.next().await.unwrap().event, "stats");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_the_stream() {
    // The longest interval: the end comes from the shutdown, not a frame.
    let mut server = Server::start(&["--stats-stream-interval-ms", "60000"]).await;
    let mut frames = Frames::open(&server, None).await;
    frames.next().await.expect("the first frame");
    let stopping = tokio::spawn(async move { server.shutdown().await });
    assert!(
        frames.next().await.is_none(),
        "a frame instead of the end at shutdown"
    );
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server did not stop")
        .unwrap();
}

#[test]
fn settings_out_of_range_stop_the_server_at_start() {
    for (variable, value) in [
        ("STATS_STREAM_INTERVAL_MS", "249"),
        ("STATS_STREAM_INTERVAL_MS", "60001"),
        ("STATS_STREAM_MAX", "0"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-server"))
            .env(variable, value)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let flag = variable.to_ascii_lowercase().replace('_', "-");
        assert!(
            stderr.contains(variable) || stderr.contains(&flag),
            "{variable}={value}: {stderr}"
        );
    }
}

//! A named consumer's committed offset survives `SIGKILL` (feature `log`,
//! SQLite, one instance, the real binary): a consumer (`?consumer=`,
//! `ack=explicit`) reads and acknowledges while a client publishes; the
//! server is killed with SIGKILL and restarted on the same database; the
//! consumer reconnects without a cursor and receives every event after the
//! last one it acknowledged — none skipped, those it had received but not
//! acknowledged included. Events it acknowledged shortly
//! before the kill may come again (the offset is stored at most every
//! 200 ms, docs/protocol.md §11.1).

#![cfg(feature = "log")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;
#[path = "common/producer.rs"]
mod producer;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_server::testing::{TempDir, client};
use futures_util::{Stream, StreamExt};
use host::Host;
use producer::publisher;
use serde_json::{Value, json};

/// Any single wait (a debug build on a shared machine).
const WAIT: Duration = Duration::from_secs(30);

const CONSUMER: &str = "/api/v1/events?consumer=crash&ack=explicit&events=JobProgress";

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<event_core::Bytes>> + Send>>;

/// The consumer's SSE stream: job events as `(seq, message)`.
struct Consumer {
    body: Body,
    buf: Vec<u8>,
}

impl Consumer {
    async fn connect(host: &Host) -> Consumer {
        // Not `client()`: its 20 s request timeout would end the stream.
        let _ = client();
        let res = tokio::time::timeout(
            WAIT,
            reqwest::Client::new()
                .get(host.url(CONSUMER))
                .header("accept", "text/event-stream")
                .send(),
        )
        .await
        .expect("SSE answered in time")
        .unwrap();
        assert_eq!(res.status(), 200);
        Consumer {
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next job event, `None` when the stream ended (the server died).
    async fn next(&mut self) -> Option<(u64, String)> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let raw = String::from_utf8(raw).unwrap();
                let (mut id, mut event, mut data) = (None, None, String::new());
                for line in raw.trim_end().split('\n') {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if event.as_deref() != Some("JobProgress") {
                    continue; // retry, keep-alives, the QueueStatus confirmation
                }
                let data: Value = serde_json::from_str(&data).unwrap();
                let seq = id.expect("a job event has an id").parse().unwrap();
                return Some((seq, data["message"].as_str().unwrap().to_owned()));
            }
            match tokio::time::timeout(WAIT, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(_) => return None,
                Err(_) => panic!("no SSE data within {WAIT:?}"),
            }
        }
    }
}

async fn ack(http: &reqwest::Client, host_url: &str, seq: u64) -> bool {
    http.post(format!("{host_url}/api/v1/consumers/crash/ack"))
        .json(&json!({"seq": seq}))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn a_consumer_killed_with_its_server_resumes_after_its_last_acknowledged_event() {
    let dir = TempDir::new();
    let env = vec![("DATABASE_URL", dir.sqlite_url())];
    let mut host = Host::start(&env).await;
    let url = host.url("");
    let mut consumer = Consumer::connect(&host).await;
    let http = client();
    let published = Arc::new(Mutex::new(BTreeMap::new()));
    // Batches of 5 every 10 ms until the server is gone, recording
    // `seq → message` of every event answered 202.
    let publishing = publisher(url.clone(), 5, {
        let published = published.clone();
        move |batch, events| {
            let mut published = published.lock().unwrap();
            for ((seq, _), sent) in events.into_iter().zip(batch) {
                assert_ne!(seq, 0, "a 202 without the event's seq");
                published.insert(seq, sent["message"].as_str().unwrap().to_owned());
            }
        }
    });

    // Read and acknowledge, each event once it arrived; then read 50 more
    // without acknowledging them (received, not done with), and SIGKILL
    // mid-stream.
    let mut last_acked = 0;
    let mut acked_at: Vec<(u64, Instant)> = Vec::new();
    while acked_at.len() < 300 {
        let (seq, _) = consumer.next().await.expect("the stream runs");
        assert!(seq > last_acked, "out of order before the kill");
        assert!(ack(&http, &url, seq).await, "ack of {seq}");
        last_acked = seq;
        acked_at.push((seq, Instant::now()));
    }
    for _ in 0..50 {
        let (seq, _) = consumer.next().await.expect("the stream runs");
        assert!(seq > last_acked, "out of order before the kill");
    }
    host.kill().await;
    let killed_at = Instant::now();
    tokio::time::timeout(WAIT, publishing)
        .await
        .expect("the publisher notices the server is gone")
        .unwrap();
    drop(consumer);
    let published = published.lock().unwrap().clone();
    let last_published = *published.keys().last().unwrap();
    assert!(last_published > last_acked, "events were still coming");

    // Same database, no cursor: resumes after the committed offset.
    let host = Host::start(&env).await;
    let mut consumer = Consumer::connect(&host).await;
    let mut got = Vec::new();
    while got.last().is_none_or(|(seq, _)| *seq < last_published) {
        let (seq, message) = consumer.next().await.expect("the stream runs");
        if seq > last_acked {
            // Acknowledged when the consumer resumes: it moves on.
            assert!(ack(&http, &host.url(""), seq).await);
        }
        got.push((seq, message));
    }
    // In order, and nothing published (202) after the last acknowledged
    // event is missing.
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "out of order");
    let after: BTreeMap<u64, String> = got
        .iter()
        .filter(|(seq, _)| *seq > last_acked)
        .cloned()
        .collect();
    for (seq, message) in published.range(last_acked + 1..) {
        assert_eq!(
            after.get(seq),
            Some(message),
            "event {seq} after the last acknowledged one ({last_acked}) was skipped"
        );
    }
    // Re-delivered: only events acknowledged shortly before the kill (the
    // stored offset is at most ~200 ms old; a generous bound here).
    let redelivered: Vec<u64> = got
        .iter()
        .map(|(seq, _)| *seq)
        .filter(|seq| *seq <= last_acked)
        .collect();
    for seq in &redelivered {
        let at = acked_at
            .iter()
            .find(|(s, _)| s == seq)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("{seq} re-delivered but never received before"));
        assert!(
            killed_at.duration_since(at) < Duration::from_secs(5),
            "{seq} was acknowledged {:?} before the kill and still re-delivered",
            killed_at.duration_since(at)
        );
    }
    eprintln!(
        "acknowledged {} before the kill; re-delivered after the restart: {}; resumed {} events",
        acked_at.len(),
        redelivered.len(),
        after.len()
    );
    drop(consumer);
    let (status, log) = host.terminate().await;
    assert!(status.success(), "{status}: {log:?}");
}

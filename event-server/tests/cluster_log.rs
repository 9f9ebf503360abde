//! The event log API, history and named consumers in cluster mode: two full
//! server instances on one NATS JetStream stream, the stream as the log and
//! the consumers' offsets in the cluster's key-value bucket.
//!
//! Needs `TEST_NATS_URL` (skipped with a reason when unset, failed when
//! `EVENT_TEST_REQUIRE_SERVICES=1`). Every test has a stream, subject
//! prefix and offset bucket of its own, deleted at the end.

#![cfg(all(feature = "nats", feature = "log", feature = "sse"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use event_nats::testing::nats_url;
use event_server::testing::{Server, client};

#[path = "common/stream.rs"]
mod stream;

use futures_util::StreamExt;
use serde_json::{Value, json};
use stream::TestStream;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

fn progress(job: &str, n: u64) -> Value {
    json!({"type": "JobProgress", "job_id": job, "progress": n % 100, "message": format!("m{n}")})
}

/// POSTs `events` to `server`; their ids.
async fn publish(server: &Server, events: &[Value]) -> Vec<String> {
    server
        .publish(&Value::Array(events.to_vec()))
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let res = client().get(server.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// An SSE connection read by a task of its own (dropping it closes the
/// connection): `(id, message)` of each `JobProgress`, in the `v1` format
/// (`id:` is the sequence number).
struct Reader {
    frames: mpsc::UnboundedReceiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    async fn open(server: &Server, path: &str) -> Reader {
        let res = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}: {:?}", res.text().await);
        let (tx, frames) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut text = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                text.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = text.find("\n\n") {
                    let frame: String = text.drain(..end + 2).collect();
                    assert!(!frame.contains("resync_required"), "resync: {frame}");
                    if !frame.lines().any(|l| l == "event: JobProgress") {
                        continue;
                    }
                    let id = frame.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
                    let data = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap();
                    let data: Value = serde_json::from_str(data).unwrap();
                    let message = data["message"].as_str().unwrap().to_owned();
                    if tx.send((id.to_owned(), message)).is_err() {
                        return;
                    }
                }
            }
        });
        Reader { frames, task }
    }

    /// `(seq, message)` of the next `n` events.
    async fn take(&mut self, n: usize) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, async {
            while out.len() < n {
                let (id, message) = self.frames.recv().await.expect("the stream ended");
                out.push((id.parse().unwrap(), message));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} of {n} events arrived", out.len()));
        out
    }
}

/// The consumer `name` as `GET /api/v1/consumers` on `server` lists it,
/// once `check` holds. A `503 log_unavailable` (the offsets bucket did not
/// answer within the replay timeout: seen once in CI on a loaded machine)
/// is asked again until the deadline, as a client would after it.
async fn consumer_when(server: &Server, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let (status, list) = get(server, "/api/v1/consumers").await;
            if status == 503 && list["error"] == "log_unavailable" {
                last = list;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(status, 200, "{list}");
            if let Some(c) = list["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
            {
                last = c.clone();
                if check(c) {
                    return c.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("consumer {name} never matched; last {last}"))
}

#[tokio::test]
async fn a_named_consumer_resumes_on_another_instance_after_its_offset() {
    let Some(url) = nats_url("a_named_consumer_resumes_on_another_instance_after_its_offset")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let (a, b) = (stream.instance(64).await, stream.instance(64).await);
    let job = uuid::Uuid::new_v4().to_string();
    let path = "/api/v1/events?consumer=indexer&format=v1&events=JobProgress";
    let messages =
        |got: &[(u64, String)]| -> Vec<String> { got.iter().map(|(_, m)| m.clone()).collect() };

    let mut reader = Reader::open(&a, path).await;
    publish(&a, &(0..3).map(|n| progress(&job, n)).collect::<Vec<_>>()).await;
    let first = reader.take(3).await;
    assert_eq!(messages(&first), ["m0", "m1", "m2"]);
    drop(reader);
    // Stored (shared by both instances) once the connection is gone: B
    // lists the offset A's consumer reached.
    let third = first[2].0;
    let listed = consumer_when(&b, "indexer", |c| c["committed_seq"] == third).await;
    assert_eq!(listed["kind"], "consumer");
    assert_eq!(listed["lag"], 0);

    publish(&a, &(3..6).map(|n| progress(&job, n)).collect::<Vec<_>>()).await;
    consumer_when(&b, "indexer", |c| c["lag"] == 3).await;

    // Without a cursor, on the other instance: right after the offset, no
    // gap, nothing again (ack=auto: what was written is done).
    let mut reader = Reader::open(&b, path).await;
    let more = reader.take(3).await;
    assert_eq!(messages(&more), ["m3", "m4", "m5"]);
    assert!(more[0].0 > third);
    drop(reader);
    let sixth = more[2].0;
    consumer_when(&a, "indexer", |c| c["committed_seq"] == sixth).await;

    // Deleted on A, gone for B too.
    let res = client()
        .delete(a.url("/api/v1/consumers/indexer"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (_, list) = get(&b, "/api/v1/consumers").await;
    assert_eq!(list["consumers"], json!([]), "{list}");
}

#[tokio::test]
async fn history_and_topics_read_the_stream_in_cluster_mode() {
    let Some(url) = nats_url("history_and_topics_read_the_stream_in_cluster_mode") else {
        return;
    };
    let stream = TestStream::new(&url);
    // Rings of four: most of the history is only in the stream.
    let (a, b) = (stream.instance(4).await, stream.instance(4).await);
    let job = uuid::Uuid::new_v4().to_string();
    let ids = publish(&a, &(0..10).map(|n| progress(&job, n)).collect::<Vec<_>>()).await;
    // B has them all (its ring the newest four) once its own history ends
    // with the last one.
    let page_ids = |page: &Value| -> Vec<String> {
        page.as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, page) = get(&b, "/api/v1/events/history?limit=1000&events=JobProgress").await;
            if page_ids(&page).last() == ids.last() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B has the events");

    // From the start of the stream, not of the ring.
    let (status, page) = get(&b, "/api/v1/events/history?limit=1000&events=JobProgress").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page_ids(&page), ids);
    // `since` older than B's ring, `until`, `offset`, `limit`.
    let path = format!(
        "/api/v1/events/history?since={}&until={}&offset=1&limit=3&events=JobProgress",
        ids[1], ids[7]
    );
    let (status, page) = get(&b, &path).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page_ids(&page), ids[3..6]);
    // A filter that matches none of these events.
    let path = format!("/api/v1/events/history?since={}&events=NoteUpdated", ids[0]);
    let (status, page) = get(&b, &path).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page, json!([]));

    let (status, topics) = get(&b, "/api/v1/topics").await;
    assert_eq!(status, 200, "{topics}");
    let job_topic = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "job")
        .cloned()
        .unwrap_or_else(|| panic!("no job topic in {topics}"));
    assert_eq!(job_topic["events"], 10, "{topics}");
    let (first, last) = (
        job_topic["first_seq"].as_u64().unwrap(),
        job_topic["last_seq"].as_u64().unwrap(),
    );
    assert!(first > 0 && last % event_nats::SEQ_STRIDE == 0, "{topics}");
    assert!(last - first >= 9 * event_nats::SEQ_STRIDE, "{topics}");
}

#[tokio::test]
async fn a_group_spans_the_instances_through_the_host() {
    let Some(url) = nats_url("a_group_spans_the_instances_through_the_host") else {
        return;
    };
    let stream = TestStream::new(&url);
    let (a, b) = (stream.instance(64).await, stream.instance(64).await);
    let path = "/api/v1/events?group=indexers&ack=auto&format=v1&events=JobProgress";
    let mut on_a = Reader::open(&a, path).await;
    let mut on_b = Reader::open(&b, path).await;
    // One member on each instance, one group in JetStream.
    consumer_when(&a, "indexers", |c| {
        c["kind"] == "group" && c["members"] == 1
    })
    .await;
    consumer_when(&b, "indexers", |c| {
        c["kind"] == "group" && c["members"] == 1
    })
    .await;

    let jobs: Vec<String> = (0..20).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let events: Vec<Value> = (0..200)
        .map(|n| progress(&jobs[n % 20], n as u64))
        .collect();
    for batch in events.chunks(50) {
        publish(&a, batch).await;
    }
    // Without a backend shared by the instances each member would get all
    // 200; spanning, each event reaches exactly one of the two.
    let mut seen = std::collections::HashMap::new();
    tokio::time::timeout(WAIT, async {
        while seen.len() < 200 {
            let (who, (_, message)) = tokio::select! {
                Some(f) = on_a.frames.recv() => ("a", f),
                Some(f) = on_b.frames.recv() => ("b", f),
            };
            if let Some(first) = seen.insert(message.clone(), who) {
                panic!("{message} reached the group twice ({first} and {who})");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of 200 events reached the group", seen.len()));
    // Nothing more comes to either member (no duplicate after the union).
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        tokio::select! {
            Some(f) = on_a.frames.recv() => f,
            Some(f) = on_b.frames.recv() => f,
        }
    })
    .await;
    assert!(extra.is_err(), "an event came again: {extra:?}");
}

#[tokio::test]
async fn an_explicit_ack_sent_to_the_other_instance_reaches_the_consumer() {
    let Some(url) = nats_url("an_explicit_ack_sent_to_the_other_instance_reaches_the_consumer")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let (a, b) = (stream.instance(64).await, stream.instance(64).await);
    let job = uuid::Uuid::new_v4().to_string();
    // An ack wait far beyond the test's: only the relayed ack can settle.
    let path =
        "/api/v1/events?consumer=worker&ack=explicit&ack_wait=300&format=v1&events=JobProgress";
    let mut reader = Reader::open(&a, path).await;
    consumer_when(&a, "worker", |c| c["members"] == 1).await;
    publish(&a, &(0..3).map(|n| progress(&job, n)).collect::<Vec<_>>()).await;
    let got = reader.take(3).await;
    consumer_when(&a, "worker", |c| c["pending"] == 3).await;

    // A load balancer sends the client's ack to B, which does not hold the
    // consumer's events: B passes it on over NATS.
    let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
    let res = client()
        .post(b.url("/api/v1/consumers/worker/ack"))
        .json(&json!({ "seqs": seqs }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let last = seqs[2];
    consumer_when(&a, "worker", |c| {
        c["pending"] == 0 && c["committed_seq"] == last
    })
    .await;
    // And nothing comes again.
    let again = tokio::time::timeout(Duration::from_millis(500), reader.frames.recv()).await;
    assert!(again.is_err(), "an acked event came again: {again:?}");
}

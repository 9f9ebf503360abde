//! Per-topic retention in cluster mode: two full server instances on one
//! NATS JetStream stream. A retention set on one instance is the other's
//! too, the instances prune that topic's events only, and a reader
//! resuming from before the pruned range resyncs only when its filter can
//! match the topic (SSE `Last-Event-ID`, history `since`, named consumers).
//!
//! Needs `TEST_NATS_URL` (skipped with a reason when unset, failed when
//! `EVENT_TEST_REQUIRE_SERVICES=1`). Every test has a stream, subject
//! prefix and buckets of its own, deleted at the end.

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

const WAIT: Duration = Duration::from_secs(30);

fn progress(n: u64) -> Value {
    json!({"type": "JobProgress", "job_id": uuid::Uuid::new_v4(), "progress": n % 100})
}

/// POSTs one event of `topic` (`None`: its type family, `job`) to
/// `server`; its sequence number and id.
async fn post(server: &Server, topic: Option<&str>, n: u64) -> (u64, String) {
    let path = match topic {
        Some(topic) => format!("/api/v1/events?topic={topic}"),
        None => "/api/v1/events".to_owned(),
    };
    let res = client()
        .post(server.url(&path))
        .json(&progress(n))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let event = &answer["events"][0];
    (
        event["seq"].as_u64().unwrap(),
        event["event_id"].as_str().unwrap().to_owned(),
    )
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let res = client().get(server.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn put(server: &Server, topic: &str, body: Value) -> (u16, Value) {
    let res = client()
        .put(server.url(&format!("/api/v1/topics/{topic}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// `GET path` on `server` once `check` holds for its body.
async fn json_when(server: &Server, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let (_, body) = get(server, path).await;
            if check(&body) {
                return body.clone();
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{path} never matched; last {last}"))
}

/// The first `n` frames of the SSE stream `path` (after `last_event_id`,
/// if any) that are events or a resync: the event's `id:`, or `resync`.
async fn frames(server: &Server, path: &str, last_event_id: Option<u64>, n: usize) -> Vec<String> {
    let mut req = client().get(server.url(path));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.len() < n {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                if frame.contains("resync_required") {
                    out.push("resync".to_owned());
                } else if frame.lines().any(|l| l == "event: JobProgress") {
                    let id = frame.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
                    out.push(id.to_owned());
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path}: only {out:?} within {WAIT:?}"));
    out.truncate(n);
    out
}

fn ids(seqs: &[u64]) -> Vec<String> {
    seqs.iter().map(u64::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_retention_set_on_one_instance_prunes_that_topic_and_resyncs_only_its_readers() {
    let Some(url) = nats_url(
        "a_topic_retention_set_on_one_instance_prunes_that_topic_and_resyncs_only_its_readers",
    ) else {
        return;
    };
    let stream = TestStream::new(&url);
    // Rings of two: resumes from before the pruned range are served from
    // the stream.
    let flags = [
        "--event-replay-size",
        "2",
        "--event-log-prune-interval-secs",
        "1",
    ];
    let (a, b) = (
        stream.with_flags(&flags).await,
        stream.with_flags(&flags).await,
    );

    // Set on A, seen on B.
    let (status, body) = put(&a, "gpu", json!({"max_events": 2})).await;
    assert_eq!(status, 200, "{body}");
    let (status, shown) = get(&b, "/api/v1/topics/gpu").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["retention"]["max_events"], 2, "{shown}");

    // Two named consumers, at the first event: one of every topic, one of
    // `job` only.
    let all = "/api/v1/events?consumer=all&format=v1";
    let jobs = "/api/v1/events?consumer=jobs&format=v1&topics=job";
    let first = tokio::join!(frames(&b, all, None, 1), frames(&b, jobs, None, 1), async {
        // Both attached (listed with a member) before the event.
        json_when(&b, "/api/v1/consumers", |list| {
            list["consumers"]
                .as_array()
                .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["members"] == 1))
        })
        .await;
        post(&a, None, 0).await.0
    });
    let start = first.2;
    assert_eq!((first.0, first.1), (ids(&[start]), ids(&[start])));
    json_when(&a, "/api/v1/consumers", |list| {
        list["consumers"].as_array().is_some_and(|c| {
            c.len() == 2
                && c.iter()
                    .all(|c| c["members"] == 0 && c["committed_seq"] == start)
        })
    })
    .await;

    // gpu, job, gpu, job, gpu, gpu, gpu: the oldest three of `gpu` go.
    let mut gpu = Vec::new();
    let (mut job, mut job_ids) = (Vec::new(), Vec::new());
    for n in 1..=7 {
        if [2, 4].contains(&n) {
            let (seq, id) = post(&a, None, n).await;
            job.push(seq);
            job_ids.push(id);
        } else {
            gpu.push(post(&a, Some("gpu"), n).await.0);
        }
    }
    // An age bound on another topic, applied too.
    let (status, body) = put(&b, "old", json!({"max_age_secs": 1})).await;
    assert_eq!(status, 200, "{body}");
    let old = post(&b, Some("old"), 8).await.0;

    // The watermark is stored before the purge (so no reader misses the
    // cut): wait for both, the purge a moment after the watermark.
    let shown = json_when(&b, "/api/v1/topics/gpu", |t| {
        t["pruned_through"] == gpu[2] && t["events"] == 2
    })
    .await;
    assert_eq!(shown["first_seq"], gpu[3], "{shown}");
    json_when(&a, "/api/v1/topics/old", |t| t["pruned_through"] == old).await;
    // A bound by size, applied too: of three events of one size, the
    // newest two fit.
    let mut sized = Vec::new();
    for n in 10..13 {
        sized.push(post(&a, Some("sized"), n).await.0);
    }
    let shown = json_when(&b, "/api/v1/topics/sized", |t| t["events"] == 3).await;
    let one = shown["bytes"].as_u64().unwrap() / 3;
    let (status, body) = put(&b, "sized", json!({"max_bytes": 2 * one})).await;
    assert_eq!(status, 200, "{body}");
    json_when(&a, "/api/v1/topics/sized", |t| {
        t["pruned_through"] == sized[0] && t["events"] == 2 && t["bytes"] == 2 * one
    })
    .await;
    // (Also `queue`: each instance's queue status at start.)
    let listed = json_when(&a, "/api/v1/topics", |t| {
        t["topics"].as_array().is_some_and(|t| {
            ["gpu", "job", "old"]
                .iter()
                .all(|name| t.iter().any(|row| row["name"] == *name))
        })
    })
    .await;
    let row = |name: &str| {
        listed["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {listed}"))
    };
    assert_eq!(row("job")["events"], 3, "untouched: {listed}");
    assert_eq!(row("job")["retention"], Value::Null, "{listed}");
    assert_eq!(row("gpu")["retention"]["max_events"], 2, "{listed}");
    assert_eq!(row("old")["retention"]["max_age_secs"], 1, "{listed}");
    assert_eq!(row("old")["events"], 0, "{listed}");

    // SSE resumes from before the pruned range, on B.
    let of_job = "/api/v1/events?format=v1&topics=job";
    assert_eq!(frames(&b, of_job, Some(start), 2).await, ids(&job));
    assert_eq!(
        frames(&b, "/api/v1/events?format=v1", Some(start), 1).await,
        ["resync"]
    );
    assert_eq!(
        frames(&b, "/api/v1/events?format=v1&topics=gpu", Some(gpu[2]), 2).await,
        ids(&gpu[3..])
    );
    // History `since` the same cursor.
    let (status, page) = get(
        &b,
        &format!("/api/v1/events/history?since={start}&topics=job"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let page_ids: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(page_ids, job_ids);
    let (status, body) = get(&b, &format!("/api/v1/events/history?since={start}")).await;
    assert_eq!(status, 410, "{body}");

    // The named consumers come back on the other instance: the one of
    // `job` resumes without a gap; the one that may see `gpu` is told once,
    // where events are first missing (right after its offset), and goes on
    // with what is left.
    assert_eq!(frames(&a, jobs, None, 2).await, ids(&job));
    let mut want = vec!["resync".to_owned()];
    want.extend(ids(&[job[0], job[1], gpu[3], gpu[4]]));
    assert_eq!(frames(&a, all, None, want.len()).await, want);

    // Removed on B, for A too: the bounds go, the watermark stays.
    let remove = || client().delete(b.url("/api/v1/topics/gpu")).send();
    assert_eq!(remove().await.unwrap().status(), 204);
    let (status, shown) = get(&a, "/api/v1/topics/gpu").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (&shown["retention"], shown["pruned_through"].as_u64()),
        (&Value::Null, Some(gpu[2])),
        "{shown}"
    );
    assert_eq!(remove().await.unwrap().status(), 404);
}

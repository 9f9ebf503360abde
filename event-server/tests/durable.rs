//! The event log through the real binary (feature `log`): what a `202`
//! promises survives `SIGKILL`, sequence numbers keep increasing across
//! restarts, and SSE cursors and history pages from before a restart (or
//! older than the ring) are served from the log. On SQLite always; on
//! PostgreSQL when `TEST_POSTGRES_URL` is set (required under
//! `EVENT_TEST_REQUIRE_SERVICES=1`) and the build has `postgres`.

#![cfg(feature = "log")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;
#[path = "common/producer.rs"]
mod producer;
#[path = "common/webhook.rs"]
mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_server::testing::{TempDir, client};
use futures_util::StreamExt;
use host::{Host, WAIT};
use producer::{burst, progress, publish, publisher};
use serde_json::{Value, json};

/// Every event the host's history holds, from the oldest, page by page:
/// `(seq, event_id)` (the v1 `seq` is not in the envelope; the ids are).
async fn all_history(host: &Host) -> Vec<String> {
    let mut ids = Vec::new();
    let mut since = String::new();
    loop {
        let page = host
            .json(&format!("/api/v1/events/history?limit=1000&since={since}"))
            .await;
        let page = page.as_array().expect("a history page").clone();
        let Some(last) = page.last() else {
            return ids;
        };
        since = last["event_id"].as_str().unwrap().to_owned();
        ids.extend(
            page.iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
    }
}

async fn kill(mut host: Host) {
    host.kill().await;
}

async fn sigkill_loses_no_acknowledged_event(env: Vec<(&str, String)>) {
    let host = Host::start(&env).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    // About 1,000 events/s: batches of 10 every 10 ms.
    let publishing = publisher(host.url(""), 10, {
        let acked = acked.clone();
        move |_, events| acked.lock().unwrap().extend(events)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 1500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} events acknowledged",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-stream: requests are in flight.
    kill(host).await;
    tokio::time::timeout(WAIT, publishing)
        .await
        .expect("the publisher notices the server is gone")
        .unwrap();
    let acked = acked.lock().unwrap().clone();

    let host = Host::start(&env).await;
    let stored = all_history(&host).await;
    let position: std::collections::HashMap<&str, usize> = stored
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    assert_eq!(position.len(), stored.len(), "an event is stored twice");
    let mut last = None;
    for (seq, id) in &acked {
        let at = *position
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged event {seq} ({id}) was lost"));
        assert!(last.is_none_or(|l| l < at), "event {seq} is out of order");
        last = Some(at);
    }
    // The sequence continues above everything acknowledged before.
    let top = acked.iter().map(|(s, _)| *s).max().unwrap();
    let after = publish(&host.url(""), &[progress(0)]).await;
    assert!(
        after[0].0 > top,
        "{} after a restart, {top} before",
        after[0].0
    );
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn sqlite_sigkill_while_publishing_loses_no_acknowledged_event() {
    let dir = TempDir::new();
    sigkill_loses_no_acknowledged_event(vec![("DATABASE_URL", dir.sqlite_url())]).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_sigkill_while_publishing_loses_no_acknowledged_event() {
    let Some(url) = event_server::testing::postgres_url("postgres sigkill") else {
        return;
    };
    let schema = event_server::testing::PgSchema::create(&url).await;
    let dir = TempDir::new();
    sigkill_loses_no_acknowledged_event(vec![
        ("DATABASE_URL", dir.sqlite_url()),
        ("EVENT_LOG", schema.scoped_url()),
    ])
    .await;
    schema.drop_schema().await;
}

/// The `id:` of each `JobProgress` frame of an SSE stream, until `n`
/// arrived.
async fn sse_ids(url: &str, last_event_id: &str, n: usize) -> Vec<String> {
    let res = client()
        .get(url)
        .header("Last-Event-ID", last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut ids = Vec::new();
    tokio::time::timeout(WAIT, async {
        while ids.len() < n {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                assert!(
                    !frame.contains("resync_required"),
                    "told to resync: {frame}"
                );
                // The host's own events (a QueueStatus at start) are not
                // the ones counted.
                let progress = frame
                    .lines()
                    .any(|l| l == "event: JobProgress" || l == "event: job.progress");
                if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: "))
                    && progress
                {
                    ids.push(id.to_owned());
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} events arrived", ids.len()));
    ids
}

async fn cursors_from_before_a_restart_resume_from_the_log(env: Vec<(&str, String)>) {
    // A ring of 4: most of the replay must come from the log.
    let mut env = env;
    env.push(("EVENT_REPLAY_SIZE", "4".to_owned()));
    let host = Host::start(&env).await;
    let before = publish(&host.url(""), &(0..8).map(progress).collect::<Vec<_>>()).await;
    kill(host).await;
    let host = Host::start(&env).await;
    let after = publish(&host.url(""), &(0..3).map(progress).collect::<Vec<_>>()).await;
    // v1: by sequence number.
    let ids = sse_ids(
        &host.url("/api/v1/events?format=v1"),
        &before[1].0.to_string(),
        9,
    )
    .await;
    let want: Vec<String> = before[2..]
        .iter()
        .chain(&after)
        .map(|(seq, _)| seq.to_string())
        .collect();
    assert_eq!(ids, want);
    // Envelope: by event id.
    let ids = sse_ids(&host.url("/api/v1/events?format=envelope"), &before[5].1, 5).await;
    let want: Vec<String> = before[6..]
        .iter()
        .chain(&after)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids, want);
    // History: a cursor older than the ring, and the first page.
    let page = host
        .json(&format!(
            "/api/v1/events/history?since={}&limit=3&events=JobProgress",
            before[0].0
        ))
        .await;
    let page: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [&before[1].1, &before[2].1, &before[3].1]);
    let first = host
        .json("/api/v1/events/history?limit=1&events=JobProgress")
        .await;
    assert_eq!(first[0]["event_id"], before[0].1.as_str());
    // Every acknowledged event, once.
    let all = all_history(&host).await;
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an event twice in the history");
    for (_, id) in before.iter().chain(&after) {
        assert!(unique.contains(id), "{id} missing from the history");
    }
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn sqlite_cursors_from_before_a_restart_resume_from_the_log() {
    let dir = TempDir::new();
    cursors_from_before_a_restart_resume_from_the_log(vec![("DATABASE_URL", dir.sqlite_url())])
        .await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_cursors_from_before_a_restart_resume_from_the_log() {
    let Some(url) = event_server::testing::postgres_url("postgres resume") else {
        return;
    };
    let schema = event_server::testing::PgSchema::create(&url).await;
    let dir = TempDir::new();
    cursors_from_before_a_restart_resume_from_the_log(vec![
        ("DATABASE_URL", dir.sqlite_url()),
        ("EVENT_LOG", schema.scoped_url()),
    ])
    .await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn without_the_log_a_restart_forgets_and_old_cursors_resync() {
    let dir = TempDir::new();
    let env = vec![
        ("DATABASE_URL", dir.sqlite_url()),
        ("EVENT_LOG", "off".to_owned()),
    ];
    let host = Host::start(&env).await;
    let before = publish(&host.url(""), &[progress(1), progress(2)]).await;
    kill(host).await;
    let host = Host::start(&env).await;
    let res = client()
        .get(host.url(&format!("/api/v1/events/history?since={}", before[0].0)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410, "an old cursor without a log");
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

/// `matric_log_commit_wait_seconds` takes one sample per commit, as
/// `matric_log_append_seconds` does, and each spans its batch's append
/// (from the oldest event's publication to the commit), so its sum is at
/// least the appends'.
#[tokio::test]
async fn the_commit_wait_is_measured_once_per_commit_and_spans_the_append() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    for n in 0..5 {
        publish(&host.url(""), &[progress(2 * n), progress(2 * n + 1)]).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // One scrape for all four series, so that they agree.
        let text = host.metrics_text().await;
        let scrape = event_test_support::Scrape::parse(&text);
        let read = |name: &str| scrape.find(name, &[]).unwrap_or(0.0);
        let (waits, appends) = (
            read("matric_log_commit_wait_seconds_count"),
            read("matric_log_append_seconds_count"),
        );
        // The wait is recorded just after the commit it ends is announced.
        if waits == appends && waits >= 1.0 {
            assert!(
                read("matric_log_commit_wait_seconds_sum") >= read("matric_log_append_seconds_sum"),
                "a commit wait shorter than its append:\n{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waits} commit waits against {appends} appends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

/// 20,000 events posted as fast as they are accepted, with a WebSocket and
/// an SSE client connected; every sink still sees every event.
async fn burst_with_sinks(env: &[(&str, String)]) -> Vec<String> {
    let host = Host::start(env).await;
    let _clients = host.sink_clients().await;
    burst(&host.url(""), 4, 5, 1000).await;
    let (status, log) = host.terminate().await;
    assert!(status.success());
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_sink_whole_with_the_log() {
    let dir = TempDir::new();
    let log = burst_with_sinks(&[("DATABASE_URL", dir.sqlite_url())]).await;
    let behind: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("sink fell behind the bus"))
        .collect();
    assert!(behind.is_empty(), "sinks lost events: {behind:#?}");
}

async fn killed_after_a_burst_every_webhook_delivery_still_arrives(env: Vec<(&str, String)>) {
    let mut env = env;
    env.push(("WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8".to_owned()));
    let (url, hook) = webhook::Receiver::start(true).await;
    let host = Host::start(&env).await;
    webhook::subscribe(&host.url(""), &url).await;
    // A burst, then SIGKILL right after the last 202.
    let acked = burst(&host.url(""), 5, 4, 100).await;
    kill(host).await;
    let host = Host::start(&env).await;
    hook.wait_for_all(&acked, Duration::from_secs(90)).await;
    let (status, log) = host.terminate().await;
    assert!(status.success());
    for line in log
        .iter()
        .filter(|l| l.contains("recovered from the event log"))
    {
        eprintln!("{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_after_a_burst_every_webhook_delivery_still_arrives() {
    let dir = TempDir::new();
    killed_after_a_burst_every_webhook_delivery_still_arrives(vec![(
        "DATABASE_URL",
        dir.sqlite_url(),
    )])
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_after_a_burst_every_webhook_delivery_still_arrives() {
    let Some(url) = event_server::testing::postgres_url("postgres webhooks after a kill") else {
        return;
    };
    let schema = event_server::testing::PgSchema::create(&url).await;
    // Deliveries the killed worker had claimed come back when its claims
    // expire (a shared queue cannot free them at start): a short lease.
    killed_after_a_burst_every_webhook_delivery_still_arrives(vec![
        ("DATABASE_URL", schema.scoped_url()),
        ("WEBHOOK_TIMEOUT_SECS", "2".to_owned()),
        ("WEBHOOK_LEASE_SECS", "5".to_owned()),
    ])
    .await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn topics_file_filter_and_list_events() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    let http = client();
    // A stream of topic `gpu.*` only.
    let res = http
        .get(host.url("/api/v1/events?format=envelope&topics=gpu.*"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let named = http
        .post(host.url("/api/v1/events?topic=gpu.large"))
        .json(&progress(1))
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 202);
    let named: Value = named.json().await.unwrap();
    let named_id = named["events"][0]["event_id"].as_str().unwrap().to_owned();
    publish(&host.url(""), &[progress(2)]).await; // topic `job`
    let last = http
        .post(host.url("/api/v1/events?topic=gpu.small"))
        .json(&progress(3))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 202);
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while !text.contains("gpu.small") {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("the gpu.* events arrive");
    assert!(text.contains(&named_id), "{text}");
    assert!(text.contains(r#""topic":"gpu.large""#), "{text}");
    assert_eq!(
        text.matches("\"type\":\"JobProgress\"").count(),
        2,
        "{text}"
    );
    // History by topic, and the topics with their sizes.
    let page = host.json("/api/v1/events/history?topics=gpu.large").await;
    assert_eq!(page.as_array().unwrap().len(), 1, "{page}");
    let topics = host.json("/api/v1/topics").await;
    let names: Vec<&str> = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in ["gpu.large", "gpu.small", "job"] {
        assert!(names.contains(&want), "{want} missing from {topics}");
    }
    // A bad topic name is refused, naming it.
    let bad = http
        .post(host.url("/api/v1/events?topic=Not%20A%20Topic"))
        .json(&progress(4))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"], "invalid_topic", "{bad}");
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

/// The `id:` of the first frame after the start, or `resync` when the
/// stream says so first.
async fn first_id_or_resync(url: &str, last_event_id: &str) -> String {
    let res = client()
        .get(url)
        .header("Last-Event-ID", last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                if frame.contains("resync_required") {
                    return "resync".to_owned();
                }
                if frame.contains("event: JobProgress")
                    && let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: "))
                {
                    return id.to_owned();
                }
            }
        }
    })
    .await
    .expect("a frame arrived")
}

#[tokio::test]
async fn a_topic_retention_is_set_applied_and_removed_and_resumes_stay_exact() {
    let dir = TempDir::new();
    let host = Host::start(&[
        ("DATABASE_URL", dir.sqlite_url()),
        ("EVENT_REPLAY_SIZE", "2".to_owned()),
        ("EVENT_LOG_PRUNE_INTERVAL_SECS", "1".to_owned()),
    ])
    .await;
    let http = client();
    let put = |body: Value| http.put(host.url("/api/v1/topics/gpu")).json(&body).send();
    for bad in [
        json!({}),
        json!({"max_events": 0}),
        json!({"max_events": "x"}),
        json!({"keep": 1}),
    ] {
        let res = put(bad.clone()).await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    let res = http
        .put(host.url("/api/v1/topics/Not%20A%20Topic"))
        .json(&json!({"max_events": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = put(json!({"max_events": 2})).await.unwrap();
    assert_eq!(res.status(), 200);
    // Five of topic `gpu`, two of `job`, interleaved.
    let mut gpu = Vec::new();
    let mut job = Vec::new();
    for i in 0..5 {
        let res = http
            .post(host.url("/api/v1/events?topic=gpu"))
            .json(&progress(i))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let answer: Value = res.json().await.unwrap();
        gpu.push(answer["events"][0]["seq"].as_u64().unwrap());
        if i < 2 {
            job.push(publish(&host.url(""), &[progress(10 + i)]).await[0].0);
        }
    }
    // Pruned in the background to the newest two.
    let deadline = tokio::time::Instant::now() + WAIT;
    let shown = loop {
        let shown = host.json("/api/v1/topics/gpu").await;
        if shown["events"] == 2 {
            break shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pruned: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["pruned_through"], gpu[2], "{shown}");
    assert_eq!(shown["retention"]["max_events"], 2, "{shown}");
    let listed = host.json("/api/v1/topics").await;
    let job_row = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "job")
        .unwrap();
    assert_eq!(
        (job_row["events"].as_u64(), &job_row["retention"]),
        (Some(2), &Value::Null)
    );
    // A reader of `job` resumes from before the pruning without a gap; a
    // reader that may see `gpu` is told to resync instead of missing them.
    let before = (gpu[0] - 1).to_string();
    assert_eq!(
        first_id_or_resync(&host.url("/api/v1/events?format=v1&topics=job"), &before).await,
        job[0].to_string()
    );
    assert_eq!(
        first_id_or_resync(&host.url("/api/v1/events?format=v1"), &before).await,
        "resync"
    );
    assert_eq!(
        first_id_or_resync(&host.url("/api/v1/events?format=v1"), &gpu[2].to_string()).await,
        gpu[3].to_string()
    );
    // Removed: the topic keeps its events and mark, without bounds.
    let res = http
        .delete(host.url("/api/v1/topics/gpu"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let shown = host.json("/api/v1/topics/gpu").await;
    assert_eq!(
        (&shown["retention"], shown["pruned_through"].as_u64()),
        (&Value::Null, Some(gpu[2]))
    );
    let res = http
        .delete(host.url("/api/v1/topics/gpu"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(host.status("/api/v1/topics/none").await, 404);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_retentions_are_bounded_in_count_and_body_size() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    let http = client();
    let put = |topic: String, body: String| {
        http.put(host.url(&format!("/api/v1/topics/{topic}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = put(
        "big".into(),
        format!(r#"{{"max_events":1,"pad":"{}"}}"#, "x".repeat(5000)),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 413);
    for i in 0..event_core::MAX_TOPIC_RETENTIONS {
        let res = put(format!("t{i}"), r#"{"max_events":10}"#.into())
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "topic {i}");
    }
    let res = put("one-more".into(), r#"{"max_events":10}"#.into())
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "topic_limit");
    // Replacing an existing one is not a new one.
    let res = put("t0".into(), r#"{"max_events":20}"#.into())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

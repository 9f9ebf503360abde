//! Named durable consumers and groups through the real binary (feature
//! `log`): SSE `?consumer=` / `?group=`, the consumers API, offsets across a
//! restart on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use event_server::testing::{TempDir, client};
use futures_util::StreamExt;
use host::{Host, WAIT};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One `JobProgress` of an SSE stream: its `id:` and job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    id: String,
    job: String,
}

/// An SSE connection read by a task of its own; dropping it closes the
/// connection. `frames` yields each `JobProgress`, `resyncs` counts
/// `resync_required`.
struct Reader {
    frames: mpsc::UnboundedReceiver<Got>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    /// Opens `path` on `host`; panics unless it answers 200 (the consumer
    /// is attached once the response arrives).
    async fn open(host: &Host, path: &str) -> Reader {
        let res = client().get(host.url(path)).send().await.unwrap();
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
                    let data: Value = serde_json::from_str(
                        frame
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .unwrap(),
                    )
                    .unwrap();
                    let got = Got {
                        id: id.to_owned(),
                        job: data["job_id"].as_str().unwrap().to_owned(),
                    };
                    if tx.send(got).is_err() {
                        return;
                    }
                }
            }
        });
        Reader { frames, task }
    }

    /// The next `n` events.
    async fn take(&mut self, n: usize) -> Vec<Got> {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, async {
            while out.len() < n {
                out.push(self.frames.recv().await.expect("the stream ended"));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} of {n} events arrived", out.len()));
        out
    }

    /// Whatever arrived so far.
    fn drain(&mut self) -> Vec<Got> {
        let mut out = Vec::new();
        while let Ok(got) = self.frames.try_recv() {
            out.push(got);
        }
        out
    }
}

fn progress(job: &str, n: u64) -> Value {
    json!({"type": "JobProgress", "job_id": job, "progress": n % 100})
}

/// Publishes `events` (in batches the API takes); the sequence numbers.
async fn publish(host: &Host, events: &[Value]) -> Vec<String> {
    let mut seqs = Vec::new();
    for batch in events.chunks(500) {
        let res = client()
            .post(host.url("/api/v1/events"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let answer: Value = res.json().await.unwrap();
        seqs.extend(
            answer["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap().to_string()),
        );
    }
    seqs
}

fn jobs(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// The consumer `name` as `GET /api/v1/consumers` lists it, once `check`
/// holds.
async fn consumer_when(host: &Host, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let list = host.json("/api/v1/consumers").await;
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

async fn a_consumer_resumes_after_its_offset_across_a_restart(env: Vec<(&str, String)>) {
    let host = Host::start(&env).await;
    let job = uuid::Uuid::new_v4().to_string();
    let mut reader = Reader::open(&host, "/api/v1/events?consumer=indexer&format=v1").await;
    let first = publish(
        &host,
        &(0..5).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let got: Vec<String> = reader.take(5).await.into_iter().map(|g| g.id).collect();
    assert_eq!(got, first);
    drop(reader);
    consumer_when(&host, "indexer", |c| c["members"] == 0).await;
    // Published while the consumer is away, then the server restarts.
    let away = publish(
        &host,
        &(5..10).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let (status, _) = host.terminate().await;
    assert!(status.success());
    let host = Host::start(&env).await;
    let listed = consumer_when(&host, "indexer", |_| true).await;
    assert_eq!(
        listed["committed_seq"].as_u64().unwrap().to_string(),
        first[4]
    );
    assert_eq!(listed["kind"], "consumer");
    let after = publish(
        &host,
        &(10..12).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let mut reader = Reader::open(&host, "/api/v1/events?consumer=indexer&format=v1").await;
    let got: Vec<String> = reader.take(7).await.into_iter().map(|g| g.id).collect();
    let want: Vec<String> = away.into_iter().chain(after).collect();
    assert_eq!(got, want);
    consumer_when(&host, "indexer", |c| {
        c["committed_seq"].as_u64().unwrap().to_string() == want[6] && c["lag"] == 0
    })
    .await;
    drop(reader);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn sqlite_a_consumer_resumes_after_its_offset_across_a_restart() {
    let dir = TempDir::new();
    a_consumer_resumes_after_its_offset_across_a_restart(vec![("DATABASE_URL", dir.sqlite_url())])
        .await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_a_consumer_resumes_after_its_offset_across_a_restart() {
    let Some(url) = event_server::testing::postgres_url("postgres consumers") else {
        return;
    };
    let schema = event_server::testing::PgSchema::create(&url).await;
    let dir = TempDir::new();
    a_consumer_resumes_after_its_offset_across_a_restart(vec![
        ("DATABASE_URL", dir.sqlite_url()),
        ("EVENT_LOG", schema.scoped_url()),
    ])
    .await;
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_shares_ten_thousand_events_by_job_without_loss_or_duplicates() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Reader::open(&host, "/api/v1/events?group=indexers&format=v1").await);
    }
    let jobs = jobs(500);
    let events: Vec<Value> = (0..20)
        .flat_map(|step| jobs.iter().map(move |j| progress(j, step)))
        .collect();
    let published = publish(&host, &events).await;
    assert_eq!(published.len(), 10_000);
    let mut got: Vec<Vec<Got>> = vec![Vec::new(); 3];
    tokio::time::timeout(Duration::from_secs(60), async {
        while got.iter().map(Vec::len).sum::<usize>() < published.len() {
            for (i, m) in members.iter_mut().enumerate() {
                got[i].extend(m.drain());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of 10,000 delivered",
            got.iter().map(Vec::len).sum::<usize>()
        )
    });
    let all: Vec<u64> = got
        .iter()
        .flatten()
        .map(|g| g.id.parse().unwrap())
        .collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an event reached two members");
    let want: BTreeSet<u64> = published.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(unique, want, "the union is the stream");
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, member) in got.iter().enumerate() {
        assert!(!member.is_empty(), "member {i} got nothing");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for g in member {
            assert_eq!(*owner.entry(&g.job).or_insert(i), i, "a job on two members");
            let seq: u64 = g.id.parse().unwrap();
            assert!(seq > last.insert(&g.job, seq).unwrap_or(0), "out of order");
        }
    }
    let listed = consumer_when(&host, "indexers", |c| c["lag"] == 0).await;
    assert_eq!(
        (listed["kind"].as_str(), listed["members"].as_u64()),
        (Some("group"), Some(3))
    );
    drop(members);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

/// Acks everything `reader` receives through the API; returns what it got.
async fn ack_all(host: &Host, name: &str, got: &[Got]) {
    if got.is_empty() {
        return;
    }
    let seqs: Vec<u64> = got.iter().map(|g| g.id.parse().unwrap()).collect();
    let res = client()
        .post(host.url(&format!("/api/v1/consumers/{name}/ack")))
        .json(&json!({ "seqs": seqs }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_group_member_that_dies_leaves_its_unacknowledged_events_to_the_others() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    let path = "/api/v1/events?group=workers&ack=explicit&ack_wait=300&format=v1";
    let mut a = Reader::open(&host, path).await;
    let mut b = Reader::open(&host, path).await;
    let jobs = jobs(40);
    let events: Vec<Value> = (0..5)
        .flat_map(|step| jobs.iter().map(move |j| progress(j, step)))
        .collect();
    let published = publish(&host, &events).await;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    tokio::time::timeout(WAIT, async {
        while got_a.len() + got_b.len() < published.len() {
            got_a.extend(a.drain());
            let fresh = b.drain();
            ack_all(&host, "workers", &fresh).await;
            got_b.extend(fresh);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every event delivered once");
    assert!(!got_a.is_empty() && !got_b.is_empty());
    let listed = consumer_when(&host, "workers", |c| c["pending"] == got_a.len()).await;
    assert_eq!(listed["ack"], "explicit");
    // `a` dies without acking: its events go to `b`, in their order.
    drop(a);
    let again = b.take(got_a.len()).await;
    assert_eq!(again, got_a);
    ack_all(&host, "workers", &again).await;
    consumer_when(&host, "workers", |c| {
        c["pending"] == 0 && c["members"] == 1 && c["lag"] == 0
    })
    .await;
    drop(b);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn the_consumers_api_answers_lists_and_deletes_and_bad_requests_are_named() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    let http = client();
    for (path, status, code) in [
        ("/api/v1/events?consumer=a%20b", 400, "invalid_parameter"),
        (
            "/api/v1/events?consumer=a&group=b",
            400,
            "invalid_parameter",
        ),
        (
            "/api/v1/events?consumer=a&ack=sometimes",
            400,
            "invalid_parameter",
        ),
        (
            "/api/v1/events?consumer=a&ack_wait=0",
            400,
            "invalid_parameter",
        ),
        ("/api/v1/events?ack=explicit", 400, "invalid_parameter"),
    ] {
        let res = http.get(host.url(path)).send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
    }
    let _reader = Reader::open(&host, "/api/v1/events?consumer=audit&ack=explicit").await;
    // A group of another mode under the same name is a conflict.
    let res = http
        .get(host.url("/api/v1/events?group=audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let listed = consumer_when(&host, "audit", |c| c["members"] == 1).await;
    assert_eq!(listed["ack"], "explicit");
    let metrics = http
        .get(host.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("matric_consumer_lag{consumer=\"audit\""),
        "no consumer lag series"
    );
    for (body, status) in [
        (json!({}), 400),
        (json!({"seq": "x"}), 400),
        (json!({"seqs": (0..1001).collect::<Vec<u64>>()}), 400),
        (json!({"seq": 1}), 200),
    ] {
        let res = http
            .post(host.url("/api/v1/consumers/audit/ack"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{body}");
    }
    let res = http
        .post(host.url("/api/v1/consumers/nobody/ack"))
        .json(&json!({"seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http
        .delete(host.url("/api/v1/consumers/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = http
        .delete(host.url("/api/v1/consumers/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(host.json("/api/v1/consumers").await["consumers"], json!([]));
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn without_the_log_consumers_are_unavailable() {
    let dir = TempDir::new();
    let host = Host::start(&[
        ("DATABASE_URL", dir.sqlite_url()),
        ("EVENT_LOG", "off".to_owned()),
    ])
    .await;
    let res = client()
        .get(host.url("/api/v1/events?consumer=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "consumers_unavailable");
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

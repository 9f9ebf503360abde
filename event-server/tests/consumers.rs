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
    let metrics = host.metrics_text().await;
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket subscribed with `subscribe` (the confirmation and the
/// initial QueueStatus read).
async fn ws_subscribe(host: &Host, subscribe: Value) -> (Ws, Value) {
    ws_subscribe_at(host, "/api/v1/ws", subscribe).await
}

/// [`ws_subscribe`] on an upgrade path with its own query.
async fn ws_subscribe_at(host: &Host, path: &str, subscribe: Value) -> (Ws, Value) {
    use futures_util::SinkExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", host.addr))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        subscribe.to_string(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(WAIT, async {
        loop {
            let msg = ws.next().await.unwrap().unwrap();
            if let Ok(text) = msg.to_text() {
                let v: Value = serde_json::from_str(text).unwrap();
                if v["type"] == "subscribed" || v["type"] == "error" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("a reply to subscribe");
    (ws, reply)
}

/// The next `n` deliveries of a consumer WebSocket: `(seq, job, redelivered)`.
async fn ws_deliveries(ws: &mut Ws, n: usize) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.len() < n {
            let msg = ws.next().await.expect("open").unwrap();
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["type"] == "delivery" {
                out.push((
                    v["seq"].as_u64().unwrap(),
                    v["event"]["payload"]["job_id"].as_str().unwrap().to_owned(),
                    v["redelivered"].as_u64().unwrap(),
                ));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} deliveries", out.len()));
    out
}

/// The next `{"type":"error",…}` a WebSocket receives.
async fn ws_error(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = ws.next().await.expect("open").unwrap();
            if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("{}"))
                && v["type"] == "error"
            {
                return v;
            }
        }
    })
    .await
    .expect("an error reply")
}

async fn ws_send(ws: &mut Ws, msg: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        msg.to_string(),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_consumers_resume_share_ack_and_take_over() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    // Refusals: an ack without a consumer, a consumer with max_rate, a bad name.
    let (mut plain, _) =
        ws_subscribe(&host, json!({"type":"subscribe","events":["JobProgress"]})).await;
    ws_send(&mut plain, json!({"type":"ack","seq":1})).await;
    assert_eq!(ws_error(&mut plain).await["error"], "invalid_ack");
    let (_, refused) = ws_subscribe(
        &host,
        json!({"type":"subscribe","consumer":"c","max_rate":5}),
    )
    .await;
    assert_eq!(refused["error"], "invalid_parameter", "{refused}");
    let (_, refused) = ws_subscribe(&host, json!({"type":"subscribe","consumer":"a b"})).await;
    assert_eq!(refused["error"], "invalid_parameter", "{refused}");
    drop(plain);

    // A single consumer: read 3, go away, 3 more are kept for it.
    let (mut ws, reply) = ws_subscribe(
        &host,
        json!({"type":"subscribe","consumer":"ui","events":["JobProgress"]}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"type":"subscribed","consumer":"ui","ack":"auto"})
    );
    let job = uuid::Uuid::new_v4().to_string();
    let first = publish(
        &host,
        &(0..3).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let got: Vec<String> = ws_deliveries(&mut ws, 3)
        .await
        .iter()
        .map(|d| d.0.to_string())
        .collect();
    assert_eq!(got, first);
    drop(ws);
    consumer_when(&host, "ui", |c| c["members"] == 0).await;
    let away = publish(
        &host,
        &(3..6).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let (mut ws, _) = ws_subscribe(&host, json!({"type":"subscribe","consumer":"ui"})).await;
    let got: Vec<String> = ws_deliveries(&mut ws, 3)
        .await
        .iter()
        .map(|d| d.0.to_string())
        .collect();
    assert_eq!(got, away);
    // Its selection is fixed: no live events can be mixed in.
    ws_send(
        &mut ws,
        json!({"type":"subscribe","events":["QueueStatus"]}),
    )
    .await;
    assert_eq!(ws_error(&mut ws).await["error"], "invalid_parameter");
    ws_send(
        &mut ws,
        json!({"type":"unsubscribe","events":["JobProgress"]}),
    )
    .await;
    assert_eq!(ws_error(&mut ws).await["error"], "invalid_parameter");
    // A filter that contradicts the upgrade's is refused, not replaced.
    let (_, refused) = ws_subscribe_at(
        &host,
        &format!("/api/v1/ws?entity_id={}", uuid::Uuid::new_v4()),
        json!({"type":"subscribe","consumer":"narrow","filter":{"entity_id": uuid::Uuid::new_v4()}}),
    )
    .await;
    assert_eq!(refused["error"], "invalid_filter", "{refused}");
    // A second connection under the name takes over: the first is closed 4009.
    let (mut newer, _) = ws_subscribe(&host, json!({"type":"subscribe","consumer":"ui"})).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
                    return u16::from(frame.code);
                }
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the older connection is closed");
    assert_eq!(closed, 4009);
    // One consumer per connection.
    ws_send(&mut newer, json!({"type":"subscribe","consumer":"other"})).await;
    let refused = ws_error(&mut newer).await;
    assert_eq!(refused["error"], "invalid_parameter", "{refused}");
    drop(newer);

    // An explicit group of two: acks by WebSocket message; one member dies
    // without acking and the other gets its events again.
    let sub = json!({"type":"subscribe","group":"ws-workers","ack":"explicit","ack_wait":300});
    let (mut a, reply) = ws_subscribe(&host, sub.clone()).await;
    assert_eq!(
        reply,
        json!({"type":"subscribed","group":"ws-workers","ack":"explicit"})
    );
    let (mut b, _) = ws_subscribe(&host, sub).await;
    let jobs = jobs(20);
    let published = publish(
        &host,
        &jobs.iter().map(|j| progress(j, 1)).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(published.len(), 20);
    // Both read until all 20 arrived once; b acks what it gets.
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    tokio::time::timeout(WAIT, async {
        while got_a.len() + got_b.len() < 20 {
            tokio::select! {
                Some(Ok(msg)) = a.next() => {
                    if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("{}"))
                        && v["type"] == "delivery"
                    {
                        got_a.push(v["seq"].as_u64().unwrap());
                    }
                }
                Some(Ok(msg)) = b.next() => {
                    if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("{}"))
                        && v["type"] == "delivery"
                    {
                        let seq = v["seq"].as_u64().unwrap();
                        got_b.push(seq);
                    }
                }
            }
        }
    })
    .await
    .expect("all delivered once");
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "{got_a:?} {got_b:?}"
    );
    // One message per ack, then a ping: each ack is applied before the
    // next message is read, so by the pong all of them are.
    for seq in &got_b {
        ws_send(&mut b, json!({"type":"ack","seq": seq})).await;
    }
    ws_send(&mut b, json!({"type":"ping"})).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = b.next().await.unwrap().unwrap();
            if msg.to_text().unwrap_or("") == r#"{"type":"pong"}"# {
                return;
            }
        }
    })
    .await
    .expect("pong");
    let listed = host.json("/api/v1/consumers").await;
    let workers = listed["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ws-workers")
        .unwrap();
    assert_eq!(workers["pending"], got_a.len(), "{workers}");
    drop(a);
    let again = ws_deliveries(&mut b, got_a.len()).await;
    assert_eq!(again.iter().map(|d| d.0).collect::<Vec<_>>(), got_a);
    assert!(again.iter().all(|d| d.2 == 1), "{again:?}");
    ws_send(&mut b, json!({"type":"ack","seqs": got_a})).await;
    consumer_when(&host, "ws-workers", |c| c["pending"] == 0 && c["lag"] == 0).await;
    drop(b);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn after_a_sigkill_a_consumer_resumes_without_skipping_an_event() {
    let dir = TempDir::new();
    let env = [("DATABASE_URL", dir.sqlite_url())];
    let mut host = Host::start(&env).await;
    let job = uuid::Uuid::new_v4().to_string();
    let mut reader = Reader::open(&host, "/api/v1/events?consumer=crash&format=v1").await;
    let read = publish(
        &host,
        &(0..5).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let got: Vec<String> = reader.take(5).await.into_iter().map(|g| g.id).collect();
    assert_eq!(got, read);
    // More events while it still reads, then the server dies at once: no
    // shutdown stores the offset.
    let unread = publish(
        &host,
        &(5..8).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    host.kill().await;
    // What reached the client before the connection died.
    let mut before: Vec<String> = read.clone();
    tokio::time::timeout(WAIT, async {
        while let Some(g) = reader.frames.recv().await {
            before.push(g.id);
        }
    })
    .await
    .expect("the old stream ends with the server");
    drop(reader);
    let host = Host::start(&env).await;
    let after = publish(
        &host,
        &(8..10).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    let mut reader = Reader::open(&host, "/api/v1/events?consumer=crash&format=v1").await;
    // It resumes from the last stored offset: it may see again events it
    // had (at least once across a crash), but none is skipped.
    let mut got: Vec<String> = Vec::new();
    while !got.ends_with(&after) {
        assert!(got.len() <= 10, "unexpected events: {got:?}");
        got.push(reader.take(1).await.remove(0).id);
    }
    let seqs = |v: &[String]| {
        v.iter()
            .map(|s| s.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert!(
        seqs(&got).windows(2).all(|w| w[0] < w[1]),
        "in order: {got:?}"
    );
    for id in read.iter().chain(&unread).chain(&after) {
        assert!(
            before.contains(id) || got.contains(id),
            "{id} skipped: before the crash {before:?}, after {got:?}"
        );
    }
    drop(reader);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_can_name_its_consumer_and_bad_ones_refuse_the_upgrade() {
    let dir = TempDir::new();
    let host = Host::start(&[("DATABASE_URL", dir.sqlite_url())]).await;
    for (query, param) in [
        ("consumer=a&group=b", "group"),
        ("ack=explicit", "ack"),
        ("consumer=a%20b", "consumer"),
        ("consumer=c&ack_wait=soon", "ack_wait"),
        ("consumer=c&ack=sometimes", "consumer"),
    ] {
        let url = format!("ws://{}/api/v1/ws?{query}", host.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 400, "{query}");
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"], "invalid_parameter", "{query}: {body}");
                assert!(body["message"].as_str().unwrap().contains(param), "{body}");
            }
            other => panic!("{query}: expected a 400, got {other:?}"),
        }
    }
    let job = uuid::Uuid::new_v4().to_string();
    let before = publish(
        &host,
        &(0..3).map(|n| progress(&job, n)).collect::<Vec<_>>(),
    )
    .await;
    // No subscribe sent: the upgrade's consumer is the first request.
    let url = format!(
        "ws://{}/api/v1/ws?consumer=by-upgrade&start=earliest&types=job",
        host.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let reply = tokio::time::timeout(WAIT, async {
        loop {
            let msg = ws.next().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
            if v["type"] == "subscribed" || v["type"] == "error" {
                return v;
            }
        }
    })
    .await
    .expect("the upgrade's consumer answered");
    assert_eq!(
        reply,
        json!({"type":"subscribed","consumer":"by-upgrade","ack":"auto"})
    );
    let got: Vec<String> = ws_deliveries(&mut ws, 3)
        .await
        .iter()
        .map(|d| d.0.to_string())
        .collect();
    assert_eq!(got, before, "start=earliest from the upgrade");
    consumer_when(&host, "by-upgrade", |c| c["members"] == 1).await;
    drop(ws);
    let (status, _) = host.terminate().await;
    assert!(status.success());
}

//! `Idempotency-Key` on `POST /api/v1/events` through the real host: a
//! retried publish is answered with the first answer and publishes nothing;
//! a key reused for another request, or a malformed key, is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_core::EventKind;
use event_server::testing::{Server, client, next_where};
use serde_json::{Value, json};

async fn post(server: &Server, key: &str, body: &Value) -> (u16, Value) {
    let res = client()
        .post(server.url("/api/v1/events"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn queued(job_type: &str) -> Value {
    json!({"type":"JobQueued","job_id":uuid::Uuid::now_v7(),"job_type":job_type})
}

#[tokio::test]
async fn a_retried_publish_publishes_once() {
    let server = Server::start(&[]).await;
    let mut sub = server.bus.subscribe();
    let body = json!([queued("A"), queued("B")]);

    let (status, first) = post(&server, "retry-1", &body).await;
    assert_eq!(status, 202, "{first}");
    assert!(first.get("duplicate").is_none(), "{first}");
    let (status, again) = post(&server, "retry-1", &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["events"], first["events"]);

    // On the bus: the two events once, and nothing after them.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = next_where(&mut sub, |ev| ev.kind() != EventKind::QueueStatus).await;
        seen.push(ev.id().to_string());
    }
    let first_ids: Vec<String> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, first_ids);
    server.assert_nothing_published(&mut sub).await;

    // The same key for another request is a client bug.
    let (status, err) = post(&server, "retry-1", &json!(queued("C"))).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"], "idempotency_key_reused");
    // Another key is another request.
    let (status, other) = post(&server, "retry-2", &body).await;
    assert_eq!(status, 202, "{other}");
    assert_ne!(other["events"], first["events"]);
    // Keys are bounded.
    let (status, err) = post(&server, &"k".repeat(300), &body).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "invalid_idempotency_key");
}

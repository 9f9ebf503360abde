//! Connections as a resource through the real host (docs/protocol.md §12):
//! `POST /api/v1/connections` creates a slot with its options and a
//! single-use stream URL, `GET …/{id}/status` follows the real connection,
//! `DELETE` closes it; the limits of docs/security.md.

// Helpers outside #[test] functions: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use event_server::testing::{Server, WAIT, client};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const ADMIN: &str = "admin-token";
const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";

async fn start(extra: &[&str]) -> Server {
    let mut args = vec![
        "--auth-admin-token",
        ADMIN,
        "--auth-client-tokens",
        "alice-token,bob-token",
    ];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

async fn create(server: &Server, token: &str, body: Value) -> (StatusCode, Value) {
    let res = client()
        .post(server.url("/api/v1/connections"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

async fn status(server: &Server, token: &str, id: &str) -> (StatusCode, Value) {
    let res = client()
        .get(server.url(&format!("/api/v1/connections/{id}/status")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let code = res.status();
    (code, res.json().await.unwrap())
}

/// Polls the slot's status until `want` holds, within [`WAIT`].
async fn status_until(server: &Server, id: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = status(server, ALICE, id).await;
        assert_eq!(code, 200, "{body}");
        if want(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "status never matched: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish(server: &Server, events: Value) {
    let res = client()
        .post(server.url("/api/v1/events"))
        .bearer_auth(ADMIN)
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
}

/// Reads SSE frames until one carries `needle`, within [`WAIT`]; returns
/// everything read.
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    let deadline = Instant::now() + WAIT;
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} not streamed; got {seen}"))
            .expect("the stream ended")
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn an_sse_slot_opens_once_with_its_options_and_its_status_follows_the_connection() {
    let server = start(&[]).await;
    let (code, slot) = create(
        &server,
        ALICE,
        json!({"filter": {"types": "job"}, "heartbeat": 5, "format": "envelope"}),
    )
    .await;
    assert_eq!(code, 201, "{slot}");
    assert_eq!(slot["status"], "connecting");
    assert_eq!(slot["transport"], "sse");
    assert!(slot["ticket_expires_at"].is_string());
    let id = slot["id"].as_str().unwrap().to_owned();
    let url = slot["stream_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("/api/v1/connections/{id}/stream?ticket=ott_")));

    // No token: the ticket is the credential. A `types` filter in the URL or
    // an Authorization header cannot change the slot's options.
    let res = client()
        .get(server.url(&format!("{url}&types=note")))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = Box::pin(res.bytes_stream());
    let live = status_until(&server, &id, |s| s["status"] == "connected").await;
    let connection = live["connection_id"].as_u64().unwrap();
    assert_eq!(live["events_delivered"], 0);

    let job = Uuid::now_v7();
    publish(
        &server,
        json!([
            {"type": "NoteUpdated", "note_id": Uuid::now_v7(), "tags": [], "has_ai_content": false, "has_links": false},
            {"type": "JobQueued", "job_id": job, "job_type": "Embedding"},
        ]),
    )
    .await;
    let mut seen = String::new();
    read_until(&mut body, &mut seen, &job.to_string()).await;
    assert!(seen.contains("event: job.queued"), "envelope names: {seen}");
    assert!(!seen.contains("NoteUpdated") && !seen.contains("note.updated"));
    let live = status_until(&server, &id, |s| s["events_delivered"].as_u64() >= Some(1)).await;
    assert!(live["last_event_time"].is_string(), "{live}");
    assert_eq!(live["options"]["heartbeat"], 5);

    // The admin's list shows the connection with its slot.
    let list: Value = client()
        .get(server.url("/api/v1/connections"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == connection)
        .expect("the slot's connection is listed");
    assert_eq!(entry["slot"], id.as_str());

    // Single use.
    let again = client().get(server.url(&url)).send().await.unwrap();
    assert_eq!(again.status(), 401);
    let err: Value = again.json().await.unwrap();
    assert_eq!(err["error"], "unauthorized");

    // Another principal does not see it; an admin does.
    assert_eq!(status(&server, BOB, &id).await.0, 404);
    assert_eq!(status(&server, ADMIN, &id).await.0, 200);

    drop(body);
    let ended = status_until(&server, &id, |s| s["status"] == "disconnected").await;
    assert_eq!(ended["connection_id"], connection);
    assert!(
        ended["events_delivered"].as_u64() >= Some(1),
        "the final counters stay: {ended}"
    );
}

#[tokio::test]
async fn a_ticket_opens_only_its_own_slot_and_the_right_transport() {
    let server = start(&[]).await;
    let (_, a) = create(&server, ALICE, json!({})).await;
    let (_, b) = create(&server, ALICE, json!({})).await;
    let a_url = a["stream_url"].as_str().unwrap();
    let b_ticket = b["stream_url"]
        .as_str()
        .unwrap()
        .split("ticket=")
        .nth(1)
        .unwrap();
    let a_id = a["id"].as_str().unwrap();

    // B's ticket on A's URL: refused, and B's ticket still works after.
    let crossed = format!("/api/v1/connections/{a_id}/stream?ticket={b_ticket}");
    assert_eq!(
        client()
            .get(server.url(&crossed))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // No ticket at all.
    let bare = format!("/api/v1/connections/{a_id}/stream");
    assert_eq!(
        client()
            .get(server.url(&bare))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A WebSocket handshake on an SSE slot: refused without spending it.
    let ws = tokio_tungstenite::connect_async(server.ws_url(a_url)).await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 400);
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "wrong_transport");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let res = client().get(server.url(a_url)).send().await.unwrap();
    assert_eq!(res.status(), 200, "A's ticket survived the refusals");
    let res = client()
        .get(server.url(b["stream_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "B's ticket survived its misuse");
    // No such slot.
    let res = client()
        .get(server.url(&format!(
            "/api/v1/connections/conn_{}/stream?ticket=ott_x",
            Uuid::new_v4().simple()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn an_unused_ticket_expires_and_the_slot_says_so() {
    let server = start(&["--connection-ticket-ttl-secs", "1"]).await;
    let (_, slot) = create(&server, ALICE, json!({})).await;
    let id = slot["id"].as_str().unwrap();
    let ended = status_until(&server, id, |s| s["status"] == "error").await;
    assert_eq!(ended["error"]["error"], "ticket_expired", "{ended}");
    let res = client()
        .get(server.url(slot["stream_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_refused_stream_puts_the_slot_in_error_with_the_transports_reason() {
    // One stream at most: the slot's is the second and is refused.
    let server = start(&["--max-connections", "1"]).await;
    let first = client()
        .get(server.url("/api/v1/events"))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    server.wait_connections(1).await;
    let (_, slot) = create(&server, ALICE, json!({})).await;
    let res = client()
        .get(server.url(slot["stream_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections");
    let ended = status_until(&server, slot["id"].as_str().unwrap(), |s| {
        s["status"] == "error"
    })
    .await;
    assert_eq!(ended["error"]["error"], "too_many_connections");
    drop(first);
}

#[tokio::test]
async fn a_websocket_slot_connects_and_deleting_it_closes_the_connection() {
    let server = start(&[]).await;
    let (code, slot) = create(
        &server,
        ALICE,
        json!({
            "transport": "ws", "filter": {"types": "job"}, "max_rate": 1000,
            "buffer_max_bytes": event_core::OutboxLimits::min_bytes_for(event_core::DEFAULT_MAX_EVENT_BYTES),
        }),
    )
    .await;
    assert_eq!(code, 201, "{slot}");
    let id = slot["id"].as_str().unwrap().to_owned();
    // A plain GET on a WebSocket slot is refused and leaves the ticket.
    let plain = client()
        .get(server.url(slot["stream_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(slot["stream_url"].as_str().unwrap()))
            .await
            .expect("the slot's WebSocket");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.to_text().unwrap().contains("QueueStatus"),
        "{first:?}"
    );
    status_until(&server, &id, |s| s["status"] == "connected").await;

    let job = Uuid::now_v7();
    publish(
        &server,
        json!([
            {"type": "NoteUpdated", "note_id": Uuid::now_v7(), "tags": [], "has_ai_content": false, "has_links": false},
            {"type": "JobQueued", "job_id": job, "job_type": "Embedding"},
        ]),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the job event in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            assert!(!text.contains("NoteUpdated"), "the slot's filter applies");
            if text.contains(&job.to_string()) {
                break;
            }
        }
    }

    // Bob may not delete it; Alice may.
    let delete = |token: &'static str| {
        client()
            .delete(server.url(&format!("/api/v1/connections/{id}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(delete(BOB).await.unwrap().status(), 404);
    assert_eq!(delete(ALICE).await.unwrap().status(), 204);
    let deadline = Instant::now() + WAIT;
    let code = loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1008), "kicked");
    assert_eq!(status(&server, ALICE, &id).await.0, 404, "deleted");
    server.wait_connections(0).await;
}

#[tokio::test]
async fn slots_are_bounded_per_principal_and_in_all_and_bad_requests_are_named() {
    let server = start(&[
        "--connection-slots-per-principal",
        "2",
        "--connection-slots-max",
        "3",
    ])
    .await;
    for _ in 0..2 {
        assert_eq!(create(&server, ALICE, json!({})).await.0, 201);
    }
    let (code, err) = create(&server, ALICE, json!({})).await;
    assert_eq!(code, 409);
    assert_eq!(err["error"], "slot_limit");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("CONNECTION_SLOTS_PER_PRINCIPAL")
    );
    // Another principal still may, up to the total.
    assert_eq!(create(&server, BOB, json!({})).await.0, 201);
    let (code, err) = create(&server, BOB, json!({})).await;
    assert_eq!(code, 409);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("CONNECTION_SLOTS_MAX")
    );

    // Deleting one frees its place.
    let (_, mine) = {
        let server = start(&["--connection-slots-per-principal", "1"]).await;
        let (_, slot) = create(&server, ALICE, json!({})).await;
        let id = slot["id"].as_str().unwrap().to_owned();
        let res = client()
            .delete(server.url(&format!("/api/v1/connections/{id}")))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        create(&server, ALICE, json!({})).await
    };
    assert!(mine["id"].is_string());

    let (code, err) = create(&server, BOB, json!({"nope": 1})).await;
    assert_eq!(
        (code.as_u16(), err["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let (code, err) = create(&server, BOB, json!({"transport": "ws", "heartbeat": 5})).await;
    assert_eq!(
        (code.as_u16(), err["error"].as_str()),
        (400, Some("unsupported_option"))
    );
    let (code, err) = create(&server, BOB, json!({"filter": {"events": "Nope"}})).await;
    assert_eq!(code, 400, "{err}");
    let (code, err) = create(&server, BOB, json!({"buffer_max_bytes": 1024})).await;
    assert_eq!(
        (code.as_u16(), err["error"].as_str()),
        (400, Some("invalid_parameter")),
        "{err}"
    );
    let big = "x".repeat(9 * 1024);
    let res = client()
        .post(server.url("/api/v1/connections"))
        .bearer_auth(BOB)
        .json(&json!({"consumer": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let res = client()
        .post(server.url("/api/v1/connections"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a token is needed");
    // A direct connection's status and kick stay admin-only.
    assert_eq!(status(&server, BOB, "1").await.0, 403);
}

#[tokio::test]
async fn a_slot_fixes_compression_and_its_consumer() {
    let server = start(&[]).await;
    let open = |url: String| {
        client()
            .get(server.url(&url))
            .header("accept-encoding", "gzip")
            .send()
    };
    // Compression off in the slot: the opener's Accept-Encoding is ignored.
    let (_, plain) = create(&server, ALICE, json!({"compression": false})).await;
    let res = open(plain["stream_url"].as_str().unwrap().to_owned())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-encoding").is_none());
    // By default the opener's offer is honoured.
    let (_, default) = create(&server, ALICE, json!({})).await;
    let res = open(default["stream_url"].as_str().unwrap().to_owned())
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    drop(res);

    // A named consumer: it exists once its slot's stream opened, and reads
    // from the start it was given.
    let job = Uuid::now_v7();
    publish(
        &server,
        json!([{"type": "JobQueued", "job_id": job, "job_type": "Embedding"}]),
    )
    .await;
    let (code, slot) = create(
        &server,
        ALICE,
        json!({"consumer": "slot-reader", "start": "earliest", "filter": {"types": "job"}}),
    )
    .await;
    assert_eq!(code, 201, "{slot}");
    let res = client()
        .get(server.url(slot["stream_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = Box::pin(res.bytes_stream());
    let mut seen = String::new();
    read_until(&mut body, &mut seen, &job.to_string()).await;
    let consumers: Value = client()
        .get(server.url("/api/v1/consumers"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        consumers["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "slot-reader" && c["members"] == 1),
        "{consumers}"
    );
}

//! Failure scenarios of the seeds' validation plan: abrupt client
//! disconnects, failing webhook endpoints, and a bus that overflows.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

fn note(id: uuid::Uuid) -> Value {
    json!({"type":"NoteUpdated","note_id":id,"tags":[],"has_ai_content":false,"has_links":false})
}

async fn health_ok(server: &Server) {
    let res = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let _: Value = res.json().await.unwrap();
}

#[tokio::test]
async fn abrupt_client_disconnects_leave_nothing_behind() {
    let server = Server::start(&[]).await;
    // WebSocket dropped without a close frame, and one reset (RST).
    let ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.set_zero_linger().unwrap();
    let (mut reset, _) = tokio_tungstenite::client_async(server.ws_url("/api/v1/ws"), tcp)
        .await
        .unwrap();
    futures_util::StreamExt::next(&mut reset)
        .await
        .unwrap()
        .unwrap();
    // SSE dropped mid-stream.
    let mut sse = SseClient::connect(&server.url("/api/v1/events"), &[]).await;
    sse.next_frame().await;
    // A half-sent upgrade request.
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut half,
        b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
    )
    .await
    .unwrap();
    server.wait_connections(3).await;
    drop(ws);
    drop(reset);
    drop(sse);
    drop(half);
    // Publishing while the server notices.
    for _ in 0..50 {
        server.publish(&note(uuid::Uuid::now_v7())).await;
    }
    server.wait_connections(0).await;

    // Everything still works for new clients.
    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    let mut sse = SseClient::connect(&server.url("/api/v1/events"), &[]).await;
    ws.next_text().await;
    sse.next_where(Frame::is_event).await;
    let (seq, _) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    ws.next_text_where(|v| v["type"] == "NoteUpdated").await;
    let f = sse.next_non_queue().await;
    assert_eq!(f.id, Some(seq.to_string()));
    health_ok(&server).await;
}

#[tokio::test]
async fn failing_webhook_endpoint_retries_dies_and_never_delays_others() {
    let server = Server::start(&["--webhook-retry-schedule", "100ms,200ms"]).await;
    let failing = Receiver::start().await;
    failing.script(&[500; 100]);
    let healthy = Receiver::start().await;
    let bad = register_webhook(&server, &json!({"url": failing.url("/"), "events": []})).await;
    register_webhook(&server, &json!({"url": healthy.url("/"), "events": []})).await;
    assert!(
        bad["secret"].as_str().unwrap().starts_with("whsec_"),
        "a generated secret"
    );
    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    ws.next_text().await;

    let ids = server
        .publish(&json!([
            note(uuid::Uuid::now_v7()),
            note(uuid::Uuid::now_v7()),
            note(uuid::Uuid::now_v7())
        ]))
        .await;
    // The healthy endpoint and the WebSocket get everything while the other
    // endpoint is still failing.
    let got = healthy.wait_for(3).await;
    for (_, id) in &ids {
        assert!(got.iter().any(|r| r.header("webhook-id") == id));
    }
    for _ in 0..3 {
        ws.next_text_where(|v| v["type"] == "NoteUpdated").await;
    }
    // 1 attempt + 2 retries each, then dead.
    let attempts = failing.wait_for(9).await;
    assert!(attempts.iter().all(|r| r.status == 500));
    let hook_id = bad["id"].as_str().unwrap();
    let url = server.url(&format!(
        "/api/v1/webhooks/{hook_id}/deliveries?status=dead"
    ));
    let http = client();
    let dead: Value = tokio::time::timeout(WAIT, async {
        loop {
            let list: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
            if list.as_array().is_some_and(|l| l.len() == 3) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the deliveries did not go dead");
    for d in dead.as_array().unwrap() {
        assert_eq!(d["status"], "dead");
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["success"], false);
        assert_eq!(d["last_status_code"], 500);
    }
    // No more attempts after dead.
    assert_eq!(failing.requests().len(), 9);

    // Redelivery re-queues a dead delivery.
    let did = dead[0]["id"].as_str().unwrap();
    failing.script(&[200]);
    let before = failing.requests().len();
    let res = http
        .post(server.url(&format!(
            "/api/v1/webhooks/{hook_id}/deliveries/{did}/redeliver"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    failing.wait_for(before + 1).await;
    health_ok(&server).await;
}

#[tokio::test]
async fn gone_410_disables_the_webhook() {
    let server = Server::start(&["--webhook-retry-schedule", "100ms"]).await;
    let gone = Receiver::start().await;
    gone.script(&[410]);
    let hook = register_webhook(
        &server,
        &json!({"url": gone.url("/"), "events": ["NoteUpdated"]}),
    )
    .await;
    server.publish(&note(uuid::Uuid::now_v7())).await;
    gone.wait_for(1).await;
    let url = server.url(&format!(
        "/api/v1/webhooks/{}",
        hook["id"].as_str().unwrap()
    ));
    let http = client();
    let w: Value = tokio::time::timeout(WAIT, async {
        loop {
            let w: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
            if w["active"] == false {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a 410 did not disable the webhook");
    assert_eq!(w["is_active"], false);
    assert!(w["disabled_reason"].is_string(), "{w}");
    // Later events are not sent to it.
    server.publish(&note(uuid::Uuid::now_v7())).await;
    let marker = Receiver::start().await;
    register_webhook(
        &server,
        &json!({"url": marker.url("/"), "events": ["JobCompleted"]}),
    )
    .await;
    server
        .publish(&json!({"type":"JobCompleted","job_id":uuid::Uuid::now_v7(),"job_type":"M"}))
        .await;
    marker.wait_for(1).await;
    assert_eq!(gone.requests().len(), 1);
}

#[tokio::test]
async fn bus_overflow_is_signalled_and_nothing_else_breaks() {
    // Without the event log: with it, sinks that fall behind catch up from
    // the log instead (event-server/tests/durable.rs).
    let server = Server::start(&["--event-bus-capacity", "4", "--event-log", "off"]).await;
    let receiver = Receiver::start().await;
    register_webhook(
        &server,
        &json!({"url": receiver.url("/"), "events": ["NoteUpdated"]}),
    )
    .await;
    let mut sse = SseClient::connect(&server.url("/api/v1/events?events=NoteUpdated"), &[]).await;
    sse.next_frame().await;
    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    ws.next_text().await;

    let (_, before) = scrape(&server).await;
    // Summed over consumers: sinks that recover from the replay ring (the
    // webhook sink) do not count a loss, the others do.
    let lag_metric = |m: &Scrape| {
        m.sum("matric_bus_lagged_events_total", &[]).unwrap_or(0.0)
            + m.sum("matric_events_dropped_total", &[]).unwrap_or(0.0)
    };

    // A burst far beyond the bus capacity, without yielding to the sinks
    // (this test runs on a current-thread runtime, so they cannot run).
    const BURST: usize = 200;
    let mut ids = Vec::new();
    for _ in 0..BURST {
        let ev = server.bus.publish(event_core::NoteUpdated {
            note_id: uuid::Uuid::now_v7(),
            title: None,
            tags: Vec::new(),
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        });
        ids.push(ev.id().to_string());
    }
    let (end_seq, end_id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);

    // SSE: an `events.lagged` signal, then the stream goes on.
    let mut lagged = 0;
    let mut received = 0;
    loop {
        let f = sse.next_where(Frame::is_event).await;
        if f.event.as_deref() == Some("events.lagged") {
            lagged += f.json()["dropped_count"].as_u64().unwrap();
        } else if f.id == Some(end_seq.to_string()) {
            break;
        } else if f.event.as_deref() == Some("NoteUpdated") {
            received += 1;
        }
    }
    assert!(lagged > 0, "the SSE client was not told about the loss");
    // Nothing is lost silently (a bridge QueueStatus may be among the
    // missed events, so the count may exceed the filtered burst).
    assert!(
        received + lagged as usize >= BURST,
        "{received} received, {lagged} counted"
    );
    assert!(received < BURST);

    // WebSocket: the endpoint missed events, so its clients are closed with
    // 4008 (not 1000) and may reconnect; the new connection works.
    let code = ws.expect_close().await;
    assert_eq!(code, Some(4008));
    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    ws.next_text().await;
    let (_, live_id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    ws.next_text_where(|v| v["type"] == "NoteUpdated").await;

    // Webhooks still deliver what comes after the burst.
    tokio::time::timeout(WAIT, async {
        loop {
            if receiver
                .requests()
                .iter()
                .any(|r| r.header("webhook-id") == live_id)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("webhooks stopped after the bus overflowed");
    drop((ids, end_id));

    // The loss is visible to operators too (the meter is process-wide and
    // other tests run alongside, so only growth is checked).
    let (text, after) = scrape(&server).await;
    assert!(
        lag_metric(&after) > lag_metric(&before),
        "the loss is not counted\n{text}"
    );
    health_ok(&server).await;
}

#[tokio::test]
async fn webhook_deliveries_survive_bus_overflow() {
    // Deliveries are durable and at-least-once (docs/protocol.md §4). When the
    // webhook sink falls behind a small bus, the events it missed are still
    // in the bus's replay ring (1,024 by default), so none has to be lost.
    let server = Server::start(&["--event-bus-capacity", "4"]).await;
    let receiver = Receiver::start().await;
    let hook = register_webhook(
        &server,
        &json!({"url": receiver.url("/"), "events": ["NoteUpdated"]}),
    )
    .await;
    const BURST: usize = 200;
    for _ in 0..BURST {
        server.bus.publish(event_core::NoteUpdated {
            note_id: uuid::Uuid::now_v7(),
            title: None,
            tags: Vec::new(),
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        });
    }
    let (_, last) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    // Once the last event is delivered the sink has handled the whole burst
    // (it processes the bus in order). A row is handed to the worker before
    // its insert commits, so the last rows may still be committing then:
    // the rows are counted until all are there or the deadline passes.
    tokio::time::timeout(WAIT, async {
        loop {
            if receiver
                .requests()
                .iter()
                .any(|r| r.header("webhook-id") == last)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the last event was not delivered");
    let path = format!(
        "/api/v1/webhooks/{}/deliveries?limit=1000",
        hook["id"].as_str().unwrap()
    );
    let mut n = 0;
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            let rows: Value = client()
                .get(server.url(&path))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            n = rows.as_array().unwrap().len();
            if n > BURST {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        n,
        BURST + 1,
        "webhook deliveries lost when the sink lagged the bus: {} of {} never enqueued",
        (BURST + 1).saturating_sub(n),
        BURST + 1
    );
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart_of_the_host() {
    let dir = TempDir::new();
    let db = dir.sqlite_url();
    let receiver = Receiver::start().await;
    receiver.script(&[503]);
    // First life: the attempt fails and the retry is 2 s away at shutdown.
    let mut server = Server::builder()
        .database_url(&db)
        .args(&["--webhook-retry-schedule", "2s"])
        .start()
        .await;
    register_webhook(
        &server,
        &json!({"url": receiver.url("/d"), "events": ["JobCompleted"], "secret": "restart-secret-value"}),
    )
    .await;
    let (_, event_id) = server
        .publish(&json!({"type":"JobCompleted","job_id":uuid::Uuid::now_v7(),"job_type":"E"}))
        .await
        .remove(0);
    receiver.wait_for(1).await;
    server.shutdown().await;
    // Second life on the same database: the retry happens, same event id.
    let _server = Server::builder()
        .database_url(&db)
        .args(&["--webhook-retry-schedule", "100ms"])
        .start()
        .await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].status, 503);
    assert_eq!(got[1].status, 200);
    for r in &got {
        assert_eq!(r.header("webhook-id"), event_id);
        event_webhook::verify("restart-secret-value", &r.headers, &r.body).unwrap();
    }
}

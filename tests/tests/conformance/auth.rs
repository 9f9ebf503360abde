//! The seeds' cross-cutting authentication rule: optional. Without tokens
//! every client gets every event; with tokens, streams need a client (or
//! admin) token and management needs the admin token — refusals are JSON.

use serde_json::json;

use crate::harness::*;

const ADMIN: &str = "conformance-admin-token";
const CLIENT: &str = "conformance-client-token";

#[tokio::test]
async fn anonymous_mode_serves_everyone() {
    let server = Server::start(&[]).await;
    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    ws.next_text().await;
    let mut sse = SseClient::connect(&server.url("/api/v1/events"), &[]).await;
    sse.next_where(Frame::is_event).await;
    let (seq, _) = server
        .publish(&json!({"type":"JobQueued","job_id":uuid::Uuid::now_v7(),"job_type":"E"}))
        .await
        .remove(0);
    ws.next_text_where(|v| v["type"] == "JobQueued").await;
    assert_eq!(sse.next_non_queue().await.id, Some(seq.to_string()));
}

#[tokio::test]
async fn with_tokens_streams_need_a_client_token_and_management_the_admin_token() {
    let server =
        Server::start(&["--auth-admin-token", ADMIN, "--auth-client-tokens", CLIENT]).await;
    let http = client();

    // SSE: no or a wrong token is a JSON 401; the client token in the
    // header or the query opens the stream.
    for (url, header) in [
        (server.url("/api/v1/events"), None),
        (server.url("/api/v1/events?token=nope"), None),
        (server.url("/api/v1/events"), Some("Bearer nope")),
    ] {
        let mut req = http.get(&url);
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        assert_json_error(req.send().await.unwrap(), 401).await;
    }
    let auth = format!("Bearer {CLIENT}");
    let mut sse = SseClient::connect(
        &server.url("/api/v1/events"),
        &[("authorization", auth.as_str())],
    )
    .await;
    sse.next_frame().await;
    let mut sse_q =
        SseClient::connect(&server.url(&format!("/api/v1/events?token={CLIENT}")), &[]).await;
    sse_q.next_frame().await;

    // Management: the client token is 403, no token 401 — and a refused
    // request changes nothing: no event published, no webhook created.
    let mut bus = server.bus.subscribe();
    let hook = json!({"url": "http://127.0.0.1:9/x", "events": []});
    let event = json!({"type":"JobQueued","job_id":uuid::Uuid::now_v7(),"job_type":"E"});
    let routes = [
        ("POST", "/api/v1/webhooks", Some(&hook)),
        ("GET", "/api/v1/webhooks", None),
        ("POST", "/api/v1/events", Some(&event)),
        ("GET", "/api/v1/connections", None),
    ];
    let send = |method: &str, path: &str, body: Option<&serde_json::Value>, token: Option<&str>| {
        let mut req = http.request(method.parse().unwrap(), server.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send()
    };
    for (method, path, body) in routes {
        assert_json_error(send(method, path, body, None).await.unwrap(), 401).await;
        assert_json_error(send(method, path, body, Some(CLIENT)).await.unwrap(), 403).await;
    }
    server.assert_nothing_published(&mut bus).await;
    let hooks = send("GET", "/api/v1/webhooks", None, Some(ADMIN))
        .await
        .unwrap();
    assert_eq!(hooks.status(), 200);
    let hooks: serde_json::Value = hooks.json().await.unwrap();
    assert_eq!(hooks, json!([]), "a refused request created a webhook");

    // The admin token passes.
    for (method, path, body) in routes {
        let ok = send(method, path, body, Some(ADMIN)).await.unwrap();
        assert!(ok.status().is_success(), "{method} {path}: {}", ok.status());
    }
    let published = next_where(&mut bus, |ev| {
        ev.kind() != event_core::EventKind::QueueStatus
    })
    .await;
    assert_eq!(published.kind(), event_core::EventKind::JobQueued);
}

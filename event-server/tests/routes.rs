//! The host's own routes: publishing, notes, connections, errors, dashboard.

use event_core::{EventKind, ServerEvent};
use event_server::testing::{Server, client, next_where};
use serde_json::{Value, json};

async fn next_event(sub: &mut event_core::Subscription) -> std::sync::Arc<event_core::Event> {
    next_where(sub, |ev| ev.kind() != EventKind::QueueStatus).await
}

#[tokio::test]
async fn publish_accepts_one_event_or_an_array_in_order() {
    let server = Server::start(&[]).await;
    let mut sub = server.bus.subscribe();
    let http = client();
    let res = http
        .post(server.url("/api/v1/events"))
        .json(&json!({"type":"QueueStatus","total_jobs":3,"running":1,"pending":2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let seq = body["events"][0]["seq"].as_u64().unwrap();
    let ev = next_where(&mut sub, |ev| ev.seq() == seq).await;
    assert_eq!(body["events"][0]["event_id"], ev.id().to_string());
    assert_eq!(
        ev.json().as_ref(),
        br#"{"type":"QueueStatus","total_jobs":3,"running":1,"pending":2}"#
    );

    let job = "0197c0de-5e1a-7a00-8000-000000000001";
    let res = http
        .post(server.url("/api/v1/events?memory=work"))
        .json(&json!([
            {"type":"JobQueued","job_id":job,"job_type":"Embedding"},
            {"type":"JobStarted","job_id":job,"job_type":"Embedding"},
            {"type":"JobProgress","job_id":job,"progress":40}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let mut kinds = Vec::new();
    for i in 0..3 {
        let ev = next_event(&mut sub).await;
        assert_eq!(body["events"][i]["seq"], ev.seq());
        assert_eq!(ev.memory(), Some("work"));
        kinds.push(ev.kind());
    }
    assert_eq!(
        kinds,
        [
            EventKind::JobQueued,
            EventKind::JobStarted,
            EventKind::JobProgress
        ]
    );
}

#[tokio::test]
async fn invalid_publish_bodies_are_400_and_publish_nothing() {
    let server = Server::start(&[]).await;
    let http = client();
    let before = server.bus.last_seq();
    let job = "0197c0de-5e1a-7a00-8000-000000000001";
    for (body, code) in [
        ("not json".to_owned(), "invalid_json"),
        ("42".to_owned(), "invalid_body"),
        ("[]".to_owned(), "invalid_body"),
        (r#"{"type":"Nope"}"#.to_owned(), "invalid_event"),
        (r#"{"type":"JobQueued"}"#.to_owned(), "invalid_event"),
        // One bad event in a batch: nothing is published.
        (
            format!(
                r#"[{{"type":"JobQueued","job_id":"{job}","job_type":"E"}},{{"type":"JobProgress","job_id":"{job}","progress":101}}]"#
            ),
            "invalid_event",
        ),
        (
            r#"{"type":"QueueStatus","total_jobs":5,"running":1,"pending":1}"#.to_owned(),
            "invalid_event",
        ),
    ] {
        let res = http
            .post(server.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"], code, "{body}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        server.bus.last_seq(),
        before,
        "an invalid request published something"
    );
}

#[tokio::test]
async fn publishing_needs_the_admin_token_when_auth_is_on() {
    let server = Server::start(&[
        "--auth-admin-token",
        "admin-secret-token",
        "--auth-client-tokens",
        "client-token",
    ])
    .await;
    let http = client();
    let event = json!({"type":"QueueStatus","total_jobs":0,"running":0,"pending":0});
    let res = http
        .post(server.url("/api/v1/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = http
        .post(server.url("/api/v1/events"))
        .bearer_auth("client-token")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(server.url("/api/v1/events"))
        .bearer_auth("admin-secret-token")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let server = Server::start(&[]).await;
    let res = client().get(server.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"], "not_found");
}

#[tokio::test]
async fn dashboard_is_served_at_root() {
    let server = Server::start(&[]).await;
    let res = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("EventSource") && html.contains("/api/v1/ws"));
}

#[tokio::test]
async fn unknown_connection_is_404_and_bad_id_400() {
    let server = Server::start(&[]).await;
    let http = client();
    let res = http
        .delete(server.url("/api/v1/connections/999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http
        .delete(server.url("/api/v1/connections/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .get(server.url("/api/v1/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list, json!([]));
}

#[cfg(feature = "demo")]
#[tokio::test]
async fn note_changes_are_announced_after_commit() {
    let server = Server::start(&[]).await;
    let http = client();
    let mut sub = server.bus.subscribe();

    let res = http
        .post(server.url("/api/v1/notes"))
        .json(&json!({"title":"First","content":"see https://example.org","tags":["a","b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let note: Value = res.json().await.unwrap();
    let id = note["id"].as_str().unwrap().to_owned();
    let ev = next_event(&mut sub).await;
    let ServerEvent::NoteUpdated(n) = ev.payload() else {
        panic!("expected NoteUpdated, got {:?}", ev.payload())
    };
    assert_eq!(n.note_id.to_string(), id);
    assert_eq!(n.tags, ["a", "b"]);
    assert!(n.has_links);
    assert_eq!(serde_json::to_value(n.operation).unwrap(), json!("created"));

    let res = http
        .patch(server.url(&format!("/api/v1/notes/{id}")))
        .json(&json!({"title":"Second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ev = next_event(&mut sub).await;
    let ServerEvent::NoteUpdated(n) = ev.payload() else {
        panic!()
    };
    assert_eq!(n.title.as_deref(), Some("Second"));
    // The event follows the commit: a re-fetch already sees the change.
    let fetched: Value = http
        .get(server.url(&format!("/api/v1/notes/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["title"], "Second");

    let res = http
        .delete(server.url(&format!("/api/v1/notes/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let ev = next_event(&mut sub).await;
    let ServerEvent::NoteUpdated(n) = ev.payload() else {
        panic!()
    };
    assert_eq!(serde_json::to_value(n.operation).unwrap(), json!("deleted"));
    let res = http
        .get(server.url(&format!("/api/v1/notes/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[cfg(feature = "demo")]
#[tokio::test]
async fn invalid_note_requests_are_refused_without_events() {
    let server = Server::start(&[]).await;
    let http = client();
    let before = server.bus.last_seq();
    for (method, path, body, status) in [
        ("POST", "/api/v1/notes".to_owned(), r#"{"title":"  "}"#, 400),
        (
            "POST",
            "/api/v1/notes".to_owned(),
            r#"{"title":"x","bogus":1}"#,
            400,
        ),
        ("POST", "/api/v1/notes".to_owned(), "not json", 400),
        ("PATCH", "/api/v1/notes/not-a-uuid".to_owned(), "{}", 400),
        (
            "PATCH",
            format!("/api/v1/notes/{}", uuid::Uuid::now_v7()),
            r#"{"title":"x"}"#,
            404,
        ),
        (
            "DELETE",
            format!("/api/v1/notes/{}", uuid::Uuid::now_v7()),
            "",
            404,
        ),
    ] {
        let res = http
            .request(method.parse().unwrap(), server.url(&path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{method} {path} {body}");
        let err: Value = res.json().await.unwrap();
        assert!(err["error"].is_string() && err["message"].is_string());
    }
    assert_eq!(server.bus.last_seq(), before);
}

#[test]
fn invalid_configuration_exits_with_code_2_and_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-server"))
        .env("EVENT_BUS_CAPACITY", "0")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("event-bus-capacity") || stderr.contains("EVENT_BUS_CAPACITY"),
        "{stderr}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-server"))
        .env("DATABASE_URL", "mysql://nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let server = Server::start(&["--allowed-origins", "http://ui.example"]).await;
    let http = client();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, server.url("/api/v1/events"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "last-event-id")
            .send()
    };
    let res = preflight("http://ui.example").await.unwrap();
    assert_eq!(
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("http://ui.example")
    );
    let allowed = res
        .headers()
        .get("access-control-allow-headers")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .unwrap_or_default();
    assert!(allowed.contains("last-event-id"), "{allowed}");
    let res = preflight("http://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

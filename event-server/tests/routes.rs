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
    let mut sub = server.bus.subscribe();
    let job = uuid::Uuid::now_v7();
    let event = json!({"type":"JobQueued","job_id":job,"job_type":"Embedding"});
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
    server.assert_nothing_published(&mut sub).await;
    let res = http
        .post(server.url("/api/v1/events"))
        .bearer_auth("admin-secret-token")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.kind(), EventKind::JobQueued);
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
    let http = client();
    let res = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, event_server::dashboard::CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = res.text().await.unwrap();
    // No inline script or style: every script has a src.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count() + html.matches("<script type=\"module\" src=").count()
    );
    assert!(!html.contains("<style") && !html.contains(" style="));
    assert!(!html.contains("{{ASSETS}}"));

    // Every asset the page names is served from memory, cached for a year.
    let base = event_server::dashboard::assets::base();
    assert!(html.contains(&format!("{base}/app/main.js")));
    for asset in event_server::dashboard::assets::ASSETS {
        let res = http
            .get(server.url(&format!("{base}/{}", asset.name)))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", asset.name);
        assert_eq!(res.headers()["content-type"], asset.content_type);
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(res.bytes().await.unwrap(), asset.bytes);
    }
    let licence = http
        .get(server.url(&format!("{base}/uplot/LICENSE")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(licence.contains("MIT") && licence.contains("Leon Sorokin"));
    // Another hash is not served.
    let res = http
        .get(server.url("/assets/000000000000/app/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn stats_are_the_host_counters_as_json() {
    let server = Server::start(&[]).await;
    let http = client();
    server
        .publish(&json!({"type": "JobQueued", "job_id": "0197c0de-5e1a-7a00-8000-000000000001", "job_type": "Embedding"}))
        .await;
    let stats: Value = http
        .get(server.url("/api/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["counters"], true);
    for transport in ["ws", "sse", "mcp"] {
        assert!(stats["connections"][transport].is_u64(), "{stats}");
        assert!(stats["delivered"][transport].is_u64(), "{stats}");
    }
    assert!(
        stats["published"]["JobQueued"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    for outcome in ["success", "retry", "failed"] {
        assert!(stats["webhooks"][outcome].is_u64(), "{stats}");
    }
    let bounds = stats["latency_ms"]["bounds"].as_array().unwrap();
    assert_eq!(bounds.len(), event_core::metrics::LATENCY_BUCKETS_MS.len());
    assert!(stats["dropped"].is_u64() && stats["webhook_queue_depth"].is_u64());

    // In token mode it needs a token, any token.
    let server = Server::start(&[
        "--auth-admin-token",
        "stats-admin-token-0123456789",
        "--auth-client-tokens",
        "stats-client-token-0123456789",
    ])
    .await;
    let res = http.get(server.url("/api/v1/stats")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = http
        .get(server.url("/api/v1/stats"))
        .bearer_auth("stats-client-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The page itself and its assets need none.
    let res = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
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

/// Reads a note's title from the store the moment its `NoteUpdated` is
/// published: from inside `publish` (a bus tap), on its own thread with its
/// own SQLite connection, while the publisher waits. An event published
/// before the commit would find the old state (WAL readers see only
/// committed data).
///
/// A tap must not block, but here holding the publisher is the point: the
/// store is read before the publisher can go on to commit anything.
#[cfg(feature = "demo")]
struct ReadOnPublish {
    url: String,
    seen: std::sync::Mutex<Vec<(uuid::Uuid, Option<String>)>>,
}

#[cfg(feature = "demo")]
impl event_core::bus::Tap for ReadOnPublish {
    fn take(&self, event: &std::sync::Arc<event_core::Event>) {
        let ServerEvent::NoteUpdated(n) = event.payload() else {
            return;
        };
        let (url, id) = (self.url.clone(), n.note_id);
        let read = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                sqlx::query_scalar::<_, String>("SELECT title FROM demo_notes WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_optional(&mut conn)
                    .await
            })
            .map_err(|e| e.to_string())
        })
        .join();
        let title = match read {
            Ok(Ok(title)) => title,
            Ok(Err(e)) => panic!("reading the store at publish: {e}"),
            Err(_) => panic!("the store reader panicked"),
        };
        match self.seen.lock() {
            Ok(mut seen) => seen.push((id, title)),
            Err(_) => panic!("a poisoned lock"),
        }
    }
}

#[cfg(feature = "demo")]
#[tokio::test]
async fn note_changes_are_announced_after_commit() {
    let server = Server::start(&[]).await;
    let http = client();
    let mut sub = server.bus.subscribe();
    let store = std::sync::Arc::new(ReadOnPublish {
        url: format!("sqlite://{}/events.db", server.dir().display()),
        seen: std::sync::Mutex::new(Vec::new()),
    });
    server.bus.add_tap(store.clone());
    // The title the store held when the last NoteUpdated was published.
    let read_at_publish = |id: &str| {
        let seen = store.seen.lock().unwrap();
        let (seen_id, title) = seen.last().cloned().expect("a NoteUpdated was published");
        assert_eq!(seen_id.to_string(), id);
        title
    };

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
    assert_eq!(read_at_publish(&id).as_deref(), Some("First"), "created");

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
    assert_eq!(read_at_publish(&id).as_deref(), Some("Second"), "updated");

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
    assert_eq!(read_at_publish(&id), None, "deleted");
    assert_eq!(store.seen.lock().unwrap().len(), 3);
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

//! The host's guards and limits (docs/security.md), black-box through the
//! real host: route guards decided before a body is read, body limits and
//! time, media types, `Host`/`Origin` in anonymous mode, connection caps and
//! the demo's bounds.

// Helpers outside #[test] functions: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use event_core::EventKind;
use event_server::testing::{Server, WAIT, client, next_where};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "admin-secret-token";
const CLIENT: &str = "client-secret-token";

async fn token_server(extra: &[&str]) -> Server {
    let mut args = vec!["--auth-admin-token", ADMIN, "--auth-client-tokens", CLIENT];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

/// Sends `head` (and `body`) on a fresh connection and returns everything
/// the server sends until it closes or `WAIT` runs out.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(body).await.expect("write body");
    read_answer(&mut tcp).await
}

/// Reads until the status line and the head have arrived (and the body
/// when `content-length` says how long), or the server closes.
async fn read_answer(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return text,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no complete answer within {WAIT:?}; got {text:?}"),
        }
    }
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn error_of(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON error body ({e}): {answer:?}"))
}

#[tokio::test]
async fn demo_writes_need_the_admin_token_and_reads_a_client_token() {
    let server = token_server(&[]).await;
    let mut sub = server.bus.subscribe();
    let http = client();
    let note = json!({"title": "t"});
    for (method, path) in [
        ("POST", "/api/v1/notes"),
        (
            "PATCH",
            "/api/v1/notes/0197c0de-5e1a-7a00-8000-0000000000aa",
        ),
        (
            "DELETE",
            "/api/v1/notes/0197c0de-5e1a-7a00-8000-0000000000aa",
        ),
        ("POST", "/api/v1/jobs"),
    ] {
        let method: reqwest::Method = method.parse().unwrap();
        let body = if path.ends_with("jobs") {
            json!({"job_type": "Embedding"})
        } else {
            note.clone()
        };
        let anonymous = http
            .request(method.clone(), server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401, "{method} {path} without a token");
        let as_client = http
            .request(method.clone(), server.url(path))
            .bearer_auth(CLIENT)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            as_client.status(),
            403,
            "{method} {path} with a client token"
        );
        let err: Value = as_client.json().await.unwrap();
        assert_eq!(err["error"], "forbidden");
    }
    server.assert_nothing_published(&mut sub).await;

    for path in ["/api/v1/notes", "/api/v1/jobs/status"] {
        let anonymous = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "GET {path} without a token");
        let as_client = http
            .get(server.url(path))
            .bearer_auth(CLIENT)
            .send()
            .await
            .unwrap();
        assert_eq!(as_client.status(), 200, "GET {path} with a client token");
    }
    let created = http
        .post(server.url("/api/v1/notes"))
        .bearer_auth(ADMIN)
        .json(&note)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let ev = next_where(&mut sub, |ev| ev.kind() == EventKind::NoteUpdated).await;
    assert!(ev.json().starts_with(br#"{"type":"NoteUpdated""#));
}

#[tokio::test]
async fn demo_note_fields_are_bounded_by_name() {
    let server = Server::start(&[]).await;
    let http = client();
    let many_tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    for (body, field) in [
        (json!({"title": "x".repeat(1001)}), "title"),
        (
            json!({"title": "t", "content": "x".repeat(64 * 1024 + 1)}),
            "content",
        ),
        (json!({"title": "t", "tags": many_tags}), "tags"),
        (json!({"title": "t", "tags": ["x".repeat(65)]}), "tags[0]"),
        (json!({"title": "t", "tags": ["ok", " "]}), "tags[1]"),
    ] {
        let res = http
            .post(server.url("/api/v1/notes"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{field}");
        let err: Value = res.json().await.unwrap();
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{field}`")),
            "{field}: {message}"
        );
    }
    // Over the route's body limit: 413 from the head alone.
    let answer = raw(
        server.addr,
        "POST /api/v1/notes HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert_eq!(error_of(&answer)["error"], "payload_too_large");
    let notes: Value = http
        .get(server.url("/api/v1/notes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(notes, json!([]), "a refused note was stored");
}

#[tokio::test]
async fn the_demo_job_queue_is_bounded() {
    let server = Server::start(&["--demo-max-queued-jobs", "3"]).await;
    let http = client();
    let mut refused = None;
    for _ in 0..200 {
        let res = http
            .post(server.url("/api/v1/jobs"))
            .json(&json!({"job_type": "Embedding"}))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            202 => {}
            429 => {
                refused = Some(res);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let res = refused.expect("the queue never filled");
    let retry = res
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(retry.parse::<u64>().unwrap() >= 1);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"], "too_many_requests");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("DEMO_MAX_QUEUED_JOBS")
    );
    let status: Value = http
        .get(server.url("/api/v1/jobs/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        status["pending"].as_u64().unwrap() <= 4,
        "queue overshot: {status}"
    );
}

#[tokio::test]
async fn auth_is_decided_before_any_body_byte_is_read() {
    let server = token_server(&[]).await;
    for (path, token) in [
        ("/api/v1/events", None),
        ("/api/v1/events", Some(CLIENT)),
        ("/api/v1/notes", None),
        ("/api/v1/jobs", Some(CLIENT)),
        ("/api/v1/webhooks", None),
    ] {
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        // A head announcing a megabyte, and no body byte at all: the answer
        // must come from the head alone.
        let answer = raw(
            server.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{auth}content-length: 1000000\r\n\r\n"
            ),
            b"",
        )
        .await;
        let want = if token.is_some() { 403 } else { 401 };
        assert_eq!(status_of(&answer), want, "POST {path}: {answer}");
        assert!(error_of(&answer)["message"].is_string());
    }
}

#[tokio::test]
async fn a_body_must_arrive_within_the_body_timeout() {
    let server = Server::start(&["--http-body-timeout-secs", "1"]).await;
    let mut sub = server.bus.subscribe();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"POST /api/v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":",
    )
    .await
    .unwrap();
    // The rest never comes: 408, then the server closes the connection.
    let answer = read_answer(&mut tcp).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(error_of(&answer)["error"], "request_timeout");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "the connection stayed open");
    server.assert_nothing_published(&mut sub).await;
}

#[tokio::test]
async fn publish_bodies_are_limited() {
    let server = Server::start(&[
        "--event-max-bytes",
        "1024",
        "--publish-max-body-bytes",
        "2000",
    ])
    .await;
    let answer = raw(
        server.addr,
        "POST /api/v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 2001\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(
        error_of(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("2000")
    );
    // Chunked, without a length: counted as it arrives.
    let chunk = "x".repeat(3000);
    let answer = raw(
        server.addr,
        "POST /api/v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 413, "{answer}");
}

#[tokio::test]
async fn mutating_requests_need_a_json_content_type() {
    let server = Server::start(&[]).await;
    let mut sub = server.bus.subscribe();
    let http = client();
    let event =
        r#"{"type":"JobQueued","job_id":"0197c0de-5e1a-7a00-8000-000000000001","job_type":"E"}"#;
    for (path, body) in [
        ("/api/v1/events", event.to_owned()),
        (
            "/api/v1/webhooks",
            r#"{"url":"http://127.0.0.1:9/hook"}"#.to_owned(),
        ),
        ("/api/v1/notes", r#"{"title":"t"}"#.to_owned()),
        ("/api/v1/jobs", r#"{"job_type":"Embedding"}"#.to_owned()),
    ] {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut request = http.post(server.url(path)).body(body.clone());
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), 415, "POST {path} as {content_type:?}");
            let err: Value = res.json().await.unwrap();
            assert_eq!(err["error"], "unsupported_media_type");
        }
    }
    server.assert_nothing_published(&mut sub).await;
    let hooks: Value = http
        .get(server.url("/api/v1/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        hooks.as_array().map(Vec::len),
        Some(0),
        "a webhook was registered: {hooks}"
    );
}

#[tokio::test]
async fn anonymous_mode_answers_only_loopback_hosts_and_origins() {
    let server = Server::start(&["--public-hosts", "events.example"]).await;
    let get = |host: &str, origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("origin: {o}\r\n"))
            .unwrap_or_default();
        format!("GET /health HTTP/1.1\r\nhost: {host}\r\n{origin}connection: close\r\n\r\n")
    };
    for (host, origin, want) in [
        ("127.0.0.1:3000", None, 200),
        ("localhost", None, 200),
        ("[::1]:80", None, 200),
        ("events.example", None, 200),
        ("rebind.attacker.example:3000", None, 403),
        ("127.0.0.1:3000", Some("http://localhost:5173"), 200),
        (
            "events.example:3000",
            Some("https://events.example:3000"),
            200,
        ),
        ("127.0.0.1:3000", Some("https://evil.example"), 403),
        ("127.0.0.1:3000", Some("null"), 403),
    ] {
        let answer = raw(server.addr, &get(host, origin), b"").await;
        assert_eq!(
            status_of(&answer),
            want,
            "host {host}, origin {origin:?}: {answer}"
        );
        if want == 403 {
            let code = error_of(&answer)["error"].as_str().unwrap().to_owned();
            assert!(
                code == "host_not_allowed" || code == "origin_not_allowed",
                "{code}"
            );
        }
    }
    // A WebSocket from a foreign page is refused before the upgrade.
    let answer = raw(
        server.addr,
        "GET /api/v1/ws HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: https://evil.example\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
}

/// Opens `n` connections that each sent half a request head (open and
/// counted, never answered), then asserts the next connection gets the caps'
/// `503`, naming `setting`.
async fn fill_and_expect_refusal(server: &Server, n: usize, setting: &str) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    let answer = raw(
        server.addr,
        "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    let err = error_of(&answer);
    assert_eq!(err["error"], "too_many_connections");
    assert!(err["message"].as_str().unwrap().contains(setting), "{err}");
    held
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_get_503() {
    let server = Server::start(&["--max-connections-per-ip", "3"]).await;
    let mut held = fill_and_expect_refusal(&server, 3, "MAX_CONNECTIONS_PER_IP").await;
    // A place is free again once a connection closes.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = raw(
            server.addr,
            "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
            b"",
        )
        .await;
        match status_of(&answer) {
            200 => break,
            503 if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            other => panic!("{other}: {answer}"),
        }
    }
}

#[tokio::test]
async fn connections_over_the_open_cap_get_503() {
    let server = Server::start(&[
        "--max-open-connections",
        "2",
        "--max-connections-per-ip",
        "0",
    ])
    .await;
    let _held = fill_and_expect_refusal(&server, 2, "MAX_OPEN_CONNECTIONS").await;
}

#[test]
fn anonymous_mode_refuses_a_public_address() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-server"))
        .env_clear()
        .env("EVENT_SERVER_ADDR", "0.0.0.0:0")
        .output()
        .expect("run event-server");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("AUTH_ALLOW_ANONYMOUS=true"), "{stderr}");
}

#[tokio::test]
async fn one_big_event_is_refused_and_a_limit_sized_one_drops_no_reader() {
    use futures_util::StreamExt;
    let server = Server::start(&[]).await;
    let mut sub = server.bus.subscribe();
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws"))
        .await
        .unwrap();
    let sse = client()
        .get(server.url("/api/v1/events"))
        .timeout(WAIT * 3)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = sse.bytes_stream();
    server.wait_connections(2).await;
    let job = uuid::Uuid::now_v7();
    let event = |size: usize| json!({"type":"JobProgress","job_id":job,"progress":1,"message":"x".repeat(size)});
    // Over EVENT_MAX_BYTES (256 KiB rendered): 413 naming the limit, and
    // nothing of the batch is published.
    let res = client()
        .post(server.url("/api/v1/events"))
        .json(&json!([event(10), event(300 * 1024)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"], "event_too_large");
    assert!(err["message"].as_str().unwrap().contains("262144"), "{err}");
    server.assert_nothing_published(&mut sub).await;
    // Just under it, four times: every reader keeps its connection and gets
    // all four, then a small one.
    for _ in 0..4 {
        server.publish(&event(250 * 1024)).await;
    }
    let done = uuid::Uuid::now_v7();
    server
        .publish(&json!({"type":"JobQueued","job_id":done,"job_type":"Done"}))
        .await;
    let done = done.to_string();
    let ws_got = tokio::time::timeout(WAIT, async {
        let mut big = 0;
        while let Some(Ok(msg)) = ws.next().await {
            let text = msg.into_text().unwrap_or_default();
            if text.len() > 250 * 1024 {
                big += 1;
            }
            if text.contains(&done) {
                return big;
            }
        }
        panic!("the WebSocket ended after {big} big events");
    })
    .await
    .expect("the WebSocket client got everything in time");
    assert_eq!(ws_got, 4);
    let sse_text = tokio::time::timeout(WAIT, async {
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = sse.next().await {
            text.extend_from_slice(&chunk);
            if text.windows(done.len()).any(|w| w == done.as_bytes()) {
                return String::from_utf8_lossy(&text).into_owned();
            }
        }
        panic!("the SSE stream ended");
    })
    .await
    .expect("the SSE client got everything in time");
    assert_eq!(sse_text.matches("event: JobProgress").count(), 4);
    assert!(!sse_text.contains("events.lagged"), "an SSE reader lagged");
}

#[tokio::test]
async fn sse_streams_over_max_connections_get_503() {
    let server = Server::start(&["--max-connections", "2"]).await;
    let open = |_| async {
        client()
            .get(server.url("/api/v1/events"))
            .timeout(WAIT * 3)
            .send()
            .await
            .unwrap()
    };
    let first = open(0).await;
    let second = open(1).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open(2).await;
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let err: Value = third.json().await.unwrap();
    assert!(err["message"].is_string(), "{err}");
    drop(first);
    server.wait_connections(1).await;
    assert_eq!(open(3).await.status(), 200);
}

/// `POST path` with the JSON `body` on a connection from `source` (a
/// loopback address: each is its own producer in anonymous mode).
async fn post_from(source: std::net::IpAddr, addr: SocketAddr, path: &str, body: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut tcp).await
}

#[tokio::test]
async fn writes_over_a_producers_rate_get_429_before_the_body() {
    let server = Server::start(&[
        "--publish-max-rate",
        "1",
        "--webhook-create-max-rate",
        "1",
        "--http-body-timeout-secs",
        "2",
    ])
    .await;
    let here: std::net::IpAddr = [127, 0, 0, 1].into();
    let elsewhere: std::net::IpAddr = [127, 0, 0, 2].into();
    let event =
        r#"{"type":"JobQueued","job_id":"0197c0de-5e1a-7a00-8000-000000000001","job_type":"E"}"#;
    let hook = r#"{"url":"http://127.0.0.1:9/hook"}"#;
    for (path, body, setting, accepted) in [
        ("/api/v1/events", event, "PUBLISH_MAX_RATE", 202),
        ("/api/v1/webhooks", hook, "WEBHOOK_CREATE_MAX_RATE", 201),
    ] {
        // The bucket holds one request a second: empty it, then send a head
        // announcing a body that never comes. The refusal must come from
        // the head alone; if the bucket refilled in between, the body
        // timeout answers 408 and we try again.
        let mut refused = None;
        for _ in 0..5 {
            post_from(here, server.addr, path, body).await;
            let answer = raw(
                server.addr,
                &format!(
                    "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
                ),
                b"",
            )
            .await;
            match status_of(&answer) {
                429 => {
                    refused = Some(answer);
                    break;
                }
                408 => continue,
                other => panic!("POST {path}: {other}: {answer}"),
            }
        }
        let answer = refused.unwrap_or_else(|| panic!("POST {path} was never limited"));
        let retry_after = answer
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no Retry-After: {answer}"));
        assert!(retry_after >= 1, "{answer}");
        let error = error_of(&answer);
        assert_eq!(error["error"], "too_many_requests", "{answer}");
        assert!(
            error["message"].as_str().unwrap().contains(setting),
            "{answer}"
        );
        // Another producer has a bucket of its own.
        let other = post_from(elsewhere, server.addr, path, body).await;
        assert_eq!(
            status_of(&other),
            accepted,
            "POST {path} from {elsewhere}: {other}"
        );
    }
    // Reads are not limited.
    let res = client()
        .get(server.url("/api/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

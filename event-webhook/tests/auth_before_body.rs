//! Authentication is decided from the request head, before any body byte is
//! read, on every webhook route; bodies are bounded (`413` JSON).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client, fast_config, serve, sqlite_store};
use event_core::StaticTokens;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn token_server() -> String {
    let auth = Arc::new(
        StaticTokens::new()
            .admin("admin-token")
            .client("client-token"),
    );
    let (_w, base) = serve(sqlite_store().await, auth, fast_config()).await;
    base
}

/// Sends `head` (no body bytes) and returns the status code and the JSON
/// body of the response, which must arrive within [`WAIT`] while the
/// announced body never does.
async fn head_only(base: &str, head: &str) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            // The whole response: head and a Content-Length body.
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return;
                }
            }
            if n == 0 {
                return;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no response within {WAIT:?} to a body-less request"
    );
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn unauthenticated_posts_get_401_before_any_body_byte() {
    let base = token_server().await;
    let id = uuid::Uuid::now_v7();
    for path in [
        "/api/v1/webhooks".to_owned(),
        format!("/api/v1/webhooks/{id}/test"),
        format!("/api/v1/webhooks/{id}/deliveries/{id}/redeliver"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 1000000\r\n\r\n"
        );
        let (status, body) = head_only(&base, &head).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"], "unauthorized", "{path}");
    }
    // PATCH, and a non-admin token: 403, also before the body.
    let head = format!(
        "PATCH /api/v1/webhooks/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer client-token\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000\r\n\r\n"
    );
    let (status, body) = head_only(&base, &head).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    // Chunked bodies too.
    let head = "POST /api/v1/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let (status, _) = head_only(&base, head).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_admin_body_over_the_limit_gets_413_json() {
    let base = token_server().await;
    let url = format!("{base}/api/v1/webhooks");
    let padding = "x".repeat(event_webhook::api::MAX_BODY_BYTES);
    let body = format!(r#"{{"url":"http://127.0.0.1:9/x","pad":"{padding}"}}"#);
    let r = client()
        .post(&url)
        .bearer_auth("admin-token")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "payload_too_large", "{v}");
    // Announced too large: refused from the head as well.
    let head = "POST /api/v1/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Authorization: Bearer admin-token\r\nContent-Type: application/json\r\n\
                Content-Length: 1000000\r\n\r\n";
    let (status, v) = head_only(&base, head).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"], "payload_too_large");
    // Within the limit: served.
    let r = client()
        .post(&url)
        .bearer_auth("admin-token")
        .json(&serde_json::json!({"url": "http://127.0.0.1:9/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

//! The abuse list of docs/security.md, run against one server in token mode
//! and one in anonymous mode: every hostile input gets its documented answer,
//! healthy clients keep receiving, and the server's memory stays bounded.
//!
//! Its own binary: the memory check reads this process's RSS from `/proc`,
//! and no other test may share the process while it runs.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "conformance/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::net::SocketAddr;

use event_core::{JobProgress, ServerEvent};
use harness::{Server, SseClient, WAIT, WsClient, client, within};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "abuse-admin-token";
const CLIENT: &str = "abuse-client-token";
const MIB: u64 = 1024 * 1024;

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The status code of the answer to `head` + `body` on a fresh connection.
async fn status_of_raw(addr: SocketAddr, head: &str, body: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(body).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    within("an answer", async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn progress(job: uuid::Uuid, message: String) -> ServerEvent {
    ServerEvent::JobProgress(JobProgress {
        job_id: job,
        note_id: None,
        progress: 50,
        message: Some(message),
    })
}

/// A healthy WebSocket and SSE client each receive the event published now
/// (they were not dropped by anything the abusers did).
async fn healthy_clients_still_receive(
    server: &Server,
    ws: &mut WsClient,
    sse: &mut SseClient,
    auth: &[(&str, &str)],
) {
    let job = uuid::Uuid::now_v7();
    let mut request = client()
        .post(server.url("/api/v1/events"))
        .json(&json!({"type":"JobQueued","job_id":job,"job_type":"Sentinel"}));
    for (k, v) in auth {
        request = request.header(*k, *v);
    }
    assert_eq!(request.send().await.unwrap().status(), 202);
    let id = job.to_string();
    ws.next_text_where(|v| v["job_id"] == id.as_str()).await;
    sse.next_where(|f| f.is_event() && f.json()["job_id"] == id.as_str())
        .await;
}

/// Runs the list against `server`; `auth` are the admin's headers (empty in
/// anonymous mode), `ws_url`/`sse_url` a client's stream URLs.
async fn abuse(server: &Server, auth: &[(&str, &str)], sse_url: &str, ws_url: &str) {
    let http = client();
    let admin = |r: reqwest::RequestBuilder| auth.iter().fold(r, |r, (k, v)| r.header(*k, *v));
    // Fill the replay ring with ~30 MB of 100 KiB events (before the
    // healthy clients connect: a 30 MB burst is more than any client's
    // budget, and a burst is not what this test is about).
    let job = uuid::Uuid::now_v7();
    let first = server
        .bus
        .try_publish(progress(job, "first".to_owned()))
        .unwrap()
        .seq();
    for i in 0..300 {
        server
            .bus
            .try_publish(progress(job, format!("{i:06}{}", "x".repeat(100 * 1024))))
            .unwrap();
    }
    let mut ws = WsClient::connect(ws_url).await;
    let mut sse = SseClient::connect(sse_url, &[]).await;
    healthy_clients_still_receive(server, &mut ws, &mut sse, auth).await;
    let baseline = rss();

    // 1. One event over EVENT_MAX_BYTES, through the API: 413, nothing
    //    published, nobody dropped.
    let huge =
        json!({"type":"JobProgress","job_id":job,"progress":1,"message":"x".repeat(1_200_000)});
    let res = admin(http.post(server.url("/api/v1/events")).json(&huge))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // … and through a demo note with a huge tag list: 400 naming the field.
    let tags: Vec<String> = (0..20_000).map(|i| format!("tag-{i}")).collect();
    let res = admin(
        http.post(server.url("/api/v1/notes"))
            .json(&json!({"title":"t","tags":tags})),
    )
    .send()
    .await
    .unwrap();
    assert!(
        matches!(res.status().as_u16(), 400 | 413),
        "{}",
        res.status()
    );

    // 2. Five clients resume from the start of the ring and never read.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let token = auth
            .iter()
            .find(|(k, _)| *k == "authorization")
            .map(|(_, v)| format!("authorization: {v}\r\n"))
            .unwrap_or_default();
        tcp.write_all(
            format!(
                "GET /api/v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\n{token}last-event-id: {first}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(tcp);
    }

    // 3. Ten WebSocket clients send large subscribe messages and never read.
    let mut floods = Vec::new();
    for _ in 0..10 {
        let mut flood = WsClient::connect(ws_url).await;
        let names: Vec<String> = (0..64).map(|i| format!("unknown-name-{i:0>100}")).collect();
        let message = json!({"type":"subscribe","events":names}).to_string();
        for _ in 0..20 {
            if tokio::time::timeout(
                WAIT / 10,
                futures_util::SinkExt::send(
                    &mut flood.stream,
                    tokio_tungstenite::tungstenite::Message::Text(message.clone().into()),
                ),
            )
            .await
            .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
        floods.push(flood);
    }

    // 3b. Rate-limited consumers (`max_rate` 1/s) that never read, under a
    //     burst with nothing to coalesce (below the bus's and the healthy
    //     clients' budgets; what a pacer holds is bounded by its own, see
    //     event_core::pace's tests): none is disconnected for its limit.
    let mut paced = Vec::new();
    for _ in 0..5 {
        let mut ws = WsClient::connect(ws_url).await;
        ws.next_text().await;
        ws.send(r#"{"type":"subscribe","events":["job.completed"],"max_rate":1}"#)
            .await;
        let (reply, _) = ws.next_text().await;
        assert!(reply.contains(r#""max_rate":1"#), "{reply}");
        paced.push(ws);
    }
    let mut paced_sse = Vec::new();
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let token = auth
            .iter()
            .find(|(k, _)| *k == "authorization")
            .map(|(_, v)| format!("authorization: {v}\r\n"))
            .unwrap_or_default();
        tcp.write_all(
            format!(
                "GET /api/v1/events?types=job.completed&max_rate=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n{token}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // Subscribed once the answer starts (its queue status sent): only
        // then does the burst below reach it. It reads nothing after.
        let mut head = Vec::new();
        within("a paced SSE answer", async {
            while !String::from_utf8_lossy(&head).contains("QueueStatus") {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the paced SSE request was closed");
                head.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        paced_sse.push(tcp);
    }
    for _ in 0..500 {
        server.bus.publish(event_core::JobCompleted {
            job_id: uuid::Uuid::now_v7(),
            job_type: "Paced".to_owned(),
            note_id: None,
            duration_ms: None,
        });
    }

    // 4. Slow and oversized bodies.
    let unauthenticated = status_of_raw(
        server.addr,
        "POST /api/v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n",
        b"",
    )
    .await;
    assert!(matches!(unauthenticated, 401 | 413), "{unauthenticated}");

    // 5. Cross-site and wrong-media-type writes.
    let res = http
        .post(server.url("/api/v1/webhooks"))
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(r#"{"url":"http://127.0.0.1:9/hook"}"#)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(res.status().as_u16(), 403 | 415),
        "{}",
        res.status()
    );

    // 6. A job flood stops at the queue bound.
    let mut refused = false;
    for _ in 0..1_100 {
        let res = admin(
            http.post(server.url("/api/v1/jobs"))
                .json(&json!({"job_type":"Flood"})),
        )
        .send()
        .await
        .unwrap();
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            refused = true;
            break;
        }
        assert_eq!(res.status(), 202);
    }
    assert!(refused, "the job queue never filled");

    // 7. A connection-slot flood stops at the per-principal bound
    //    (CONNECTION_SLOTS_PER_PRINCIPAL, 100): 409 slot_limit.
    let mut slot_refusal = None;
    for _ in 0..=100 {
        let res = admin(
            http.post(server.url("/api/v1/connections"))
                .json(&json!({"transport":"sse"})),
        )
        .send()
        .await
        .unwrap();
        if res.status() != 201 {
            slot_refusal = Some((res.status().as_u16(), res.text().await.unwrap()));
            break;
        }
    }
    let (status, body) = slot_refusal.expect("101 slots were created for one principal");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains(r#""error":"slot_limit""#), "{body}");

    // 8. A flood of stats streams stops at STATS_STREAM_MAX (64): 503 with
    //    Retry-After; the open ones are held (never read).
    let mut stats_streams = Vec::new();
    let mut stats_refusal = None;
    for _ in 0..=64 {
        let res = admin(http.get(server.url("/api/v1/stats/stream")))
            .send()
            .await
            .unwrap();
        if res.status() != 200 {
            stats_refusal = Some(res);
            break;
        }
        stats_streams.push(res);
    }
    let refusal = stats_refusal.expect("65 stats streams were opened");
    assert_eq!(refusal.status(), 503);
    assert!(refusal.headers().contains_key("retry-after"));

    // 9. A client asking for a queue budget below two of the largest
    //    events: 400 naming the range, on both transports.
    let budget_url = format!(
        "{sse_url}{}buffer_max_bytes=1",
        if sse_url.contains('?') { '&' } else { '?' }
    );
    let res = admin(http.get(&budget_url)).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let body = res.text().await.unwrap();
    assert!(body.contains("buffer_max_bytes"), "{body}");

    // The paced clients are still served, at their rate: the burst's
    // first event, then held ones.
    for client in &mut paced {
        for _ in 0..2 {
            let (text, _) = client.next_text().await;
            assert!(text.contains(r#""job_type":"Paced""#), "{text}");
        }
    }

    // The paced SSE clients that read nothing during the burst were not
    // dropped either: its first paced event is waiting for them.
    for tcp in &mut paced_sse {
        let mut seen = Vec::new();
        within("a paced SSE stream", async {
            while !String::from_utf8_lossy(&seen).contains(r#""job_type":"Paced""#) {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the paced SSE stream was closed");
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
    }

    // Everyone healthy still receives; the abusers cost a bounded amount.
    healthy_clients_still_receive(server, &mut ws, &mut sse, auth).await;
    let grown = rss().saturating_sub(baseline);
    eprintln!(
        "abuse: RSS grew {} KiB over the full-ring baseline",
        grown / 1024
    );
    assert!(
        grown < 96 * MIB,
        "the server's process grew {} MiB under abuse (ring already full before)",
        grown / MIB
    );
    drop((stalled, floods, paced, paced_sse, stats_streams));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_in_token_mode_and_in_anonymous_mode() {
    let server = Server::start(&[
        "--auth-admin-token",
        ADMIN,
        "--auth-client-tokens",
        CLIENT,
        "--demo-max-queued-jobs",
        "1000",
    ])
    .await;
    let bearer = format!("Bearer {ADMIN}");
    abuse(
        &server,
        &[("authorization", bearer.as_str())],
        &server.url(&format!("/api/v1/events?token={CLIENT}")),
        &server.ws_url(&format!("/api/v1/ws?token={CLIENT}")),
    )
    .await;
    // Token mode only: demo writes without the admin token.
    let res = client()
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"job_type":"Embedding"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    drop(server);

    let server = Server::start(&[]).await;
    abuse(
        &server,
        &[],
        &server.url("/api/v1/events"),
        &server.ws_url("/api/v1/ws"),
    )
    .await;
    // Anonymous mode only: DNS rebinding.
    let rebind = status_of_raw(
        server.addr,
        "GET /health HTTP/1.1\r\nhost: rebind.attacker.example\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(rebind, 403);
}

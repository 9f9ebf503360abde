//! The host as an operator runs it: real clients on the mounted transports,
//! connection management, health, and a SIGTERM shutdown of the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_server::testing::{Server, TempDir, client};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

async fn ws_connect(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws"))
        .await
        .unwrap();
    ws
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no WebSocket message within 5 s")
        .expect("WebSocket ended")
        .unwrap()
}

#[tokio::test]
async fn mounted_transports_serve_their_protocols_and_are_managed() {
    let server = Server::start(&[]).await;
    let http = client();

    let mut ws = ws_connect(server.addr).await;
    let first = next_text(&mut ws).await;
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["type"], "QueueStatus");

    let sse = http.get(server.url("/api/v1/events")).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut body = sse.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(chunk.starts_with(b"retry: 3000\n"), "{chunk:?}");
    server.wait_connections(2).await;

    let health: Value = http
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["connections"]["ws"], 1);
    assert_eq!(health["connections"]["sse"], 1);

    let list: Vec<Value> = http
        .get(server.url("/api/v1/connections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    let ws_entry = list
        .iter()
        .find(|c| c["transport"] == "ws")
        .expect("the WebSocket is listed");
    let id = ws_entry["id"].as_u64().unwrap();
    let res = http
        .delete(server.url(&format!("/api/v1/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    // The kicked client is closed with a code it will reconnect after.
    loop {
        match next_text(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_ne!(u16::from(frame.code), 1000);
                break;
            }
            Message::Close(None) => panic!("closed without a code"),
            _ => {}
        }
    }
    // Reading on sends the client's half of the close handshake.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    server.wait_connections(1).await;
    // A gone SSE client is noticed at the next write: publish until it is.
    drop(body);
    let mut gone = server.registry.watch_total();
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            server.bus.publish(event_core::QueueStatus::new(0, 0));
            if tokio::time::timeout(Duration::from_millis(100), gone.wait_for(|&t| t == 0))
                .await
                .is_ok()
            {
                break;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the dropped SSE client stayed registered");
}

#[tokio::test]
async fn metrics_expose_the_protocol_series() {
    let server = Server::start(&[]).await;
    let text = server.get_text("/metrics").await;
    for series in [
        "matric_ws_connections_active",
        "matric_sse_connections_active",
        "matric_events_published_total",
    ] {
        assert!(
            text.contains(series),
            "{series} missing from /metrics:\n{text}"
        );
    }
}

/// Sends SIGTERM to the server binary with open WebSocket and SSE clients:
/// the WebSocket is closed with 1001, the SSE stream ends, and the process
/// exits cleanly within 5 s.
#[tokio::test]
async fn sigterm_closes_clients_and_exits_within_5s() {
    let dir = TempDir::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_event-server"))
        .env("EVENT_SERVER_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", dir.sqlite_url())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr: std::net::SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server never said it was listening");
        let Ok(json) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(addr) = json["fields"]["addr"].as_str() {
            break addr.parse().unwrap();
        }
    };

    let mut ws = ws_connect(addr).await;
    let _status = next_text(&mut ws).await;
    let sse = client()
        .get(format!("http://{addr}/api/v1/events"))
        .send()
        .await
        .unwrap();
    let mut body = sse.bytes_stream();
    let _first = body.next().await.unwrap().unwrap();

    let started = Instant::now();
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());

    loop {
        match next_text(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Message::Close(None) => panic!("closed without a code"),
            _ => {}
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the SSE stream did not end");

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server did not exit within 5 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

//! Connection lifecycle: client close, abrupt drops, heartbeat, kick,
//! shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Setup, TestServer, WAIT, expect_close, next_text, request_with, send_text};
use event_core::{QueueStatus, Transport};
use event_ws::{WsConfig, close_code};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

fn heartbeat(ping_ms: u64, idle_ms: u64) -> WsConfig {
    WsConfig {
        ping_interval: Duration::from_millis(ping_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        ..WsConfig::default()
    }
}

#[tokio::test]
async fn connections_are_registered_with_peer_address() {
    let server = TestServer::start(WsConfig::default()).await;
    let client = server.connect().await;
    let list = server.registry.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].transport, Transport::WebSocket);
    let local = match client.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(list[0].remote_addr, Some(local.to_string()));
    assert_eq!(server.endpoint.connections(), 1);
}

#[tokio::test]
async fn client_close_is_answered_and_unregistered() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    client
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    // The server echoes the close (tungstenite then ends the stream).
    let echoed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = client.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(echoed, Some(1000));
    server.wait_registered(0).await;
    server.wait_endpoint_connections(0).await;
}

#[tokio::test]
async fn abrupt_disconnect_unregisters() {
    let server = TestServer::start(WsConfig::default()).await;
    let fin = server.connect().await;
    let rst = server.connect().await;
    let silent = server.connect().await;
    server.wait_registered(3).await;

    // Dropped without a close frame: the TCP connection ends with FIN.
    drop(fin);
    server.wait_registered(2).await;

    // Reset: linger 0 makes the kernel send RST on close.
    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = rst.get_ref() {
        s.set_zero_linger().unwrap();
    }
    drop(rst);
    server.wait_registered(1).await;

    // While events are flowing to it.
    for i in 0..100 {
        server.bus.publish(QueueStatus::new(i, 0));
    }
    drop(silent);
    server.wait_registered(0).await;
    server.wait_endpoint_connections(0).await;
    assert!(server.endpoint.hub().is_empty());
}

/// Server frames (unmasked, short) in raw bytes: `(opcode, payload)`.
fn raw_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let len = usize::from(bytes[1] & 0x7f);
        assert!(len < 126, "only short frames expected here");
        frames.push((opcode, bytes[2..2 + len].to_vec()));
        bytes = &bytes[2 + len..];
    }
    frames
}

#[tokio::test]
async fn silent_client_is_closed_after_the_idle_timeout() {
    let server = TestServer::start(WsConfig {
        close_timeout: Duration::from_millis(200),
        ..heartbeat(50, 300)
    })
    .await;
    let mut client = server.connect().await;
    // The client does not read, so it never answers the server's pings.
    server.wait_registered(0).await;
    // The socket's bytes show the pings it ignored, then the close code.
    // (Read raw: a WebSocket client would try to answer the pings and fail
    // on the closed socket.)
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.get_mut() else {
        unreachable!()
    };
    let mut bytes = Vec::new();
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let frames = raw_frames(&bytes);
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    let (op, payload) = frames.last().unwrap();
    assert_eq!(*op, 0x8, "the last frame is a close frame");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        close_code::IDLE_TIMEOUT
    );
    assert!(pings >= 2, "the server pinged ({pings}) before giving up");
}

#[tokio::test]
async fn answering_pings_keeps_the_connection_open() {
    let server = TestServer::start(heartbeat(50, 600)).await;
    let mut client = server.connect().await;
    // Reading answers pings automatically; see enough of them to span
    // several idle timeouts.
    let mut pings = 0;
    while pings < 40 {
        match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    send_text(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_text(&mut client).await, r#"{"type":"pong"}"#);
    assert_eq!(server.registry.total(), 1);
}

#[tokio::test]
async fn registry_shutdown_closes_every_socket_with_1001() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(server.connect().await);
    }
    server.registry.shutdown();
    for c in &mut clients {
        assert_eq!(expect_close(c).await, close_code::GOING_AWAY);
    }
    server.wait_registered(0).await;
    // New connections are refused while shutting down.
    let refused = tokio_tungstenite::connect_async(request_with(&server.url(), &[])).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_token_closes_with_1001_even_for_a_non_reading_client() {
    let token = CancellationToken::new();
    let server = TestServer::start_with(Setup {
        shutdown: Some(token.clone()),
        config: WsConfig {
            close_timeout: Duration::from_millis(500),
            ..WsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let mut reader = server.connect().await;
    let _stuck = server.connect().await; // never reads, never answers the close
    token.cancel();
    assert_eq!(expect_close(&mut reader).await, 1001);
    // Both are gone within the close deadline.
    server.wait_registered(0).await;
}

#[tokio::test]
async fn kicked_connection_is_closed_and_unregistered() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut kept = server.connect().await;
    let mut kicked = server.connect().await;
    let list = server.registry.list();
    let id = list.last().unwrap().id;
    assert!(server.registry.disconnect(id));
    assert_eq!(
        expect_close(&mut kicked).await,
        close_code::POLICY_VIOLATION
    );
    server.wait_registered(1).await;
    send_text(&mut kept, r#"{"type":"ping"}"#).await;
    assert_eq!(next_text(&mut kept).await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn endpoint_shutdown_closes_with_1001_and_waits_for_the_last_connection() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let endpoint = server.endpoint.clone();
    let done = tokio::spawn(async move { endpoint.shutdown(Duration::from_secs(15)).await });
    assert_eq!(expect_close(&mut a).await, close_code::GOING_AWAY);
    assert_eq!(expect_close(&mut b).await, close_code::GOING_AWAY);
    assert!(
        done.await.unwrap(),
        "every connection finished before the deadline"
    );
    assert_eq!(server.endpoint.connections(), 0);
    assert_eq!(server.registry.total(), 0);
    // The registry itself was not shut down, but the endpoint refuses.
    assert!(!server.registry.is_shutting_down());
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

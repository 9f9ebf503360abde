//! Limits on what a client can make the server hold (issue 15, item 8):
//! `subscribe` names are capped in number and length, reading is throttled
//! by the bytes waiting to be written, and replies stay inside the outbox
//! byte budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw::{RawClient, client_frame};
use common::{Setup, TestServer, WAIT, expect_close, next_text, send_text};
use event_core::OutboxLimits;
use event_ws::{WsConfig, close_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `subscribe` of `count` unknown names of `len` bytes each, every byte
/// a control character: JSON escapes each as six bytes, in the request and
/// in the reply that echoes the unknown names.
fn heavy_subscribe(count: usize, len: usize) -> String {
    let name = "\u{1}".repeat(len);
    let names: Vec<&str> = (0..count).map(|_| name.as_str()).collect();
    format!(
        r#"{{"type":"subscribe","events":{}}}"#,
        serde_json::to_string(&names).unwrap()
    )
}

#[tokio::test]
async fn subscribe_over_the_name_limits_closes_with_1008() {
    let server = TestServer::start(WsConfig::default()).await;
    // At the limits: answered, the unknown names listed.
    let mut client = server.connect().await;
    send_text(&mut client, &heavy_subscribe(64, 128)).await;
    let reply = next_text(&mut client).await;
    assert!(reply.starts_with(r#"{"type":"subscribed""#), "{reply}");
    assert_eq!(reply.matches(r"\u0001").count(), 64 * 128);

    for over in [
        heavy_subscribe(65, 1),
        heavy_subscribe(1, 129),
        r#"{"type":"unsubscribe","events":["JobProgress","x","#.to_owned()
            + &r#""y","#.repeat(63)
            + r#""z"]}"#,
    ] {
        let mut client = server.connect().await;
        send_text(&mut client, &over).await;
        assert_eq!(
            expect_close(&mut client).await,
            close_code::POLICY_VIOLATION,
            "{}",
            &over[..60]
        );
    }
    server.wait_registered(1).await;
}

#[tokio::test]
async fn replies_over_the_outbox_budget_close_with_4008() {
    // A budget smaller than one reply: the client reads, but the server
    // will not hold that much for it.
    let server = TestServer::start(WsConfig {
        outbox: OutboxLimits {
            max_bytes: 32 * 1024,
            ..OutboxLimits::default()
        },
        ..WsConfig::default()
    })
    .await;
    let mut client = server.connect().await;
    send_text(&mut client, &heavy_subscribe(8, 128)).await;
    assert!(next_text(&mut client).await.contains("subscribed"));
    send_text(&mut client, &heavy_subscribe(64, 128)).await;
    assert_eq!(expect_close(&mut client).await, close_code::SLOW_CONSUMER);
}

/// Reads server frames from `tcp` until `n` text frames have arrived;
/// returns the bytes of the last one.
async fn read_texts(
    tcp: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
    n: usize,
) -> Vec<u8> {
    let mut seen = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 4 {
            let (len, at) = match buf[1] & 0x7F {
                126 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < at + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..at + len).collect();
            if frame[0] == 0x81 {
                seen += 1;
                if seen == n {
                    return frame[at..].to_vec();
                }
            }
        }
        let got = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the server stopped answering")
            .unwrap();
        assert!(got > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..got]);
    }
}

#[tokio::test]
async fn a_client_that_sends_without_reading_cannot_make_the_server_hold_more_than_the_budget() {
    const MESSAGES: usize = 400;
    const BUDGET: usize = 512 * 1024;
    let server = TestServer::start_with(Setup {
        // Small socket buffers, so that what the client does not read stays
        // in the server rather than in the kernels.
        send_buffer: Some(4096),
        config: WsConfig {
            outbox: OutboxLimits {
                max_bytes: BUDGET,
                ..OutboxLimits::default()
            },
            ..WsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let mut client = RawClient::upgrade(tcp, "/api/v1/ws").await;
    assert_eq!(client.frame().await.0, 0x1, "the initial status");
    let RawClient { tcp, mut buf } = client;
    let (mut rd, mut wr) = tcp.into_split();

    // Each request is about 49 KiB, and so is each reply: without a byte
    // bound, 64 waiting replies were over 3 MiB.
    let request = client_frame(0x81, heavy_subscribe(64, 128).as_bytes());
    let request_len = request.len();
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            wr.write_all(&request).await.unwrap();
        }
        wr
    });
    // The server reads until its replies reach the pause threshold, then
    // leaves the requests in TCP: the writer is held back.
    tokio::time::timeout(WAIT, async {
        while server.endpoint.peak_queued_bytes() < 64 * 1024 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the replies never reached the pause threshold");
    // More is sent than the kernels' buffers hold: had the server read it
    // all, it would hold megabytes of replies.
    assert!(!writer.is_finished(), "the server read every request");

    // Reading at last, the client gets every reply, and the connection
    // stays open: it was held back, not dropped.
    let last = read_texts(&mut rd, &mut buf, MESSAGES).await;
    assert!(last.starts_with(br#"{"type":"subscribed""#));
    let mut wr = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    let peak = server.endpoint.peak_queued_bytes();
    assert!(
        peak <= BUDGET,
        "one connection held {peak} bytes of replies, over its {BUDGET}-byte budget"
    );
    assert!(
        peak < 4 * request_len,
        "reading did not pause: {peak} bytes held for one connection"
    );
    wr.write_all(&client_frame(0x81, br#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(
        read_texts(&mut rd, &mut buf, 1).await,
        br#"{"type":"pong"}"#
    );
    assert_eq!(server.registry.total(), 1);
}

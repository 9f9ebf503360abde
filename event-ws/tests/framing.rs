//! RFC 6455 framing as the endpoint reads and writes it, checked with a
//! client that writes its frames byte by byte: fragmented messages,
//! control frames between fragments, client pings, and the close codes
//! for broken framing (1002) and text that is not UTF-8 (1007).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, WAIT};
use event_core::QueueStatus;
use event_ws::{WsConfig, close_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client speaking raw frames over TCP.
struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Upgrades and returns the client with the first frame (the queue
    /// status) read.
    async fn connect(server: &TestServer) -> (RawClient, Vec<u8>) {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(
            b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut client = RawClient {
            tcp,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(end) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(client.buf[..end].to_vec()).unwrap();
                client.buf.drain(..end + 4);
                break head;
            }
            client.read_more().await;
        };
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let (opcode, first) = client.frame().await;
        assert_eq!(opcode, 0x1);
        (client, first)
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("the server sent nothing")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next server frame: opcode and payload. Server frames are never
    /// masked and never fragmented.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b0 & 0xF0, 0x80, "FIN set, no reserved bits: {b0:#x}");
                assert_eq!(b1 & 0x80, 0, "a server frame must not be masked");
                let (len, at) = match b1 & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return (b0 & 0x0F, payload);
                }
            }
            self.read_more().await;
        }
    }

    /// The next text frame, skipping pings.
    async fn text(&mut self) -> String {
        loop {
            match self.frame().await {
                (0x1, payload) => return String::from_utf8(payload).unwrap(),
                (0x9, _) => continue,
                (op, payload) => panic!("expected text, got opcode {op:#x}: {payload:?}"),
            }
        }
    }

    /// Sends one frame, masked as a client must, unless `masked` is false.
    async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mask = [0x1f, 0x2e, 0x3d, 0x4c];
        let mut out = vec![first];
        let bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(bit | n as u8),
            n => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.tcp.write_all(&out).await.unwrap();
    }

    /// Expects a close frame, answers it, and returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                (0x8, payload) => {
                    self.send(0x88, &payload[..2], true).await;
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                (0x1 | 0x9, _) => continue,
                (op, _) => panic!("expected close, got opcode {op:#x}"),
            }
        }
    }
}

#[tokio::test]
async fn a_fragmented_message_with_a_ping_between_its_parts_is_understood() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, first) = RawClient::connect(&server).await;
    assert!(first.starts_with(br#"{"type":"QueueStatus""#));
    client.send(0x01, br#"{"type""#, true).await;
    client.send(0x89, b"are you there", true).await;
    client.send(0x00, br#":"pi"#, true).await;
    client.send(0x80, br#"ng"}"#, true).await;
    // The ping is answered at once, with its payload; then the message.
    assert_eq!(client.frame().await, (0xA, b"are you there".to_vec()));
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn replies_keep_the_order_of_the_requests_around_a_refresh() {
    let server = TestServer::start(WsConfig::default()).await;
    server.bus.publish(QueueStatus::new(3, 1));
    let (mut client, first) = RawClient::connect(&server).await;
    let status = String::from_utf8(first).unwrap();
    assert!(status.contains(r#""pending":3"#), "{status}");
    // In one write: the refresh's reply is prepared asynchronously, yet the
    // pong that follows it must come after it.
    let mut both = Vec::new();
    for text in [&b"refresh"[..], br#"{"type":"ping"}"#] {
        let mask = [1, 2, 3, 4];
        both.push(0x81);
        both.push(0x80 | text.len() as u8);
        both.extend_from_slice(&mask);
        both.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    client.tcp.write_all(&both).await.unwrap();
    assert_eq!(client.text().await, status, "the pong overtook the refresh");
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn broken_input_closes_with_its_code() {
    let server = TestServer::start(WsConfig::default()).await;
    // (first header byte, payload, masked, expected close code)
    let cases: [(u8, &[u8], bool, u16); 3] = [
        (0x81, b"refresh", false, close_code::PROTOCOL_ERROR),
        (0x83, b"", true, close_code::PROTOCOL_ERROR),
        (
            0x81,
            &[0x7b, 0xff, 0xfe, 0x7d],
            true,
            close_code::INVALID_PAYLOAD,
        ),
    ];
    for (first, payload, masked, code) in cases {
        let (mut client, _) = RawClient::connect(&server).await;
        client.send(first, payload, masked).await;
        assert_eq!(client.close_code().await, code, "{first:#x} {payload:?}");
        server.wait_registered(0).await;
    }
}

#[tokio::test]
async fn a_burst_of_events_arrives_whole_and_in_order() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, _) = RawClient::connect(&server).await;
    let published: Vec<String> = (0..500)
        .map(|i| {
            let event = server.bus.publish(QueueStatus::new(i, 0));
            String::from_utf8(event.json().to_vec()).unwrap()
        })
        .collect();
    for want in &published {
        assert_eq!(&client.text().await, want);
    }
}

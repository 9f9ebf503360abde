//! A client speaking raw WebSocket frames over TCP, for tests of the
//! framing itself: it can send what no library client would.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestServer, WAIT};

/// One client frame, masked as a client must: first header byte, payload
/// (any length form).
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x1f, 0x2e, 0x3d, 0x4c];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A client speaking raw frames over TCP.
pub struct RawClient {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

impl RawClient {
    /// Upgrades and returns the client with the first frame (the queue
    /// status) read.
    pub async fn connect(server: &TestServer) -> (RawClient, Vec<u8>) {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut client = RawClient::upgrade(tcp, "/api/v1/ws").await;
        let (opcode, first) = client.frame().await;
        assert_eq!(opcode, 0x1);
        (client, first)
    }

    /// Upgrades `tcp` (connected to the server) on `path`, reading nothing
    /// after the `101`.
    pub async fn upgrade(tcp: TcpStream, path: &str) -> RawClient {
        RawClient::upgrade_with(tcp, path, "").await.0
    }

    /// Upgrades with `extra` header lines (each ending in CRLF); returns the
    /// client and the `101`'s head, lowercased.
    pub async fn upgrade_with(mut tcp: TcpStream, path: &str, extra: &str) -> (RawClient, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
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
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        (client, head)
    }

    pub async fn read_more(&mut self) {
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
    pub async fn frame(&mut self) -> (u8, Vec<u8>) {
        let (b0, payload) = self.frame_with_bits().await;
        assert_eq!(b0 & 0xF0, 0x80, "FIN set, no reserved bits: {b0:#x}");
        (b0 & 0x0F, payload)
    }

    /// The next server frame: its first header byte (FIN, RSV bits,
    /// opcode) and payload, whatever the bits.
    pub async fn frame_with_bits(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
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
                    return (b0, payload);
                }
            }
            self.read_more().await;
        }
    }

    /// The next text frame, skipping pings.
    pub async fn text(&mut self) -> String {
        loop {
            match self.frame().await {
                (0x1, payload) => return String::from_utf8(payload).unwrap(),
                (0x9, _) => continue,
                (op, payload) => panic!("expected text, got opcode {op:#x}: {payload:?}"),
            }
        }
    }

    /// Sends one frame, masked as a client must, unless `masked` is false.
    pub async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
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

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Expects a close frame (skipping text and pings) and returns its
    /// payload, without answering it.
    pub async fn close_payload(&mut self) -> Vec<u8> {
        loop {
            match self.frame().await {
                (0x8, payload) => return payload,
                (0x1 | 0x9, _) => continue,
                (op, _) => panic!("expected close, got opcode {op:#x}"),
            }
        }
    }

    /// Expects the server to end the TCP stream (after anything still
    /// buffered, which must be no frame).
    pub async fn expect_eof(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("the server did not close the connection")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        assert!(self.buf.is_empty(), "more after the close: {:x?}", self.buf);
    }

    /// Expects a close frame, answers it, and returns its code.
    pub async fn close_code(&mut self) -> u16 {
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

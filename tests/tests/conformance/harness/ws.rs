//! A WebSocket client that records what a UI would see.

use std::time::{Duration, Instant};

use event_core::EventKind;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::WAIT;

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a WebSocket read produced.
#[derive(Debug)]
pub enum WsRead {
    /// A text frame and when it arrived.
    Text(String, Instant),
    /// A binary frame (the server must never send one).
    Binary(Vec<u8>),
    /// The server closed (with its frame, if any).
    Closed(Option<CloseFrame>),
}

/// A WebSocket client.
pub struct WsClient {
    pub stream: WsStream,
    /// Ping control frames seen.
    pub pings: usize,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("websocket connect");
        WsClient { stream, pings: 0 }
    }

    /// Connects with a prepared request (headers).
    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")?;
        Ok(WsClient { stream, pings: 0 })
    }

    /// The next data frame or the close, within `timeout` (`None` on timeout).
    pub async fn read_within(&mut self, timeout: Duration) -> Option<WsRead> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                None => return Some(WsRead::Closed(None)),
                Some(Err(_)) => return Some(WsRead::Closed(None)),
                Some(Ok(Message::Text(t))) => {
                    return Some(WsRead::Text(t.as_str().to_owned(), Instant::now()));
                }
                Some(Ok(Message::Binary(b))) => return Some(WsRead::Binary(b.to_vec())),
                Some(Ok(Message::Close(frame))) => return Some(WsRead::Closed(frame)),
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next text frame; panics on close, binary or timeout.
    pub async fn next_text(&mut self) -> (String, Instant) {
        match self.read_within(WAIT).await {
            Some(WsRead::Text(t, at)) => (t, at),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame `want` accepts (others are skipped).
    pub async fn next_text_where(&mut self, want: impl Fn(&Value) -> bool) -> (String, Instant) {
        loop {
            let (text, at) = self.next_text().await;
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if want(&value) {
                return (text, at);
            }
        }
    }

    /// Frames up to the reply to a `{"type":"ping"}` sent now (exclusive):
    /// everything the server queued for this client before the pong.
    pub async fn drain_until_pong(&mut self) -> Vec<Value> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut seen = Vec::new();
        loop {
            let (text, _) = self.next_text().await;
            let v: Value = serde_json::from_str(&text).expect("server sent non-JSON text");
            if v["type"] == "pong" {
                return seen;
            }
            seen.push(v);
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Waits for the server's close and returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.read_within(WAIT).await {
                Some(WsRead::Closed(frame)) => return frame.map(|f| u16::from(f.code)),
                Some(WsRead::Text(..)) | Some(WsRead::Binary(_)) => {}
                None => panic!("the server did not close the connection in time"),
            }
        }
    }
}

/// The event types PROTOCOL §1 allows on the wire (plus the control replies).
pub fn known_type(t: &str) -> bool {
    EventKind::from_name(t).is_some_and(|k| k.type_name() == t)
}

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
        let (stream, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .expect("connect timed out")
        .expect("websocket connect");
        WsClient { stream, pings: 0 }
    }

    /// Connects with a prepared request (headers).
    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(req, None, true),
        )
        .await
        .expect("connect timed out")?;
        Ok(WsClient { stream, pings: 0 })
    }

    /// The next data frame or the close, within `timeout` (`None` on timeout).
    pub async fn read_within(&mut self, timeout: Duration) -> Option<WsRead> {
        self.read_by(tokio::time::Instant::now() + timeout).await
    }

    /// The next data frame or the close, before `deadline` (`None` after
    /// it): for waits bounded in all, across several frames.
    pub async fn read_by(&mut self, deadline: tokio::time::Instant) -> Option<WsRead> {
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

    /// Reads text frames until one `stop` accepts; returns the frames
    /// before it (parsed) and that one.
    ///
    /// # Panics
    ///
    /// When none arrives within [`WAIT`] *in all* (not per frame: the job
    /// bridge's periodic `QueueStatus` must not keep a missing frame waited
    /// for forever), or on a close, a binary frame or non-JSON text.
    async fn read_until(
        &mut self,
        what: &str,
        stop: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, (String, Instant)) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let (text, at) = match self.read_by(deadline).await {
                Some(WsRead::Text(t, at)) => (t, at),
                other => panic!("waiting for {what}, got {other:?} after {before:?}"),
            };
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("server sent non-JSON text {text:?}: {e}"));
            if stop(&value) {
                return (before, (text, at));
            }
            before.push(value);
        }
    }

    /// The next text frame `want` accepts (others are skipped), within
    /// [`WAIT`] in all.
    pub async fn next_text_where(&mut self, want: impl Fn(&Value) -> bool) -> (String, Instant) {
        self.read_until("a matching frame", want).await.1
    }

    /// Frames before the first one `stop` accepts (exclusive; that one is
    /// consumed), within [`WAIT`] in all.
    pub async fn frames_before(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.read_until("a matching frame", stop).await.0
    }

    /// Frames up to the reply to a `{"type":"ping"}` sent now (exclusive):
    /// everything the server queued for this client before the pong.
    ///
    /// Only for a client that has no other ping unanswered (a pong does not
    /// say which ping it answers); otherwise use [`WsClient::barrier`].
    pub async fn drain_until_pong(&mut self) -> Vec<Value> {
        self.send(r#"{"type":"ping"}"#).await;
        self.read_until("the pong", |v| v["type"] == "pong").await.0
    }

    /// Frames the server sent before it handled a barrier sent now
    /// (exclusive): everything it queued for this client up to here, with
    /// every earlier message of ours handled.
    ///
    /// Unlike a `ping`, the barrier's reply cannot be mistaken for an
    /// earlier one: it is an `unsubscribe` of a unique unknown name (which
    /// changes nothing), and its `subscribed` reply echoes that name.
    pub async fn barrier(&mut self) -> Vec<Value> {
        let marker = format!("barrier-{}", uuid::Uuid::new_v4());
        let message = serde_json::json!({"type": "unsubscribe", "events": [marker]});
        self.send(&message.to_string()).await;
        let echoes = |v: &Value| {
            v["type"] == "subscribed"
                && v["unknown"]
                    .as_array()
                    .is_some_and(|names| names.iter().any(|n| n == marker.as_str()))
        };
        self.read_until("the barrier's reply", echoes).await.0
    }

    /// Sends a text frame.
    ///
    /// # Panics
    ///
    /// When the write fails or does not finish within [`WAIT`] (a server
    /// that stopped reading).
    pub async fn send(&mut self, text: &str) {
        let sent = tokio::time::timeout(WAIT, self.stream.send(Message::Text(text.into())));
        match sent.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("sending {text:?} failed: {e}"),
            Err(_) => panic!("sending {text:?} did not finish within {WAIT:?}"),
        }
    }

    /// Waits for the server's close (within [`WAIT`] in all) and returns
    /// its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.read_by(deadline).await {
                Some(WsRead::Closed(frame)) => return frame.map(|f| u16::from(f.code)),
                Some(WsRead::Text(..)) | Some(WsRead::Binary(_)) => {}
                None => panic!("the server did not close the connection in time"),
            }
        }
    }
}

/// The event types docs/protocol.md §1 allows on the wire (plus the control replies).
pub fn known_type(t: &str) -> bool {
    EventKind::from_name(t).is_some_and(|k| k.type_name() == t)
}

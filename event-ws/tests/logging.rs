//! A connection's log lines carry its `ws_connection` span (id, remote,
//! principal), although the span is entered only where the connection logs
//! (not on every poll). Its own test binary: it sets the thread's default
//! subscriber, and the tests run on tokio's current-thread runtime so the
//! connection task logs on this thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::TestServer;
use event_ws::WsConfig;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn connect_and_disconnect_lines_carry_the_connection_span() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    server.wait_registered(1).await;
    let id = server.registry.list()[0].id;
    client.send(Message::Close(None)).await.unwrap();
    // The guard is dropped after the "disconnected" line is written.
    server.wait_registered(0).await;

    let lines = capture.lines();
    let span = format!("ws_connection{{conn_id={id} ");
    for message in ["connected", "disconnected"] {
        let line = lines
            .iter()
            .find(|l| l.ends_with(message) || l.contains(&format!(" {message} ")))
            .unwrap_or_else(|| panic!("no `{message}` line in {lines:#?}"));
        assert!(line.contains(&span), "`{message}` without {span}: {line}");
    }
}

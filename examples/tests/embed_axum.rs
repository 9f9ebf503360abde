//! `embed-axum` as a real process: the HotM WebSocket and SSE checks
//! against an axum application that embeds the transports and is served by
//! `event_http::serve`. Events come from the app's own route (`POST
//! /todos` publishes `NoteUpdated` on the bus). Every wait is bounded.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// How long any single wait may take (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(20);

/// The app, killed on drop, and its address.
struct App {
    _child: Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> App {
    let dir = std::env::temp_dir().join(format!("embed-axum-test-{}", uuid_like()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_embed-axum"))
        .arg("127.0.0.1:0")
        .arg(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start embed-axum");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("embed-axum printed no address in time")
        .unwrap()
        .expect("embed-axum exited");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    App {
        _child: child,
        addr,
        _dir: TempDir(dir),
    }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// `POST /todos`: the app's own route; returns the new todo.
async fn add_todo(app: &App, title: &str) -> Value {
    let (status, body) = request(
        app,
        "POST",
        "/todos",
        &json!({ "title": title }).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// One request over its own connection; status and body.
async fn request(app: &App, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(&app.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        app.addr,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .expect("no answer in time")
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The next JSON text message of `ws`.
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no WebSocket message in time")
            .expect("the WebSocket closed")
            .unwrap();
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected WebSocket message {other:?}"),
        }
    }
}

/// An SSE response read as raw text, frame by frame.
struct Sse {
    tcp: TcpStream,
    buf: String,
}

impl Sse {
    async fn connect(app: &App, last_event_id: Option<&str>) -> Sse {
        let mut tcp = TcpStream::connect(&app.addr).await.unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            app.addr
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut sse = Sse {
            tcp,
            buf: String::new(),
        };
        let head = sse.until("\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        sse
    }

    /// Everything up to and including `end`.
    async fn until(&mut self, end: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.buf.find(end) {
                let rest = self.buf.split_off(i + end.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .expect("no SSE data in time")
                .unwrap();
            assert!(n > 0, "the SSE stream closed; so far {:?}", self.buf);
            // Chunked framing: the size lines stay in the text; frames are
            // matched by their field lines, which never span a size line
            // here (each frame is written in one chunk).
            self.buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    }

    /// The next SSE frame whose `event:` is not `QueueStatus` (fields only).
    async fn next_event(&mut self) -> String {
        loop {
            let frame = self.until("\n\n").await;
            let frame = frame
                .lines()
                .filter(|l| {
                    l.starts_with("id: ") || l.starts_with("event: ") || l.starts_with("data: ")
                })
                .collect::<Vec<_>>()
                .join("\n");
            if frame.contains("event: ") && !frame.contains("event: QueueStatus") {
                return frame;
            }
        }
    }
}

#[tokio::test]
async fn the_embedded_app_serves_its_routes_and_the_hotm_transports() {
    let app = start().await;

    // The app's own route.
    let (status, body) = request(&app, "GET", "/todos", "").await;
    assert_eq!((status, body.as_str()), (200, "[]"));

    // WebSocket: the initial QueueStatus, and `refresh` answered with one.
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", app.addr)),
    )
    .await
    .expect("no WebSocket handshake in time")
    .unwrap();
    let first = ws_next(&mut ws).await;
    assert_eq!(first["type"], "QueueStatus", "{first}");
    ws.send(Message::text("refresh")).await.unwrap();
    let refreshed = ws_next(&mut ws).await;
    assert_eq!(refreshed["type"], "QueueStatus", "{refreshed}");

    // SSE: `retry`, then the QueueStatus confirmation.
    let mut sse = Sse::connect(&app, None).await;
    assert!(sse.until("\n\n").await.ends_with("retry: 3000\n\n"));
    let confirm = sse.until("\n\n").await;
    assert!(
        confirm.contains("event: QueueStatus\ndata: {\"type\":\"QueueStatus\""),
        "{confirm}"
    );

    // An event published on the bus (by the app's route) reaches both.
    let todo = add_todo(&app, "milk").await;
    let id = todo["id"].as_str().unwrap();
    let on_ws = loop {
        let v = ws_next(&mut ws).await;
        if v["type"] != "QueueStatus" {
            break v;
        }
    };
    assert_eq!(on_ws["type"], "NoteUpdated", "{on_ws}");
    assert_eq!(on_ws["note_id"], id, "{on_ws}");
    assert_eq!(on_ws["title"], "milk", "{on_ws}");
    let frame = sse.next_event().await;
    let mut fields = frame.lines();
    let seq = fields
        .next()
        .and_then(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id line first: {frame}"))
        .to_owned();
    assert!(seq.parse::<u64>().is_ok(), "{frame}");
    assert_eq!(fields.next(), Some("event: NoteUpdated"), "{frame}");
    let data: Value = serde_json::from_str(
        fields
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["type"], "NoteUpdated");
    assert_eq!(data["note_id"], id);

    // `Last-Event-ID`: a client resuming from that event gets what followed.
    let second = add_todo(&app, "eggs").await;
    let mut resumed = Sse::connect(&app, Some(&seq)).await;
    let replayed = resumed.next_event().await;
    assert!(replayed.contains("event: NoteUpdated"), "{replayed}");
    assert!(
        replayed.contains(second["id"].as_str().unwrap()),
        "{replayed}"
    );
    assert!(!replayed.contains(id), "the resumed-from event came again");

    // Webhooks are mounted (their API answers; the store is SQLite).
    let (status, body) = request(&app, "GET", "/api/v1/webhooks", "").await;
    assert_eq!(status, 200, "{body}");

    // The app's own route still works beside the open streams.
    let (status, body) = request(&app, "GET", "/todos", "").await;
    assert_eq!(status, 200);
    let todos: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(todos.as_array().map(Vec::len), Some(2), "{todos}");
}

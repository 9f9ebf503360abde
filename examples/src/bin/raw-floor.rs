//! `raw-floor`: the least a fan-out server can do, as a yardstick.
//!
//! The benchmark harness (`cargo xtask bench`) runs `loadgen` against this
//! program and against `event-server` in the same run, on the same machine,
//! and reports the real server's figures as a ratio to this floor. The load
//! client shares the CPU with the server, so absolute numbers mean little;
//! the ratio says how much the real server adds on top of the unavoidable
//! work.
//!
//! What it does, and nothing more:
//! * `GET /api/v1/ws` — a WebSocket upgrade done by hand; the client gets one
//!   `QueueStatus` text frame, then every published event.
//! * `GET /api/v1/events` — `200 text/event-stream`, `retry: 3000`, one
//!   `QueueStatus` frame, then every published event as an
//!   `id:`/`event:`/`data:` frame.
//! * `POST /api/v1/events` — one flat event object or an array of them (the
//!   same body the real server takes). Each event is rendered once per wire
//!   form (WebSocket text frame bytes, SSE frame bytes); the shared bytes are
//!   queued on every connection and the connection's writer writes all that
//!   is pending in one go. Answers `202`.
//! * `GET /metrics` — the two connection gauges, `GET /health` — `200`.
//!
//! No filters, auth, replay, pings, or metrics beyond the gauges. A
//! WebSocket client's close frame is answered with a close frame; anything
//! else a client sends is ignored. A connection more than 1 MiB behind (the
//! real server's default outbox bound) skips events until it catches up.
//!
//! Run: `cargo run --release -p examples --bin raw-floor -- --addr 127.0.0.1:3001`
//! (prints `listening on <addr>` once it accepts connections).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use clap::Parser;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A connection this far behind is dropped.
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Largest request head or body accepted.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

const QUEUE_STATUS: &str = r#"{"type":"QueueStatus","total_jobs":0,"running":0,"pending":0}"#;

/// The raw-floor server.
#[derive(Debug, Parser)]
#[command(name = "raw-floor", about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "RAW_FLOOR_ADDR", default_value = "127.0.0.1:3001")]
    addr: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ws,
    Sse,
}

#[derive(Default)]
struct Pending {
    chunks: Vec<Bytes>,
    bytes: usize,
    closed: bool,
    /// Written before closing (the WebSocket close reply).
    last_words: Option<&'static [u8]>,
}

/// One client connection's outgoing queue.
#[derive(Default)]
struct Conn {
    pending: Mutex<Pending>,
    notify: Notify,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, last_words: Option<&'static [u8]>) {
        {
            let mut pending = self.lock();
            pending.closed = true;
            pending.last_words = last_words;
        }
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct Hub {
    conns: Mutex<HashMap<u64, (Kind, Arc<Conn>)>>,
    next_id: AtomicU64,
    next_seq: Mutex<u64>,
}

impl Hub {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, (Kind, Arc<Conn>)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, kind: Kind, conn: Arc<Conn>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns().insert(id, (kind, conn));
        id
    }

    fn remove(&self, id: u64) {
        self.conns().remove(&id);
    }

    /// Renders each event once per wire form and queues the shared bytes on
    /// every connection. Returns the sequence numbers given.
    fn publish(&self, events: &[Value]) -> Vec<u64> {
        // One lock orders sequence numbers and delivery, as the real bus does.
        let mut seq = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut ws = Vec::with_capacity(events.len());
        let mut sse = Vec::with_capacity(events.len());
        let mut seqs = Vec::with_capacity(events.len());
        let mut bytes = 0;
        for event in events {
            *seq += 1;
            seqs.push(*seq);
            let json = serde_json::to_vec(event).unwrap_or_default();
            let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
            let ws_frame = ws_text_frame(&json);
            let sse_frame = sse_frame(*seq, kind, &json);
            bytes += ws_frame.len().max(sse_frame.len());
            ws.push(ws_frame);
            sse.push(sse_frame);
        }
        let conns = self.conns();
        for (kind, conn) in conns.values() {
            let frames = if *kind == Kind::Ws { &ws } else { &sse };
            let mut pending = conn.lock();
            if pending.closed {
                continue;
            }
            // Over the bound the frames are skipped (the client sees a
            // gap) and the connection kept: the floor's deliveries are the
            // most this machine can push, never reduced by dropped clients.
            if pending.bytes + bytes <= MAX_PENDING_BYTES {
                pending.chunks.extend(frames.iter().cloned());
                pending.bytes += bytes;
            }
            drop(pending);
            conn.notify.notify_one();
        }
        seqs
    }

    fn gauges(&self) -> (usize, usize) {
        let conns = self.conns();
        let ws = conns.values().filter(|(k, _)| *k == Kind::Ws).count();
        (ws, conns.len() - ws)
    }
}

fn ws_text_frame(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=65535 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

fn sse_frame(seq: u64, kind: &str, json: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(json.len() + kind.len() + 40);
    frame.extend_from_slice(format!("id: {seq}\nevent: {kind}\ndata: ").as_bytes());
    frame.extend_from_slice(json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head from `stream`, keeping any bytes after it in `buf`.
async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or("").split(' ');
            let method = first.next().unwrap_or("").to_owned();
            let path = first.next().unwrap_or("").to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            return Ok(Some(Request {
                method,
                path,
                headers,
            }));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    let _ = stream.write_all(&out).await;
}

async fn handle(hub: Arc<Hub>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    // Keep-alive: publishers send many requests on one connection.
    while let Ok(Some(req)) = read_head(&mut stream, &mut buf).await {
        let path = req.path.split('?').next().unwrap_or("");
        match (req.method.as_str(), path) {
            ("GET", "/api/v1/ws") => {
                let Some(key) = req.header("sec-websocket-key") else {
                    respond(&mut stream, "400 Bad Request", "text/plain", b"no key").await;
                    return;
                };
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                let mut first = head.into_bytes();
                first.extend_from_slice(&ws_text_frame(QUEUE_STATUS.as_bytes()));
                // A streaming connection reads no more requests: the head
                // buffer would only add to the floor's idle memory.
                drop(buf);
                return stream_to(hub, stream, Kind::Ws, first).await;
            }
            ("GET", "/api/v1/events" | "/api/v1/events/stream") => {
                let first = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n\r\nretry: 3000\n\nevent: QueueStatus\ndata: {QUEUE_STATUS}\n\n"
                );
                drop(buf);
                return stream_to(hub, stream, Kind::Sse, first.into_bytes()).await;
            }
            ("POST", "/api/v1/events") => {
                let len: usize = req
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if len > MAX_REQUEST_BYTES {
                    respond(&mut stream, "413 Payload Too Large", "text/plain", b"").await;
                    return;
                }
                while buf.len() < len {
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let body: Vec<u8> = buf.drain(..len).collect();
                let events = match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Array(items)) => items,
                    Ok(obj @ Value::Object(_)) => vec![obj],
                    _ => {
                        let msg = br#"{"error":"invalid_body","message":"expected an event or an array"}"#;
                        respond(&mut stream, "400 Bad Request", "application/json", msg).await;
                        continue;
                    }
                };
                let seqs = hub.publish(&events);
                let listed: Vec<String> = seqs.iter().map(|s| format!("{{\"seq\":{s}}}")).collect();
                let body = format!("{{\"events\":[{}]}}", listed.join(","));
                respond(
                    &mut stream,
                    "202 Accepted",
                    "application/json",
                    body.as_bytes(),
                )
                .await;
            }
            ("GET", "/metrics") => {
                let (ws, sse) = hub.gauges();
                let body = format!(
                    "matric_ws_connections_active {ws}\nmatric_sse_connections_active {sse}\n"
                );
                respond(&mut stream, "200 OK", "text/plain", body.as_bytes()).await;
            }
            ("GET", "/health") => {
                let (ws, sse) = hub.gauges();
                let body = format!(r#"{{"status":"ok","connections":{{"ws":{ws},"sse":{sse}}}}}"#);
                respond(&mut stream, "200 OK", "application/json", body.as_bytes()).await;
            }
            _ => {
                respond(&mut stream, "404 Not Found", "text/plain", b"").await;
            }
        }
    }
}

/// Registers a streaming connection and runs its writer; a reader task
/// discards what the client sends and notices when it goes away.
async fn stream_to(hub: Arc<Hub>, stream: TcpStream, kind: Kind, first: Vec<u8>) {
    let (mut read, mut write) = stream.into_split();
    let conn = Arc::new(Conn::default());
    if write.write_all(&first).await.is_err() {
        return;
    }
    drop(first);
    let id = hub.add(kind, conn.clone());
    let reader_conn = conn.clone();
    let reader = tokio::spawn(async move {
        // As small as the real server's watch of an SSE client: a bigger
        // array only makes every idle connection's task bigger.
        let mut sink = [0u8; 64];
        loop {
            match read.read(&mut sink).await {
                // A client frame starting with FIN + opcode 8 is a close:
                // answer with an empty close frame and hang up.
                Ok(n) if n > 0 && kind == Kind::Ws && sink[0] == 0x88 => {
                    reader_conn.close(Some(&[0x88, 0x00]));
                    return;
                }
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        reader_conn.close(None);
    });
    write_loop(&conn, &mut write).await;
    hub.remove(id);
    reader.abort();
}

async fn write_loop(conn: &Conn, write: &mut OwnedWriteHalf) {
    let mut chunks = Vec::new();
    let mut out = Vec::new();
    loop {
        conn.notify.notified().await;
        let closing = {
            let mut pending = conn.lock();
            std::mem::swap(&mut chunks, &mut pending.chunks);
            pending.bytes = 0;
            pending.closed.then(|| pending.last_words.take())
        };
        if let Some(last_words) = closing {
            if let Some(words) = last_words {
                let _ = write.write_all(words).await;
            }
            return;
        }
        let result = if chunks.len() == 1 {
            write.write_all(&chunks[0]).await
        } else {
            out.clear();
            for chunk in &chunks {
                out.extend_from_slice(chunk);
            }
            write.write_all(&out).await
        };
        chunks.clear();
        if result.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("raw-floor: cannot listen on {}: {e}", args.addr);
            return std::process::ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("raw-floor: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    let hub = Arc::new(Hub::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(hub.clone(), stream));
                }
                // Out of file descriptors and the like: keep serving the others.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            _ = tokio::signal::ctrl_c() => return std::process::ExitCode::SUCCESS,
        }
    }
}
